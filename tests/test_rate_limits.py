"""Rate limits on generate and upload: per key (or address), 429 rate_limited with Retry-After."""

from __future__ import annotations

import socket
import time
import uuid

import pytest

REDIS_URL = "redis://127.0.0.1:6379"


def redis_answers() -> bool:
    """Whether a Redis answers PING on 127.0.0.1:6379."""
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def assert_limited(answer, limit: str) -> None:
    """A 429 in the service's error shape, with Retry-After and the rate-limit headers."""
    assert answer.status_code == 429, answer.text
    assert answer.json() == {
        "error": {
            "code": "rate_limited",
            "message": f"too many requests (limit: {limit})",
            "details": {"limit": limit},
        }
    }
    assert int(answer.headers["retry-after"]) >= 1
    assert answer.headers["x-ratelimit-remaining"] == "0"
    assert answer.headers["x-ratelimit-limit"] == limit.split(" ")[0]


def upload(service, photo: bytes, key: str | None = None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return service.http.post(
        "/upload-image", files={"image": ("p.png", photo, "image/png")}, headers=headers
    )


def test_upload_limit_per_client_address(make_service, photo):
    """Without keys, uploads are counted per client address; the third in a minute is 429."""
    service = make_service(rate_limit_upload="2/minute")
    first = upload(service, photo)
    assert first.status_code == 201
    assert first.headers["x-ratelimit-limit"] == "2"
    assert first.headers["x-ratelimit-remaining"] == "1"
    assert upload(service, photo).status_code == 201
    assert_limited(upload(service, photo), "2 per 1 minute")
    # other routes are not limited
    assert service.http.get("/styles").status_code == 200


def test_generate_limit_counts_each_key_apart(make_service, photo):
    """Each API key has its own budget on generate; a bad body still counts as a request."""
    key_a, key_b = "limit-key-a-0123456789", "limit-key-b-0123456789"
    admin = "limit-admin-0123456789"
    service = make_service(
        api_keys=f"{key_a},{key_b}", admin_api_keys=admin, rate_limit_generate="1/minute"
    )
    name = upload(service, photo, key_a).json()["imageName"]
    first = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "async": True},
        headers={"Authorization": f"Bearer {key_a}"},
    )
    assert first.status_code == 202
    again = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "async": True},
        headers={"Authorization": f"Bearer {key_a}"},
    )
    assert_limited(again, "1 per 1 minute")
    name_b = upload(service, photo, key_b).json()["imageName"]  # a photo is its key's own
    other = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": name_b, "async": True},
        headers={"Authorization": f"Bearer {key_b}"},
    )
    assert other.status_code == 202
    service.http.headers["Authorization"] = f"Bearer {admin}"
    service.wait_job(first.json()["jobId"])
    service.wait_job(other.json()["jobId"])


def test_limits_are_off_by_default(service, photo):
    """Without RATE_LIMIT_* nothing is limited and no rate-limit header is sent."""
    for _ in range(5):
        answer = upload(service, photo)
        assert answer.status_code == 201
    assert "x-ratelimit-limit" not in answer.headers


@pytest.mark.skipif(not redis_answers(), reason="no Redis answers on 127.0.0.1:6379")
def test_redis_storage_is_shared_by_replicas(make_service, tmp_path, photo):
    """Two services on one Redis share a key's budget, as replicas behind a balancer would."""
    key = f"redis-key-{uuid.uuid4().hex}"  # a fresh key: counters of earlier runs do not count
    settings = {"api_keys": key, "rate_limit_upload": "2/minute", "rate_limit_storage": REDIS_URL}
    first = make_service(**settings)
    second = make_service(**settings, instance_path=tmp_path / "instance2")
    assert upload(first, photo, key).status_code == 201
    assert upload(second, photo, key).status_code == 201
    assert_limited(upload(first, photo, key), "2 per 1 minute")
    assert_limited(upload(second, photo, key), "2 per 1 minute")


def test_unreachable_redis_falls_back_to_memory(make_service, photo):
    """With Redis down, requests are neither refused nor failed: each process counts in memory."""
    service = make_service(rate_limit_upload="1/minute", rate_limit_storage="redis://127.0.0.1:1")
    assert upload(service, photo).status_code == 201
    assert_limited(upload(service, photo), "1 per 1 minute")


def test_answers_within_the_limit_carry_no_retry_after(make_service, photo, standin):
    """Only a 429 says Retry-After; a 202 (or a 503 of the service) keeps its own meaning."""
    service = make_service(rate_limit_generate="100/minute")
    name = upload(service, photo).json()["imageName"]
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name, "async": True})
    assert answer.status_code == 202
    assert answer.headers["x-ratelimit-remaining"] == "99"
    assert answer.headers.get("retry-after") == "2"  # the job record's own polling hint
    standin.set_faults(refuse_connections=True)
    # New jobs are refused once no server has answered for a moment; until then they queue.
    deadline = time.monotonic() + 15
    while True:
        down = service.http.post(
            "/generate-avatar-by-image", json={"imageName": name, "async": True}
        )
        if down.status_code == 503 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    standin.set_faults(refuse_connections=False)
    assert down.status_code == 503
    assert down.headers["retry-after"] == "10"  # when to try ComfyUI again, not the window
    service.wait_job(answer.json()["jobId"])


def test_idempotent_replays_do_not_use_up_the_limit(make_service, photo):
    """Sending the same Idempotency-Key again answers the same job without spending budget."""
    service = make_service(rate_limit_generate="2/minute")
    name = upload(service, photo).json()["imageName"]
    body = {"imageName": name, "async": True}
    headers = {"Idempotency-Key": f"replay-{uuid.uuid4().hex}"}
    first = service.http.post("/generate-avatar-by-image", json=body, headers=headers)
    assert first.status_code == 202
    assert first.headers["x-ratelimit-remaining"] == "1"
    for _ in range(3):
        again = service.http.post("/generate-avatar-by-image", json=body, headers=headers)
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json()["jobId"] == first.json()["jobId"]
        assert again.headers["x-ratelimit-remaining"] == "1"
    second = service.http.post("/generate-avatar-by-image", json=body)
    assert second.status_code == 202
    assert second.headers["x-ratelimit-remaining"] == "0"
    assert_limited(service.http.post("/generate-avatar-by-image", json=body), "2 per 1 minute")
    for job in (first, second):
        service.wait_job(job.json()["jobId"])
