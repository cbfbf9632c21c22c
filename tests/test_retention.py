"""Retention: photos and avatars older than RETENTION_HOURS are deleted; the avatar answers 410."""

from __future__ import annotations

import os
import time

from tests.helpers import wait_for


def age(path, seconds: float) -> None:
    """Make a file look ``seconds`` old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_old_files_are_deleted_and_the_avatar_is_gone(make_service, tmp_path, photo):
    """An avatar older than the age is deleted: GET answers 410, the record says when."""
    service = make_service(retention_hours=1, retention_interval=0.1)
    name = service.upload(photo)
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    file_name = job["avatars"][0]["fileName"]
    avatar = tmp_path / "generated_avatar" / file_name
    fresh = service.upload(photo)
    assert service.http.get(f"/avatars/{file_name}").status_code == 200
    age(avatar, 3601)
    age(tmp_path / "uploads" / name, 3601)
    wait_for(lambda: not avatar.exists(), timeout=10, message="the old avatar deleted")
    answer = service.http.get(f"/avatars/{file_name}")
    assert answer.status_code == 410
    body = answer.json()
    deleted_at = body["error"]["details"]["deletedAt"]
    assert body == {
        "error": {
            "code": "avatar_expired",
            "message": "this avatar was deleted: avatars are kept for RETENTION_HOURS (1 h)",
            "details": {"fileName": file_name, "deletedAt": deleted_at},
        }
    }
    record = service.http.get(f"/jobs/{job['jobId']}").json()
    assert record["avatars"][0]["deletedAt"] == deleted_at
    assert not (tmp_path / "uploads" / name).exists()
    assert not (tmp_path / "uploads" / f"{name}.json").exists()  # its faces went with it
    assert (tmp_path / "uploads" / fresh).exists()  # younger than the age: kept
    assert (tmp_path / "uploads" / f"{fresh}.json").exists()
    # the deleted photo is now unknown to generate
    missing = service.http.post("/generate-avatar-by-image", json={"imageName": name})
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "image_not_found"


def test_photo_of_a_job_in_flight_is_kept(make_service, standin, tmp_path, photo):
    """A job still queued or running keeps its photo, however old."""
    service = make_service(retention_hours=1, retention_interval=0.1)
    name = service.upload(photo)
    standin.set_faults(hang=True)
    try:
        job = service.http.post(
            "/generate-avatar-by-image", json={"imageName": name, "async": True}
        ).json()
        service.wait_job(job["jobId"], until=lambda record: record["status"] == "running")
        age(tmp_path / "uploads" / name, 7200)
        other = service.upload(photo)
        age(tmp_path / "uploads" / other, 7200)
        wait_for(
            lambda: not (tmp_path / "uploads" / other).exists(),
            timeout=10,
            message="the old unused photo deleted",
        )
        assert (tmp_path / "uploads" / name).exists()
        service.http.delete(f"/jobs/{job['jobId']}")
    finally:
        standin.set_faults(hang=False)


def test_nothing_is_deleted_by_default(service, tmp_path, photo):
    """RETENTION_HOURS=0 (the default) keeps every file, however old."""
    name = service.upload(photo)
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    avatar = tmp_path / "generated_avatar" / job["avatars"][0]["fileName"]
    age(avatar, 10 * 365 * 86400)
    retention = service.app.extensions["avatar_service"].retention
    assert not retention.enabled
    assert retention.sweep() == (0, 0)
    assert service.http.get(f"/avatars/{avatar.name}").status_code == 200
    assert avatar.exists()
