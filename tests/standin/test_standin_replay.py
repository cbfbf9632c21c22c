"""Replays the recorded ComfyUI transcripts against the stand-in and compares the answers."""

from __future__ import annotations

import time

import httpx
import pytest
from standin_replay import (
    Replayer,
    Socket,
    compare_response,
    message_outline,
    warm_up,
)

from comfyui_standin import StandIn

#: steps whose answer depends on the lab server's earlier life (other scenarios' files/history)
SKIP_LABELS = ("history?", "GET /object_info (all nodes)")


def _outline_with_binary(frames: list) -> list:
    out = []
    for frame in frames:
        if isinstance(frame, bytes):
            out.append(["binary", int.from_bytes(frame[:4], "big")])
        else:
            out.extend(message_outline([frame]))
    return out


def _recorded_outline(recording: dict) -> list:
    out = []
    for entry in recording["ws"]:
        if "text" in entry:
            out.extend(message_outline([entry["text"]]))
        elif "binary" in entry:
            out.append(["binary", entry["binary"]["decoded_header"]["event_type"]])
    return out


def _strip_object_info_lists(body: dict) -> dict:
    info = body.get("LoadImage")
    if info:
        info["input"]["required"]["image"][0] = "<input files>"
    return body


@pytest.mark.parametrize(
    "name",
    [
        "01_success.json",
        "02_cached_rerun.json",
        "03_new_seed_rerun.json",
        "04_validation_errors.json",
        "05_execution_error.json",
        "08_upload_behaviours.json",
        "09_view_behaviours.json",
        "10_misc_endpoints.json",
        "12_prompt_fields.json",
    ],
)
def test_replay_matches_recording(
    name: str, recording, lab_standin: StandIn, client: httpx.Client, photo: bytes
) -> None:
    """Every recorded request gets the recorded status, headers and (normalised) body, and the
    websocket carries the recorded message sequence."""
    rec = recording(name)
    client.post(
        "/upload/image", files={"image": ("rec_astronaut_64.png", photo)}, data={"overwrite": "1"}
    ).raise_for_status()
    warm_up(lab_standin, rec, photo)
    connect = next((e for e in rec["ws"] if e.get("event") == "connect"), None)
    socket = None
    if connect is not None:
        socket = Socket(lab_standin.url, connect["path"].partition("clientId=")[2] or None)
        socket.wait_for(lambda m: m["type"] == "status")
    replayer = Replayer(lab_standin, client)
    try:
        for step in rec["steps"]:
            if "request" not in step:
                continue
            label = step["label"]
            ours = replayer.send(step["request"])
            recorded = step["response"]
            if any(skip in label for skip in SKIP_LABELS):
                assert ours.status_code == recorded["status"], label
                continue
            if "json" in recorded and ours.headers.get("content-type", "").startswith(
                "application/json"
            ):
                replayer.learn(recorded["json"], ours.json())
                if step["request"]["path"].startswith("/object_info/LoadImage"):
                    recorded = {**recorded, "json": _strip_object_info_lists(recorded["json"])}
                    body = _strip_object_info_lists(ours.json())
                    assert body == recorded["json"], label
                    continue
            compare_response(recorded, ours, label)
            if step["request"]["path"] == "/prompt" and ours.status_code == 200:
                lab_standin.wait_idle()
        lab_standin.wait_idle()
        if socket is not None:
            expected = _recorded_outline(rec)
            deadline = time.monotonic() + 5
            while len(socket.frames) < len(expected) and time.monotonic() < deadline:
                time.sleep(0.005)  # the reader thread may lag behind the server
            assert _outline_with_binary(socket.frames) == expected
    finally:
        if socket is not None:
            socket.close()
