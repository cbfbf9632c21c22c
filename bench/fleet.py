"""Processes for the benchmarks: stand-in ComfyUI servers and the service, on free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.latency import ROOT, free_port, wait_http


@dataclass
class Proc:
    """One child process and the URL it serves."""

    url: str
    popen: subprocess.Popen

    def kill(self) -> None:
        """SIGKILL: the process dies at once, as a crashed server would."""
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()


def start_standin(scratch: Path, name: str, *, step_delay: float, zero_cost: bool = False) -> Proc:
    """A stand-in ComfyUI process with ``step_delay`` seconds per sampler step (``zero_cost``:
    every other node takes no time either)."""
    port = free_port()
    root = scratch / name
    dirs = {kind: root / kind for kind in ("input", "output", "temp")}
    for path in dirs.values():
        path.mkdir(parents=True)
    args = [
        sys.executable, "-m", "comfyui_standin", "--port", str(port), "--root", str(root),
        "--input-dir", str(dirs["input"]), "--output-dir", str(dirs["output"]),
        "--temp-dir", str(dirs["temp"]), "--step-delay", str(step_delay),
    ]  # fmt: skip
    if zero_cost:
        args += ["--node-cost", "0", "--pixel-cost", "0"]
    popen = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/system_stats")
    return Proc(url, popen)


def start_service(
    scratch: Path, comfyui_urls: list[str], *, ready: bool = True, **settings: str
) -> Proc:
    """The service (``python app.py``, waitress) in front of the given servers; waits until it
    is ready (``ready``) or only until it answers."""
    port = free_port()
    env = {
        **os.environ,
        "COMFYUI_URL": ",".join(comfyui_urls),
        "PORT": str(port),
        "UPLOAD_DIR": str(scratch / "uploads"),
        "OUTPUT_DIR": str(scratch / "generated_avatar"),
        "INSTANCE_PATH": str(scratch / "instance"),
        "LOG_LEVEL": "WARNING",
        # Keep the prompt ComfyUI embeds in each PNG: the throughput benchmark reads it back.
        "STRIP_AVATAR_METADATA": "false",
        **settings,
    }
    popen = subprocess.Popen(
        [sys.executable, "app.py"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(f"{url}/healthz")
    if not ready:
        return Proc(url, popen)
    deadline = time.monotonic() + 30
    import httpx

    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the service never became ready")
        time.sleep(0.1)
    return Proc(url, popen)


@dataclass
class ResourceSampler:
    """Samples a process's resident memory and thread count from /proc while a run lasts."""

    pid: int
    interval: float = 0.1
    peak_rss_mb: float = 0.0
    peak_threads: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> ResourceSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._read()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._read()

    def _read(self) -> None:
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                self.peak_rss_mb = max(self.peak_rss_mb, int(line.split()[1]) / 1024)
            elif line.startswith("Threads:"):
                self.peak_threads = max(self.peak_threads, int(line.split()[1]))
