"""ComfyUI misbehaving: down, killed, disconnected, failing, rejecting, hanging, slow."""

from __future__ import annotations

import time

import pytest
import websocket

from tests.conftest import LiveService
from tests.helpers import wait_for


def generate(service: LiveService, name: str, **extra):
    return service.http.post("/generate-avatar-by-image", json={"imageName": name, **extra})


def stop_mid_job(
    service: LiveService, standin, photo: bytes, *, step_delay: float, until=None
) -> str:
    """Start an async job on a slowed stand-in, stop the service while it runs; its job id."""
    standin.set_faults(step_delay=step_delay)
    name = service.upload(photo)
    job_id = generate(service, name, **{"async": True}).json()["jobId"]
    service.wait_job(job_id, until=until or (lambda record: record["status"] == "running"))
    service.stop()
    return job_id


def test_comfyui_down_answers_503_with_retry_after(make_service, standin, photo):
    """ComfyUI refusing connections: 503 comfyui_unavailable with Retry-After; job failed."""
    standin.set_faults(refuse_connections=True)
    service = make_service()
    name = service.upload(photo)
    answer = generate(service, name)
    assert answer.status_code == 503
    assert int(answer.headers["retry-after"]) > 0
    error = answer.json()["error"]
    assert error["code"] == "comfyui_unavailable"
    job = service.http.get(f"/jobs/{error['details']['jobId']}").json()
    assert job["status"] == "failed"
    ready = service.http.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["servers"][standin.url]["ready"] is False


def test_comfyui_coming_up_after_start_is_used(make_service, standin, photo):
    """A service started while ComfyUI is down works once ComfyUI comes up."""
    standin.set_faults(refuse_connections=True)
    service = make_service()
    name = service.upload(photo)
    standin.set_faults(refuse_connections=False)
    wait_for(lambda: service.http.get("/readyz").status_code == 200, message="readiness")
    assert generate(service, name).status_code == 200


def test_execution_error_is_502_with_node(service, standin, photo):
    """A node failing in ComfyUI: 502 comfyui_execution_error naming the node id and type."""
    standin.set_faults(fail_at_node="KSampler")
    name = service.upload(photo)
    answer = generate(service, name)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "comfyui_execution_error"
    assert error["details"]["nodeId"] == "4"
    assert error["details"]["nodeType"] == "KSampler"
    assert error["details"]["exceptionMessage"]
    job = service.http.get(f"/jobs/{error['details']['jobId']}").json()
    assert job["status"] == "failed"
    assert job["error"]["code"] == "comfyui_execution_error"


def test_rejected_graph_is_502_with_node_errors(service, standin, photo):
    """ComfyUI rejecting the graph: 502 comfyui_rejected_prompt carrying its node_errors."""
    standin.set_faults(reject_prompts=True)
    name = service.upload(photo)
    answer = generate(service, name)
    assert answer.status_code == 502
    error = answer.json()["error"]
    assert error["code"] == "comfyui_rejected_prompt"
    assert error["details"]["node_errors"]
    assert error["details"]["error"]["type"]


def test_hang_past_deadline_is_504_and_prompt_removed(make_service, standin, photo):
    """A prompt hanging past JOB_TIMEOUT: 504, and the service interrupts that prompt."""
    service = make_service(job_timeout=1.5)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    answer = generate(service, name)
    assert answer.status_code == 504
    error = answer.json()["error"]
    assert error["code"] == "job_timeout"
    prompt_id = error["details"]["promptId"]
    assert {"prompt_id": prompt_id} in standin.interrupts
    assert any(prompt_id in (body.get("delete") or []) for body in standin.queue_requests)
    standin.wait_idle(timeout=5)


def test_queued_prompt_past_deadline_is_deleted_from_queue(make_service, standin, photo):
    """A job still queued at its deadline is removed from ComfyUI's queue."""
    service = make_service(job_timeout=1.5)
    name = service.upload(photo)
    standin.set_faults(hang=True)
    blocker = generate(service, name, **{"async": True}).json()
    wait_for(lambda: service.http.get(f"/jobs/{blocker['jobId']}").json()["status"] == "running")
    second = generate(service, name)
    assert second.status_code == 504
    prompt_id = second.json()["error"]["details"]["promptId"]
    assert any(prompt_id in (body.get("delete") or []) for body in standin.queue_requests)
    assert all(item[1] != prompt_id for item in standin.queue_snapshot()["queue_pending"])


def test_websocket_dropped_mid_job_still_completes(make_service, standin, photo):
    """Every websocket dropped mid-run: the service reconnects, reconciles, and succeeds."""
    service = make_service()
    standin.set_faults(step_delay=0.05, drop_websockets=True)
    name = service.upload(photo)
    answer = generate(service, name)
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "succeeded"


def test_comfyui_restarted_mid_job_requeues_once(make_service, standin, photo):
    """ComfyUI restarting mid-job (queue and history forgotten): the prompt is queued again."""
    service = make_service()
    standin.set_faults(step_delay=0.1)
    name = service.upload(photo)
    job = generate(service, name, **{"async": True}).json()
    service.wait_job(job["jobId"], until=lambda record: record["status"] == "running")
    standin.restart()
    standin.set_faults(step_delay=0.0)
    record = service.wait_job(job["jobId"])
    assert record["status"] == "succeeded"
    assert len(standin.prompts) == 2
    first, second = (body["prompt_id"] for body in standin.prompts)
    assert first != second


def test_comfyui_restarted_twice_fails_clearly(make_service, standin, photo):
    """A prompt lost twice ends failed with comfyui_lost_prompt, not waiting forever."""
    service = make_service()
    standin.set_faults(step_delay=0.1)
    name = service.upload(photo)
    job = generate(service, name, **{"async": True}).json()
    for expected_prompts in (1, 2):
        wait_for(lambda n=expected_prompts: len(standin.prompts) == n, message="prompt queued")
        service.wait_job(job["jobId"], until=lambda record: record["status"] == "running")
        standin.restart()
    record = service.wait_job(job["jobId"])
    assert record["status"] == "failed"
    assert record["error"]["code"] == "comfyui_lost_prompt"
    assert record["error"]["status"] == 502


def test_comfyui_stopped_mid_job_fails_at_deadline(make_service, standin, photo):
    """ComfyUI gone for good mid-job: the job ends at its deadline with 503, not never."""
    service = make_service(job_timeout=2.0)
    standin.set_faults(step_delay=0.2)
    name = service.upload(photo)
    job = generate(service, name, **{"async": True}).json()
    service.wait_job(job["jobId"], until=lambda record: record["status"] == "running")
    standin.stop()
    record = service.wait_job(job["jobId"], timeout=15)
    assert record["status"] == "failed"
    assert record["error"]["code"] == "comfyui_unavailable"


@pytest.mark.parametrize("fault", [{"view_status": 500}, {"view_delay": 8.0}])
def test_view_failing_until_deadline_is_502_and_logged(make_service, standin, photo, fault, caplog):
    """/view failing or too slow until the job's deadline: 502 avatar_fetch_failed, logged."""
    service = make_service(comfyui_read_timeout=0.5, job_timeout=3.0)
    standin.set_faults(**fault)
    name = service.upload(photo)
    answer = generate(service, name)
    assert answer.status_code == 502
    assert answer.json()["error"]["code"] == "avatar_fetch_failed"
    assert any("fetching" in record.getMessage() for record in caplog.records)
    assert standin.request_count("GET /view") >= 2  # asked again before giving up


@pytest.mark.parametrize("fault", [{"view_status": 500}, {"view_status": 503}, {"view_delay": 8.0}])
def test_view_blip_does_not_lose_the_render(make_service, standin, photo, fault):
    """/view failing once (5xx or slower than the read timeout) is retried: the job succeeds."""
    service = make_service(comfyui_read_timeout=0.5)
    standin.set_faults(**fault)
    name = service.upload(photo)
    job_id = generate(service, name, **{"async": True}).json()["jobId"]
    wait_for(lambda: standin.request_count("GET /view") >= 1, message="a first /view")
    standin.set_faults(view_status=None, view_delay=0.0)
    record = service.wait_job(job_id, timeout=20)
    assert record["status"] == "succeeded", record["error"]
    assert len(record["avatars"]) == 1
    assert service.http.get(f"/avatars/{record['avatars'][0]['fileName']}").status_code == 200
    assert len(standin.prompts) == 1  # fetched again, never generated again


def test_service_restart_reconciles_job_in_flight(make_service, standin, photo):
    """A job in flight when the service stops is taken up by the next start and succeeds."""
    job_id = stop_mid_job(make_service(), standin, photo, step_delay=0.1)
    standin.set_faults(step_delay=0.0)
    second = make_service()
    record = second.wait_job(job_id)
    assert record["status"] == "succeeded"
    assert len(standin.prompts) == 1
    # (the first service's port is gone: fetch by path from the second one)
    assert second.http.get(f"/avatars/{record['avatars'][0]['fileName']}").status_code == 200


def test_service_restart_after_comfyui_finished(make_service, standin, photo):
    """A job whose prompt finished while the service was down is completed from history."""
    job_id = stop_mid_job(make_service(), standin, photo, step_delay=0.05)
    standin.set_faults(step_delay=0.0)
    standin.wait_idle(timeout=10)
    second = make_service()
    record = second.wait_job(job_id)
    assert record["status"] == "succeeded"
    assert len(standin.prompts) == 1


def test_too_many_jobs_in_flight_is_503_busy(make_service, standin, photo):
    """Past MAX_ACTIVE_JOBS a new job is refused with 503 service_busy, not queued without end."""
    service = make_service(max_active_jobs=1)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    first = generate(service, name, **{"async": True})
    assert first.status_code == 202
    refused = generate(service, name, **{"async": True})
    assert refused.status_code == 503
    assert refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "service_busy"
    standin.set_faults(hang=False)
    assert service.wait_job(first.json()["jobId"])["status"] == "succeeded"


def test_orphaned_websocket_is_reconnected(service, standin, photo, caplog):
    """A stale socket with the service's clientId closing late orphans the service's socket
    (ComfyUI then sends it nothing); the service notices and reconnects, and events flow again."""
    client = service.services.clients[0]
    wait_for(lambda: client.connected, message="websocket up")
    stale = websocket.create_connection(
        f"{standin.url.replace('http', 'ws')}/ws?clientId={client.client_id}"
    )
    stale.close()  # ComfyUI now forgets the clientId: the service's own socket is orphaned
    standin.set_faults(step_delay=0.05)
    name = service.upload(photo)
    job = generate(service, name, **{"async": True}).json()
    record = service.wait_job(job["jobId"], until=lambda r: (r["progress"] or {}).get("value"))
    assert record["status"] == "running"
    assert any("reconnecting the websocket" in r.getMessage() for r in caplog.records)
    standin.set_faults(step_delay=0.0)
    assert service.wait_job(job["jobId"])["status"] == "succeeded"


def test_second_service_on_the_same_database_is_refused(make_service, service_config):
    """Two service processes on one INSTANCE_PATH would drive the same jobs: the second stops."""
    from avatar_service import create_app
    from avatar_service.config import ConfigError

    make_service()
    second = create_app(service_config).extensions["avatar_service"]
    try:
        with pytest.raises(ConfigError, match="another avatar service process"):
            second.start()
    finally:
        second.close()


def test_resumed_job_keeps_live_progress(make_service, standin, photo):
    """After a service restart the same clientId is used, so a resumed job still gets events."""
    first = make_service()
    job_id = stop_mid_job(
        first, standin, photo, step_delay=0.05, until=lambda r: (r["progress"] or {}).get("value")
    )
    second = make_service()
    assert second.services.clients[0].client_id == first.services.clients[0].client_id
    at_restart = second.http.get(f"/jobs/{job_id}").json()["progress"]["value"]
    moved = second.wait_job(
        job_id,
        until=lambda r: (r["progress"] or {}).get("value", 0) > at_restart + 5,
        timeout=15,
    )
    assert moved["status"] == "running"
    standin.set_faults(step_delay=0.0)
    assert second.wait_job(job_id)["status"] == "succeeded"


def test_job_finished_while_service_was_down_past_its_deadline(make_service, standin, photo):
    """A job ComfyUI finished while the service was stopped is collected, not timed out."""
    job_id = stop_mid_job(make_service(job_timeout=2.0), standin, photo, step_delay=0.05)
    standin.set_faults(step_delay=0.0)
    standin.wait_idle(timeout=10)
    time.sleep(2.5)  # the scenario: the job's deadline passes while the service is down
    second = make_service(job_timeout=2.0)
    record = second.wait_job(job_id)
    assert record["status"] == "succeeded", record["error"]
    assert len(standin.prompts) == 1


def test_websocket_reconnects_as_soon_as_comfyui_answers_again(make_service, standin):
    """After an outage longer than the reconnect backoff, readiness returns with ComfyUI."""
    service = make_service(comfyui_reconnect_max=30)
    client = service.services.clients[0]
    wait_for(lambda: client.connected, message="websocket up")
    standin.set_faults(refuse_connections=True)
    wait_for(lambda: not client.connected, message="websocket down")
    time.sleep(4.0)  # the scenario: the outage lasts until the reconnect backoff is 4 s long
    standin.set_faults(refuse_connections=False)
    wait_for(lambda: service.http.get("/readyz").status_code == 200, timeout=1.5, message="ready")
