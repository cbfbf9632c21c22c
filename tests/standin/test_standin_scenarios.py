"""Timing-dependent recordings (06 interrupt, 07 queue, 11 websocket cases), replayed by hand."""

from __future__ import annotations

import copy
import json
import struct
import time
from collections.abc import Callable

import httpx
import pytest
from standin_replay import Socket, message_outline, recorded_ws_messages, warm_up

from comfyui_standin import StandIn


def _poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.005)


def _types(messages: list[dict]) -> list[str]:
    return [m["type"] for m in messages]


def _submit(client: httpx.Client, prompt: dict, **fields) -> dict:
    response = client.post("/prompt", json={"prompt": prompt, **fields})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def uploaded(client: httpx.Client, photo: bytes) -> None:
    """The seed workflow's input photo is in the input dir."""
    client.post(
        "/upload/image", files={"image": ("rec_astronaut_64.png", photo)}, data={"overwrite": "1"}
    ).raise_for_status()


def _with_steps(prompt: dict, steps: int, seed: int = 42) -> dict:
    prompt = copy.deepcopy(prompt)
    prompt["4"]["inputs"].update(steps=steps, seed=seed)
    return prompt


@pytest.mark.usefixtures("uploaded")
def test_interrupt_by_prompt_id_matches_recording(
    recording, lab_standin: StandIn, client: httpx.Client, seed_prompt: dict
) -> None:
    """A non-matching prompt_id is a no-op; the matching one stops the sampler at the next step
    with execution_interrupted, status and executing null, as in 06_interrupt.json."""
    rec = recording("06_interrupt.json")
    lab_standin.set_faults(step_delay=0.05)
    socket = Socket(lab_standin.url, "c06")
    try:
        prompt_id = _submit(client, _with_steps(seed_prompt, 20), client_id="c06")["prompt_id"]
        socket.wait_for(lambda m: m["type"] == "progress" and m["data"]["value"] == 1)
        assert client.post("/interrupt", json={"prompt_id": "not-running"}).content == b""
        socket.wait_for(lambda m: m["type"] == "progress" and m["data"]["value"] == 2)
        response = client.post("/interrupt", json={"prompt_id": prompt_id})
        assert (response.status_code, response.content) == (200, b"")
        socket.wait_done(prompt_id)
        ours = socket.messages()
        tail = _types(ours)[-3:]
        assert tail == _types(recorded_ws_messages(rec))[-3:]
        interrupted = next(m for m in ours if m["type"] == "execution_interrupted")["data"]
        recorded = next(
            m for m in recorded_ws_messages(rec) if m["type"] == "execution_interrupted"
        )["data"]
        assert set(interrupted) == set(recorded)
        assert (interrupted["node_id"], interrupted["node_type"]) == ("4", "KSampler")
        history = client.get(f"/history/{prompt_id}").json()[prompt_id]
        assert history["status"]["status_str"] == "error"
        assert history["status"]["completed"] is False
        assert [m[0] for m in history["status"]["messages"]] == [
            "execution_start",
            "execution_cached",
            "execution_interrupted",
        ]
        assert history["outputs"] == {}
        assert lab_standin.interrupts == [{"prompt_id": "not-running"}, {"prompt_id": prompt_id}]
    finally:
        socket.close()


@pytest.mark.usefixtures("uploaded")
def test_global_interrupt_without_body(
    lab_standin: StandIn, client: httpx.Client, seed_prompt: dict
) -> None:
    """A body-less POST /interrupt interrupts whatever runs and is recorded as None."""
    lab_standin.set_faults(step_delay=0.05)
    socket = Socket(lab_standin.url, "glob")
    try:
        prompt_id = _submit(client, _with_steps(seed_prompt, 50), client_id="glob")["prompt_id"]
        socket.wait_for(lambda m: m["type"] == "progress")
        assert client.post("/interrupt").status_code == 200
        socket.wait_done(prompt_id)
        assert "execution_interrupted" in _types(socket.messages())
        assert lab_standin.interrupts == [None]
    finally:
        socket.close()


@pytest.mark.usefixtures("uploaded")
def test_queue_matches_recording(
    recording, lab_standin: StandIn, client: httpx.Client, seed_prompt: dict
) -> None:
    """Three prompts: /queue items are 5-element lists, delete removes a pending one only,
    status broadcasts follow every change, and prompts run in number order (07_queue.json)."""
    rec = recording("07_queue.json")
    warm_up(lab_standin, rec, b"")
    lab_standin.set_faults(hang=True)  # the first prompt holds at its first node
    socket = Socket(lab_standin.url, "c07")
    try:
        ids = [
            _submit(client, _with_steps(seed_prompt, 3, seed), client_id="c07")["prompt_id"]
            for seed in (700, 701, 702)
        ]
        queue = client.get("/queue").json()
        assert [item[1] for item in queue["queue_running"]] == ids[:1]
        assert sorted(item[1] for item in queue["queue_pending"]) == sorted(ids[1:])
        assert all(len(item) == 5 for item in queue["queue_pending"] + queue["queue_running"])
        assert queue["queue_running"][0][3] == {"client_id": "c07"}
        assert queue["queue_running"][0][4] == ["7"]
        assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 3}}
        assert client.post("/queue", json={"delete": [ids[2]]}).content == b""
        assert [i[1] for i in client.get("/queue").json()["queue_pending"]] == [ids[1]]
        lab_standin.set_faults(hang=False, step_delay=0.2)
        socket.wait_for(
            lambda m: m["type"] == "execution_start" and m["data"]["prompt_id"] == ids[1]
        )
        client.post("/queue", json={"delete": [ids[1]]})  # running: untouched
        assert client.get("/queue").json()["queue_running"][0][1] == ids[1]
        socket.wait_done(ids[1])
        lab_standin.wait_idle()
        assert client.get(f"/history/{ids[2]}").json() == {}
        assert lab_standin.queue_snapshot() == {"queue_running": [], "queue_pending": []}
        ours = [m for m in message_outline(socket.messages()) if m[0] != "progress_state"]
        recorded = [
            m for m in message_outline(recorded_ws_messages(rec)) if m[0] != "progress_state"
        ]
        assert ours == recorded
        assert lab_standin.queue_requests == [{"delete": [ids[2]]}, {"delete": [ids[1]]}]
    finally:
        socket.close()


@pytest.mark.usefixtures("uploaded")
def test_front_and_number_order_the_queue(
    lab_standin: StandIn, client: httpx.Client, seed_prompt: dict
) -> None:
    """``number`` is echoed as float, ``front`` negates the counter, and pending items run
    lowest number first."""
    lab_standin.set_faults(hang=True)
    first = _submit(client, seed_prompt)
    later = _submit(client, _with_steps(seed_prompt, 1, 1), number=5)
    front = _submit(client, _with_steps(seed_prompt, 1, 2), front=True)
    assert later["number"] == 5.0 and isinstance(later["number"], float)
    assert front["number"] == -1  # the counter skipped the explicit-number prompt
    pending = lab_standin.queue_snapshot()["queue_pending"]
    assert sorted(pending)[0][1] == front["prompt_id"]
    lab_standin.clear_faults()
    lab_standin.wait_idle()
    order = list(lab_standin.history_snapshot())
    assert order == [first["prompt_id"], front["prompt_id"], later["prompt_id"]]


@pytest.mark.usefixtures("uploaded")
def test_websocket_edge_cases_match_recording(
    recording, lab_standin: StandIn, client: httpx.Client, seed_prompt: dict
) -> None:
    """No clientId gets a uuid4-hex sid; a second socket with the same id takes over and is
    orphaned when the old one closes; a late socket gets status + bare executing; no client_id
    means broadcasts only; feature_flags switches previews to type 4 (11_ws_edge_cases.json)."""
    rec = recording("11_ws_edge_cases.json")
    observer = Socket(lab_standin.url, "observer")
    try:
        # (a) server-made sid
        anon = Socket(lab_standin.url, None)
        sid = anon.wait_for(lambda m: m["type"] == "status")["data"]["sid"]
        assert len(sid) == 32 and int(sid, 16) >= 0
        done = _submit(client, seed_prompt, client_id=sid)["prompt_id"]
        anon.wait_done(done)
        anon.close()

        # (b) duplicate clientId
        dup_a = Socket(lab_standin.url, "dup")
        dup_a.wait_for(lambda m: m["type"] == "status")
        dup_b = Socket(lab_standin.url, "dup")
        dup_b.wait_for(lambda m: m["type"] == "status")
        done = _submit(client, seed_prompt, client_id="dup")["prompt_id"]
        dup_b.wait_done(done)
        lab_standin.wait_idle()
        assert len(dup_a.messages()) == 1
        dup_a.close()
        lab_standin.wait_idle()
        before = len(dup_b.messages())
        _submit(client, seed_prompt, client_id="dup")
        lab_standin.wait_idle()
        assert len(dup_b.messages()) == before
        dup_b.close()

        # (c) late connect while KSampler runs
        lab_standin.set_faults(step_delay=0.1)
        late_id = _submit(client, _with_steps(seed_prompt, 3, 9), client_id="late")["prompt_id"]
        observer.wait_for(
            lambda m: (
                m["type"] == "status" and m["data"]["status"]["exec_info"]["queue_remaining"] == 1
            )
        )
        lab_standin.wait_idle(timeout=0.05) if False else None
        import time

        deadline = time.monotonic() + 5
        while lab_standin.queue_snapshot()["queue_running"] == [] and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.05)
        late = Socket(lab_standin.url, "late")
        late.wait_done(late_id)
        assert message_outline(late.messages()[:2]) == message_outline(
            recorded_ws_messages(rec, "late")[:2]
        )
        late.close()

        # (d) no client_id: broadcasts only
        listener = Socket(lab_standin.url, "listener")
        listener.wait_for(lambda m: m["type"] == "status")
        _submit(client, _with_steps(seed_prompt, 1, 10))
        lab_standin.wait_idle()
        # connect, enqueue, dequeue and finish: the finish broadcast is the last frame
        _poll(lambda: sum(m["type"] == "status" for m in listener.messages()) == 4)
        recorded_types = {m["type"] for m in recorded_ws_messages(rec, "listener")}
        assert {m["type"] for m in listener.messages()} == recorded_types
        assert any(isinstance(f, bytes) for f in listener.frames)
        listener.close()

        # (e) feature flags
        flags = Socket(lab_standin.url, "ff")
        flags.ws.send(
            json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        )
        answer = flags.wait_for(lambda m: m["type"] == "feature_flags")
        assert answer["data"] == {"supports_preview_metadata": True, "max_upload_size": 104857600}
        done = _submit(client, _with_steps(seed_prompt, 1, 11), client_id="ff")["prompt_id"]
        flags.wait_done(done)
        binary = [f for f in flags.frames if isinstance(f, bytes)]
        assert binary and struct.unpack(">I", binary[0][:4])[0] == 4
        meta_len = struct.unpack(">I", binary[0][4:8])[0]
        meta = json.loads(binary[0][8 : 8 + meta_len])
        recorded_meta = next(
            e["binary"]["decoded_header"]["metadata"]
            for e in rec["ws"]
            if "binary" in e and e["binary"]["decoded_header"]["event_type"] == 4
        )
        assert set(meta) == set(recorded_meta) and meta["node_id"] == "4"
        kinds = ["bin" if isinstance(f, bytes) else f["type"] for f in flags.frames]
        assert kinds.index("bin") < kinds.index("progress")
        flags.close()
        # the observer only ever saw broadcasts
        assert {m["type"] for m in observer.messages()} <= {"status", "progress", "progress_state"}
    finally:
        observer.close()
