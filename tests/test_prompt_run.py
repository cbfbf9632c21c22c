"""PromptRun against FakeComfyUI: a prompt's life on one server, every ending, no sockets.

Each run has a real job store (SQLite in a temporary folder), ledger, events and photo store.
A run whose script is set up beforehand (``fake.on_queue``) runs inline; one the test drives
while it follows its prompt runs in a thread (``Running``), and the test waits on conditions.
"""

from __future__ import annotations

import io
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from avatar_service.comfyui import Progress
from avatar_service.comfyui.workflows import Workflow, load_workflows
from avatar_service.errors import ServiceError
from avatar_service.jobs import outcomes
from avatar_service.jobs.coordination import Solo
from avatar_service.jobs.events import JobEvents
from avatar_service.jobs.ledger import JobLedger
from avatar_service.jobs.prompt import FailoverAsked, PromptRun, RunSettings, ShutdownAsked
from avatar_service.jobs.records import Job, JobRecords
from avatar_service.photos.geometry import Box, Crop
from avatar_service.photos.store import PhotoStore
from tests.conftest import REPO_ROOT, make_photo
from tests.fake_comfyui import FakeComfyUI, recorded_rejection
from tests.helpers import ManualClock, wait_for

SERVER = "http://gpu-1:8188"
JOB_TIMEOUT = 30.0


@dataclass
class World:
    """What a run needs, real but for ComfyUI."""

    records: JobRecords
    events: JobEvents
    ledger: JobLedger
    photos: PhotoStore
    workflow: Workflow
    fake: FakeComfyUI
    clock: ManualClock
    image_name: str

    def job(self, **changes: Any) -> Job:
        """A job claimed for the fake's server, stored."""
        now = self.clock()
        job = Job(
            id=uuid.uuid4().hex,
            status="queued",
            style="avatar",
            image_name=self.image_name,
            gender="male",
            width=64,
            height=64,
            seed=7,
            base_url="http://service",
            deadline=now + JOB_TIMEOUT,
            created_at=now,
            queue_order=now,
            server=SERVER,
            owner=f"engine-test/{SERVER}",
            dispatched_at=now,
        )
        job = Job(**{**job.__dict__, **changes})
        self.records.insert(job)
        return job

    def run(self, job: Job, *, poll_interval: float = 0.05) -> PromptRun:
        """A run of the job's prompt on the fake."""
        return PromptRun(
            job,
            client=self.fake,  # type: ignore[arg-type]
            workflow=self.workflow,
            records=self.records,
            ledger=self.ledger,
            photos=self.photos,
            settings=RunSettings(job_timeout=JOB_TIMEOUT, poll_interval=poll_interval),
            clock=self.clock,
        )

    def record(self, job: Job) -> dict[str, Any]:
        """The job's public record as stored now."""
        stored = self.records.get(job.id)
        assert stored is not None
        return stored.to_dict()

    def event_names(self, job: Job) -> list[str]:
        """The names of the job's published events, in order."""
        return [event.event for event in self.events.read(job.id, 0, 0)[0]]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A fresh world with one stored photo and a connected fake ComfyUI."""
    records = JobRecords(tmp_path / "jobs.sqlite3")
    events = JobEvents()
    photos = PhotoStore(
        tmp_path / "uploads", max_bytes=10_000_000, max_pixels=10_000_000, min_side=64
    )
    (tmp_path / "uploads").mkdir()
    stored = photos.save(make_photo((200, 80, 40)))
    fake = FakeComfyUI(SERVER)
    fake.start()
    yield World(
        records=records,
        events=events,
        ledger=JobLedger(records=records, events=events, coordination=Solo(records)),
        photos=photos,
        workflow=load_workflows(REPO_ROOT / "workflows")["avatar"],
        fake=fake,
        clock=ManualClock(),
        image_name=stored.image_name,
    )
    records.close()


class Running:
    """A run followed in a thread of its own; ``outcome`` waits for its end, with a bound."""

    def __init__(self, run: PromptRun) -> None:
        self.run = run
        self.result: Any = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="run under test", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            self.result = self.run.run()
        except BaseException as exc:  # handed to the test by outcome()
            self.error = exc

    def outcome(self, timeout: float = 10.0) -> Any:
        """The run's history entry; raises what the run raised."""
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"the run did not end within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.result


def queued_prompt(fake: FakeComfyUI, index: int = 0) -> str:
    """The prompt_id of the ``index``-th prompt queued on the fake, once it is."""
    return wait_for(
        lambda: len(fake.queued) > index and fake.queued[index], message="the prompt queued"
    )


def error_of(exc: BaseException, job: Job) -> dict[str, Any]:
    """The job's error record for the exception that ended its run (as the ledger writes it)."""
    error = outcomes.error_for(exc, job)
    return {"status": error.status, **error.to_dict()}


# -- success ---------------------------------------------------------------------------------


def test_success_uploads_and_queues_its_own_prompt_id_and_its_messages_tell_the_rest(
    world: World,
):
    """A prompt that runs to success: upload, POST /prompt under a fresh prompt_id; every
    message heard, ``executed`` and ``execution_success`` among them, so no /history call."""
    world.fake.on_queue = lambda prompt_id: (
        world.fake.progress(prompt_id, 1, 2),
        world.fake.finish(prompt_id),
    )
    job = world.job()
    run = world.run(job)
    entry = run.run()
    assert entry.succeeded
    assert world.fake.names() == ["upload_image", "queue_prompt"]
    [upload] = world.fake.calls_named("upload_image")
    assert upload.args["filename"] == job.image_name
    assert upload.args["subfolder"] == "avatar_service"
    [queued] = world.fake.calls_named("queue_prompt")
    prompt_id = queued.args["prompt_id"]
    assert str(uuid.UUID(prompt_id)) == prompt_id
    assert queued.args["graph"]["4"]["inputs"]["seed"] == 7
    recorded = world.fake.history(prompt_id)
    assert recorded is not None and entry.outputs == recorded.outputs
    stored = world.records.get(job.id)
    assert (stored.prompt_id, stored.attempts, stored.status) == (prompt_id, 1, "running")
    assert world.record(job)["startedAt"] is not None
    assert run.job.timings["prepareMs"] >= 0
    names = world.event_names(job)
    assert names[0] == "running"
    assert set(names[1:]) == {"progress"}
    progress = [e.data for e in world.events.read(job.id, 0, 0)[0] if e.event == "progress"]
    assert {"node": "4", "nodeType": "KSampler", "value": 1, "max": 2} in progress


def test_a_success_after_the_socket_dropped_is_read_from_the_history(world: World):
    """Messages may have been missed while the socket was down: the entry comes from
    /history, which says the same outputs."""
    world.fake.on_queue = lambda prompt_id: (
        world.fake.progress(prompt_id, 1, 2),
        world.fake.reconnect("a blip"),
        world.fake.finish(prompt_id),
    )
    job = world.job()
    entry = world.run(job).run()
    assert entry.succeeded
    [queued] = world.fake.calls_named("queue_prompt")
    prompt_id = queued.args["prompt_id"]
    assert world.fake.names()[-1] == "history"
    assert world.fake.calls_named("history")[-1].args == {"prompt_id": prompt_id}
    assert entry.images(world.workflow.roles.outputs)


def test_a_live_preview_is_kept_and_announced(world: World):
    """A binary preview frame becomes the run's preview and a preview event."""
    world.fake.on_queue = lambda prompt_id: (
        world.fake.preview(prompt_id, b"\xff\xd8fake-jpeg"),
        world.fake.finish(prompt_id),
    )
    job = world.job()
    run = world.run(job)
    run.run()
    assert run.preview.content_type == "image/jpeg"
    assert run.preview.data == b"\xff\xd8fake-jpeg"
    assert "preview" in world.event_names(job)


# -- steps of a running prompt, published from the thread that hears them ------------------


def progress_values(world: World, job: Job) -> list[Any]:
    """The ``value`` of each progress event published for the job, in order."""
    return [e.data["value"] for e in world.events.read(job.id, 0, 0)[0] if e.event == "progress"]


def relaying(world: World) -> tuple[Job, PromptRun, Running, str]:
    """A run followed in its thread, its prompt begun, once its steps are relayed: the job,
    the run, its thread and the prompt_id."""
    job = world.job()
    run = world.run(job, poll_interval=5.0)
    running = Running(run)
    prompt_id = queued_prompt(world.fake)
    world.fake.begin(prompt_id)
    wait_for(lambda: run.relay.active, message="the steps relayed")
    return job, run, running, prompt_id


def test_once_running_its_steps_are_published_by_the_thread_that_hears_them(world: World):
    """Once the record says running, each step is published before the delivering thread
    (the client's reader) goes on: the run's own thread is not woken for it. Order is kept."""
    job, run, running, prompt_id = relaying(world)
    assert world.record(job)["status"] == "running"
    for step in range(1, 6):
        world.fake.progress(prompt_id, step, 5)
        assert progress_values(world, job)[-1] == step  # published already, in this thread
    assert run.watch.events.empty()
    world.fake.finish(prompt_id)
    assert running.outcome().succeeded
    assert not run.relay.active
    names = world.event_names(job)
    assert names[0] == "running" and set(names[1:]) == {"progress"}
    assert [v for v in progress_values(world, job) if v is not None] == [1, 2, 3, 4, 5]


def test_relayed_steps_reach_the_record_through_the_run_s_thread(world: World, monkeypatch):
    """The record is written by the run's thread only, when the relay says a write is due."""
    monkeypatch.setattr("avatar_service.jobs.ledger.PROGRESS_WRITE_INTERVAL", 0.0)
    job, run, running, prompt_id = relaying(world)
    world.fake.progress(prompt_id, 3, 5)
    wait_for(
        lambda: (world.record(job)["progress"] or {}).get("value") == 3,
        message="the step in the record",
    )
    assert run.job.progress is not None and run.job.progress.value == 3
    world.fake.finish(prompt_id)
    assert running.outcome().succeeded


def test_a_run_that_ended_publishes_no_step_heard_after(world: World):
    """A run stopped while its prompt still runs: later steps are neither published nor
    written (the job's end may already be)."""
    job, run, running, prompt_id = relaying(world)
    world.fake.progress(prompt_id, 1, 5)
    run.stop(ShutdownAsked())
    with pytest.raises(outcomes.Shutdown):
        running.outcome()
    world.fake.progress(prompt_id, 2, 5)
    assert progress_values(world, job)[-1] == 1
    assert run.watch.events.get_nowait() == Progress("4", 2, 5)  # queued, for nobody


# -- endings that fail the job ---------------------------------------------------------------


def test_execution_error_is_502_with_the_failing_node(world: World):
    """execution_error on LoadImage: 502 comfyui_execution_error naming node, type and cause."""
    world.fake.on_queue = lambda prompt_id: world.fake.fail(
        prompt_id, node_id="25", exception_message="cannot identify image file\n"
    )
    job = world.job()
    run = world.run(job)
    with pytest.raises(ServiceError) as failed:
        run.run()
    prompt_id = run.job.prompt_id
    assert error_of(failed.value, run.job) == {
        "status": 502,
        "code": "comfyui_execution_error",
        "message": "ComfyUI failed while running node 25 (LoadImage): cannot identify image file",
        "details": {
            "promptId": prompt_id,
            "nodeId": "25",
            "nodeType": "LoadImage",
            "exceptionType": "PIL.UnidentifiedImageError",
            "exceptionMessage": "cannot identify image file",
        },
    }


def test_an_interrupt_that_is_not_ours_is_502_comfyui_interrupted(world: World):
    """Someone else interrupting the prompt fails the job with comfyui_interrupted."""
    world.fake.on_queue = world.fake.interrupt_elsewhere
    job = world.job()
    run = world.run(job)
    with pytest.raises(ServiceError) as failed:
        run.run()
    assert error_of(failed.value, run.job) == {
        "status": 502,
        "code": "comfyui_interrupted",
        "message": "the prompt was interrupted on the ComfyUI server (not by this service)",
        "details": {"promptId": run.job.prompt_id},
    }
    assert "interrupt" not in world.fake.names()


# -- the photo, sent to a server once --------------------------------------------------------


def loaded_image(fake: FakeComfyUI, index: int) -> str:
    """The LoadImage value of the ``index``-th POST /prompt the fake received."""
    return fake.calls_named("queue_prompt")[index].args["graph"]["25"]["inputs"]["image"]


def test_a_photo_is_sent_to_a_server_once(world: World):
    """A second job from the same photo queues its prompt at once, naming the file ComfyUI
    already has."""
    world.fake.on_queue = world.fake.finish
    assert world.run(world.job()).run().succeeded
    assert world.run(world.job(seed=8)).run().succeeded
    assert world.fake.names() == ["upload_image", "queue_prompt", "queue_prompt"]
    assert loaded_image(world.fake, 1) == loaded_image(world.fake, 0)


def test_another_crop_of_the_photo_is_sent_as_its_own_photo(world: World):
    """What ComfyUI gets is the photo cut to the crop: another crop is another photo."""
    world.fake.on_queue = world.fake.finish
    assert world.run(world.job()).run().succeeded
    crop = Crop(Box(10, 10, 64, 64), "request")
    assert world.run(world.job(crop=crop)).run().succeeded
    assert world.run(world.job(crop=crop, seed=9)).run().succeeded
    assert world.fake.names() == [
        "upload_image",
        "queue_prompt",
        "upload_image",
        "queue_prompt",
        "queue_prompt",
    ]
    assert loaded_image(world.fake, 1) == loaded_image(world.fake, 2) != loaded_image(world.fake, 0)
    with Image.open(io.BytesIO(world.fake.uploads[loaded_image(world.fake, 2)])) as sent:
        assert sent.size == (64, 64)


def test_a_server_that_lost_the_photo_is_sent_it_again(world: World):
    """ComfyUI refuses the prompt because the LoadImage file is gone (its input folder was
    emptied): the photo is sent again and the prompt queued once more, under the same id."""
    world.fake.on_queue = world.fake.finish
    assert world.run(world.job()).run().succeeded
    world.fake.reject_next(recorded_rejection("LoadImage names a file that does not exist"))
    job = world.job(seed=8)
    assert world.run(job).run().succeeded
    assert world.fake.names() == [
        "upload_image",
        "queue_prompt",
        "queue_prompt",  # refused: the file is missing
        "upload_image",
        "queue_prompt",
    ]
    _, refused, queued = world.fake.calls_named("queue_prompt")
    assert refused.args["prompt_id"] == queued.args["prompt_id"]
    assert world.records.get(job.id).attempts == 1
    assert world.fake.sent_photos.get((job.image_name, None)) == loaded_image(world.fake, 2)


def test_a_photo_just_sent_and_refused_is_not_sent_again(world: World):
    """A missing-file refusal of a photo sent for this very job is the job's error."""
    world.fake.reject_next(recorded_rejection("LoadImage names a file that does not exist"))
    with pytest.raises(outcomes.PromptRejected):
        world.run(world.job()).run()
    assert world.fake.names() == ["upload_image", "queue_prompt"]


def test_a_new_connection_forgets_the_photos_sent(world: World):
    """A server whose websocket connects again may have restarted with an empty input folder:
    the next job sends its photo again."""
    world.fake.on_queue = world.fake.finish
    assert world.run(world.job()).run().succeeded
    world.fake.reconnect("the server restarted")
    assert world.run(world.job(seed=8)).run().succeeded
    assert world.fake.names() == ["upload_image", "queue_prompt", "upload_image", "queue_prompt"]


def test_a_graph_the_server_refuses_is_rejected_with_comfyui_s_words(world: World):
    """POST /prompt 400 (a node class the server lacks) ends the run with PromptRejected."""
    world.fake.lacks("ConditioningConcat")
    job = world.job()
    with pytest.raises(outcomes.PromptRejected) as rejected:
        world.run(job).run()
    assert rejected.value.server_lacks_something
    error = error_of(rejected.value, job)
    assert (error["status"], error["code"]) == (502, "comfyui_rejected_prompt")
    assert error["details"]["error"]["type"] == "invalid_prompt"
    assert error["details"]["server"] == SERVER
    assert world.fake.names() == ["upload_image", "queue_prompt"]


def test_a_partly_accepted_graph_is_withdrawn_and_rejected(world: World):
    """A 200 with node_errors (only some outputs valid) is withdrawn: not the avatar asked for."""
    node_errors = {"7": {"errors": [{"type": "required_input_missing"}], "class_type": "X"}}
    world.fake.accept_partly(node_errors)
    job = world.job()
    run = world.run(job)
    with pytest.raises(outcomes.PromptRejected) as rejected:
        run.run()
    assert rejected.value.node_errors == node_errors
    prompt_id = run.job.prompt_id
    assert world.fake.names() == ["upload_image", "queue_prompt", "delete_pending", "interrupt"]
    assert world.fake.calls_named("delete_pending")[0].args == {"prompt_ids": [prompt_id]}
    assert world.fake.pending == []


# -- cancels ---------------------------------------------------------------------------------


def test_cancel_while_waiting_deletes_then_interrupts_and_ends_cancelled(world: World):
    """A cancel of a waiting prompt: POST /queue delete, then /interrupt; the run is Cancelled."""
    job = world.job()
    run = world.run(job)
    running = Running(run)
    prompt_id = queued_prompt(world.fake)
    run.cancel()
    with pytest.raises(outcomes.Cancelled):
        running.outcome()
    names = world.fake.names()
    withdraw = names.index("delete_pending")
    assert names[withdraw : withdraw + 2] == ["delete_pending", "interrupt"]
    assert world.fake.calls_named("delete_pending")[0].args == {"prompt_ids": [prompt_id]}
    assert world.fake.calls_named("interrupt")[0].args == {"prompt_id": prompt_id}
    assert world.fake.queued == []  # removed from ComfyUI's queue, never run


def test_cancel_while_running_interrupts_its_own_prompt_and_ends_cancelled(world: World):
    """A cancel of the running prompt interrupts it by its prompt_id; the run is Cancelled."""
    job = world.job()
    run = world.run(job)
    running = Running(run)
    prompt_id = queued_prompt(world.fake)
    world.fake.begin(prompt_id)
    wait_for(lambda: world.record(job)["status"] == "running", message="the job running")
    run.cancel()
    with pytest.raises(outcomes.Cancelled):
        running.outcome()
    names = world.fake.names()
    withdraw = names.index("delete_pending")
    assert names[withdraw : withdraw + 2] == ["delete_pending", "interrupt"]
    assert world.fake.history(prompt_id).interrupted


def test_a_job_cancelled_before_its_prompt_was_queued_never_reaches_comfyui(world: World):
    """A run whose job was cancelled already ends Cancelled before uploading anything."""
    job = world.job(cancel_requested=True)
    with pytest.raises(outcomes.Cancelled):
        world.run(job).run()
    assert world.fake.names() == []


# -- the server forgets the prompt ------------------------------------------------------------


def test_a_prompt_forgotten_once_is_queued_again_and_succeeds(world: World):
    """ComfyUI restarting loses the prompt: it is queued again (attempt 2) and succeeds."""
    queued: list[str] = []

    def script(prompt_id: str) -> None:
        queued.append(prompt_id)
        if len(queued) == 1:
            world.fake.restart()
        else:
            world.fake.finish(prompt_id)

    world.fake.on_queue = script
    job = world.job()
    run = world.run(job)
    assert run.run().succeeded
    first, second = queued
    assert first != second
    assert world.fake.names() == [
        "upload_image",
        "queue_prompt",
        "queue_state",
        "history",  # absent: lost
        "upload_image",
        "queue_prompt",  # the second prompt is heard whole: no /history for it
    ]
    stored = world.records.get(job.id)
    assert (stored.prompt_id, stored.attempts) == (second, 2)
    assert "queued" in world.event_names(job)  # the ledger says it went back to a queue


def test_a_prompt_forgotten_twice_is_lost(world: World):
    """Lost again after being queued once more: 502 comfyui_lost_prompt."""
    world.fake.on_queue = lambda prompt_id: world.fake.restart()
    job = world.job()
    run = world.run(job)
    with pytest.raises(outcomes.PromptLost) as lost:
        run.run()
    assert world.fake.names().count("queue_prompt") == 2
    assert error_of(lost.value, run.job) == {
        "status": 502,
        "code": "comfyui_lost_prompt",
        "message": "ComfyUI lost the prompt (did the server restart?) and it was lost again "
        "after being queued once more",
        "details": {"promptId": run.job.prompt_id, "server": SERVER},
    }


# -- the deadline ----------------------------------------------------------------------------


def test_deadline_withdraws_the_prompt_and_is_504(world: World):
    """At the deadline the waiting prompt is removed from ComfyUI and the job is 504."""
    world.fake.on_queue = lambda prompt_id: world.clock.advance(JOB_TIMEOUT + 1)
    job = world.job()
    run = world.run(job)
    with pytest.raises(ServiceError) as late:
        run.run()
    prompt_id = run.job.prompt_id
    assert world.fake.names() == [
        "upload_image",
        "queue_prompt",
        "history",  # ended anyway? (a prompt that finished is still collected)
        "delete_pending",
        "interrupt",
    ]
    assert world.fake.queued == []
    assert error_of(late.value, run.job) == {
        "status": 504,
        "code": "job_timeout",
        "message": "the job did not finish within 30 s; its prompt was removed from ComfyUI",
        "details": {"jobId": job.id, "promptId": prompt_id, "status": "queued"},
    }


def test_deadline_collects_a_prompt_that_ended_anyway(world: World):
    """A prompt whose history is written by the deadline is collected, not withdrawn."""

    def script(prompt_id: str) -> None:
        world.fake.deafen()  # its events are not heard: only /history tells
        world.fake.finish(prompt_id)
        world.clock.advance(JOB_TIMEOUT + 1)

    world.fake.on_queue = script
    run = world.run(world.job())
    assert run.run().succeeded
    assert "delete_pending" not in world.fake.names()


def test_deadline_while_comfyui_is_unreachable_is_503(world: World):
    """A server unreachable at the deadline: 503 comfyui_unavailable, the withdraw tried."""
    job = world.job()
    run = world.run(job)
    running = Running(run)
    prompt_id = queued_prompt(world.fake)
    asked = len(world.fake.calls_named("queue_state"))
    world.fake.go_down()
    wait_for(
        lambda: len(world.fake.calls_named("queue_state")) > asked,
        message="the run asking ComfyUI while it is down",
    )
    world.clock.advance(JOB_TIMEOUT + 1)
    with pytest.raises(ServiceError) as late:
        running.outcome()
    assert error_of(late.value, run.job) == {
        "status": 503,
        "code": "comfyui_unavailable",
        "message": "ComfyUI became unreachable during the job and did not come back before its "
        "deadline",
        "details": {"jobId": job.id, "promptId": prompt_id},
    }
    assert world.fake.names()[-2:] == ["history", "delete_pending"]  # refused, like the rest


# -- stops -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stop", "ending"),
    [(ShutdownAsked(), outcomes.Shutdown), (FailoverAsked(), outcomes.FailedOver)],
    ids=["shutdown", "failover"],
)
def test_a_stop_ends_the_run_and_leaves_the_prompt(world: World, stop, ending):
    """Shutdown and failover end the run at once; the prompt stays queued on its server."""
    job = world.job()
    run = world.run(job)
    running = Running(run)
    prompt_id = queued_prompt(world.fake)
    run.stop(stop)
    with pytest.raises(ending):
        running.outcome()
    assert "delete_pending" not in world.fake.names()
    assert "interrupt" not in world.fake.names()
    assert world.fake.pending == [prompt_id]


# -- a resumed job ---------------------------------------------------------------------------


def test_a_resumed_job_whose_prompt_ended_asks_queue_then_history(world: World):
    """A job taken up with its prompt_id asks /queue and /history before anything else."""
    job = world.job(status="running", prompt_id="resumed-1", attempts=1)
    graph = {"7": {"class_type": "PreviewImage", "inputs": {}}}
    world.fake.adopt("resumed-1", graph)
    world.fake.finish("resumed-1")  # ended while the service was away
    assert world.run(job).run().succeeded
    assert world.fake.names()[:2] == ["queue_state", "history"]
    assert "upload_image" not in world.fake.names()
    assert "queue_prompt" not in world.fake.names()


def test_a_resumed_job_still_running_is_followed_to_its_end(world: World):
    """A job taken up while its prompt runs is seen running, then succeeds."""
    job = world.job(prompt_id="resumed-2", attempts=1)
    world.fake.adopt("resumed-2", {"7": {"class_type": "PreviewImage", "inputs": {}}})
    world.fake.begin("resumed-2")
    running = Running(world.run(job))
    wait_for(lambda: world.record(job)["status"] == "running", message="the job seen running")
    assert world.fake.names()[0] == "queue_state"
    world.fake.finish("resumed-2")
    assert running.outcome().succeeded


# -- the websocket ---------------------------------------------------------------------------


def test_a_socket_that_heard_nothing_is_reconnected(world: World):
    """No message since the prompt was queued (not even its broadcast): reconnect is asked."""
    world.fake.deafen()
    job = world.job()
    running = Running(world.run(job))
    prompt_id = queued_prompt(world.fake)
    [reconnect] = wait_for(lambda: world.fake.calls_named("reconnect"), message="a reconnect")
    assert reconnect.args["reason"] == (
        f"no message since prompt {prompt_id} was queued; ComfyUI no longer sends to this socket"
    )
    world.fake.finish(prompt_id)  # heard again after the reconnect
    assert running.outcome().succeeded
    assert len(world.fake.calls_named("reconnect")) == 1


def test_a_socket_that_heard_the_queue_broadcast_is_kept(world: World):
    """The broadcast of the prompt's queueing proves the socket alive: no reconnect."""
    job = world.job()
    running = Running(world.run(job))
    prompt_id = queued_prompt(world.fake)
    wait_for(lambda: world.record(job)["queuePosition"] == 1, message="the position asked")
    world.fake.finish(prompt_id)
    assert running.outcome().succeeded
    assert world.fake.calls_named("reconnect") == []
