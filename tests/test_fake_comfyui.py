"""FakeComfyUI says what the real ComfyUI 0.3.64 says: its frames and answers against the
recordings, and its interface against ComfyUIClient's."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from avatar_service.comfyui import ComfyUIClient, ComfyUIUnavailable, PromptRejected
from avatar_service.comfyui.workflows import check_against_object_info, load_workflows
from tests.conftest import REPO_ROOT
from tests.fake_comfyui import FakeComfyUI, FakeComfyUIs, recorded_rejection

GRAPH = load_workflows(REPO_ROOT / "workflows")["avatar"].graph


def kinds_of(frames: list[dict[str, Any]]) -> list[str]:
    """Frame kinds in order, repeats collapsed; progress_state (ignored by the service) left
    out; ``executing`` null told apart from a node's ``executing``."""
    kinds: list[str] = []
    for frame in frames:
        if "binary" in frame:
            kind = "binary"
        else:
            kind = frame["type"]
            if kind == "executing" and frame["data"].get("node") is None:
                kind = "executing:null"
        if kind != "progress_state" and (not kinds or kinds[-1] != kind):
            kinds.append(kind)
    return kinds


def recorded_frames(recording: dict[str, Any]) -> list[dict[str, Any]]:
    """The frames a recording's socket received, as the fake keeps them."""
    frames = []
    for entry in recording["ws"]:
        if "text" in entry:
            frames.append(entry["text"])
        elif "binary" in entry:
            frames.append({"binary": entry["binary"]["length"]})
    return frames


def queued(fake: FakeComfyUI, prompt_id: str = "p-1") -> str:
    fake.start()
    fake.watch(prompt_id)
    fake.queue_prompt(GRAPH, prompt_id=prompt_id)
    return prompt_id


SCRIPTS: list[tuple[str, Callable[[FakeComfyUI, str], None]]] = [
    (
        "01_success.json",
        lambda fake, pid: (fake.progress(pid, 1, 1), fake.preview(pid), fake.finish(pid)),
    ),
    ("05_execution_error.json", lambda fake, pid: fake.fail(pid)),
    (
        "06_interrupt.json",
        lambda fake, pid: (
            fake.progress(pid, 1, 20),
            fake.preview(pid),
            fake.progress(pid, 2, 20),
            fake.preview(pid),
            fake.interrupt(pid),
        ),
    ),
]


@pytest.mark.parametrize(("name", "script"), SCRIPTS, ids=["success", "error", "interrupt"])
def test_frames_come_in_the_recorded_order(recording, name, script):
    """A scripted ending sends the kinds of frames the real server sent, in the same order."""
    fake = FakeComfyUI("http://gpu:8188")
    script(fake, queued(fake))
    assert kinds_of(fake.frames) == kinds_of(recorded_frames(recording(name)))


@pytest.mark.parametrize(
    ("name", "script"),
    [SCRIPTS[0], SCRIPTS[1], SCRIPTS[2]],
    ids=["success", "error", "interrupt"],
)
def test_history_entries_have_the_recorded_shape(recording, name, script):
    """The fake's history entry has the recorded keys and status, read by HistoryEntry."""
    fake = FakeComfyUI("http://gpu:8188")
    prompt_id = queued(fake)
    script(fake, prompt_id)
    [step] = [s for s in recording(name)["steps"] if s["request"]["path"].startswith("/history/")]
    [recorded] = step["response"]["json"].values()
    entry = fake.history(prompt_id)
    assert entry is not None
    assert entry.status["status_str"] == recorded["status"]["status_str"]
    assert entry.status["completed"] == recorded["status"]["completed"]
    kept = [message[0] for message in entry.status["messages"]]
    assert kept == [message[0] for message in recorded["status"]["messages"]]
    if entry.succeeded:
        [image] = entry.images(["7"])
        assert fake.view(image)[1] == "image/png"


def test_queue_answer_has_the_recorded_item_shape(recording):
    """GET /queue items are [number, prompt_id, graph, extra_data, outputs], as recorded."""
    fake = FakeComfyUI("http://gpu:8188")
    for prompt_id in ("a", "b", "c"):
        queued(fake, prompt_id)
    fake.begin("a")
    answer = fake.queue()
    [step] = [s for s in recording("07_queue.json")["steps"] if s["request"]["path"] == "/queue"][
        :1
    ]
    recorded = step["response"]["json"]
    assert set(answer) == set(recorded)
    [item] = answer["queue_running"]
    assert len(item) == len(recorded["queue_running"][0]) == 5
    assert item[3] == {"client_id": fake.client_id}
    assert fake.queue_state("c", newer_than=0) == ("pending", 2)
    assert fake.queue_state("a", newer_than=0) == ("running", 0)


def test_a_missing_class_is_refused_like_a_real_server():
    """A graph using a class the server lacks is the recorded invalid_prompt 400."""
    fake = FakeComfyUI("http://gpu:8188")
    fake.lacks("ConditioningConcat")
    with pytest.raises(PromptRejected) as rejected:
        fake.queue_prompt(GRAPH, prompt_id="p")
    recorded = recorded_rejection("unknown class_type")
    assert set(rejected.value.error) == set(recorded["error"])
    assert rejected.value.error["type"] == recorded["error"]["type"]
    assert rejected.value.server_lacks_something
    problems = check_against_object_info(GRAPH, fake.object_info())
    assert [problem.class_type for problem in problems] == ["ConditioningConcat"]


def test_the_recorded_catalogue_runs_the_shipped_style():
    """The fake's /object_info (recorded) has everything the avatar style needs."""
    assert check_against_object_info(GRAPH, FakeComfyUI("http://gpu:8188").object_info()) == []


def test_a_server_down_refuses_every_call_and_records_it():
    """While down every HTTP call raises ComfyUIUnavailable; each is still recorded."""
    fake = FakeComfyUI("http://gpu:8188")
    fake.start()
    fake.go_down()
    assert not fake.connected
    with pytest.raises(ComfyUIUnavailable):
        fake.history("p")
    assert fake.names() == ["history"]
    fake.come_back()
    assert fake.connected
    assert fake.history("p") is None


def test_the_factory_keeps_each_fake_by_url():
    """FakeComfyUIs makes a fake per URL with the client's keyword arguments."""
    fakes = FakeComfyUIs(autorun=True)
    made = fakes("http://gpu:8188/", timeout=None, reconnect_max=1.0, client_id="cid")
    assert fakes["http://gpu:8188"] is made
    assert made.client_id == "cid"
    made.start()
    made.watch("p")
    made.queue_prompt(GRAPH, prompt_id="p")
    assert made.history("p").succeeded  # autorun: finished at once


def test_the_fake_has_the_client_s_public_interface():
    """Every public method and property of ComfyUIClient exists on FakeComfyUI, same call."""
    for name, member in inspect.getmembers(ComfyUIClient):
        if name.startswith("_") or name == "ws_url":
            continue
        assert hasattr(FakeComfyUI, name), name
        if inspect.isfunction(member):
            real = inspect.signature(member)
            fake = inspect.signature(getattr(FakeComfyUI, name))
            assert list(fake.parameters)[: len(real.parameters)] == list(real.parameters), name
    real_init = inspect.signature(ComfyUIClient.__init__).parameters
    fake_init = inspect.signature(FakeComfyUI.__init__).parameters
    assert set(real_init) <= set(fake_init)
    fake = FakeComfyUI("http://gpu:8188")
    for attribute in ("base_url", "client_id", "on_connect", "last_error", "messages_received"):
        assert hasattr(fake, attribute), attribute
    assert isinstance(fake.disconnected_since, float)
