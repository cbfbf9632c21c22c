"""`python app.py` as a real process: start-up, and a clean stop on SIGTERM."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
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


def test_start_prints_the_page_url(standin, tmp_path: Path):
    """At start the log names the web page's URL, and that URL serves the page."""
    port = free_port()
    env = {
        **os.environ,
        "COMFYUI_URL": standin.url,
        "HOST": "0.0.0.0",
        "PORT": str(port),
        "INSTANCE_PATH": str(tmp_path / "instance"),
        "UPLOAD_DIR": str(tmp_path / "uploads"),
        "OUTPUT_DIR": str(tmp_path / "generated_avatar"),
        "LOG_LEVEL": "INFO",
    }
    lines: queue.Queue[str] = queue.Queue()
    with subprocess.Popen(
        [sys.executable, "app.py"], cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True
    ) as process:
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr])
        reader.start()
        try:
            expected = f"open the web page: http://127.0.0.1:{port}/"
            deadline = time.monotonic() + 20
            seen: list[str] = []
            while not any(line.rstrip().endswith(expected) for line in seen):
                assert time.monotonic() < deadline, f"no page URL in the log: {seen}"
                with contextlib.suppress(queue.Empty):
                    seen.append(lines.get(timeout=0.5))
            page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
            assert page.status_code == 200
            assert page.headers["content-type"] == "text/html; charset=utf-8"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(5)
