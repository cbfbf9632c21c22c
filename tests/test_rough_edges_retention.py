"""Retention deletes only what the service wrote: its stored photos and its jobs' avatars."""

from __future__ import annotations

import os
import time
from pathlib import Path


def age(path: Path, seconds: float) -> None:
    """Make a file look ``seconds`` old."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_files_the_service_did_not_make_are_kept(make_service, tmp_path, photo):
    """Old foreign files in UPLOAD_DIR and OUTPUT_DIR stay; the service's own old files go."""
    # A long interval: the sweep that matters is the one the test runs.
    service = make_service(retention_hours=1, retention_interval=3600)
    uploads, output = tmp_path / "uploads", tmp_path / "generated_avatar"
    name = service.upload(photo)
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    assert job["status"] == "succeeded", job
    avatar = output / job["avatars"][0]["fileName"]
    foreign = {
        uploads / "holiday.png": photo,
        uploads / "holiday.png.json": b"{}",
        uploads / "notes.txt": b"mine",
        output / "my-notes.txt": b"mine",
        output / "portrait.png": photo,
        # Shaped like the service's names, but no job of the service lists it.
        output / f"{'ab' * 16}_0.png": photo,
        output / f"{job['jobId']}_7.png": photo,
    }
    for path, data in foreign.items():
        path.write_bytes(data)
    for path in [*foreign, avatar, uploads / name]:
        age(path, 7200)
    service.app.extensions["avatar_service"].retention.sweep()
    assert not avatar.exists()
    assert not (uploads / name).exists()
    assert not (uploads / f"{name}.json").exists()
    assert [path.name for path in foreign if not path.exists()] == []
    assert service.http.get(f"/avatars/{avatar.name}").status_code == 410
