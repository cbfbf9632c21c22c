"""`python app.py` as a real process: start-up, and a clean stop on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT, make_photo


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_sigterm_answers_waiting_requests_and_exits(standin, tmp_path: Path):
    """On SIGTERM a request waiting for its avatar gets 202 + Location, and the process exits 0."""
    port = free_port()
    env = {
        **os.environ,
        "COMFYUI_URL": standin.url,
        "PORT": str(port),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "OUTPUT_DIR": str(tmp_path / "generated_avatar"),
        "LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            deadline = time.monotonic() + 20
            while True:
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "service did not become ready"
                time.sleep(0.05)
            name = http.post(
                "/upload-image", files={"image": ("p.png", make_photo((1, 2, 3)))}
            ).json()["imageName"]
            standin.set_faults(hang=True)
            with ThreadPoolExecutor(max_workers=1) as pool:
                waiting = pool.submit(
                    http.post, "/generate-avatar-by-image", json={"imageName": name}
                )
                while not standin.prompts:
                    assert time.monotonic() < deadline + 10
                    time.sleep(0.02)
                started = time.monotonic()
                process.send_signal(signal.SIGTERM)
                answer = waiting.result(timeout=10)
            assert answer.status_code == 202
            assert answer.headers["location"].endswith(f"/jobs/{answer.json()['jobId']}")
        assert process.wait(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()
        standin.set_faults(hang=False)
