"""Long jobs: queue position, progress over SSE, cancellation, previews, signed webhooks."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from avatar_service.delivery.webhooks import verify
from comfyui_standin import StandIn
from tests.helpers import read_sse, start_job, wait_for, wait_for_preview
from tests.receivers import Receiver, Reply

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_sse_shows_ordered_progress_then_result(service, standin, photo):
    """An SSE client sees the state, running, every sampler step in order, then succeeded."""
    standin.set_faults(step_delay=0.03)
    name = service.upload(photo)
    job_id = start_job(service, name)
    events = read_sse(service, job_id)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "state"
    assert kinds[-1] == "succeeded"
    assert "running" in kinds
    steps = [
        event["data"]
        for event in events
        if event["event"] == "progress" and event["data"]["value"] is not None
    ]
    values = [step["value"] for step in steps]
    assert values == list(range(1, len(values) + 1))
    assert {step["nodeType"] for step in steps} == {"KSampler"}
    assert values[-1] == steps[-1]["max"] >= 1
    assert len(events[-1]["data"]["avatars"]) == 1
    ids = [int(event["id"].split(".")[1]) for event in events[1:]]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)


def test_sse_late_client_gets_current_state_and_resume(service, standin, photo):
    """A client connecting after the end gets the final state; Last-Event-ID replays the rest."""
    name = service.upload(photo)
    job_id = start_job(service, name)
    service.wait_job(job_id)
    [only] = read_sse(service, job_id)
    assert only["event"] == "state"
    assert only["data"]["status"] == "succeeded"
    epoch = only["id"].split(".")[0]
    replay = read_sse(service, job_id, headers={"Last-Event-ID": f"{epoch}.1"})
    assert replay[0]["id"] == f"{epoch}.2"
    assert replay[-1]["event"] == "succeeded"


def test_job_shows_queue_position_and_progress(service, standin, photo):
    """While queued a job carries its queue position; while running, sampler value/max."""
    standin.set_faults(step_delay=0.2)
    name = service.upload(photo)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running")  # it is ahead in the queue
    second = start_job(service, name)
    queued = service.wait_job(second, until=lambda r: r["queuePosition"] is not None)
    assert queued["status"] == "queued"
    assert queued["queuePosition"] == 1  # the next to start (the running job is not counted)
    running = service.wait_job(first, until=lambda r: (r["progress"] or {}).get("value"))
    assert running["status"] == "running"
    assert running["progress"]["nodeType"] == "KSampler"
    assert running["progress"]["max"] >= running["progress"]["value"] >= 1
    standin.set_faults(step_delay=0.0)
    assert service.wait_job(first)["status"] == "succeeded"
    assert service.wait_job(second)["status"] == "succeeded"


def cancel(service, job_id: str, way: str):
    """Cancel a job the documented way (POST .../cancel) or by its alias (DELETE)."""
    if way == "post":
        return service.http.post(f"/jobs/{job_id}/cancel")
    return service.http.delete(f"/jobs/{job_id}")


# The documented way to cancel, and its alias: the same behaviour and answers.
CANCEL_WAYS = pytest.mark.parametrize("way", ["post", "delete"])


@CANCEL_WAYS
def test_cancel_queued_job_removes_only_its_prompt(service, standin, photo, way):
    """Cancelling a queued job deletes its prompt from ComfyUI's queue; the running one goes on."""
    standin.set_faults(hang=True)
    name = service.upload(photo)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running")
    second = start_job(service, name)
    service.wait_job(second, until=lambda r: r["queuePosition"] is not None)
    second_prompt = standin.prompts[-1]["prompt_id"]

    answer = cancel(service, second, way)
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    assert {"delete": [second_prompt]} in standin.queue_requests
    assert standin.interrupts in ([], [{"prompt_id": second_prompt}])
    assert service.http.get(f"/jobs/{first}").json()["status"] == "running"
    standin.set_faults(hang=False)
    assert service.wait_job(first)["status"] == "succeeded"


@CANCEL_WAYS
def test_cancel_running_job_interrupts_only_it(service, standin, photo, way):
    """Cancelling a running job interrupts its prompt_id only; the job ends cancelled; 409 after
    (by either way)."""
    standin.set_faults(hang=True)
    name = service.upload(photo)
    job_id = start_job(service, name)
    service.wait_job(job_id, until=lambda r: r["status"] == "running")
    prompt_id = standin.prompts[-1]["prompt_id"]
    answer = cancel(service, job_id, way)
    assert answer.status_code == 200
    assert answer.json()["status"] == "cancelled"
    assert standin.interrupts == [{"prompt_id": prompt_id}]
    for again in (cancel(service, job_id, "post"), cancel(service, job_id, "delete")):
        assert again.status_code == 409
        assert again.json()["error"]["code"] == "job_already_ended"


def test_two_servers_cancel_one_other_completes(make_service, standin, tmp_path, photo):
    """Two jobs running on two ComfyUI servers: cancelling one leaves the other to complete."""
    other = StandIn(root=tmp_path / "comfyui-2").start()
    try:
        service = make_service(comfyui_url=f"{standin.url},{other.url}")
        wait_for(
            lambda: all(s["ready"] for s in service.http.get("/readyz").json()["servers"].values()),
            timeout=10,
            message="both servers ready",
        )
        for server in (standin, other):
            server.set_faults(step_delay=0.05)
        name = service.upload(photo)
        first = start_job(service, name)
        second = start_job(service, name)
        for job_id in (first, second):
            service.wait_job(job_id, until=lambda r: r["status"] == "running")
        assert len(standin.prompts) == len(other.prompts) == 1
        assert service.http.delete(f"/jobs/{first}").json()["status"] == "cancelled"
        record = service.wait_job(second)
        assert record["status"] == "succeeded"
        cancelled_server = standin if standin.interrupts else other
        assert len(cancelled_server.interrupts) == 1
        assert (standin if cancelled_server is other else other).interrupts == []
    finally:
        other.stop()


def test_preview_of_running_job(make_service, standin, tmp_path, photo):
    """With ComfyUI sending preview frames, the latest one is served at /jobs/<id>/preview."""
    previewing = StandIn(root=tmp_path / "comfyui-previews", previews=True).start()
    try:
        service = make_service(comfyui_url=previewing.url)
        previewing.set_faults(step_delay=0.1)
        name = service.upload(photo)
        job_id = start_job(service, name)
        assert service.http.get(f"/jobs/{job_id}/preview").status_code == 404
        service.wait_job(job_id, until=lambda r: (r["progress"] or {}).get("value"))

        wait_for_preview(service.http, job_id)
        service.stop()
    finally:
        previewing.stop()


def test_signed_webhook_to_real_receiver(make_service, standin, photo):
    """A finished job POSTs its record once to WEBHOOK_URL, signed per Standard Webhooks."""
    with Receiver() as receiver:
        service = make_service(webhook_url=receiver.url(), webhook_secret=SECRET)
        name = service.upload(photo)
        job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
        [delivery] = receiver.wait_for(1)
        assert verify(SECRET, delivery.headers, delivery.body)
        assert not verify(SECRET, delivery.headers, delivery.body + b" ")
        body = delivery.json()
        assert body["type"] == "job.succeeded"
        assert body["data"]["jobId"] == job["jobId"]
        assert body["data"]["avatars"] == job["avatars"]
        record = service.wait_job(
            job["jobId"], until=lambda r: r["webhooks"] and r["webhooks"][0]["state"] != "pending"
        )
        assert record["webhooks"][0]["state"] == "delivered"


def test_webhook_receiver_failing_twice_gets_one_success(make_service, standin, photo):
    """A receiver failing twice gets exactly one successful delivery, same webhook-id each time."""
    with Receiver() as receiver:
        receiver.script(Reply(status=500), Reply(status=502))
        service = make_service(
            webhook_url=receiver.url(), webhook_secret=SECRET, webhook_backoff=0.05
        )
        name = service.upload(photo)
        job_id = start_job(service, name)
        attempts = receiver.wait_for(3, timeout=15)
        assert len({attempt.headers["webhook-id"] for attempt in attempts}) == 1
        record = service.wait_job(
            job_id, until=lambda r: r["webhooks"] and r["webhooks"][0]["state"] == "delivered"
        )
        assert [a["status"] for a in record["webhooks"][0]["attempts"]] == [500, 502, 200]
        # Nothing to wait for when all is well: a fixed window on purpose, in which a wrong
        # extra delivery would show up.
        time.sleep(0.3)
        assert len(receiver.received) == 3


def test_callback_url_must_be_allowed(make_service, standin, photo):
    """A per-request callbackUrl is used only when allowed; WEBHOOK_URL still gets its copy."""
    with Receiver() as receiver:
        service = make_service(
            webhook_allowed_urls=receiver.url("/allowed/"), webhook_url=receiver.url("/all")
        )
        name = service.upload(photo)
        refused = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": name, "callbackUrl": receiver.url("/other")},
        )
        assert refused.status_code == 400
        assert "callbackUrl" in refused.json()["error"]["details"]["fields"]
        accepted = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": name, "callbackUrl": receiver.url("/allowed/job")},
        )
        assert accepted.status_code == 200
        deliveries = receiver.wait_for(2)
        assert sorted(d.path for d in deliveries) == ["/all", "/allowed/job"]


def test_pending_webhook_is_delivered_after_restart(make_service, standin, photo, tmp_path: Path):
    """A delivery pending when the service stops is delivered by the next start."""
    with Receiver() as receiver:
        port = receiver.port
        url = receiver.url()
    first = make_service(webhook_url=url, webhook_secret=SECRET, webhook_backoff=0.05)
    name = first.upload(photo)
    job = first.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    first.wait_job(job["jobId"], until=lambda r: r["webhooks"] and r["webhooks"][0]["attempts"])
    first.stop()
    with Receiver(port=port) as receiver:
        second = make_service(webhook_url=url, webhook_secret=SECRET, webhook_backoff=0.05)
        [delivery] = receiver.wait_for(1, timeout=15)
        assert verify(SECRET, delivery.headers, delivery.body)
        assert delivery.json()["data"]["jobId"] == job["jobId"]
        record = second.wait_job(
            job["jobId"], until=lambda r: r["webhooks"][0]["state"] == "delivered"
        )
        assert record["status"] == "succeeded"


@pytest.mark.parametrize("method", ["delete", "post"])
def test_cancel_unknown_job_is_404(service, method):
    """Cancelling an unknown job answers 404."""
    path = "/jobs/" + "f" * 32 + ("/cancel" if method == "post" else "")
    answer = getattr(service.http, method)(path)
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "job_not_found"


def test_sse_of_unknown_job_is_404(service):
    """The events stream of an unknown job answers a JSON 404, not an empty stream."""
    answer = service.http.get("/jobs/" + "a" * 32 + "/events")
    assert answer.status_code == 404
    assert isinstance(answer.json()["error"], dict)


def test_sse_resume_with_unknown_id_gets_state(service, standin, photo):
    """A Last-Event-ID this process never sent (e.g. from before a restart) gets the state."""
    name = service.upload(photo)
    job_id = start_job(service, name)
    service.wait_job(job_id)
    [only] = read_sse(service, job_id, headers={"Last-Event-ID": "0.999"})
    assert only["event"] == "state"
    assert only["data"]["status"] == "succeeded"


def test_cancel_during_comfyui_outage_is_sent_again(service, standin, photo, caplog):
    """A cancel that cannot reach ComfyUI is sent again once it is back; the job ends cancelled."""
    standin.set_faults(step_delay=0.1)
    name = service.upload(photo)
    job_id = start_job(service, name)
    service.wait_job(job_id, until=lambda r: r["status"] == "running")
    prompt_id = standin.prompts[-1]["prompt_id"]
    standin.set_faults(refuse_connections=True)
    with ThreadPoolExecutor(max_workers=1) as pool:
        cancelling = pool.submit(service.http.delete, f"/jobs/{job_id}")
        wait_for(  # the cancel met a ComfyUI that refuses connections
            lambda: any("could not withdraw prompt" in r.getMessage() for r in caplog.records),
            message="the refused withdraw",
        )
        standin.set_faults(refuse_connections=False)
        assert cancelling.result().status_code in {200, 202}
    record = service.wait_job(job_id)
    assert record["status"] == "cancelled"
    assert {"prompt_id": prompt_id} in standin.interrupts


def test_queued_job_learns_its_position_promptly(make_service, standin, photo):
    """A job queued behind a long one shows its position well before the poll interval."""
    service = make_service(comfyui_poll_interval=30)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running", timeout=10)
    second = start_job(service, name)
    record = service.wait_job(second, until=lambda r: r["queuePosition"] is not None, timeout=10)
    assert record["queuePosition"] == 1
    standin.set_faults(hang=False)
    assert service.wait_job(second)["status"] == "succeeded"


def test_many_queued_jobs_share_one_view_of_the_queue(make_service, standin, photo):
    """20 jobs waiting in ComfyUI's queue do not each poll it: GET /queue stays about 1/s."""
    service = make_service(comfyui_poll_interval=0.2)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    jobs = [start_job(service, name) for _ in range(20)]
    for job_id in jobs:  # one runs (whichever reached ComfyUI first), the others wait in line
        service.wait_job(
            job_id, until=lambda r: r["status"] == "running" or r["queuePosition"] is not None
        )
    before = standin.request_count("GET /queue")
    time.sleep(2.0)  # the scenario: 10 poll intervals of 20 waiting jobs pass, on purpose
    polls = standin.request_count("GET /queue") - before
    assert polls <= 5, f"{polls} GET /queue in 2 s"
    standin.set_faults(hang=False)
    for job_id in jobs:
        assert service.wait_job(job_id)["status"] == "succeeded"


def test_open_streams_leave_threads_for_health_and_cancel(make_service, standin, photo):
    """With THREADS=8 only 6 long requests (streams, sync waits) run; /healthz still answers."""
    service = make_service(threads=8)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    job_id = start_job(service, name)
    streams = [service.http.stream("GET", f"/jobs/{job_id}/events", timeout=30) for _ in range(6)]
    opened = [stream.__enter__() for stream in streams]
    try:
        assert all(response.status_code == 200 for response in opened)
        refused = service.http.get(f"/jobs/{job_id}/events", timeout=5)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "service_busy"
        sync = service.http.post("/generate-avatar-by-image", json={"imageName": name}, timeout=5)
        assert sync.status_code == 202  # no slot to wait in: answered at once
        assert service.http.get("/healthz", timeout=5).status_code == 200
        assert service.http.delete(f"/jobs/{job_id}", timeout=10).status_code == 200
    finally:
        for stream in streams:
            stream.__exit__(None, None, None)
    standin.set_faults(hang=False)
    again = service.http.stream("GET", f"/jobs/{job_id}/events", timeout=10)
    with again as response:
        assert response.status_code == 200


@pytest.mark.parametrize("suffix", ["²", "³", "1²", "¹0", "-1", "1e3", "99999999999999999999"])
def test_sse_resume_with_malformed_id_gets_state(service, standin, photo, suffix):
    """A Last-Event-ID whose number is not plain ASCII digits is ignored, never a 500."""
    name = service.upload(photo)
    job_id = start_job(service, name)
    service.wait_job(job_id)
    epoch = service.services.events.epoch
    # Header bytes are read as latin-1, where "²" (0xB2) is a Unicode digit that int() refuses.
    value = f"{epoch}.{suffix}".encode("latin-1")
    [only] = read_sse(service, job_id, headers={"Last-Event-ID": value})
    assert only["event"] == "state"
    assert only["data"]["status"] == "succeeded"
