"""Prometheus /metrics: requests, a finished job with its durations, queue, servers, uploads."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import wait_for
from tests.receivers import Receiver, Reply


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of an exposition, keyed by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_show_a_finished_job(service, standin, photo):
    """After one job: its final state and style, its durations, the requests and the upload."""
    name = service.upload(photo)
    bad = service.http.post("/upload-image", files={"image": ("x.png", b"", "image/png")})
    assert bad.status_code == 400
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    assert job["status"] == "succeeded"
    answer = service.http.get("/metrics")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    found = samples(answer.text)
    assert (
        found[
            ("avatar_jobs_finished_total", frozenset({("state", "succeeded"), ("style", "avatar")}))
        ]
        == 1
    )
    total = (
        "avatar_job_total_seconds_count",
        frozenset({("state", "succeeded"), ("style", "avatar")}),
    )
    assert found[total] == 1
    assert found[("avatar_job_execution_seconds_count", frozenset({("style", "avatar")}))] == 1
    assert found[("avatar_uploads_total", frozenset({("outcome", "stored")}))] == 1
    assert found[("avatar_uploads_total", frozenset({("outcome", "empty_file")}))] == 1
    generate = frozenset(
        {("route", "/generate-avatar-by-image"), ("method", "POST"), ("status", "200")}
    )
    assert found[("avatar_http_requests_total", generate)] == 1
    assert found[("avatar_queue_length", frozenset())] == 0
    server = frozenset({("server", standin.url)})
    assert found[("avatar_server_slots_in_use", server)] == 0
    assert found[("avatar_comfyui_up", server)] == 1


def test_running_job_holds_a_slot(service, standin, photo):
    """While ComfyUI holds a job, the queue and slot gauges count it; cancelling frees it."""
    name = service.upload(photo)
    standin.set_faults(hang=True)
    try:
        job = service.http.post(
            "/generate-avatar-by-image", json={"imageName": name, "async": True}
        ).json()
        service.wait_job(job["jobId"], until=lambda record: record["status"] == "running")
        found = samples(service.http.get("/metrics").text)
        assert found[("avatar_server_slots_in_use", frozenset({("server", standin.url)}))] == 1
        assert found[("avatar_jobs_in_flight", frozenset({("status", "running")}))] == 1
        service.http.delete(f"/jobs/{job['jobId']}")
        service.wait_job(job["jobId"])
    finally:
        standin.set_faults(hang=False)
    found = samples(service.http.get("/metrics").text)
    assert (
        found[
            ("avatar_jobs_finished_total", frozenset({("state", "cancelled"), ("style", "avatar")}))
        ]
        == 1
    )


def test_metrics_key(make_service):
    """With METRICS_KEY, /metrics needs it as a bearer token (API keys do not open it)."""
    service = make_service(metrics_key="metrics-secret-123456", api_keys="user-key-0123456789ab")
    refused = service.http.get(
        "/metrics", headers={"Authorization": "Bearer user-key-0123456789ab"}
    )
    assert refused.status_code == 401
    assert refused.json() == {
        "error": {
            "code": "unauthorized",
            "message": "send METRICS_KEY as Authorization: Bearer <key>",
        }
    }
    answer = service.http.get("/metrics", headers={"Authorization": "Bearer metrics-secret-123456"})
    assert answer.status_code == 200
    assert re.search(r"^avatar_queue_length 0\.0$", answer.text, re.MULTILINE)


def test_webhook_deliveries_are_counted(make_service, photo):
    """With webhooks on, deliveries are counted by state (here: one that keeps failing)."""
    service = make_service(
        webhook_url="http://127.0.0.1:9/hook", webhook_max_attempts=1, webhook_timeout=1
    )
    name = service.upload(photo)
    service.http.post("/generate-avatar-by-image", json={"imageName": name})
    failed = ("avatar_webhook_deliveries", frozenset({("state", "failed")}))
    wait_for(
        lambda: samples(service.http.get("/metrics").text).get(failed),
        timeout=10,
        message="the failed delivery counted",
        interval=0.05,
    )
    found = samples(service.http.get("/metrics").text)
    assert found[failed] == 1
    assert found[("avatar_webhook_deliveries", frozenset({("state", "delivered")}))] == 0


def test_forwarding_deliveries_are_counted(make_service, photo):
    """Avatars forwarded to UPLOAD_URL are counted by outcome: one delivered, one failed."""
    with Receiver() as receiver:
        receiver.script(Reply(201), Reply(500), Reply(500))
        service = make_service(
            upload_url=receiver.url("/upload"), upload_max_attempts=2, upload_backoff=0.01
        )
        for _ in range(2):
            name = service.upload(photo)
            job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
            assert job["status"] == "succeeded"
        # Forwarding runs in the outbox after the jobs succeeded: wait for both to settle.
        delivered = ("avatar_forward_deliveries_total", frozenset({("outcome", "delivered")}))
        failed = ("avatar_forward_deliveries_total", frozenset({("outcome", "failed")}))
        found = wait_for(
            lambda: (counted := samples(service.http.get("/metrics").text)).get(failed) and counted,
            timeout=10,
            message="the failed forwarding counted",
            interval=0.05,
        )
    assert found[delivered] == 1
    assert found[failed] == 1
