"""Idempotency-Key compares what a request asks for, not its bytes; a replay is answered with
its job even when the generate rate limit is spent."""

from __future__ import annotations

import uuid

import pytest

from avatar_service.http.idempotency import request_fingerprint
from avatar_service.jobs import GenerateRequest


def generate(service, body: dict, key: str, **headers: str):
    """POST a generate with an Idempotency-Key."""
    return service.http.post(
        "/generate-avatar-by-image", json=body, headers={"Idempotency-Key": key, **headers}
    )


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param({"width": 64.0, "height": 64.0}, id="floats-for-integers"),
        pytest.param({"width": 64, "height": 64, "seed": 7.0}, id="float-seed"),
        pytest.param({"width": 64, "height": 64, "gender": " Female "}, id="gender-spelling"),
        pytest.param({"width": 64, "height": 64, "style": "avatar"}, id="default-style-named"),
        pytest.param(
            {"width": 64, "height": 64, "crop": None, "callbackUrl": None},
            id="nulls-for-omitted-fields",
        ),
    ],
)
def test_equivalent_bodies_are_the_same_request(service, standin, photo, variant):
    """A retry whose body differs only in spelling (64.0 for 64, defaults named) is a replay."""
    name = service.upload(photo)
    base = {"imageName": name, "width": 64, "height": 64, "seed": 7, "gender": "female"}
    key = f"same-{uuid.uuid4().hex}"
    first = generate(service, {**base, "async": True}, key)
    assert first.status_code == 202, first.text
    again = generate(service, {**base, **variant, "async": True}, key)
    assert again.status_code in (200, 202), again.text
    assert again.json()["jobId"] == first.json()["jobId"]
    assert again.headers["idempotent-replayed"] == "true"
    service.wait_job(first.json()["jobId"])
    assert len(standin.prompts) == 1


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"seed": 8}, id="other-seed"),
        pytest.param({"width": 72}, id="other-width"),
        pytest.param({"async": False}, id="sync-instead-of-async"),
        pytest.param({"gender": "male"}, id="other-gender"),
    ],
)
def test_a_different_request_under_the_key_is_still_422(service, photo, change):
    """A body that asks for something else under a used key is 422 idempotency_key_reused."""
    name = service.upload(photo)
    body = {"imageName": name, "width": 64, "height": 64, "seed": 7, "async": True}
    key = f"other-{uuid.uuid4().hex}"
    first = generate(service, body, key)
    job_id = first.json()["jobId"]
    answer = generate(service, {**body, **change}, key)
    assert answer.status_code == 422
    assert answer.json() == {
        "error": {
            "code": "idempotency_key_reused",
            "message": "this Idempotency-Key was already used with a different body; "
            "use a new key for a new request",
            "details": {"idempotencyKey": key, "jobId": job_id},
        }
    }
    service.wait_job(job_id)


def test_a_replay_is_answered_when_the_rate_limit_is_spent(make_service, photo):
    """Once the generate budget is spent, a replay still gets its job; a new request gets 429."""
    service = make_service(rate_limit_generate="1/minute")
    name = service.upload(photo)
    body = {"imageName": name, "async": True}
    key = f"spent-{uuid.uuid4().hex}"
    first = generate(service, body, key)
    assert first.status_code == 202
    assert first.headers["x-ratelimit-remaining"] == "0"
    for _ in range(2):
        again = generate(service, body, key)
        assert again.status_code in (200, 202), again.text
        assert again.json()["jobId"] == first.json()["jobId"]
        assert again.headers["idempotent-replayed"] == "true"
        assert again.headers["x-ratelimit-remaining"] == "0"
    new = service.http.post("/generate-avatar-by-image", json=body)
    assert new.status_code == 429
    assert new.json()["error"]["code"] == "rate_limited"
    unknown = generate(service, body, f"fresh-{uuid.uuid4().hex}")
    assert unknown.status_code == 429  # a key that names no job is a new request
    service.wait_job(first.json()["jobId"])


def test_a_replay_under_another_api_key_is_not_free(make_service, photo):
    """A key names a job only for the caller that made it: another caller's is a new request."""
    key_a, key_b = "spent-key-a-0123456789", "spent-key-b-0123456789"
    service = make_service(api_keys=f"{key_a},{key_b}", rate_limit_generate="1/minute")
    auth_a, auth_b = {"Authorization": f"Bearer {key_a}"}, {"Authorization": f"Bearer {key_b}"}
    name, name_b = (
        service.http.post(
            "/upload-image", files={"image": ("p.png", photo, "image/png")}, headers=auth
        ).json()["imageName"]
        for auth in (auth_a, auth_b)  # a photo is its key's own
    )
    body, body_b = {"imageName": name, "async": True}, {"imageName": name_b, "async": True}
    first = generate(service, body, "shared", **auth_a)
    assert first.status_code == 202
    assert generate(service, body, "shared", **auth_a).status_code in (200, 202)
    spent_b = service.http.post("/generate-avatar-by-image", json=body_b, headers=auth_b)
    assert spent_b.status_code == 202
    assert generate(service, body_b, "shared", **auth_b).status_code == 429
    service.http.headers.update(auth_a)
    service.wait_job(first.json()["jobId"])
    service.http.headers.update(auth_b)
    service.wait_job(spent_b.json()["jobId"])


def test_fingerprint_is_of_the_parsed_request():
    """Equal requests and async flags give one fingerprint; any field or the flag changes it."""
    request = GenerateRequest("a" * 22 + ".png", "female", 64, 64, "avatar", seed=7)
    same = GenerateRequest("a" * 22 + ".png", "female", 64, 64, "avatar", seed=7)
    assert request_fingerprint(request, True) == request_fingerprint(same, True)
    assert request_fingerprint(request, True) != request_fingerprint(request, False)
    other = GenerateRequest("a" * 22 + ".png", "female", 64, 64, "avatar", seed=8)
    assert request_fingerprint(request, True) != request_fingerprint(other, True)
