"""The service's own queue: dispatch order, slots per server, backpressure, failover between
servers, one avatar per job, styles withheld from a server that cannot run them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from comfyui_standin import StandIn
from tests.conftest import LiveService, settings_for
from tests.helpers import start_job, wait_for


def server_of(service: LiveService, job_id: str) -> str | None:
    """The server a job's record names (the one that ran it, once it ended)."""
    return service.services.records.get(job_id).server


@pytest.fixture
def second_standin(tmp_path: Path) -> Iterator[StandIn]:
    """Another stand-in ComfyUI, for two-server setups."""
    server = StandIn(root=tmp_path / "comfyui2").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def two_servers(tmp_path: Path, standin: StandIn, second_standin: StandIn, make_service):
    """A factory of services in front of both stand-ins."""
    from avatar_service import create_app

    started: list[LiveService] = []

    def make(**overrides) -> LiveService:
        config = settings_for(tmp_path, f"{standin.url},{second_standin.url}")
        config.update({key.upper(): value for key, value in overrides.items()})
        live = LiveService(create_app(config)).start()
        started.append(live)
        for client in live.services.clients:
            wait_for(lambda c=client: c.connected, message="websockets up")
        return live

    yield make
    for live in reversed(started):
        live.stop()


def test_jobs_start_in_the_order_they_were_queued(make_service, standin, photo):
    """With one slot, waiting jobs reach ComfyUI one at a time, oldest first, with positions."""
    service = make_service(comfyui_slots=1)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    jobs = [start_job(service, name, seed=index) for index in range(4)]
    service.wait_job(jobs[0], until=lambda r: r["status"] == "running")
    # Positions are refreshed every monitor round (a quarter second): wait for the settled ones.
    records = [
        service.wait_job(job_id, until=lambda r, n=place: r["queuePosition"] == n)
        for place, job_id in enumerate(jobs[1:], start=1)
    ]
    assert all(record["status"] == "queued" for record in records)
    assert all(record["estimatedStartAt"] is None for record in records)  # no run timed yet
    assert len(standin.prompts) == 1  # nothing is pushed to a server before it has room
    standin.set_faults(hang=False)
    for job_id in jobs:
        assert service.wait_job(job_id)["status"] == "succeeded"
    seeds = [body["prompt"]["4"]["inputs"]["seed"] for body in standin.prompts]
    assert seeds == [0, 1, 2, 3]


def test_a_server_gets_at_most_its_slots(make_service, standin, photo):
    """Two slots: one prompt runs and one waits in ComfyUI's queue; the rest wait in the service."""
    service = make_service(comfyui_slots=2)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    jobs = [start_job(service, name) for _ in range(5)]
    wait_for(lambda: len(standin.prompts) == 2, message="two prompts sent")
    sent = [service.http.get(f"/jobs/{job_id}").json() for job_id in jobs[:2]]

    def one_runs_one_waits() -> bool:
        nonlocal sent
        sent = [service.http.get(f"/jobs/{job_id}").json() for job_id in jobs[:2]]
        return sorted((r["status"], r["queuePosition"] or 0) for r in sent) == [
            ("queued", 1),  # in ComfyUI's queue, next after the running prompt
            ("running", 0),
        ]

    wait_for(one_runs_one_waits, message="one prompt running, one waiting in ComfyUI")
    waiting = [service.http.get(f"/jobs/{job_id}").json() for job_id in jobs[2:]]
    assert [server_of(service, job_id) for job_id in jobs[2:]] == [None, None, None]
    assert all(record["status"] == "queued" for record in waiting)
    # A monitor round since one prompt started (the waiting jobs' places counted after the one
    # left in ComfyUI's queue): still no third prompt on the server.
    for place, job_id in enumerate(jobs[2:], start=2):
        service.wait_job(job_id, until=lambda r, n=place: r["queuePosition"] == n)
    assert len(standin.prompts) == 2
    standin.set_faults(hang=False)
    for job_id in jobs:
        assert service.wait_job(job_id)["status"] == "succeeded"
    assert len(standin.prompts) == 5


def test_full_queue_is_503_service_busy_with_retry_after(make_service, standin, photo):
    """Past MAX_QUEUED_JOBS waiting jobs, a new one is refused with 503 and Retry-After."""
    service = make_service(comfyui_slots=1, max_queued_jobs=2)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running")
    waiting = [start_job(service, name) for _ in range(2)]
    refused = service.http.post(
        "/generate-avatar-by-image", json={"imageName": name, "async": True}
    )
    assert refused.status_code == 503
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json() == {
        "error": {
            "code": "service_busy",
            "message": "2 jobs are waiting (MAX_QUEUED_JOBS); try again shortly",
            "details": {"maxQueuedJobs": 2},
        }
    }
    standin.set_faults(hang=False)
    for job_id in [first, *waiting]:
        assert service.wait_job(job_id)["status"] == "succeeded"


def test_cancelling_a_waiting_job_never_reaches_comfyui(make_service, standin, photo):
    """A job cancelled while in the service's queue ends cancelled; ComfyUI never sees it."""
    service = make_service(comfyui_slots=1)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running")
    second = start_job(service, name)
    answer = service.http.delete(f"/jobs/{second}")
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    standin.set_faults(hang=False)
    assert service.wait_job(first)["status"] == "succeeded"
    assert len(standin.prompts) == 1


def test_killed_server_jobs_finish_on_the_survivor(two_servers, standin, second_standin, photo):
    """Two servers, 16 jobs, one killed mid-run: every job succeeds on the surviving server."""
    service = two_servers(comfyui_down_grace=0.5, job_timeout=60)
    standin.set_faults(step_delay=0.004)
    second_standin.set_faults(step_delay=0.004)
    name = service.upload(photo)
    jobs = [start_job(service, name) for _ in range(16)]
    wait_for(lambda: len(standin.prompts) >= 2, message="the first server at work")
    standin.stop()  # killed: refused connections, websocket gone, queue lost
    records = [service.wait_job(job_id, timeout=60) for job_id in jobs]
    assert [record["status"] for record in records] == ["succeeded"] * 16
    ran_on = {job_id: server_of(service, job_id) for job_id in jobs}
    finished_on_first = {p["prompt_id"] for p in standin.prompts} & {
        service.services.records.get(job_id).prompt_id for job_id in jobs
    }
    assert len(finished_on_first) < 16
    assert all(
        server == second_standin.url
        for job_id, server in ran_on.items()
        if service.services.records.get(job_id).prompt_id not in finished_on_first
    )
    ready = service.http.get("/readyz").json()
    assert ready["servers"][standin.url]["down"] is True
    assert ready["servers"][standin.url]["downSince"]
    assert ready["servers"][second_standin.url]["down"] is False


def test_server_back_after_failover_drops_the_old_prompt(
    two_servers, standin, second_standin, photo
):
    """A job moved off an unreachable server runs once: when the server answers again, the
    prompt it still holds is removed there, and the job keeps the one avatar it got elsewhere."""
    service = two_servers(comfyui_down_grace=0.5, comfyui_slots=1)
    second_standin.set_faults(hang=True)  # keep the second server busy: the job goes first
    standin.set_faults(hang=True)
    name = service.upload(photo)
    blocker = start_job(service, name)
    job_id = start_job(service, name)
    wait_for(lambda: standin.prompts and second_standin.prompts, message="both servers busy")
    on_first = blocker if server_of(service, blocker) == standin.url else job_id
    other = job_id if on_first == blocker else blocker
    old_prompt = service.services.records.get(on_first).prompt_id
    standin.set_faults(refuse_connections=True)  # unreachable, but keeps its queue
    moved = service.wait_job(
        on_first, until=lambda r: r["status"] == "queued" and server_of(service, on_first) is None
    )
    assert moved["queuePosition"] in (None, 1, 2)  # back at the head of the service's queue
    second_standin.set_faults(hang=False)
    assert service.wait_job(other)["status"] == "succeeded"
    record = service.wait_job(on_first)
    assert record["status"] == "succeeded"
    assert server_of(service, on_first) == second_standin.url
    assert len(record["avatars"]) == 1
    standin.set_faults(refuse_connections=False)
    wait_for(lambda: {"prompt_id": old_prompt} in standin.interrupts, message="old prompt removed")
    assert any(old_prompt in (body.get("delete") or []) for body in standin.queue_requests)
    # Forgotten once the withdraw has returned, a moment after the interrupt reached ComfyUI.
    wait_for(
        lambda: service.services.records.abandoned_prompts(standin.url) == [],
        message="the abandoned prompt forgotten",
    )
    assert service.http.get(f"/jobs/{on_first}").json()["avatars"] == record["avatars"]


def test_restarted_server_with_an_empty_queue_loses_no_job(make_service, standin, photo):
    """ComfyUI restarting with two prompts of ours (running and waiting): both jobs succeed."""
    service = make_service(comfyui_slots=2)
    standin.set_faults(step_delay=0.1)
    name = service.upload(photo)
    jobs = [start_job(service, name) for _ in range(3)]
    wait_for(lambda: len(standin.prompts) == 2, message="two prompts sent")
    service.wait_job(jobs[0], until=lambda r: r["status"] == "running")
    standin.restart()
    standin.set_faults(step_delay=0.0)
    for job_id in jobs:
        assert service.wait_job(job_id)["status"] == "succeeded"


def test_style_a_server_lacks_runs_on_another(
    two_servers, standin, second_standin, photo, tmp_path
):
    """A server without the checkpoint rejects the style once; it is not given it again, and the
    job runs on the server that has it."""
    lacking = StandIn(root=tmp_path / "lacking", checkpoints=("other.safetensors",)).start()
    try:
        from avatar_service import create_app

        config = settings_for(tmp_path, f"{lacking.url},{second_standin.url}")
        second_standin.set_faults(refuse_connections=True)
        service = LiveService(create_app(config)).start()
        try:
            wait_for(lambda: service.services.clients[0].connected, message="first server up")
            name = service.upload(photo)
            job_id = start_job(service, name)
            wait_for(lambda: len(lacking.prompts) == 1, message="the lacking server tried")

            def withheld() -> list[str] | None:
                # The server has the prompt before the service has its refusal: read /readyz
                # until the refusal is taken in.
                servers = service.http.get("/readyz").json()["servers"]
                return servers[lacking.url].get("withheldStyles")

            assert wait_for(withheld, message="the style withheld") == ["avatar"]
            assert service.http.get(f"/jobs/{job_id}").json()["status"] == "queued"
            second_standin.set_faults(refuse_connections=False)
            assert service.wait_job(job_id)["status"] == "succeeded"
            again = start_job(service, name)
            assert service.wait_job(again)["status"] == "succeeded"
            assert len(lacking.prompts) == 1
            assert len(second_standin.prompts) == 2
        finally:
            service.stop()
    finally:
        lacking.stop()


def test_waiting_jobs_get_an_estimated_start(make_service, standin, photo):
    """Once a run time is known, jobs waiting in the service's queue carry an estimated start,
    in queue order, in the record and in their position events."""
    service = make_service(comfyui_slots=1)
    standin.set_faults(step_delay=0.01)
    name = service.upload(photo)
    assert service.wait_job(start_job(service, name))["status"] == "succeeded"  # one run timed
    standin.set_faults(hang=True)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running")
    waiting = [start_job(service, name) for _ in range(3)]
    records = [
        service.wait_job(job_id, until=lambda r: r["estimatedStartAt"] is not None)
        for job_id in waiting
    ]
    starts = [record["estimatedStartAt"] for record in records]
    assert starts == sorted(starts)
    assert [record["queuePosition"] for record in records] == [1, 2, 3]
    events = service.services.events.read(waiting[2], 0, 0)[0]
    positions = [event.data for event in events if event.event == "position"]
    assert positions[-1] == {"queuePosition": 3, "estimatedStartAt": starts[2]}
    standin.set_faults(hang=False, step_delay=0.0)
    for job_id in [first, *waiting]:
        assert service.wait_job(job_id)["status"] == "succeeded"


def test_positions_count_from_one_across_comfyui_and_the_service(make_service, standin, photo):
    """One running, one waiting in ComfyUI, two in the service's queue: positions 1, 2, 3."""
    service = make_service(comfyui_slots=2)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    jobs = [start_job(service, name, seed=index) for index in range(4)]

    def running_one() -> str | None:
        """Which of the first two runs: they go to the server together, and either may reach
        ComfyUI first."""
        status = {job_id: service.http.get(f"/jobs/{job_id}").json()["status"] for job_id in jobs}
        return next((job_id for job_id in jobs[:2] if status[job_id] == "running"), None)

    running = wait_for(running_one, message="one of the first two jobs running")
    in_comfyui = jobs[1] if running == jobs[0] else jobs[0]
    records = [
        service.wait_job(job_id, until=lambda r, n=place: r["queuePosition"] == n)
        for place, job_id in enumerate([in_comfyui, *jobs[2:]], start=1)
    ]
    assert [record["status"] for record in records] == ["queued"] * 3
    assert server_of(service, in_comfyui) is not None  # in ComfyUI's queue
    assert [server_of(service, job_id) for job_id in jobs[2:]] == [None, None]
    standin.set_faults(hang=False)
    for job_id in jobs:
        assert service.wait_job(job_id)["status"] == "succeeded"
