"""JobEngine, Dispatcher and Solo built as build_services builds them, in front of FakeComfyUIs:
slots, server choice, failover, withheld styles, the sweeper, admission, cancel, wait, resume.

No sockets: the engine's threads (workers, monitor, slot threads) are real, and the tests wait
for conditions with a bound. The wall clock is a ManualClock: deadlines pass when a test says.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from avatar_service.comfyui.workflows import load_workflows
from avatar_service.errors import Conflict, ServiceUnavailable
from avatar_service.jobs.coordination import Solo
from avatar_service.jobs.dispatcher import Dispatcher
from avatar_service.jobs.engine import GenerateRequest, JobEngine
from avatar_service.jobs.events import JobEvents
from avatar_service.jobs.ledger import JobLedger
from avatar_service.jobs.prompt import RunSettings
from avatar_service.jobs.records import Job, JobRecords, LeaseLost
from avatar_service.photos.store import PhotoStore
from avatar_service.storage.avatars import AvatarStore
from tests.conftest import REPO_ROOT, make_photo
from tests.fake_comfyui import FakeComfyUI
from tests.helpers import ManualClock, wait_for

JOB_TIMEOUT = 30.0
GPU_1, GPU_2 = "http://gpu-1:8188", "http://gpu-2:8188"


@dataclass
class Engine:
    """The engine under test, its parts, and the fakes behind it."""

    engine: JobEngine
    dispatcher: Dispatcher
    records: JobRecords
    events: JobEvents
    fakes: dict[str, FakeComfyUI]
    clock: ManualClock
    image_name: str
    started: bool = False
    jobs: list[str] = field(default_factory=list)

    def start(self) -> int:
        """Connect the fakes (unless down) and start the engine; the jobs taken up."""
        for fake in self.fakes.values():
            fake.start()
        self.started = True
        return self.engine.start()

    def submit(self, **fields: Any) -> str:
        """Submit a job (avatar style, 64x64); its id."""
        request = GenerateRequest(
            image_name=self.image_name,
            gender="male",
            width=64,
            height=64,
            style="avatar",
            seed=len(self.jobs),
            **fields,
        )
        job = self.engine.submit(request, base_url="http://service")
        self.jobs.append(job.id)
        return job.id

    def record(self, job_id: str) -> dict[str, Any]:
        """The job's public record, read from the store."""
        return self.engine.get(job_id).to_dict()

    def wait_record(self, job_id: str, until: Callable[[dict[str, Any]], bool]) -> dict:
        """The job's record once ``until(record)`` holds (bounded)."""
        return wait_for(
            lambda: (lambda r: r if until(r) else None)(self.record(job_id)),
            message=f"job {job_id} to change",
        )

    def ended(self, job_id: str) -> dict[str, Any]:
        """The job's record once it has ended (bounded)."""
        return self.wait_record(job_id, lambda r: r["status"] in TERMINAL)

    def server_of(self, job_id: str) -> str | None:
        """The server the job's record names."""
        job = self.records.get(job_id)
        assert job is not None
        return job.server

    def prompt_of(self, job_id: str) -> str:
        """The job's prompt_id on its server, once it has one (bounded)."""
        return wait_for(
            lambda: (job := self.records.get(job_id)) is not None and job.prompt_id,
            message=f"a prompt for job {job_id}",
        )

    def waiting(self, job_id: str, *, job_timeout: float = JOB_TIMEOUT, **changes: Any) -> str:
        """A job stored straight into the service's queue (as another process would)."""
        now = self.clock()
        values: dict[str, Any] = {
            "id": uuid.uuid4().hex,
            "status": "queued",
            "style": "avatar",
            "image_name": self.image_name,
            "gender": "male",
            "width": 64,
            "height": 64,
            "seed": 1,
            "base_url": "http://service",
            "deadline": now + job_timeout,
            "created_at": now,
            "queue_order": now,
        }
        job = Job(**{**values, **changes})
        self.records.insert(job)
        self.dispatcher.notify()
        return job.id


TERMINAL = {"succeeded", "failed", "cancelled"}


class HeldStyles(Mapping[str, Any]):
    """The styles, whose lookup by a slot thread building a claimed job's run waits for
    ``go``: a test can act between the claim and the run's registration."""

    def __init__(self, styles: Mapping[str, Any]) -> None:
        self.styles = styles
        self.reached = threading.Event()
        self.go = threading.Event()

    def __getitem__(self, name: str) -> Any:
        return self.styles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.styles)

    def __len__(self) -> int:
        return len(self.styles)

    def get(self, name: str, default: Any = None) -> Any:
        """The style, once the test says go."""
        self.reached.set()
        assert self.go.wait(10), "the test never let the run be built"
        return self.styles.get(name, default)


@pytest.fixture
def make_engine(tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Build an engine in front of fakes, as build_services does; stopped after the test."""
    built: list[Engine] = []

    def make(
        servers: tuple[str, ...] = (GPU_1,),
        *,
        slots: int = 1,
        down_grace: float = 60.0,
        max_queued_jobs: int = 1024,
        max_active_jobs: int = 256,
        connect_wait: float = 2.0,
        stall_timeout: float = 0.0,
        styles: Callable[[Mapping[str, Any]], Mapping[str, Any]] = dict,
    ) -> Engine:
        folder = tmp_path / f"engine{len(built)}"
        clock = ManualClock()
        records = JobRecords(folder / "jobs.sqlite3")
        events = JobEvents()
        photos = PhotoStore(
            folder / "uploads", max_bytes=10_000_000, max_pixels=10_000_000, min_side=64
        )
        (folder / "uploads").mkdir()
        (folder / "avatars").mkdir()
        fakes = {url: FakeComfyUI(url) for url in servers}
        coordination = Solo(records)
        ledger = JobLedger(records=records, events=events, coordination=coordination, clock=clock)
        dispatcher = Dispatcher(
            records=records,
            ledger=ledger,
            clients=list(fakes.values()),  # type: ignore[arg-type]
            workflows=styles(load_workflows(REPO_ROOT / "workflows")),
            photos=photos,
            avatars=AvatarStore(folder / "avatars", strip_metadata=False),
            settings=RunSettings(
                job_timeout=JOB_TIMEOUT, poll_interval=0.05, stall_timeout=stall_timeout
            ),
            coordination=coordination,
            slots=slots,
            down_grace=down_grace,
            clock=clock,
        )
        for fake in fakes.values():
            # As Services.start wires it: a server connecting wakes the workers.
            fake.on_connect = lambda client: dispatcher.notify()
        engine = JobEngine(
            records=records,
            events=events,
            ledger=ledger,
            dispatcher=dispatcher,
            photos_exist=photos.require,
            job_timeout=JOB_TIMEOUT,
            public_base_url="http://service",
            connect_wait=connect_wait,
            max_active_jobs=max_active_jobs,
            max_queued_jobs=max_queued_jobs,
            clock=clock,
        )
        image_name = photos.save(make_photo((20, 160, 90))).image_name
        made = Engine(engine, dispatcher, records, events, fakes, clock, image_name)
        built.append(made)
        return made

    yield make
    for made in built:
        if made.started:
            made.engine.stop(timeout=5)
        made.records.close()


# -- slots and servers -----------------------------------------------------------------------


def test_a_job_waits_in_the_service_until_its_server_has_a_free_slot(make_engine):
    """slots=1: the second job stays in the service's queue (position 1) until the first ends."""
    built = make_engine(slots=1)
    built.start()
    gpu = built.fakes[GPU_1]
    first, second = built.submit(), built.submit()
    first_prompt = gpu.begin(built.prompt_of(first))
    waiting = built.wait_record(second, lambda r: r["queuePosition"] == 1)
    assert waiting["status"] == "queued"
    assert built.server_of(second) is None
    assert gpu.queued == [first_prompt]  # nothing pushed before the server has room
    assert built.dispatcher.snapshot()[GPU_1]["jobs"] == 1
    gpu.finish(first_prompt)
    assert built.ended(first)["status"] == "succeeded"
    gpu.finish(built.prompt_of(second))
    record = built.ended(second)
    assert record["status"] == "succeeded"
    assert [(a["width"], a["height"]) for a in record["avatars"]] == [(64, 64)]


def test_idle_servers_take_the_first_jobs(make_engine):
    """Least outstanding first: two jobs on two idle servers go one to each."""
    built = make_engine((GPU_1, GPU_2), slots=2)
    built.start()
    jobs = [built.submit(), built.submit()]
    for job_id in jobs:
        built.prompt_of(job_id)
    assert sorted(built.server_of(job_id) for job_id in jobs) == [GPU_1, GPU_2]
    assert [len(fake.queued) for fake in built.fakes.values()] == [1, 1]


def test_a_server_given_up_sends_its_jobs_to_the_head_and_loses_its_prompt(make_engine):
    """Down past down_grace: its job goes back ahead of the waiting one and runs on the other
    server; when it answers again its old prompt is withdrawn there."""
    built = make_engine((GPU_1, GPU_2), slots=1, down_grace=60.0)
    built.start()
    held = [built.submit(), built.submit()]
    prompts = {job_id: built.prompt_of(job_id) for job_id in held}
    for job_id, prompt_id in prompts.items():
        built.fakes[built.server_of(job_id)].begin(prompt_id)
    later = built.submit()
    built.wait_record(later, lambda r: r["queuePosition"] == 1)
    lost_job = next(job_id for job_id in held if built.server_of(job_id) == GPU_1)
    other_job = next(job_id for job_id in held if job_id != lost_job)
    old_prompt = prompts[lost_job]
    built.fakes[GPU_1].go_down(since=0.0)  # unreachable for far longer than down_grace
    back = built.wait_record(lost_job, lambda r: r["status"] == "queued" and r["queuePosition"])
    assert back["queuePosition"] == 1  # at the head, before the job that waited already
    assert built.record(later)["queuePosition"] == 2
    assert built.dispatcher.snapshot()[GPU_1]["down"] is True
    built.fakes[GPU_2].finish(prompts[other_job])
    new_prompt = built.prompt_of(lost_job)
    assert new_prompt != old_prompt and built.server_of(lost_job) == GPU_2
    built.fakes[GPU_2].finish(new_prompt)
    assert built.ended(lost_job)["status"] == "succeeded"
    gpu_1 = built.fakes[GPU_1]
    gpu_1.come_back()
    wait_for(lambda: built.records.abandoned_prompts(GPU_1) == [], message="the old prompt gone")
    assert gpu_1.calls_named("delete_pending")[-1].args == {"prompt_ids": [old_prompt]}
    assert gpu_1.calls_named("interrupt")[-1].args == {"prompt_id": old_prompt}
    assert (gpu_1.pending, gpu_1.running) == ([], None)
    assert gpu_1.history(old_prompt).interrupted  # stopped there, never collected
    assert len(built.record(lost_job)["avatars"]) == 1


def test_a_style_a_server_lacks_runs_on_the_other(make_engine):
    """The server without a node rejects the style once, is not given it again, and the job
    runs on the server that has the node."""
    built = make_engine((GPU_1, GPU_2), slots=1)
    lacking, able = built.fakes[GPU_1], built.fakes[GPU_2]
    lacking.lacks("ConditioningConcat")
    able.go_down()  # the lacking server gets the job first
    built.start()
    job_id = built.submit()
    wait_for(lambda: built.dispatcher.snapshot()[GPU_1]["withheldStyles"], message="withheld")
    assert built.dispatcher.snapshot()[GPU_1]["withheldStyles"] == ["avatar"]
    assert built.record(job_id)["status"] == "queued"
    able.on_queue = able.finish
    able.come_back()
    assert built.ended(job_id)["status"] == "succeeded"
    assert built.server_of(job_id) == GPU_2
    again = built.submit()
    assert built.ended(again)["status"] == "succeeded"
    assert len(lacking.calls_named("queue_prompt")) == 1


def test_a_style_no_server_can_run_fails_with_the_rejection(make_engine):
    """Every server lacks the node: the job fails with ComfyUI's rejection; a later job of the
    style is ended by the sweeper without reaching any server."""
    built = make_engine((GPU_1, GPU_2), slots=1)
    for fake in built.fakes.values():
        fake.lacks("ConditioningConcat")
    built.start()
    record = built.ended(built.submit())
    assert record["status"] == "failed"
    error = record["error"]
    assert (error["status"], error["code"]) == (502, "comfyui_rejected_prompt")
    assert error["message"] == (
        "ComfyUI rejected the workflow: Cannot execute because node ConditioningConcat does "
        "not exist."
    )
    assert error["details"]["error"]["type"] == "invalid_prompt"
    assert [len(fake.calls_named("queue_prompt")) for fake in built.fakes.values()] == [1, 1]
    later = built.ended(built.submit())
    assert (later["status"], later["error"]["code"]) == ("failed", "comfyui_rejected_prompt")
    assert [len(fake.calls_named("queue_prompt")) for fake in built.fakes.values()] == [1, 1]


# -- the sweeper -----------------------------------------------------------------------------


def test_the_sweeper_ends_a_waiting_job_at_its_deadline(make_engine):
    """A job still in the service's queue at its deadline fails 504: every server was busy."""
    built = make_engine(slots=1)
    built.start()
    busy = built.submit()
    built.fakes[GPU_1].begin(built.prompt_of(busy))
    late = built.waiting("late", job_timeout=5.0)
    built.wait_record(late, lambda r: r["queuePosition"] == 1)
    built.clock.advance(6.0)  # past the waiting job's deadline, not the busy one's
    record = built.ended(late)
    assert record["status"] == "failed"
    assert record["error"] == {
        "status": 504,
        "code": "job_timeout",
        "message": "the job did not start within 30 s: every ComfyUI server was busy",
        "details": {"jobId": late, "status": "queued"},
    }
    assert built.record(busy)["status"] == "running"  # its own deadline has not passed
    assert len(built.fakes[GPU_1].queued) == 1


def test_the_sweeper_ends_a_waiting_job_cancelled_elsewhere(make_engine):
    """A waiting job whose cancel was asked (by another process) ends cancelled, unsent."""
    built = make_engine(slots=1)
    built.start()
    built.prompt_of(built.submit())
    cancelled = built.waiting("cancelled", cancel_requested=True)
    record = built.ended(cancelled)
    assert record["status"] == "cancelled"
    assert len(built.fakes[GPU_1].queued) == 1


def test_a_job_claimed_as_the_engine_stops_is_left_for_the_next_start(make_engine):
    """A run registered after the stop began is stopped too: stop() leaves no job held."""
    built = make_engine(styles=HeldStyles)
    built.start()
    job_id = built.submit()
    held: HeldStyles = built.dispatcher.workflows  # type: ignore[assignment]
    assert held.reached.wait(10), "the job was never claimed"
    stopping = threading.Thread(target=built.engine.stop, kwargs={"timeout": 10})
    stopping.start()
    wait_for(built.dispatcher.stopping.is_set, message="the stop begun")
    held.go.set()
    stopping.join(15)
    built.started = False
    assert not stopping.is_alive()
    assert built.dispatcher.claimed() == []
    assert built.record(job_id)["status"] == "queued"  # taken up again at the next start


# -- admission -------------------------------------------------------------------------------


def test_submit_refuses_past_max_queued_jobs(make_engine):
    """Past MAX_QUEUED_JOBS waiting jobs a new one is 503 service_busy with Retry-After."""
    built = make_engine(slots=1, max_queued_jobs=2)
    built.start()
    built.prompt_of(built.submit())  # held by the server: not waiting
    built.submit()
    built.submit()
    with pytest.raises(ServiceUnavailable) as busy:
        built.submit()
    assert busy.value.status == 503
    assert busy.value.to_dict() == {
        "code": "service_busy",
        "message": "2 jobs are waiting (MAX_QUEUED_JOBS); try again shortly",
        "details": {"maxQueuedJobs": 2},
    }
    assert int(busy.value.headers["Retry-After"]) >= 1
    assert built.records.count_waiting() == 2


def test_submit_refuses_past_max_active_jobs(make_engine):
    """Past MAX_ACTIVE_JOBS unfinished jobs a new one is 503 service_busy too."""
    built = make_engine(slots=1, max_active_jobs=1)
    built.start()
    built.submit()
    with pytest.raises(ServiceUnavailable) as busy:
        built.submit()
    assert busy.value.to_dict() == {
        "code": "service_busy",
        "message": "1 jobs are in flight (MAX_ACTIVE_JOBS); try again shortly",
        "details": {"maxActiveJobs": 1},
    }


def test_submit_with_no_server_up_fails_the_job_at_once(make_engine):
    """No server connects within the wait: the job ends failed 503 naming each server."""
    built = make_engine(connect_wait=0.0)
    built.fakes[GPU_1].go_down()
    built.start()
    record = built.record(built.submit())
    assert record["status"] == "failed"
    assert record["error"] == {
        "status": 503,
        "code": "comfyui_unavailable",
        "message": "ComfyUI is not reachable; try again shortly",
        "details": {
            "servers": {GPU_1: "websocket connect failed: [Errno 111] Connection refused"},
            "jobId": record["jobId"],
        },
    }
    assert built.fakes[GPU_1].names() == []


# -- cancel and wait -------------------------------------------------------------------------


def test_cancel_a_queued_job_ends_it_at_once_unsent(make_engine):
    """A job cancelled in the service's queue ends cancelled; ComfyUI never sees it."""
    built = make_engine(slots=1)
    built.start()
    first_prompt = built.prompt_of(built.submit())
    second = built.submit()
    cancelled = built.engine.cancel(second).to_dict()
    assert cancelled["status"] == "cancelled"
    assert built.fakes[GPU_1].queued == [first_prompt]
    with pytest.raises(Conflict) as again:
        built.engine.cancel(second)
    assert again.value.to_dict() == {
        "code": "job_already_ended",
        "message": "the job has already ended (cancelled)",
        "details": {"jobId": second, "status": "cancelled"},
    }


def test_cancel_a_running_job_interrupts_its_prompt(make_engine):
    """A running job's cancel withdraws its prompt (delete, then interrupt) and ends it."""
    built = make_engine(slots=1)
    built.start()
    job_id = built.submit()
    gpu = built.fakes[GPU_1]
    prompt_id = gpu.begin(built.prompt_of(job_id))
    built.wait_record(job_id, lambda r: r["status"] == "running")
    record = built.engine.cancel(job_id, wait=10).to_dict()
    assert record["status"] == "cancelled"
    names = gpu.names()
    assert names[names.index("delete_pending") :][:2] == ["delete_pending", "interrupt"]
    assert gpu.calls_named("interrupt")[0].args == {"prompt_id": prompt_id}


def test_wait_returns_the_record_once_the_job_ends(make_engine):
    """wait blocks until the job ends and answers its final record."""
    built = make_engine()
    built.fakes[GPU_1].on_queue = built.fakes[GPU_1].finish
    built.start()
    job_id = built.submit()
    record = built.engine.wait(job_id, 10).to_dict()
    assert record["status"] == "succeeded"
    assert record["timings"]["totalMs"] >= 0


def test_wait_without_time_answers_the_record_as_it_is(make_engine):
    """A zero wait answers the current record of a job that has not ended."""
    built = make_engine()
    built.start()
    job_id = built.submit()
    assert built.engine.wait(job_id, 0).to_dict()["status"] == "queued"


# -- resume at start -------------------------------------------------------------------------


def test_start_takes_up_a_job_left_running_with_its_prompt(make_engine):
    """A job left running with its prompt_id is followed again at start: no second prompt."""
    built = make_engine()
    gpu = built.fakes[GPU_1]
    left = built.waiting(
        "left",
        status="running",
        server=GPU_1,
        prompt_id="left-behind",
        attempts=1,
        owner="engine-previous/" + GPU_1,
    )
    gpu.adopt("left-behind", {"7": {"class_type": "PreviewImage", "inputs": {}}})
    gpu.begin("left-behind")
    assert built.start() == 1
    built.wait_record(left, lambda r: r["status"] == "running")
    gpu.finish("left-behind")
    assert built.ended(left)["status"] == "succeeded"
    assert "queue_state" in gpu.names()
    assert "queue_prompt" not in gpu.names()


def test_start_requeues_a_claimed_job_never_queued_and_fails_one_of_a_removed_server(make_engine):
    """At start a job claimed but not queued goes back to the queue (and runs); one whose
    server is no longer configured fails comfyui_server_removed."""
    built = make_engine()
    gpu = built.fakes[GPU_1]
    gpu.on_queue = gpu.finish
    claimed = built.waiting("claimed", server=GPU_1, owner="engine-previous/" + GPU_1)
    removed = built.waiting(
        "removed", status="running", server="http://gone:8188", prompt_id="p-gone", attempts=1
    )
    assert built.start() == 1
    assert built.ended(claimed)["status"] == "succeeded"
    record = built.ended(removed)
    assert record["error"] == {
        "status": 502,
        "code": "comfyui_server_removed",
        "message": "the job ran on http://gone:8188, which is no longer configured",
        "details": {"server": "http://gone:8188", "jobId": removed},
    }


# -- a server that stops making progress ------------------------------------------------------


def test_a_prompt_that_makes_no_progress_runs_on_another_server(make_engine):
    """A prompt ComfyUI says nothing about for stall_timeout is interrupted there, that server
    gets no jobs for a while (readiness says stalled), and the job succeeds on the other."""
    built = make_engine((GPU_1, GPU_2), slots=1, stall_timeout=0.3)
    built.start()
    job_id = built.submit()
    first_prompt = built.prompt_of(job_id)
    stalled_url = built.server_of(job_id)
    other_url = GPU_2 if stalled_url == GPU_1 else GPU_1
    built.fakes[stalled_url].begin(first_prompt)  # started, then silence
    second_prompt = wait_for(
        lambda: (p := built.prompt_of(job_id)) != first_prompt and p, message="another prompt"
    )
    assert built.server_of(job_id) == other_url
    stalled = built.fakes[stalled_url]
    assert stalled.calls_named("interrupt")[-1].args == {"prompt_id": first_prompt}
    assert built.dispatcher.snapshot()[stalled_url]["stalled"] is True
    assert built.dispatcher.reasons()[stalled_url] == (
        "a prompt made no progress there (stalled); no jobs for a while"
    )
    built.fakes[other_url].finish(second_prompt)
    assert built.ended(job_id)["status"] == "succeeded"
    assert built.records.get(job_id).stalls == 1
    # The withdrawal reached ComfyUI: nothing is left to remove there later (no second interrupt).
    assert built.records.abandoned_prompts(stalled_url) == []


def test_a_job_that_stalls_with_nowhere_else_to_go_fails_clearly(make_engine):
    """With no other server the stalled job fails comfyui_stalled, naming server and silence."""
    built = make_engine((GPU_1,), slots=1, stall_timeout=0.3)
    built.start()
    job_id = built.submit()
    prompt_id = built.prompt_of(job_id)
    built.fakes[GPU_1].begin(prompt_id)
    record = built.ended(job_id)
    assert record["status"] == "failed"
    error = record["error"]
    assert error["status"] == 502 and error["code"] == "comfyui_stalled"
    assert error["details"]["server"] == GPU_1 and error["details"]["stalls"] == 1
    assert error["details"]["promptId"] == prompt_id
    assert error["details"]["silentSeconds"] >= 0
    assert built.fakes[GPU_1].calls_named("interrupt")[-1].args == {"prompt_id": prompt_id}


def test_a_job_held_past_its_deadline_by_another_process_is_ended(make_engine):
    """JOB_TIMEOUT ends any job, whoever holds it: one another process holds (its run lost)
    past its deadline is taken from it, its prompt withdrawn, and it fails 504."""
    built = make_engine((GPU_1,), slots=1)
    built.start()
    job_id = built.waiting(
        "orphan",
        status="running",
        server=GPU_1,
        prompt_id="lost-prompt",
        owner=f"engine-elsewhere/{GPU_1}",
        lease_expires=built.clock() + 3600,
    )
    built.clock.advance(JOB_TIMEOUT + 31)  # past the deadline and the sweeper's grace
    record = built.ended(job_id)
    assert record["status"] == "failed"
    assert record["error"]["code"] == "job_timeout" and record["error"]["status"] == 504
    gpu = built.fakes[GPU_1]
    assert gpu.calls_named("interrupt")[-1].args == {"prompt_id": "lost-prompt"}
    with pytest.raises(LeaseLost):  # the former holder's own end of it is refused
        built.records.update(
            built.records.get(job_id), expect_owner=f"engine-elsewhere/{GPU_1}", status="failed"
        )
