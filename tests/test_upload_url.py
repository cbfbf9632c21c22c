"""Forwarding avatars to UPLOAD_URL: real local receivers, failures that never lose an avatar."""

from __future__ import annotations

import io

from PIL import Image

from tests.receivers import Receiver, Reply


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
        assert avatar["upload"]["ok"] is True
        assert avatar["upload"]["attempts"] == 1
        assert avatar["upload"]["status"] == 200
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
        service = make_service(upload_url=receiver.url(), upload_max_attempts=3)
        name = service.upload(photo)
        answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})
        assert answer.status_code == 200
        upload = answer.json()["avatars"][0]["upload"]
        assert upload["ok"] is True
        assert upload["attempts"] == 3
        assert len(receiver.received) == 3


def test_failed_upload_keeps_avatar_and_success(make_service, photo):
    """An unreachable UPLOAD_URL is recorded on the avatar; the job still succeeds, file kept."""
    with Receiver() as receiver:
        dead_url = receiver.url()
    service = make_service(upload_url=dead_url, upload_max_attempts=2)
    name = service.upload(photo)
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})
    assert answer.status_code == 200
    job = answer.json()
    [avatar] = job["avatars"]
    assert avatar["upload"]["ok"] is False
    assert avatar["upload"]["attempts"] == 2
    assert avatar["upload"]["error"]
    assert service.http.get(avatar["url"]).status_code == 200
