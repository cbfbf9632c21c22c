"""ComfyUI's formats read by avatar_service.comfyui: messages, previews, history, queue, system."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

import pytest

from avatar_service.comfyui import (
    Disconnected,
    ExecutionEnded,
    ExecutionFailed,
    ExecutionStarted,
    HistoryEntry,
    NodeStarted,
    OutputImage,
    Preview,
    Progress,
    PromptWatch,
    QueueSnapshot,
    Reconnected,
    SystemStats,
    catalogue_signature,
    catalogue_size,
    runs_standin,
)
from avatar_service.comfyui.events import (
    Message,
    read_message,
    read_preview,
    typed_event,
    unfollowed,
)

Recording = Callable[[str], dict[str, Any]]


def answer_of(recording: dict[str, Any], label: str) -> Any:
    """The JSON answer of the recorded step with this label."""
    (step,) = [step for step in recording["steps"] if step["label"] == label]
    return step["response"]["json"]


def test_recorded_run_reads_as_typed_events(recording: Recording) -> None:
    """A real run's messages read as started, each node, the sampler's progress, then ended."""
    messages = [
        message
        for frame in recording("01_success.json")["ws"]
        if "text" in frame and (message := read_message(json.dumps(frame["text"]))) is not None
    ]
    assert len(messages) == sum("text" in f for f in recording("01_success.json")["ws"])
    events = [
        event
        for message in messages
        if message.prompt_id is not None and (event := typed_event(message)) is not None
    ]
    assert events[0] == ExecutionStarted()
    assert events[-1] == ExecutionEnded()
    started = [event.node for event in events if isinstance(event, NodeStarted)]
    assert started == ["1", "25", "26", "3", "2", "22", "23", "4", "15", "7"]
    assert Progress("4", 1, 1) in events
    assert all(m.prompt_id is None for m in messages if m.kind == "status")


def test_progress_state_is_told_apart_unparsed_and_nothing_else_is(recording: Recording) -> None:
    """Of a real run's messages, written as ComfyUI writes them (aiohttp's json.dumps), exactly
    the progress_state ones are unfollowed, and none of those is a typed event; one written
    another way is parsed, and still is no event."""
    texts = [frame["text"] for frame in recording("01_success.json")["ws"] if "text" in frame]
    for text in texts:
        raw = json.dumps(text).encode()
        assert unfollowed(raw) == (text["type"] == "progress_state"), text["type"]
        if unfollowed(raw):
            assert typed_event(Message(text["type"], text["data"])) is None
    assert sum(text["type"] == "progress_state" for text in texts) > len(texts) / 3
    compact = json.dumps(texts[-1] | {"type": "progress_state"}, separators=(",", ":")).encode()
    assert not unfollowed(compact)
    message = read_message(compact)
    assert message is not None and typed_event(message) is None


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        json.dumps(["a", "list"]),
        json.dumps("a string"),
        json.dumps({"no": "type"}),
        json.dumps({"type": "executing", "data": ["not", "a", "dict"]}),
        b"\xff\xfe",
    ],
)
def test_unreadable_messages_are_none(raw: str | bytes) -> None:
    """Anything but a JSON object with a type and an object of data is not a message."""
    assert read_message(raw) is None


def test_message_without_data_has_empty_data() -> None:
    """A message with no data reads as empty data, naming no prompt."""
    message = read_message(json.dumps({"type": "progress"}))
    assert message == Message("progress", {})
    assert message.prompt_id is None


def test_execution_error_reads_as_failure() -> None:
    """execution_error keeps the node, its class and the exception, message stripped."""
    message = Message(
        "execution_error",
        {
            "prompt_id": "p1",
            "node_id": "25",
            "node_type": "LoadImage",
            "exception_type": "PIL.UnidentifiedImageError",
            "exception_message": "cannot identify image file\n",
        },
    )
    assert typed_event(message) == ExecutionFailed(
        "25", "LoadImage", "PIL.UnidentifiedImageError", "cannot identify image file"
    )


def test_plain_preview_belongs_to_the_running_prompt() -> None:
    """A PREVIEW_IMAGE frame names no prompt: it is the running one's, and none without one."""
    frame = struct.pack(">II", 1, 1) + b"jpeg bytes"
    assert read_preview(frame, "p1") == ("p1", Preview("image/jpeg", b"jpeg bytes"))
    assert read_preview(frame, None) is None


def test_preview_with_metadata_names_its_prompt() -> None:
    """A PREVIEW_IMAGE_WITH_METADATA frame names its prompt and image type itself."""
    meta = json.dumps({"prompt_id": "p2", "image_type": "image/png"}).encode()
    frame = struct.pack(">II", 4, len(meta)) + meta + b"png bytes"
    assert read_preview(frame, "p1") == ("p2", Preview("image/png", b"png bytes"))


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x00",
        struct.pack(">II", 9, 0) + b"x",
        struct.pack(">II", 1, 7) + b"unknown image format",
        struct.pack(">II", 4, 5) + b"[1,2]",
        struct.pack(">II", 4, 3) + b"{no",
        struct.pack(">II", 4, 15) + b'{"prompt_id":1}' + b"x",
    ],
)
def test_unusable_preview_frames_are_none(frame: bytes) -> None:
    """Short, unknown, badly described or unroutable binary frames give no preview."""
    assert read_preview(frame, "p1") is None


def test_recorded_history_entries(recording: Recording) -> None:
    """Real /history answers: a success with its image, a node failure, an interruption."""
    ok_answer = answer_of(recording("01_success.json"), "history of the finished prompt")
    (ok_id,) = ok_answer
    ok = HistoryEntry.of_prompt(ok_answer, ok_id)
    assert ok is not None and ok.succeeded and ok.failure is None and not ok.interrupted
    assert ok.images(["7"]) == [OutputImage("ComfyUI_temp_ytxjq_00001_.png", "", "temp")]
    assert ok.images(["7"])[0].to_dict() == {
        "filename": "ComfyUI_temp_ytxjq_00001_.png",
        "subfolder": "",
        "type": "temp",
    }

    failed_answer = answer_of(recording("05_execution_error.json"), "history of the failed prompt")
    (failed_id,) = failed_answer
    failed = HistoryEntry.of_prompt(failed_answer, failed_id)
    assert failed is not None and not failed.succeeded and not failed.interrupted
    assert failed.failure is not None
    assert (failed.failure.node_id, failed.failure.node_type) == ("25", "LoadImage")
    assert failed.failure.exception_type == "PIL.UnidentifiedImageError"

    stopped_answer = answer_of(recording("06_interrupt.json"), "history of the interrupted prompt")
    (stopped_id,) = stopped_answer
    stopped = HistoryEntry.of_prompt(stopped_answer, stopped_id)
    assert stopped is not None and stopped.interrupted and not stopped.succeeded
    assert stopped.images(["7"]) == []


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("01_success.json", "history of the finished prompt"),
        ("02_cached_rerun.json", "history of the cached prompt"),
        ("03_new_seed_rerun.json", None),
    ],
)
def test_a_watch_that_heard_every_message_tells_the_history_entry(
    recording: Recording, name: str, label: str | None
) -> None:
    """A real run's messages (a cached re-run's too: its output node's ``executed`` is sent
    again) tell what its /history entry says: success and the same outputs."""
    texts = [frame["text"] for frame in recording(name)["ws"] if "text" in frame]
    (prompt_id,) = {text["data"]["prompt_id"] for text in texts if "prompt_id" in text["data"]}
    watch = PromptWatch(prompt_id, hears_all=True)
    for text in texts:
        message = read_message(json.dumps(text))
        assert message is not None
        if message.prompt_id == prompt_id:
            watch.deliver(message)
    heard = watch.heard_entry(["7"])
    assert heard is not None and heard.succeeded and heard.failure is None
    assert heard.images(["7"])[0].filename.startswith("ComfyUI_temp_ytxjq_")
    if label is not None:
        recorded = HistoryEntry.of_prompt(answer_of(recording(name), label), prompt_id)
        assert recorded is not None
        assert heard.outputs == recorded.outputs
        assert heard.images(["7"]) == recorded.images(["7"])
    events = []
    while not watch.events.empty():
        events.append(watch.events.get_nowait())
    assert events[-1] == ExecutionEnded()


def test_a_watch_tells_no_entry_unless_it_heard_all_and_success(recording: Recording) -> None:
    """A watch that joined late, lost its socket, or heard a failure leaves it to /history."""
    texts = [frame["text"] for frame in recording("01_success.json")["ws"] if "text" in frame]
    (prompt_id,) = {text["data"]["prompt_id"] for text in texts if "prompt_id" in text["data"]}

    def heard(watch: PromptWatch) -> HistoryEntry | None:
        for text in texts:
            message = read_message(json.dumps(text))
            if message is not None and message.prompt_id == prompt_id:
                watch.deliver(message)
        return watch.heard_entry(["7"])

    assert heard(PromptWatch(prompt_id)) is None  # joined an already queued prompt
    dropped = PromptWatch(prompt_id, hears_all=True)
    dropped.put(Disconnected())
    assert heard(dropped) is None
    back = PromptWatch(prompt_id, hears_all=True)
    back.put(Reconnected())
    assert heard(back) is None
    whole = PromptWatch(prompt_id, hears_all=True)
    assert heard(whole) is not None
    assert whole.heard_entry(["7", "9"]) is None  # no executed message from node 9
    failed = PromptWatch(prompt_id, hears_all=True)
    for text in recording("05_execution_error.json")["ws"]:
        message = read_message(json.dumps(text["text"])) if "text" in text else None
        if message is not None and message.prompt_id is not None:
            failed.deliver(message)
    assert failed.heard_entry(["7"]) is None


def test_history_of_a_prompt_not_ended_is_none() -> None:
    """An empty /history/{prompt_id} answer means the prompt has not ended."""
    assert HistoryEntry.of_prompt({}, "p1") is None


def test_recorded_queue_places(recording: Recording) -> None:
    """A real /queue answer: the running prompt, then the pending ones from 1 = next."""
    answer = answer_of(recording("07_queue.json"), "queue right after submitting 3")
    snapshot = QueueSnapshot.from_answer(answer, asked_at=5.0)
    running_id = answer["queue_running"][0][1]
    first, second = (item[1] for item in answer["queue_pending"])
    assert snapshot.asked_at == 5.0
    assert snapshot.place_of(running_id) == ("running", 0)
    assert snapshot.place_of(first) == ("pending", 1)
    assert snapshot.place_of(second) == ("pending", 2)
    assert snapshot.place_of("unknown") == ("absent", None)


def test_pending_prompts_are_ordered_by_number_not_heap_order() -> None:
    """queue_pending is a heap: positions follow the prompt numbers, then the ids."""
    answer = {
        "queue_running": [],
        "queue_pending": [[12, "d", {}], [10, "b", {}], [11, "c", {}], [10, "a", {}], ["bad"]],
    }
    snapshot = QueueSnapshot.from_answer(answer, asked_at=0.0)
    assert dict(snapshot.positions) == {"a": 1, "b": 2, "c": 3, "d": 4}
    assert snapshot.running == frozenset()


def test_recorded_system_stats_is_a_real_comfyui(recording: Recording) -> None:
    """A real /system_stats answer gives the ComfyUI version and is not the stand-in."""
    answer = answer_of(recording("10_misc_endpoints.json"), "system_stats")
    assert SystemStats.from_answer(answer) == SystemStats(comfyui_version="0.3.64", standin=False)
    assert not runs_standin(answer)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            {"system": {"comfyui_version": "0.3.64", "pytorch_version": "comfyui_standin"}},
            SystemStats("0.3.64", standin=True),
        ),
        ({}, SystemStats(None, standin=False)),
        ({"system": ["not", "an", "object"]}, SystemStats(None, standin=False)),
        ({"system": {"comfyui_version": 364, "pytorch_version": 2}}, SystemStats(None, False)),
    ],
)
def test_system_stats_shapes(answer: dict[str, Any], expected: SystemStats) -> None:
    """The stand-in is told by its pytorch_version; odd shapes give no version, no stand-in."""
    assert SystemStats.from_answer(answer) == expected


def test_catalogue_signature_follows_content_not_key_order() -> None:
    """The signature ignores key order and changes when a choice is added."""
    catalogue = {
        "KSampler": {"input": {"required": {"seed": ["INT", {"min": 0}]}}},
        "CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors"]]}}},
    }
    reordered = dict(reversed(list(catalogue.items())))
    grown = json.loads(json.dumps(catalogue))
    grown["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0].append("b.safetensors")
    assert catalogue_signature(catalogue) == catalogue_signature(reordered)
    assert catalogue_signature(catalogue) != catalogue_signature(grown)
    assert catalogue_size(catalogue) == 2
