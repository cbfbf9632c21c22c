"""Faults of a ComfyUI that still answers: every step bounded, every answer prompt.

A cancel of a job waiting in ComfyUI's queue, a slow ``/view`` past the job's deadline, and a
server that hangs mid-job, each against the stand-in over real sockets.
"""

from __future__ import annotations

from comfyui_standin import StandIn
from tests.helpers import start_job


def test_cancelling_a_job_waiting_in_comfyui_answers_at_once(make_service, standin, photo):
    """A job waiting behind another in ComfyUI's queue is cancelled within the cancel's own
    wait, even when the queue is polled rarely (the queue view from before the withdrawal is
    not believed)."""
    service = make_service(comfyui_poll_interval=30.0)
    standin.set_faults(hang=True)
    name = service.upload(photo)
    first = start_job(service, name)
    service.wait_job(first, until=lambda r: r["status"] == "running")
    second = start_job(service, name)
    service.wait_job(second, until=lambda r: r["queuePosition"] == 1)

    answer = service.http.post(f"/jobs/{second}/cancel")

    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "cancelled"
    standin.set_faults(hang=False)
    assert service.wait_job(first)["status"] == "succeeded"


def test_a_slow_view_never_holds_a_job_past_its_deadline(make_service, standin, photo):
    """/view answering slower than the job's deadline allows: the job ends at its deadline
    (502 avatar_fetch_failed) instead of waiting out the read timeout."""
    service = make_service(job_timeout=3.0, comfyui_read_timeout=20.0, sync_wait=0)
    standin.set_faults(view_delay=30.0)
    job_id = start_job(service, service.upload(photo))
    record = service.wait_job(job_id, timeout=12)  # the read timeout alone would be 20 s
    assert record["status"] == "failed"
    assert record["error"]["status"] == 502
    assert record["error"]["code"] == "avatar_fetch_failed"
    standin.set_faults(view_delay=0.0)


def test_a_hung_server_is_left_and_its_job_runs_on_another(make_service, standin, tmp_path, photo):
    """A server that answers HTTP but makes no progress (hang) is noticed after
    COMFYUI_STALL_TIMEOUT: the prompt is interrupted there, readiness says stalled, and the job
    succeeds on the other server."""
    other = StandIn(root=tmp_path / "comfyui-2").start()
    try:
        service = make_service(
            comfyui_url=f"{standin.url},{other.url}", comfyui_slots=1, comfyui_stall_timeout=1.0
        )
        standin.set_faults(hang=True)
        other.set_faults(hang=True)
        name = service.upload(photo)
        job_id = start_job(service, name)
        first = service.wait_job(job_id, until=lambda r: r["status"] == "running")
        hung = next(s for s in (standin, other) if s.prompts)
        healthy = other if hung is standin else standin
        healthy.set_faults(hang=False)
        record = service.wait_job(job_id, timeout=20)
        assert record["status"] == "succeeded", record
        assert first["jobId"] == record["jobId"] and len(record["avatars"]) == 1
        assert hung.interrupts == [{"prompt_id": hung.prompts[-1]["prompt_id"]}]
        assert len(healthy.prompts) == 1
        ready = service.http.get("/readyz").json()["servers"][hung.url]
        assert ready["stalled"] is True and ready["ready"] is False
        hung.set_faults(hang=False)
    finally:
        other.stop()
