"""``python app.py`` as a real process that a test can kill and start again."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import REPO_ROOT
from tests.receivers import free_port


class ServiceProcess:
    """``python app.py`` on a fixed port, with its folders and database under one scratch folder,
    so that a second start picks up where the first left off."""

    def __init__(self, scratch: Path, comfyui_url: str, *, umask: int = -1) -> None:
        self.umask = umask  # -1: the test process's own
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "COMFYUI_URL": comfyui_url,
            "PORT": str(self.port),
            "INSTANCE_PATH": str(scratch / "instance"),
            "UPLOAD_DIR": str(scratch / "uploads"),
            "OUTPUT_DIR": str(scratch / "generated_avatar"),
            "COMFYUI_POLL_INTERVAL": "0.5",
            "COMFYUI_RECONNECT_MAX": "0.5",
            "LOG_LEVEL": "WARNING",
        }
        self.log = scratch / "service.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start the process and wait (bounded) until it answers /healthz."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "app.py"],
                cwd=REPO_ROOT,
                env=self.env,
                stderr=log,
                umask=self.umask,
            )
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    return
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the service did not start"
            time.sleep(0.05)

    def kill(self) -> None:
        """kill -9, as a crash or a hard restart would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
