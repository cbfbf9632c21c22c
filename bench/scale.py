"""Scale-out: API replicas and worker processes on one PostgreSQL, one replica and one worker
killed mid-run, against the single-process default (SQLite) in the same run.

Three runs on fresh stand-in servers: the single process (``python app.py`` with every server
in ``COMFYUI_URL``, the baseline), the fleet undisturbed (2 API replicas without workers, one
worker process per server), and the fleet with one replica and one worker killed (SIGKILL)
``--kill-after`` seconds in. Reports jobs lost (goal 0), jobs with more than one avatar and jobs
whose prompt ran to the end on two servers (from the servers' ``/history``; goal 0 for both),
throughput against the baseline, and the time from the kill until the killed worker's jobs were
taken over. Needs PostgreSQL (``TEST_DATABASE_URL``, else the local server on 127.0.0.1:5432);
works in a schema of its own, dropped at the end. Usage::

    python -m bench.scale [--servers 4] [--job-seconds 0.25] [--jobs 300] [--lease 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

import httpx
import psycopg

from bench.fleet import Proc, start_service, start_standin
from bench.latency import (
    ROOT,
    free_port,
    photo_bytes,
    process_cpu_seconds,
    update_results,
    wait_http,
)
from bench.throughput import STEPS

MARK_START, MARK_END = "<!-- bench:scale:start -->", "<!-- bench:scale:end -->"
SERVER_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")
TERMINAL = {"succeeded", "failed", "cancelled"}


def server_url() -> str:
    for url in [os.environ.get("TEST_DATABASE_URL"), *SERVER_URLS]:
        if not url:
            continue
        try:
            psycopg.connect(url, connect_timeout=2).close()
            return url
        except psycopg.Error:
            continue
    raise SystemExit("no PostgreSQL answers (set TEST_DATABASE_URL)")


def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def submit(clients: list[httpx.Client], jobs: int, photo: bytes) -> list[str]:
    name = (
        clients[0]
        .post("/upload-image", files={"image": ("bench.png", photo, "image/png")})
        .json()["imageName"]
    )
    ids = []
    for seed in range(jobs):
        answer = clients[seed % len(clients)].post(
            "/generate-avatar-by-image", json={"imageName": name, "seed": seed, "async": True}
        )
        answer.raise_for_status()
        ids.append(answer.json()["jobId"])
    return ids


def collect(http: httpx.Client, ids: list[str], on_tick=None) -> dict[str, dict]:
    """Every job's final record, read in order: one GET per job, and a poll every 0.1 s while
    the next one runs (light enough that the API processes' CPU is theirs, not this loop's)."""
    records: dict[str, dict] = {}
    pending = list(ids)
    deadline = time.monotonic() + 600
    while pending and time.monotonic() < deadline:
        if on_tick is not None:
            on_tick()
        record = http.get(f"/jobs/{pending[0]}").json()
        if record["status"] in TERMINAL:
            records[pending.pop(0)] = record
        else:
            time.sleep(0.1)
    return records


def completed_seeds(servers: list[str]) -> Counter[int]:
    """How many prompts of each seed (one seed per job here) ran to success on the servers."""
    seeds: Counter[int] = Counter()
    for server in servers:
        history = httpx.get(f"{server}/history", params={"max_items": 100000}, timeout=30).json()
        for entry in history.values():
            if (entry.get("status") or {}).get("status_str") != "success":
                continue
            graph = entry["prompt"][2]
            for node in graph.values():
                seed = node.get("inputs", {}).get("seed")
                if isinstance(seed, int):
                    seeds[seed] += 1
    return seeds


def summary(records: dict[str, dict], ids: list[str], servers: list[str]) -> dict:
    created = min(_moment(r["createdAt"]) for r in records.values())
    finished = max(_moment(r["finishedAt"]) for r in records.values())
    ran = completed_seeds(servers)
    return {
        "lost": len(ids) - sum(r["status"] == "succeeded" for r in records.values()),
        "two_avatars": sum(1 for r in records.values() if len(r["avatars"]) > 1),
        "ran_twice": sum(1 for count in ran.values() if count > 1),
        "makespan_s": round(finished - created, 2),
        "jobs_per_s": round(len(ids) / (finished - created), 2),
    }


def single_process(servers: int, step_delay: float, jobs: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standins = [
            start_standin(scratch_path, f"c{i}", step_delay=step_delay) for i in range(servers)
        ]
        service = start_service(scratch_path, [s.url for s in standins])
        try:
            http = httpx.Client(base_url=service.url, timeout=httpx.Timeout(60, connect=10))
            ids = submit([http], jobs, photo_bytes())
            records = collect(http, ids)
            http.close()
            return summary(records, ids, [s.url for s in standins])
        finally:
            service.stop()
            for standin in standins:
                standin.stop()


def fleet_run(
    database: str,
    servers: int,
    step_delay: float,
    jobs: int,
    lease: float,
    kill_after: float | None,
) -> dict:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    url = f"{database}{'&' if '?' in database else '?'}options=-csearch_path%3D{schema}"
    try:
        with tempfile.TemporaryDirectory() as scratch:
            return _fleet_in(Path(scratch), url, servers, step_delay, jobs, lease, kill_after)
    finally:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def _fleet_in(
    scratch: Path, url: str, servers: int, step_delay: float, jobs: int, lease: float,
    kill_after: float | None,
) -> dict:  # fmt: skip
    standins = [start_standin(scratch, f"c{i}", step_delay=step_delay) for i in range(servers)]
    base = {
        **os.environ,
        "DATABASE_URL": url,
        "UPLOAD_DIR": str(scratch / "uploads"),
        "OUTPUT_DIR": str(scratch / "generated_avatar"),
        "WORKER_LEASE": str(lease),
        "LOG_LEVEL": "WARNING",
    }
    processes: list[subprocess.Popen] = []
    replicas: list[Proc] = []
    for index in range(2):
        port = free_port()
        env = {**base, "INSTANCE_PATH": str(scratch / f"api{index}"), "PORT": str(port),
               "LOCAL_WORKERS": "false"}  # fmt: skip
        replicas.append(Proc(f"http://127.0.0.1:{port}", spawn([sys.executable, "app.py"], env)))
    workers = []
    for index, standin in enumerate(standins):
        env = {**base, "INSTANCE_PATH": str(scratch / f"worker{index}")}
        argv = [sys.executable, "-m", "avatar_service.worker", "--comfyui", standin.url]
        workers.append(spawn(argv, env))
    processes.extend(workers)
    try:
        for replica in replicas:
            wait_http(f"{replica.url}/healthz")
        clients = [
            httpx.Client(base_url=r.url, timeout=httpx.Timeout(60, connect=10)) for r in replicas
        ]
        deadline = time.monotonic() + 60
        while True:
            live = clients[1].get("/readyz").json().get("workers", [])
            if len([w for w in live if w["usable"]]) == servers or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        started = time.monotonic()
        cpu_before = [process_cpu_seconds(r.popen.pid) for r in replicas]
        ids = submit(clients, jobs, photo_bytes())
        state = {"killed_at": None, "taken_over_at": None, "held": set()}

        def tick() -> None:
            now = time.monotonic()
            if kill_after is not None and state["killed_at"] is None and now - started > kill_after:
                with psycopg.connect(url) as db:
                    rows = db.execute(
                        "SELECT id FROM jobs WHERE server = %s AND status IN ('queued', 'running')",
                        (standins[0].url,),
                    ).fetchall()
                state["held"] = {row[0] for row in rows}
                replicas[0].kill()
                workers[0].kill()
                workers[0].wait(10)
                state["killed_at"] = time.monotonic()
            if state["killed_at"] is not None and state["taken_over_at"] is None:
                with psycopg.connect(url) as db:
                    rows = db.execute(
                        "SELECT COUNT(*) FROM jobs WHERE server = %s AND status IN "
                        "('queued', 'running')",
                        (standins[0].url,),
                    ).fetchone()
                if rows[0] == 0:
                    state["taken_over_at"] = time.monotonic()

        records = collect(clients[1], ids, on_tick=tick)
        cpu = sum(
            process_cpu_seconds(r.popen.pid) - before
            for r, before in zip(replicas, cpu_before, strict=True)
            if r.popen.poll() is None
        )
        for client in clients:
            client.close()
        result = summary(records, ids, [s.url for s in standins])
        result["api_cpu_ms_per_job"] = round(cpu * 1000 / jobs, 1)
        if state["killed_at"] is not None:
            result["held_by_killed_worker"] = len(state["held"])
            result["takeover_s"] = (
                None
                if state["taken_over_at"] is None
                else round(state["taken_over_at"] - state["killed_at"], 2)
            )
        return result
    finally:
        for replica in replicas:
            replica.stop()
        for process in processes:
            if process.poll() is None:
                process.terminate()
                process.wait(20)
        for standin in standins:
            standin.stop()


def _moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def run(servers: int, job_seconds: float, jobs: int, lease: float, kill_after: float) -> dict:
    database = server_url()
    step_delay = job_seconds / STEPS
    baseline = single_process(servers, step_delay, jobs)
    undisturbed = fleet_run(database, servers, step_delay, jobs, lease, None)
    killed = fleet_run(database, servers, step_delay, jobs, lease, kill_after)
    return {
        "servers": servers,
        "job_seconds": job_seconds,
        "jobs": jobs,
        "lease_s": lease,
        "kill_after_s": kill_after,
        "single_process": baseline,
        "fleet": undisturbed,
        "fleet_killed": killed,
    }


def as_markdown(result: dict) -> str:
    base, fleet, kill = result["single_process"], result["fleet"], result["fleet_killed"]

    def ratio(run: dict) -> str:
        return f"{run['jobs_per_s']} ({run['jobs_per_s'] / base['jobs_per_s']:.2f}x)"

    return "\n".join(
        [
            f"{result['servers']} stand-in servers at {result['job_seconds']} s per job, "
            f"{result['jobs']} async jobs; the fleet is 2 API replicas (`LOCAL_WORKERS=false`) "
            f"and {result['servers']} worker processes on one PostgreSQL, "
            f"`WORKER_LEASE={result['lease_s']:g}`; in the last run one replica and one worker "
            f"are killed (SIGKILL) {result['kill_after_s']:g} s in. Measured on "
            f"{time.strftime('%Y-%m-%d')}:",
            "",
            "| measure | single process (SQLite) | fleet | fleet, replica + worker killed |",
            "|---|---:|---:|---:|",
            f"| jobs lost | {base['lost']} | {fleet['lost']} | **{kill['lost']}** |",
            f"| jobs with two avatars | {base['two_avatars']} | {fleet['two_avatars']} | "
            f"**{kill['two_avatars']}** |",
            f"| jobs whose prompt ran to the end twice (GPU work) | {base['ran_twice']} | "
            f"{fleet['ran_twice']} | **{kill['ran_twice']}** |",
            f"| makespan | {base['makespan_s']} s | {fleet['makespan_s']} s | "
            f"{kill['makespan_s']} s |",
            f"| throughput, jobs/s (vs single) | {base['jobs_per_s']} | {ratio(fleet)} | "
            f"{ratio(kill)} |",
            f"| jobs held by the killed worker | - | - | {kill.get('held_by_killed_worker')} |",
            f"| kill to all its jobs taken over | - | - | {kill.get('takeover_s')} s |",
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
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    result = run(args.servers, args.job_seconds, args.jobs, args.lease, args.kill_after)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
