"""Soak: thousands of jobs through one service process; nothing may accumulate per job.

Starts the stand-in ComfyUI with zero render time and the service as ``python app.py`` (its
own process, waitress), on the embedded SQLite and on PostgreSQL. Jobs are sent in rounds of
``--sample-every`` (synchronous and asynchronous mixed, ``--concurrency`` at once); after each
round, when nothing is in flight, the service's open file descriptors, threads and resident
memory are read from ``/proc/<pid>``. The baseline is the service's own first sample, taken in
the same run. Nothing may grow over the second half of the run: descriptors and threads must
end no higher than halfway, and resident memory must stop growing (its growth over the second
half, per 1,000 jobs, is reported). The first rounds may raise the descriptors a little, once:
the connection pools (SQLite, ComfyUI's HTTP) grow to what the concurrency needs; a per-job
leak keeps growing. Usage::

    python -m bench.soak [--jobs 5000] [--sample-every 500] [--concurrency 8]
                         [--database sqlite|postgresql|both] [--update-docs]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench import agents
from bench.fleet import Proc, start_service, start_standin
from bench.latency import ROOT, photo_bytes, update_results

MARK_START, MARK_END = "<!-- bench:soak:start -->", "<!-- bench:soak:end -->"
AGENT_LABEL = "worker agent (its own process; the API on SQLite)"
# Where a PostgreSQL is looked for when TEST_DATABASE_URL is unset (trust auth, as in CI).
LOCAL_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
ENDED = {"succeeded", "failed", "cancelled"}


@dataclass
class Sample:
    """The service process after ``jobs`` jobs, with none in flight."""

    jobs: int
    fds: int
    threads: int
    rss_mib: float


@dataclass
class Soak:
    """One database's run."""

    database: str
    samples: list[Sample] = field(default_factory=list)
    failed: int = 0
    seconds: float = 0.0

    @property
    def rss_growth_per_1000(self) -> float:
        """MiB of resident memory gained per 1,000 jobs over the second half of the run."""
        middle = self.samples[len(self.samples) // 2]
        last = self.samples[-1]
        if last.jobs == middle.jobs:
            return 0.0
        return (last.rss_mib - middle.rss_mib) * 1000 / (last.jobs - middle.jobs)


def read_process(pid: int, jobs: int) -> Sample:
    """Open descriptors, threads and resident memory of a process."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return Sample(
        jobs=jobs,
        fds=fds,
        threads=int(status["Threads"]),
        rss_mib=round(int(status["VmRSS"].split()[0]) / 1024, 1),
    )


def one_job(http: httpx.Client, image_name: str, seed: int) -> bool:
    """One generation, synchronous for odd seeds and asynchronous (then polled) for even."""
    body = {"imageName": image_name, "seed": seed, "width": 64, "height": 64}
    if seed % 2:
        answer = http.post("/generate-avatar-by-image", json=body)
        return answer.status_code == 200 and answer.json()["status"] == "succeeded"
    answer = http.post("/generate-avatar-by-image", json={**body, "async": True})
    if answer.status_code != 202:
        return False
    location = answer.headers["Location"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = http.get(location).json()
        if job["status"] in ENDED:
            return job["status"] == "succeeded"
        time.sleep(0.01)
    return False


@contextlib.contextmanager
def postgres_schema() -> Iterator[str]:
    """A fresh schema on TEST_DATABASE_URL (or the local server), dropped afterwards."""
    import uuid
    from urllib.parse import quote

    import psycopg

    server = os.environ.get("TEST_DATABASE_URL", LOCAL_POSTGRES)
    name = f"soak_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True, connect_timeout=5) as connection:
        connection.execute(f'CREATE SCHEMA "{name}"')
    separator = "&" if "?" in server else "?"
    try:
        yield f"{server}{separator}options={quote(f'-csearch_path={name}')}"
    finally:
        with psycopg.connect(server, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def soak(database: str, *, jobs: int, sample_every: int, concurrency: int) -> Soak:
    """Run ``jobs`` jobs through one service process on ``database``; sample between rounds.

    ``agent``: the service on SQLite drives no ComfyUI; one worker agent (``avatar-worker``)
    runs every job, and the agent's process is the one sampled."""
    result = Soak(AGENT_LABEL if database == "agent" else database)
    with tempfile.TemporaryDirectory() as scratch, contextlib.ExitStack() as stack:
        scratch_path = Path(scratch)
        settings = {"MAX_ACTIVE_JOBS": "4096", "MAX_QUEUED_JOBS": "4096"}
        if database == "postgresql":
            settings["DATABASE_URL"] = stack.enter_context(postgres_schema())
        standin = start_standin(scratch_path, "comfyui", step_delay=0, zero_cost=True)
        stack.callback(standin.stop)
        if database == "agent":
            settings.update(LOCAL_WORKERS="false", WORKER_TOKENS=agents.TOKEN)
            service: Proc = start_service(scratch_path, [], ready=False, **settings)
            stack.callback(service.stop)
            agent = agents.start_agent(scratch_path, service.url, standin.url, "soak")
            stack.callback(agent.stop)
            with httpx.Client(base_url=service.url, timeout=30) as http:
                agents.wait_agents(http, 1)
            pid = agent.popen.pid
        else:
            service = start_service(scratch_path, [standin.url], **settings)
            stack.callback(service.stop)
            pid = service.popen.pid
        http = stack.enter_context(
            httpx.Client(
                base_url=service.url,
                timeout=120,
                limits=httpx.Limits(max_connections=concurrency),
            )
        )
        image_name = http.post(
            "/upload-image", files={"image": ("soak.png", photo_bytes(), "image/png")}
        ).json()["imageName"]
        pool = stack.enter_context(ThreadPoolExecutor(concurrency))
        # Warm up (first imports, pools, caches, one connection per client thread) at the
        # same concurrency before the baseline sample.
        warm_up = pool.map(lambda seed: one_job(http, image_name, seed), range(1, 8 * concurrency))
        result.failed += sum(1 for ok in warm_up if not ok)
        result.samples.append(read_process(pid, 0))
        started = time.monotonic()
        done = 0
        while done < jobs:
            count = min(sample_every, jobs - done)
            seeds = range(1000 + done, 1000 + done + count)
            outcomes = pool.map(lambda seed: one_job(http, image_name, seed), seeds)
            result.failed += sum(1 for ok in outcomes if not ok)
            done += count
            result.samples.append(read_process(pid, done))
            print(f"{database}: {result.samples[-1]}", file=sys.stderr, flush=True)
        result.seconds = time.monotonic() - started
        if service.popen.poll() is not None:
            raise RuntimeError(f"the service exited with {service.popen.returncode}")
    return result


def as_markdown(results: list[Soak], *, concurrency: int) -> str:
    """One table per database, and the verdicts."""
    lines = [
        f"{results[0].samples[-1].jobs} jobs per run through one `python app.py` (on SQLite, on "
        "PostgreSQL, and served by one worker agent, whose process is then the one measured), "
        f"{concurrency} at a time, synchronous and asynchronous alternating, on the stand-in "
        f"with zero render time; measured on {time.strftime('%Y-%m-%d')} "
        f"({os.cpu_count()} CPUs). Each row is read from `/proc` with no job in flight; the "
        "first row (after a warm-up) is the baseline.",
    ]
    for result in results:
        base = result.samples[0]
        lines += [
            "",
            f"**{result.database}**: {result.failed} failed requests, "
            f"{len(result.samples[-1:]) and result.samples[-1].jobs / result.seconds:.1f} jobs/s; "
            f"RSS growth over the second half: **{result.rss_growth_per_1000:.2f} MiB per "
            "1,000 jobs**",
            "",
            "| jobs done | open descriptors | threads | RSS (MiB) |",
            "|---:|---:|---:|---:|",
        ]
        for sample in result.samples:
            lines.append(
                f"| {sample.jobs} | {sample.fds} ({sample.fds - base.fds:+d}) | "
                f"{sample.threads} ({sample.threads - base.threads:+d}) | {sample.rss_mib} |"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "agent", "all"),
        default="all",
        help="where the jobs run: the service on SQLite, on PostgreSQL, or a worker agent",
    )
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    databases = ("sqlite", "postgresql", "agent") if args.database == "all" else (args.database,)
    results = [
        soak(
            database,
            jobs=args.jobs,
            sample_every=args.sample_every,
            concurrency=args.concurrency,
        )
        for database in databases
    ]
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "soak.json").write_text(
        json.dumps(
            [
                {
                    "database": r.database,
                    "failed": r.failed,
                    "seconds": r.seconds,
                    "rss_growth_per_1000": r.rss_growth_per_1000,
                    "samples": [s.__dict__ for s in r.samples],
                }
                for r in results
            ],
            indent=2,
        )
        + "\n"
    )
    markdown = as_markdown(results, concurrency=args.concurrency)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    flat = all(
        r.failed == 0
        and r.samples[-1].fds <= r.samples[len(r.samples) // 2].fds
        and r.samples[-1].threads <= r.samples[len(r.samples) // 2].threads
        and r.rss_growth_per_1000 < 1.0
        for r in results
    )
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())
