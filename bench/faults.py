"""Faults that strand jobs elsewhere: a database cut shorter and longer than the lease, and a
ComfyUI that hangs while still answering HTTP. Nothing may be lost, run twice or stranded.

Each scenario runs on fresh stand-ins and a schema of its own on PostgreSQL, first undisturbed
(the baseline, in the same run), then with its fault:

- **database cut < lease**: an API replica (no workers) and one worker process whose database
  goes through a TCP proxy; ``--lease`` seconds of lease, the proxy cut for ``--short-cut``
  seconds while jobs run, then restored;
- **database cut > lease**: the same with a cut of ``--long-cut`` seconds (past the lease: the
  replica takes the worker's jobs over, from the servers' history or back to the queue);
- **hung ComfyUI**: one process (``python app.py``) in front of two stand-ins, one of which
  hangs mid-run (``COMFYUI_STALL_TIMEOUT=--stall``); its jobs must run on the other.

Reports per scenario: jobs lost (not succeeded), jobs whose prompt ran to the end twice (from
the servers' ``/history``), jobs stranded (still unfinished ``lease + 5 s`` after the fault
ended, beyond the undisturbed batch's time), and the time from the fault's end (the hang's
start) to every job ending. Needs PostgreSQL (``TEST_DATABASE_URL`` or the local server).
Usage::

    python -m bench.faults [--jobs 12] [--job-seconds 1] [--lease 8] [--update-docs]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg

from bench.fleet import Proc, start_service, start_standin
from bench.latency import ROOT, free_port, photo_bytes, update_results, wait_http
from bench.scale import completed_seeds, server_url, spawn, submit
from bench.throughput import STEPS
from tests.tcp_proxy import TcpProxy

MARK_START, MARK_END = "<!-- bench:faults:start -->", "<!-- bench:faults:end -->"
# A stranded job: still unfinished this long after the fault ended (beyond lease + the batch).
STRANDED_MARGIN = 5.0


@dataclass
class Outcome:
    """One scenario's run: with its fault, and the same batch undisturbed."""

    scenario: str
    jobs: int
    lost: int
    ran_twice: int
    stranded: int
    recovery_s: float | None
    batch_s: float
    undisturbed_batch_s: float


@contextmanager
def schema(database: str) -> Iterator[str]:
    """A fresh schema on the server; the DATABASE_URL that reaches it; dropped afterwards."""
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(database, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    separator = "&" if "?" in database else "?"
    try:
        yield f"{database}{separator}options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(database, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{name}" CASCADE')


def through(proxy: TcpProxy, url: str) -> str:
    """``url`` reaching its server through ``proxy``."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


def fleet_batch(
    database: str, *, jobs: int, step_delay: float, lease: float, cut: float | None
) -> tuple[dict[str, dict], list[str], float | None, int]:
    """One batch through an API replica and a worker whose database goes through a proxy cut
    for ``cut`` seconds 1.5 s in (None: undisturbed); records, ids, fault end, jobs run twice."""
    parts = urlsplit(database)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432)).start()
    with schema(database) as url, tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standin = start_standin(scratch_path, "gpu", step_delay=step_delay)
        base = {
            **os.environ,
            "DATABASE_URL": url,
            "UPLOAD_DIR": str(scratch_path / "uploads"),
            "OUTPUT_DIR": str(scratch_path / "generated_avatar"),
            "WORKER_LEASE": str(lease),
            "LOG_LEVEL": "WARNING",
        }
        port = free_port()
        api_env = {**base, "INSTANCE_PATH": str(scratch_path / "api"), "PORT": str(port),
                   "LOCAL_WORKERS": "false"}  # fmt: skip
        api = Proc(f"http://127.0.0.1:{port}", spawn([sys.executable, "app.py"], api_env))
        worker_env = {**base, "INSTANCE_PATH": str(scratch_path / "worker"),
                      "DATABASE_URL": through(proxy, url)}  # fmt: skip
        argv = [sys.executable, "-m", "avatar_service.worker", "--comfyui", standin.url]
        worker = spawn(argv, worker_env)
        try:
            wait_http(f"{api.url}/healthz")
            http = httpx.Client(base_url=api.url, timeout=httpx.Timeout(60, connect=10))
            wait_ready(http)
            started = time.monotonic()
            ids = submit([http], jobs, photo_bytes())
            fault: dict[str, float | None] = {"end": None}

            def tick() -> None:
                now = time.monotonic()
                if cut is not None and fault["end"] is None and now - started > 1.5:
                    proxy.cut()
                    time.sleep(cut)  # the outage itself
                    proxy.restore()
                    fault["end"] = time.monotonic()

            records = collect(http, ids, on_tick=tick)
            http.close()
            return records, ids, fault["end"], ran_twice([standin.url])
        finally:
            api.stop()
            if worker.poll() is None:
                worker.terminate()
                worker.wait(20)
            standin.stop()
            proxy.stop()


def wait_ready(http: httpx.Client, timeout: float = 60) -> None:
    """Until the service says it can take jobs (bounded)."""
    deadline = time.monotonic() + timeout
    while http.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the service never became ready")
        time.sleep(0.1)


def hung_batch(
    *, jobs: int, step_delay: float, stall: float, hang: bool
) -> tuple[dict[str, dict], list[str], float | None, int]:
    """One batch through one process in front of two stand-ins, one of which hangs 1.5 s in
    (``hang``); records, ids, the hang's start, jobs run twice."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standins = [start_standin(scratch_path, f"gpu{i}", step_delay=step_delay) for i in (1, 2)]
        service = start_service(
            scratch_path,
            [s.url for s in standins],
            COMFYUI_STALL_TIMEOUT=str(stall),
            COMFYUI_SLOTS="1",
        )
        try:
            http = httpx.Client(base_url=service.url, timeout=httpx.Timeout(60, connect=10))
            started = time.monotonic()
            ids = submit([http], jobs, photo_bytes())
            fault: dict[str, float | None] = {"end": None}

            def tick() -> None:
                if hang and fault["end"] is None and time.monotonic() - started > 1.5:
                    httpx.post(f"{standins[0].url}/_standin/faults", json={"hang": True})
                    fault["end"] = time.monotonic()

            records = collect(http, ids, on_tick=tick)
            http.close()
            return records, ids, fault["end"], ran_twice([s.url for s in standins])
        finally:
            service.stop()
            for standin in standins:
                standin.stop()


# How long a batch is followed at most (a stranded job never ends: it is counted, not awaited).
BATCH_LIMIT = 120.0


def collect(http: httpx.Client, ids: list[str], on_tick: Callable[[], None]) -> dict[str, dict]:
    """The records of the jobs that end within BATCH_LIMIT (polled; ``on_tick`` each round)."""
    records: dict[str, dict] = {}
    deadline = time.monotonic() + BATCH_LIMIT
    while len(records) < len(ids) and time.monotonic() < deadline:
        on_tick()
        for job_id in ids:
            if job_id not in records:
                record = http.get(f"/jobs/{job_id}").json()
                if record["status"] in ("succeeded", "failed", "cancelled"):
                    records[job_id] = record
        time.sleep(0.2)
    return records


Batch = Callable[[bool], tuple[dict[str, dict], list[str], float | None, int]]


def scenario(name: str, batch: Batch, *, lease: float) -> Outcome:
    """The batch undisturbed, then with its fault; the outcome."""
    undisturbed, ids, _, _ = batch(False)
    records, ids, fault_end, twice = batch(True)
    undisturbed_s = span(undisturbed)
    ended_at = [moment(r["finishedAt"]) for r in records.values() if r.get("finishedAt")]
    fault_end_wall = None if fault_end is None else time.time() - (time.monotonic() - fault_end)
    recovery = None if fault_end_wall is None or not ended_at else max(ended_at) - fault_end_wall
    limit = lease + STRANDED_MARGIN + undisturbed_s
    stranded = len(ids) - len(records)
    if fault_end_wall is not None:
        stranded += sum(1 for at in ended_at if at - fault_end_wall > limit)
    return Outcome(
        scenario=name,
        jobs=len(ids),
        lost=len(ids) - sum(r["status"] == "succeeded" for r in records.values()),
        ran_twice=twice,
        stranded=stranded,
        recovery_s=None if recovery is None else round(max(0.0, recovery), 2),
        batch_s=round(span(records), 2),
        undisturbed_batch_s=round(undisturbed_s, 2),
    )


def ran_twice(servers: list[str]) -> int:
    """Jobs (one seed each) whose prompt ran to success more than once on the servers."""
    return sum(1 for count in completed_seeds(servers).values() if count > 1)


def span(records: dict[str, dict]) -> float:
    """Seconds from the first job's creation to the last one's end."""
    created = min(moment(r["createdAt"]) for r in records.values())
    finished = max(moment(r["finishedAt"]) for r in records.values() if r.get("finishedAt"))
    return finished - created


def moment(stamp: str) -> float:
    """An ISO timestamp of the service as a unix time."""
    from datetime import datetime

    return datetime.fromisoformat(stamp).timestamp()


def run(*, jobs: int, job_seconds: float, lease: float, short: float, long: float,
        stall: float) -> list[Outcome]:  # fmt: skip
    """Every scenario, in one run."""
    database = server_url()
    step_delay = job_seconds / STEPS

    def cut_for(seconds: float) -> Batch:
        return lambda faulty: fleet_batch(
            database, jobs=jobs, step_delay=step_delay, lease=lease,
            cut=seconds if faulty else None,
        )  # fmt: skip

    def hung(faulty: bool) -> tuple[dict[str, dict], list[str], float | None, int]:
        return hung_batch(jobs=jobs, step_delay=step_delay, stall=stall, hang=faulty)

    return [
        scenario(f"database cut {short:g} s (< lease {lease:g} s)", cut_for(short), lease=lease),
        scenario(f"database cut {long:g} s (> lease {lease:g} s)", cut_for(long), lease=lease),
        scenario(f"ComfyUI hangs (stall timeout {stall:g} s)", hung, lease=stall),
    ]


def as_markdown(outcomes: list[Outcome], *, jobs: int, job_seconds: float) -> str:
    """The table, with the setting of the run."""
    lines = [
        f"{jobs} async jobs of {job_seconds:g} s each per scenario, measured on "
        f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs); each scenario's batch also ran "
        "undisturbed in the same run (the baseline):",
        "",
        "| scenario | jobs lost | run twice | stranded | fault's end to every job ended | "
        "batch (undisturbed) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for outcome in outcomes:
        lines.append(
            f"| {outcome.scenario} | **{outcome.lost}** | **{outcome.ran_twice}** | "
            f"**{outcome.stranded}** | {outcome.recovery_s} s | {outcome.batch_s} s "
            f"({outcome.undisturbed_batch_s} s) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--job-seconds", type=float, default=1.0)
    parser.add_argument("--lease", type=float, default=8.0)
    parser.add_argument("--short-cut", type=float, default=5.0)
    parser.add_argument("--long-cut", type=float, default=14.0)
    parser.add_argument("--stall", type=float, default=4.0)
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    outcomes = run(
        jobs=args.jobs,
        job_seconds=args.job_seconds,
        lease=args.lease,
        short=args.short_cut,
        long=args.long_cut,
        stall=args.stall,
    )
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "faults.json").write_text(
        json.dumps([asdict(o) for o in outcomes], indent=2) + "\n"
    )
    markdown = as_markdown(outcomes, jobs=args.jobs, job_seconds=args.job_seconds)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    bad = any(o.lost or o.ran_twice or o.stranded for o in outcomes)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
