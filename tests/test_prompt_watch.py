"""PromptWatch: each event queued for the prompt's owner, or relayed on the reader thread."""

from __future__ import annotations

import json
import threading

from avatar_service.comfyui import (
    Disconnected,
    NodeStarted,
    Progress,
    PromptWatch,
    QueueChanged,
)
from avatar_service.comfyui.events import Message, read_message


def message(kind: str, **data: object) -> Message:
    """A message about prompt ``p``, read as the client reads one."""
    read = read_message(json.dumps({"type": kind, "data": {**data, "prompt_id": "p"}}))
    assert read is not None
    return read


def test_events_are_queued_until_the_owner_asks_for_the_relay():
    watch = PromptWatch("p")
    watch.deliver(message("progress", node="4", value=1, max=2))
    assert watch.events.get_nowait() == Progress("4", 1, 2)


def test_the_relay_starts_only_once_every_queued_event_was_taken():
    """Else a relayed step could be published before one heard earlier."""
    watch = PromptWatch("p")
    relayed: list[object] = []
    watch.deliver(message("progress", node="4", value=1, max=2))
    assert not watch.relay_on(relayed.append, (Progress,))
    watch.deliver(message("progress", node="4", value=2, max=2))
    assert relayed == []
    assert [watch.events.get_nowait(), watch.events.get_nowait()] == [
        Progress("4", 1, 2),
        Progress("4", 2, 2),
    ]
    assert watch.relay_on(relayed.append, (Progress,))


def test_only_the_kinds_named_are_relayed_the_rest_queued():
    watch = PromptWatch("p")
    relayed: list[object] = []
    assert watch.relay_on(relayed.append, (Progress, NodeStarted, QueueChanged))
    watch.deliver(message("executing", node="9"))
    watch.deliver(message("progress", node="4", value=1, max=2))
    watch.put(QueueChanged())
    watch.put(Disconnected())
    watch.deliver(message("execution_interrupted"))
    assert relayed == [NodeStarted("9"), Progress("4", 1, 2), QueueChanged()]
    assert watch.events.get_nowait() == Disconnected()
    assert not watch.hears_all
    assert type(watch.events.get_nowait()).__name__ == "ExecutionInterrupted"
    assert watch.events.empty()


def test_after_relay_off_no_relayed_event_is_being_handled():
    """relay_off waits for a relayed event in hand, so its owner may end the job after it."""
    watch = PromptWatch("p")
    inside, release, done = threading.Event(), threading.Event(), threading.Event()
    handled: list[object] = []

    def slow(event: object) -> None:
        inside.set()
        release.wait(5)
        handled.append(event)

    assert watch.relay_on(slow, (Progress,))
    reader = threading.Thread(
        target=lambda: watch.deliver(message("progress", node="4", value=1, max=2))
    )
    reader.start()
    assert inside.wait(5)
    switching = threading.Thread(target=lambda: (watch.relay_off(), done.set()))
    switching.start()
    assert not done.wait(0.2)  # still handling the step
    release.set()
    assert done.wait(5)
    assert handled == [Progress("4", 1, 2)]
    reader.join(5)
    switching.join(5)
    watch.deliver(message("progress", node="4", value=2, max=2))
    assert watch.events.get_nowait() == Progress("4", 2, 2)
