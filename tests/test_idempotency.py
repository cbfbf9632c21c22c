"""Idempotency-Key on generate: a retried request gets its job back and never starts another."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import wait_for


def generate(service, body: dict, key: str | None, **headers: str):
    if key is not None:
        headers["Idempotency-Key"] = key
    return service.http.post("/generate-avatar-by-image", json=body, headers=headers)


def test_same_key_same_body_returns_the_same_job(service, standin, photo):
    """A retry with the same key and body answers the same job; ComfyUI got one prompt."""
    name = service.upload(photo)
    body = {"imageName": name, "seed": 7, "async": True}
    first = generate(service, body, "retry-1")
    assert first.status_code == 202
    assert "idempotent-replayed" not in first.headers
    job_id = first.json()["jobId"]
    again = generate(service, {"async": True, "seed": 7, "imageName": name}, "retry-1")
    assert again.status_code in (200, 202)
    assert again.json()["jobId"] == job_id
    assert again.headers["idempotent-replayed"] == "true"
    service.wait_job(job_id)
    done = generate(service, body, "retry-1")
    assert done.status_code == 200
    assert done.json()["jobId"] == job_id
    assert done.json()["status"] == "succeeded"
    assert len(standin.prompts) == 1


def test_sync_retry_waits_for_the_first_job(service, standin, photo):
    """A synchronous retry (the first answer was lost) waits for the same job and gets 200."""
    name = service.upload(photo)
    body = {"imageName": name}
    first = generate(service, {**body, "async": True}, "sync-1")
    assert first.status_code == 202
    retry = generate(service, {**body, "async": True}, "sync-1")
    assert retry.json()["jobId"] == first.json()["jobId"]
    waited = generate(service, body, "sync-2")
    assert waited.status_code == 200
    again = generate(service, body, "sync-2")
    assert again.status_code == 200
    assert again.json()["jobId"] == waited.json()["jobId"]
    assert len(standin.prompts) == 2


def test_same_key_other_body_is_422(service, photo):
    """Reusing a key with a different body is 422 idempotency_key_reused; no job is made."""
    name = service.upload(photo)
    first = generate(service, {"imageName": name, "async": True}, "reuse-1")
    job_id = first.json()["jobId"]
    answer = generate(service, {"imageName": name, "async": True, "seed": 1}, "reuse-1")
    assert answer.status_code == 422
    assert answer.json() == {
        "error": {
            "code": "idempotency_key_reused",
            "message": "this Idempotency-Key was already used with a different body; "
            "use a new key for a new request",
            "details": {"idempotencyKey": "reuse-1", "jobId": job_id},
        }
    }
    service.wait_job(job_id)


def test_concurrent_requests_with_one_key_make_one_job(service, standin, photo):
    """Eight simultaneous requests with one key all answer the one job ComfyUI ran."""
    name = service.upload(photo)
    body = {"imageName": name, "async": True}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: generate(service, body, "burst-1"), range(8)))
    assert {answer.status_code for answer in answers} <= {200, 202}
    assert len({answer.json()["jobId"] for answer in answers}) == 1
    service.wait_job(answers[0].json()["jobId"])
    assert len(standin.prompts) == 1


def test_failed_submission_frees_the_key(service, photo):
    """When the job cannot be made (unknown photo), the key is not spent: a fixed retry works."""
    missing = generate(service, {"imageName": "nope.png", "async": True}, "fix-1")
    assert missing.status_code == 404
    name = service.upload(photo)
    # Another body under the same key is fine: the failed request bound the key to nothing.
    answer = generate(service, {"imageName": name, "async": True}, "fix-1")
    assert answer.status_code == 202
    service.wait_job(answer.json()["jobId"])


def test_keys_expire(make_service, standin, photo):
    """After IDEMPOTENCY_TTL the same key makes a new job."""
    service = make_service(idempotency_ttl=0.5)
    name = service.upload(photo)
    body = {"imageName": name, "async": True}
    first = generate(service, body, "ttl-1").json()["jobId"]
    service.wait_job(first)
    second = wait_for(
        lambda: (job_id := generate(service, body, "ttl-1").json()["jobId"]) != first and job_id,
        timeout=5,
        message="the key expired",
        interval=0.1,
    )
    service.wait_job(second)


def test_keys_belong_to_their_api_key(make_service, photo):
    """The same Idempotency-Key under two API keys makes two jobs (keys are per caller)."""
    key_a, key_b = "idem-key-a-0123456789", "idem-key-b-0123456789"
    service = make_service(api_keys=f"{key_a},{key_b}")
    service.http.headers["Authorization"] = f"Bearer {key_b}"
    body_b = {"imageName": service.upload(photo), "async": True}  # a photo is its key's own
    service.http.headers["Authorization"] = f"Bearer {key_a}"
    name = service.upload(photo)
    body = {"imageName": name, "async": True}
    first = generate(service, body, "shared")
    # Were keys shared, this would be the same key with another body (422), not a new job.
    second = generate(service, body_b, "shared", Authorization=f"Bearer {key_b}")
    assert first.status_code == second.status_code == 202
    assert first.json()["jobId"] != second.json()["jobId"]
    service.wait_job(first.json()["jobId"])


@pytest.mark.parametrize("key", ["", "x" * 256, "has space", "naïve"])
def test_malformed_key_is_400(service, key):
    """An empty, over-long or non-ASCII Idempotency-Key is 400 invalid_idempotency_key."""
    answer = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": "x.png"},
        headers={"Idempotency-Key": key.encode("utf-8")},
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "invalid_idempotency_key",
            "message": "Idempotency-Key must be 1 to 255 visible ASCII characters",
        }
    }
