"""The in-memory event log: ordered ids, blocking reads, and a bounded footprint."""

from __future__ import annotations

import threading

from avatar_service.jobs.events import PACK_BACKLOG, JobEvents


def publish_job(events: JobEvents, job_id: str, steps: int = 5) -> None:
    """A job's life: queued, a few progress steps, succeeded (final)."""
    events.publish(job_id, "queued", {"status": "queued"})
    for step in range(1, steps + 1):
        events.publish(job_id, "progress", {"value": step, "max": steps})
    events.publish(job_id, "succeeded", {"status": "succeeded"}, final=True)


def test_ended_job_replays_every_event_after_a_given_id():
    """The events of an ended job (kept packed) replay from any id, in order, then end."""
    events = JobEvents()
    publish_job(events, "a", steps=5)
    unpacked, _ = events.read("a", 2, timeout=0)  # before the monitor packs them: the same
    events.pack_ended()
    assert events._channels["a"].packed is not None
    fresh, ended = events.read("a", 2, timeout=0)
    assert fresh == unpacked
    assert ended is True
    assert [event.id for event in fresh] == [3, 4, 5, 6, 7]
    assert [event.event for event in fresh] == ["progress"] * 4 + ["succeeded"]
    assert fresh[0].data == {"value": 2, "max": 5}
    everything, _ = events.read("a", -1, timeout=0)
    assert [event.id for event in everything] == list(range(1, 8))
    assert events.last_id("a") == 7
    last, ended = events.read("a", 6, timeout=0)
    assert [(event.id, event.event) for event in last] == [(7, "succeeded")]


def test_ended_jobs_wait_to_be_packed_up_to_the_backlog():
    """The thread that ends a job does not pack its events (the monitor does), unless more
    than PACK_BACKLOG ended jobs wait: then they are packed at once, so the memory held stays
    bounded even with no monitor."""
    events = JobEvents()
    for index in range(PACK_BACKLOG):
        publish_job(events, f"job-{index}")
    assert all(channel.packed is None for channel in events._channels.values())
    publish_job(events, "one-more")
    assert all(channel.packed is not None for channel in events._channels.values())
    assert all(len(channel.events) == 1 for channel in events._channels.values())


def test_ended_jobs_are_kept_up_to_the_count():
    """At most ``retention_jobs`` ended jobs are held; the oldest go first."""
    events = JobEvents(retention_jobs=10)
    for number in range(50):
        publish_job(events, f"job{number}")
    assert events.held() == 10
    assert not events.known("job0")
    assert events.known("job49")


def test_ended_jobs_are_kept_up_to_the_age():
    """An ended job older than ``retention_seconds`` is dropped at the next end."""
    events = JobEvents(retention_seconds=0.0)
    publish_job(events, "old")
    publish_job(events, "new")
    assert not events.known("old")


def test_a_reader_of_an_unknown_job_leaves_nothing_behind():
    """Waiting on a job that never publishes here holds no memory once the wait ends."""
    events = JobEvents()
    assert events.read("nobody", 0, timeout=0.01) == ([], False)
    assert events.wait_ended("nobody", 0.01) == (False, None)
    assert events.held() == 0


def test_a_waiting_reader_is_woken_by_the_final_event():
    """A reader blocked on a job gets the final event as soon as it is published, and the
    outcome its publisher handed over (until the job's events are packed)."""
    events = JobEvents()
    events.publish("a", "queued", {})
    results: list[tuple[bool, object]] = []
    reader = threading.Thread(target=lambda: results.append(events.wait_ended("a", 10)))
    reader.start()
    record = object()
    events.publish("a", "succeeded", {}, final=True, outcome=record)
    reader.join(10)
    assert results == [(True, record)]
    events.pack_ended()
    assert events.wait_ended("a", 0) == (True, None)  # packed: the record is read again
