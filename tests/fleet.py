"""Real processes sharing one PostgreSQL: API replicas (``python app.py``) and workers
(``python -m avatar_service.worker``), for the multi-process tests and the benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.receivers import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]


class Process:
    """One service process: started with its settings, stopped (or killed) by the test."""

    def __init__(
        self, name: str, argv: list[str], env: dict[str, str], log: Path, *, cwd: Path = REPO_ROOT
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("wb")
        self.process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """kill -9: no chance to give anything back."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, then wait for the process to leave (killed if it does not in time)."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log_file.close()
        return self.process.returncode

    def output(self) -> str:
        """What the process logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace")


class Fleet:
    """API replicas and workers on one database, with shared photo and avatar folders."""

    def __init__(self, scratch: Path, database_url: str, **settings: str) -> None:
        self.scratch = scratch
        self.processes: list[Process] = []
        self.replicas: list[Replica] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("COMFYUI_", "API_"))},
            "DATABASE_URL": database_url,
            "UPLOAD_DIR": str(scratch / "uploads"),
            "OUTPUT_DIR": str(scratch / "generated_avatar"),
            "WORKER_LEASE": "2",
            "COMFYUI_POLL_INTERVAL": "0.5",
            "COMFYUI_RECONNECT_MAX": "0.5",
            "COMFYUI_CONNECT_TIMEOUT": "2",
            "COMFYUI_READ_TIMEOUT": "5",
            "JOB_TIMEOUT": "60",
            "SYNC_WAIT": "20",
            "THREADS": "16",
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }

    def _env(self, name: str, **extra: str) -> dict[str, str]:
        return {**self.env, "INSTANCE_PATH": str(self.scratch / name), **extra}

    def replica(self, name: str, **extra: str) -> Replica:
        """Start an API replica without workers of its own."""
        port = free_port()
        env = self._env(name, **{"PORT": str(port), "LOCAL_WORKERS": "false", **extra})
        process = Process(name, [sys.executable, "app.py"], env, self.scratch / f"{name}.log")
        self.processes.append(process)
        replica = Replica(process, f"http://127.0.0.1:{port}")
        self.replicas.append(replica)
        return replica

    def worker(self, name: str, comfyui: str, **extra: str) -> Process:
        """Start a worker process for one ComfyUI server."""
        argv = [sys.executable, "-m", "avatar_service.worker", "--comfyui", comfyui]
        process = Process(name, argv, self._env(name, **extra), self.scratch / f"{name}.log")
        self.processes.append(process)
        return process

    def agent(
        self,
        name: str,
        api: str,
        comfyui: str,
        token: str,
        *,
        server: str = "",
        inside: Namespace | None = None,
        **extra: str,
    ) -> Process:
        """Start a worker agent (``avatar-worker``) in an empty folder of its own, with nothing
        of the service's settings: only the API's URL, its token and its ComfyUI."""
        home = self.scratch / name
        home.mkdir()
        env = {
            **{k: v for k, v in os.environ.items() if k in _AGENT_ENVIRONMENT},
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": "INFO",
            **extra,
        }
        argv = [sys.executable, "-m", "avatar_service.agent", "--api", api, "--token", token]
        argv += ["--comfyui", comfyui, "--name", server or name]
        if inside is not None:
            argv = inside.argv(argv)
        process = Process(name, argv, env, self.scratch / f"{name}.log", cwd=home)
        self.processes.append(process)
        return process

    def stop(self) -> None:
        """Stop every process still running (SIGTERM, then kill)."""
        for replica in self.replicas:
            replica.http.close()
        for process in self.processes:  # all at once: they leave in parallel
            if process.alive:
                process.process.send_signal(signal.SIGTERM)
        for process in self.processes:
            process.terminate(timeout=10)


class Replica:
    """An API replica and an HTTP client to it."""

    def __init__(self, process: Process, url: str) -> None:
        self.process = process
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=httpx.Timeout(30, connect=2))

    def wait_up(self, timeout: float = 30.0) -> Replica:
        """Wait (bounded) until the replica answers /healthz."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.http.get("/healthz").status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if not self.process.alive or time.monotonic() > deadline:
                raise AssertionError(f"{self.process.name} did not start:\n{self.process.output()}")
            time.sleep(0.1)

    def wait_workers(self, servers: set[str], timeout: float = 30.0) -> dict:
        """Wait (bounded) until /readyz lists a usable live worker for each of ``servers``."""
        deadline = time.monotonic() + timeout
        while True:
            report = self.http.get("/readyz").json()
            usable = {w["server"] for w in report.get("workers", []) if w["usable"]}
            if servers <= usable:
                return report
            if time.monotonic() > deadline:
                raise AssertionError(f"workers for {servers - usable} never joined: {report}")
            time.sleep(0.1)

    def wait_job(self, job_id: str, timeout: float = 60.0, until=None) -> dict:
        """Poll the job's record until it ends (or ``until(record)``), with a hard bound."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.http.get(f"/jobs/{job_id}").json()
            done = until(record) if until else record["status"] in TERMINAL
            if done:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {record['status']} after {timeout}s")
            time.sleep(0.05)


TERMINAL = {"succeeded", "failed", "cancelled"}
# What an agent's process inherits of the test's environment: enough to run Python, nothing of
# the service's settings (no DATABASE_URL, no folders).
_AGENT_ENVIRONMENT = frozenset({"PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV"})


class Namespace:
    """A network namespace joined to this host by one veth pair: what runs in it reaches the
    host only at ``host_ip`` (and nothing of the host's loopback)."""

    def __init__(self, name: str, index: int) -> None:
        self.name = name
        self.host_ip = f"10.231.{index}.1"
        self.inside_ip = f"10.231.{index}.2"
        self._host_link = f"avh{index}"
        self._inside_link = f"avn{index}"

    def create(self) -> Namespace:
        """Make the namespace and its link (``ip netns``, ``ip link``; needs root)."""
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self._host_link, "type", "veth", "peer", "name", self._inside_link)
        self._ip("link", "set", self._inside_link, "netns", self.name)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", self._host_link)
        self._ip("link", "set", self._host_link, "up")
        inside = ["netns", "exec", self.name, "ip"]
        self._ip(*inside, "addr", "add", f"{self.inside_ip}/30", "dev", self._inside_link)
        self._ip(*inside, "link", "set", self._inside_link, "up")
        self._ip(*inside, "link", "set", "lo", "up")
        return self

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def delete(self) -> None:
        """Remove the namespace (its end of the link goes with it, and so the other end)."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self._host_link], capture_output=True, check=False)

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], capture_output=True, check=True, timeout=10)
