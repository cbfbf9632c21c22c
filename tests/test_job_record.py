"""The job record's typed parts: their JSON forms, and the database columns they are stored in."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from avatar_service.errors import BadGateway, ServiceUnavailable, error_from_record
from avatar_service.jobs import Avatar, JobError, JobProgress, JobRecords, JobStatus
from avatar_service.jobs.job import TERMINAL
from avatar_service.photos.geometry import Box, Crop
from tests.test_records import make_job


def test_statuses_are_the_strings_the_api_and_database_use():
    """Each status is its lowercase name, and exactly three of them end a job."""
    assert [status.value for status in JobStatus] == [
        "queued",
        "running",
        "succeeded",
        "failed",
        "cancelled",
    ]
    assert {str(status) for status in TERMINAL} == {"succeeded", "failed", "cancelled"}
    assert f"job.{JobStatus.SUCCEEDED}" == "job.succeeded"


def test_record_status_is_a_plain_string():
    """The record's ``status`` is the plain string, not the enum member."""
    status = make_job("a" * 32).to_dict()["status"]
    assert status == "queued" and type(status) is str


def test_avatar_json_and_public_url():
    """An avatar is stored as fileName, width, height; the record adds its URL."""
    avatar = Avatar("a_0.png", 512, 256)
    assert json.dumps(avatar.to_dict()) == '{"fileName": "a_0.png", "width": 512, "height": 256}'
    assert avatar.public("http://s") == {
        "fileName": "a_0.png",
        "width": 512,
        "height": 256,
        "url": "http://s/avatars/a_0.png",
    }
    assert Avatar.from_dict(avatar.to_dict()) == avatar


def test_job_error_names_the_job_without_touching_the_exception():
    """A job's error copies the exception's details and adds jobId, leaving the exception as it
    was; ``error_from_record`` rebuilds the same error from its JSON."""
    raised = BadGateway("boom", code="comfyui_execution_error", details={"nodeId": "3"})
    error = JobError.of(raised, job_id="j1")
    assert json.dumps(error.to_dict()) == (
        '{"status": 502, "code": "comfyui_execution_error", "message": "boom", '
        '"details": {"nodeId": "3", "jobId": "j1"}}'
    )
    assert raised.details == {"nodeId": "3"}
    rebuilt = error_from_record(error.to_dict())
    assert (type(rebuilt), rebuilt.code, rebuilt.message, rebuilt.details) == (
        BadGateway,
        "comfyui_execution_error",
        "boom",
        {"nodeId": "3", "jobId": "j1"},
    )
    assert JobError.from_dict(error.to_dict()) == error


def test_job_error_keeps_a_jobid_already_in_its_details_in_place():
    """An error whose details already name the job keeps that key where it was."""
    raised = ServiceUnavailable("down", details={"jobId": "j1", "promptId": "p"})
    assert list(JobError.of(raised, job_id="j1").to_dict()["details"]) == ["jobId", "promptId"]


def test_progress_keeps_comfyuis_numbers_as_sent():
    """Progress is node, nodeType, value, max; an integer step stays an integer."""
    progress = JobProgress("3", "KSampler", 4, 20)
    assert json.dumps(progress.to_dict()) == (
        '{"node": "3", "nodeType": "KSampler", "value": 4, "max": 20}'
    )
    assert JobProgress.from_dict(progress.to_dict()) == progress


def test_crop_json_and_its_sources():
    """A crop is its box and source, in that order; an unknown source is not read back."""
    crop = Crop(Box(1, 2, 300, 400), "request")
    assert json.dumps(crop.to_dict()) == (
        '{"x": 1, "y": 2, "width": 300, "height": 400, "source": "request"}'
    )
    assert Crop.from_dict(crop.to_dict()) == crop
    with pytest.raises(ValueError, match="unknown crop source"):
        Crop.from_dict({**crop.to_dict(), "source": "elsewhere"})


def test_typed_parts_are_stored_as_the_same_json_text(tmp_path: Path):
    """The store writes each part's JSON text to its column and reads the same job back."""
    path = tmp_path / "jobs.sqlite3"
    store = JobRecords(path)
    try:
        job = make_job("a" * 32)
        store.insert(job)
        job = store.update(
            job,
            status=JobStatus.FAILED,
            progress=JobProgress("3", "KSampler", 1, 2),
            error=JobError(504, "job_timeout", "late", {"jobId": job.id}),
            avatars=[Avatar("a_0.png", 64, 64)],
            timings={"totalMs": 5},
            crop=Crop(Box(0, 0, 64, 64), "face"),
        )
        assert store.get(job.id) == job
    finally:
        store.close()
    connection = sqlite3.connect(path)
    try:
        row = connection.execute(
            "SELECT status, progress, error, avatars, timings, crop FROM jobs"
        ).fetchone()
    finally:
        connection.close()
    assert row == (
        "failed",
        '{"node": "3", "nodeType": "KSampler", "value": 1, "max": 2}',
        '{"status": 504, "code": "job_timeout", "message": "late", '
        '"details": {"jobId": "' + "a" * 32 + '"}}',
        '[{"fileName": "a_0.png", "width": 64, "height": 64}]',
        '{"totalMs": 5}',
        '{"x": 0, "y": 0, "width": 64, "height": 64, "source": "face"}',
    )
