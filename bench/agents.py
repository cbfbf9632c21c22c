"""Worker agents against database workers and in-process workers, in one run; one agent killed.

Four runs of the same batch on fresh stand-in servers: the single process driving every server
itself (``python app.py``, in-process workers, SQLite: the baseline); 2 API replicas and one
worker process per server on one PostgreSQL (database workers); one API process on SQLite that
only worker agents serve (``avatar-worker`` per server, each in an empty folder, reaching the API
over HTTP only); and the same with the first agent killed (SIGKILL) ``--kill-after`` seconds in.
Reports throughput (against the baseline), jobs lost, jobs with two avatars and prompts that ran
to the end twice (goal 0 for all three), the time from the kill until the killed agent's jobs
were back in other hands, and the CPU the API processes spent per job (read from ``/proc``): the
API's added cost of agents. Needs PostgreSQL for the database workers' run (``TEST_DATABASE_URL``
or the local server). Usage::

    python -m bench.agents [--servers 4] [--job-seconds 0.25] [--jobs 300] [--lease 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.fleet import Proc, start_service, start_standin
from bench.latency import ROOT, photo_bytes, process_cpu_seconds, update_results
from bench.scale import collect, fleet_run, server_url, submit, summary
from bench.throughput import STEPS

MARK_START, MARK_END = "<!-- bench:agents:start -->", "<!-- bench:agents:end -->"
TOKEN = "bench-worker-token-0123456789"


def in_process(servers: int, step_delay: float, jobs: int) -> dict:
    """The baseline: one process drives every server itself."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standins = [
            start_standin(scratch_path, f"c{i}", step_delay=step_delay) for i in range(servers)
        ]
        service = start_service(scratch_path, [s.url for s in standins])
        try:
            http = httpx.Client(base_url=service.url, timeout=httpx.Timeout(60, connect=10))
            before = process_cpu_seconds(service.popen.pid)
            ids = submit([http], jobs, photo_bytes())
            records = collect(http, ids)
            cpu = process_cpu_seconds(service.popen.pid) - before
            http.close()
            result = summary(records, ids, [s.url for s in standins])
            result["api_cpu_ms_per_job"] = round(cpu * 1000 / jobs, 1)
            return result
        finally:
            service.stop()
            for standin in standins:
                standin.stop()


def agents_run(
    servers: int, step_delay: float, jobs: int, lease: float, kill_after: float | None
) -> dict:
    """One API process on SQLite, served only by one agent per server."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standins = [
            start_standin(scratch_path, f"c{i}", step_delay=step_delay) for i in range(servers)
        ]
        api = start_service(
            scratch_path,
            [],
            LOCAL_WORKERS="false",
            WORKER_TOKENS=TOKEN,
            WORKER_LEASE=str(lease),
            ready=False,
        )
        agents = [
            _agent(scratch_path, api.url, standin.url, f"a{i}")
            for i, standin in enumerate(standins)
        ]
        try:
            http = httpx.Client(base_url=api.url, timeout=httpx.Timeout(60, connect=10))
            wait_agents(http, servers)
            agent_cpu = [process_cpu_seconds(agent.pid) for agent in agents]
            watched = agents[-1]  # never killed: what it holds after the batch, against before
            held_before = _resources(watched.pid)
            before = process_cpu_seconds(api.popen.pid)
            started = time.monotonic()
            ids = submit([http], jobs, photo_bytes())
            state: dict = {"killed_at": None, "back_at": None, "held": 0}
            database = scratch_path / "instance" / "avatar_service.sqlite3"

            def tick() -> None:
                now = time.monotonic()
                if (
                    kill_after is not None
                    and state["killed_at"] is None
                    and now - started > kill_after
                ):
                    state["held"] = _held(database, "agent:a0")
                    agents[0].kill()
                    agents[0].wait(10)
                    state["killed_at"] = time.monotonic()
                gone = state["killed_at"] is not None and state["back_at"] is None
                if gone and _held(database, "agent:a0") == 0:
                    state["back_at"] = time.monotonic()

            records = collect(http, ids, on_tick=tick)
            cpu = process_cpu_seconds(api.popen.pid) - before
            time.sleep(2 * 0.5)  # two heartbeats: what an agent keeps per job is dropped by then
            held_after = _resources(watched.pid)
            alive = [agent for agent in agents if agent.poll() is None]
            spent = sum(
                process_cpu_seconds(agent.pid) - agent_cpu[agents.index(agent)] for agent in alive
            )
            http.close()
            result = summary(records, ids, [s.url for s in standins])
            result["api_cpu_ms_per_job"] = round(cpu * 1000 / jobs, 1)
            result["agent_cpu_ms_per_job"] = round(spent * 1000 / jobs, 1)
            result["agent_threads"] = f"{held_before[0]} → {held_after[0]}"
            result["agent_descriptors"] = f"{held_before[1]} → {held_after[1]}"
            result["agent_rss_mib"] = f"{held_before[2]} → {held_after[2]}"
            if kill_after is not None:
                result["held_by_killed_agent"] = state["held"]
                result["takeover_s"] = (
                    None
                    if state["back_at"] is None or state["killed_at"] is None
                    else round(state["back_at"] - state["killed_at"], 2)
                )
            return result
        finally:
            for agent in agents:
                if agent.poll() is None:
                    agent.terminate()
                    agent.wait(20)
            api.stop()
            for standin in standins:
                standin.stop()


def start_agent(scratch: Path, api: str, comfyui: str, name: str) -> Proc:
    """A worker agent process (in an empty folder of its own) as a ``Proc``."""
    return Proc(api, _agent(scratch, api, comfyui, name))


def _agent(scratch: Path, api: str, comfyui: str, name: str) -> subprocess.Popen:
    home = scratch / name
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k in {"PATH", "HOME", "LANG", "VIRTUAL_ENV"}}
    argv = [sys.executable, "-m", "avatar_service.agent", "--api", api, "--token", TOKEN,
            "--comfyui", comfyui, "--name", name]  # fmt: skip
    env["LOG_LEVEL"] = "WARNING"
    return subprocess.Popen(
        argv, cwd=home, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _resources(pid: int) -> tuple[int, int, float]:
    """A process's threads, open descriptors and resident memory (MiB), from /proc."""
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    threads = int(status["Threads"])
    rss = round(int(status["VmRSS"].split()[0]) / 1024, 1)
    return threads, len(list(Path(f"/proc/{pid}/fd").iterdir())), rss


def wait_agents(http: httpx.Client, servers: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        agents = http.get("/readyz").json().get("agents", [])
        if len([a for a in agents if a["usable"]]) == servers:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the agents never joined: {agents}")
        time.sleep(0.1)


def _held(database: Path, server: str) -> int:
    """Unfinished jobs on a server (read from the API's SQLite, beside it)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5) as connection:
        (count,) = connection.execute(
            "SELECT COUNT(*) FROM jobs WHERE server = ? AND status IN ('queued', 'running')",
            (server,),
        ).fetchone()
    return int(count)


def run(servers: int, job_seconds: float, jobs: int, lease: float, kill_after: float) -> dict:
    step_delay = job_seconds / STEPS
    baseline = in_process(servers, step_delay, jobs)
    database = fleet_run(server_url(), servers, step_delay, jobs, lease, None)
    agents = agents_run(servers, step_delay, jobs, lease, None)
    killed = agents_run(servers, step_delay, jobs, lease, kill_after)
    return {
        "servers": servers,
        "job_seconds": job_seconds,
        "jobs": jobs,
        "lease_s": lease,
        "kill_after_s": kill_after,
        "in_process": baseline,
        "database_workers": database,
        "agents": agents,
        "agents_killed": killed,
    }


def as_markdown(result: dict) -> str:
    base = result["in_process"]
    runs = [base, result["database_workers"], result["agents"], result["agents_killed"]]

    def row(name: str, key: str, bold: bool = False) -> str:
        cells = [str(run.get(key, "-")) for run in runs]
        if bold:
            cells = [f"**{cell}**" for cell in cells]
        return f"| {name} | " + " | ".join(cells) + " |"

    throughput = " | ".join(
        f"{run['jobs_per_s']} ({run['jobs_per_s'] / base['jobs_per_s']:.2f}x)" for run in runs
    )
    killed = result["agents_killed"]
    return "\n".join(
        [
            f"{result['servers']} stand-in servers at {result['job_seconds']} s per job, "
            f"{result['jobs']} async jobs, `WORKER_LEASE={result['lease_s']:g}`; database workers: "
            "2 API replicas and one worker process per server on PostgreSQL; agents: one API "
            "process (SQLite) and one `avatar-worker` per server; in the last run the first agent "
            f"is killed (SIGKILL) {result['kill_after_s']:g} s in. Measured on "
            f"{time.strftime('%Y-%m-%d')} by `bench/agents.py`:",
            "",
            "| measure | in-process workers | database workers | agents | agents, one killed |",
            "|---|---:|---:|---:|---:|",
            f"| throughput, jobs/s (vs in-process) | {throughput} |",
            row("jobs lost", "lost", bold=True),
            row("jobs with two avatars", "two_avatars", bold=True),
            row("prompts that ran to the end twice", "ran_twice", bold=True),
            row("API processes' CPU per job, ms", "api_cpu_ms_per_job"),
            row("agents' CPU per job, ms", "agent_cpu_ms_per_job"),
            row("one agent's threads, before → after the batch", "agent_threads"),
            row("one agent's open descriptors, before → after", "agent_descriptors"),
            row("one agent's resident memory, MiB, before → after", "agent_rss_mib"),
            f"| jobs held by the killed agent | - | - | - | {killed.get('held_by_killed_agent')} |",
            f"| kill to all its jobs in other hands | - | - | - | {killed.get('takeover_s')} s |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=0.25)
    parser.add_argument("--jobs", type=int, default=300)
    parser.add_argument("--lease", type=float, default=5.0)
    parser.add_argument("--kill-after", type=float, default=5.0)
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into the README"
    )
    args = parser.parse_args()
    result = run(args.servers, args.job_seconds, args.jobs, args.lease, args.kill_after)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "agents.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END, ROOT / "README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
