"""One log line per request with its request id (X-Request-ID, echoed) and the job id."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import REPO_ROOT
from tests.test_process import free_port

KEY = "log-key-0123456789abcdef"


def request_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "avatar_service.requests"]


def test_request_id_is_echoed_or_made(service, caplog):
    """A valid X-Request-ID comes back as sent; a missing or malformed one is replaced."""
    caplog.set_level(logging.INFO, logger="avatar_service.requests")
    given = service.http.get("/healthz", headers={"X-Request-ID": "req-42.a"})
    assert given.headers["x-request-id"] == "req-42.a"
    made = service.http.get("/healthz")
    assert len(made.headers["x-request-id"]) == 32
    bad = service.http.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"
    ids = [record.request_id for record in request_lines(caplog)]
    assert ids == ["req-42.a", made.headers["x-request-id"], bad.headers["x-request-id"]]


def test_one_line_per_request_with_the_job_id(make_service, photo, caplog):
    """Generate and job routes log their job id; the key itself and tokens never appear."""
    caplog.set_level(logging.INFO, logger="avatar_service.requests")
    service = make_service(api_keys=KEY)
    service.http.headers["Authorization"] = f"Bearer {KEY}"
    name = service.upload(photo)
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    service.http.get(job["links"]["events"])
    service.http.get(f"/jobs/{job['jobId']}")
    lines = request_lines(caplog)
    assert [(r.method, r.path, r.status) for r in lines] == [
        ("POST", "/upload-image", 201),
        ("POST", "/generate-avatar-by-image", 200),
        ("GET", f"/jobs/{job['jobId']}/events", 200),
        ("GET", f"/jobs/{job['jobId']}", 200),
    ]
    assert [r.job_id for r in lines[1:]] == [job["jobId"]] * 3
    assert lines[0].key_id.startswith("key_")
    text = "\n".join(record.getMessage() for record in caplog.records)
    assert KEY not in text
    assert "token=" not in text
    assert f"job_id={job['jobId']}" in lines[1].getMessage()


def test_json_log_lines(standin, tmp_path: Path):
    """LOG_FORMAT=json: python app.py writes each request as one JSON object."""
    port = free_port()
    env = {
        **os.environ,
        "COMFYUI_URL": standin.url,
        "PORT": str(port),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "OUTPUT_DIR": str(tmp_path / "generated_avatar"),
        "LOG_FORMAT": "json",
        "API_KEYS": KEY,
    }
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    http.get("/healthz")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, "the service did not start"
                    time.sleep(0.05)
            answer = http.get(
                "/styles", headers={"Authorization": f"Bearer {KEY}", "X-Request-ID": "json-1"}
            )
            assert answer.status_code == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert records, stderr
    assert len(records) == len(stderr.strip().splitlines()), stderr  # every line is JSON
    [styles] = [r for r in records if r.get("request_id") == "json-1"]
    assert styles["level"] == "INFO"
    assert styles["logger"] == "avatar_service.requests"
    assert (styles["method"], styles["path"], styles["status"]) == ("GET", "/styles", 200)
    assert styles["key_id"].startswith("key_")
    assert KEY not in stderr


@pytest.mark.parametrize("value", ["xml", "JSON "])
def test_log_format_is_validated(value):
    """LOG_FORMAT accepts only text or json."""
    from avatar_service.config import ConfigError, Settings

    with pytest.raises(ConfigError, match="LOG_FORMAT"):
        Settings.from_env({"LOG_FORMAT": value})
