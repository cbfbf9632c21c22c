"""Forwarding avatars to UPLOAD_URL through the outbox: real local receivers, the job succeeds
for its caller first, failures never lose an avatar."""

from __future__ import annotations

import io
import time

from PIL import Image

from tests.receivers import Receiver, Reply, Slow


def upload_of(service, job_id: str, state: str, timeout: float = 15.0) -> dict:
    """Poll the job record until its (only) avatar's forwarding reaches ``state``."""
    deadline = time.monotonic() + timeout
    while True:
        [avatar] = service.http.get(f"/jobs/{job_id}").json()["avatars"]
        if avatar["upload"] and avatar["upload"]["state"] == state:
            return avatar["upload"]
        if time.monotonic() > deadline:
            raise AssertionError(f"upload still {avatar['upload']} after {timeout}s")
        time.sleep(0.02)


def test_avatar_is_posted_to_upload_url(make_service, photo):
    """Each avatar is POSTed as multipart under UPLOAD_FIELD_NAME with the job's fields."""
    with Receiver() as receiver:
        service = make_service(upload_url=receiver.url("/avatars"), upload_field_name="avatar")
        name = service.upload(photo)
        answer = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": name, "gender": "male", "width": 128, "height": 192},
        )
        assert answer.status_code == 200, answer.text
        job = answer.json()
        [avatar] = job["avatars"]
        upload = upload_of(service, job["jobId"], "delivered")
        assert (upload["ok"], upload["attempts"], upload["status"]) == (True, 1, 200)
        assert upload["url"] == receiver.url("/avatars")
        [request] = receiver.wait_for(1)
        fields, files = request.multipart()
        assert fields["jobId"] == job["jobId"]
        assert fields["seed"] == str(job["seed"])
        assert fields["gender"] == "male"
        filename, content_type, data = files["avatar"]
        assert filename == avatar["fileName"]
        assert content_type == "image/png"
        assert data == service.http.get(avatar["url"]).content
        with Image.open(io.BytesIO(data)) as image:
            assert image.size == (128, 192)


def test_receiver_failing_twice_then_succeeding(make_service, photo):
    """A receiver answering 500 twice gets the avatar on the third attempt; job succeeds."""
    with Receiver() as receiver:
        receiver.script(Reply(status=500), Reply(status=503))
        service = make_service(
            upload_url=receiver.url(), upload_max_attempts=3, upload_backoff=0.05
        )
        name = service.upload(photo)
        answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})
        assert answer.status_code == 200
        upload = upload_of(service, answer.json()["jobId"], "delivered")
        assert upload["ok"] is True
        assert upload["attempts"] == 3
        assert len(receiver.received) == 3


def test_slow_receiver_never_delays_the_answer(make_service, photo):
    """The caller gets "succeeded" while the avatar is still on its way to a slow receiver."""
    with Receiver() as receiver:
        receiver.script(Slow(delay=1.0))
        service = make_service(upload_url=receiver.url())
        name = service.upload(photo)
        answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})
        assert answer.status_code == 200
        job = answer.json()
        assert job["status"] == "succeeded"
        assert job["avatars"][0]["upload"]["state"] == "pending"
        assert upload_of(service, job["jobId"], "delivered")["attempts"] == 1


def test_failed_upload_keeps_avatar_and_success(make_service, photo):
    """An unreachable UPLOAD_URL is recorded on the avatar; the job still succeeds, file kept."""
    with Receiver() as receiver:
        dead_url = receiver.url()
    service = make_service(upload_url=dead_url, upload_max_attempts=2, upload_backoff=0.05)
    name = service.upload(photo)
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})
    assert answer.status_code == 200
    job = answer.json()
    upload = upload_of(service, job["jobId"], "failed")
    assert upload["ok"] is False
    assert upload["attempts"] == 2
    assert upload["error"]
    assert service.http.get(job["avatars"][0]["url"]).status_code == 200
