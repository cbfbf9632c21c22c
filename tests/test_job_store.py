"""The job database: a database made before a column existed is upgraded when opened."""

from __future__ import annotations

import sqlite3
import time

from avatar_service.jobs.records import Job
from avatar_service.jobs.records import JobRecords as JobStore
from avatar_service.persistence.migrations import V1_SCHEMA as OLD_SCHEMA
from avatar_service.photos.geometry import Box, Crop


def test_old_database_gains_the_crop_column_and_keeps_its_jobs(tmp_path):
    """Opening a database without ``crop`` adds it; old rows read back with crop None."""
    assert "crop" not in OLD_SCHEMA and "cancel_requested INTEGER" in OLD_SCHEMA
    path = tmp_path / "avatar_service.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_SCHEMA)
        db.execute(
            "INSERT INTO jobs (id, status, style, image_name, gender, width, height, seed, "
            "base_url, created_at, deadline) VALUES ('a' , 'succeeded', 'avatar', 'p.png', "
            "'female', 512, 512, '7', 'http://x', 1.0, 2.0)"
        )
    db.close()

    store = JobStore(path)
    try:
        old = store.get("a")
        assert old is not None and old.crop is None and old.seed == 7
        crop = Crop(Box(1, 2, 30, 40), "request")
        new = Job(
            id="b",
            status="queued",
            style="avatar",
            image_name="p.png",
            gender="male",
            width=512,
            height=512,
            seed=1,
            base_url="http://x",
            deadline=time.time() + 60,
            crop=crop,
        )
        store.insert(new)
        assert store.get("b").crop == crop
        assert store.get("b").to_dict()["crop"] == {
            "x": 1,
            "y": 2,
            "width": 30,
            "height": 40,
            "source": "request",
        }
    finally:
        store.close()
    # Opening again finds the column and changes nothing.
    JobStore(path).close()
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(jobs)")]
    db.close()
    assert columns.count("crop") == 1
