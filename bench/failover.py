"""Failover: several ComfyUI servers, one killed mid-run; jobs lost and time added.

Runs the same batch twice against fresh stand-in servers and a fresh service: once undisturbed
(the baseline) and once with one server killed (SIGKILL) ``--kill-after`` seconds in. Reports
jobs lost (goal 0), the batch's makespan in both runs, and for the jobs that were on the killed
server (read from the service's database: the prompts it left there) their time against the
others'. Usage::

    python -m bench.failover [--servers 4] [--job-seconds 0.25] [--jobs 96] [--grace 10]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench.fleet import start_service, start_standin
from bench.latency import ROOT, photo_bytes, update_results
from bench.throughput import STEPS

MARK_START, MARK_END = "<!-- bench:failover:start -->", "<!-- bench:failover:end -->"


def one_run(
    servers: int, job_seconds: float, jobs: int, grace: float, kill_after: float | None
) -> dict:
    photo = photo_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standins = [
            start_standin(scratch_path, f"comfyui{i}", step_delay=job_seconds / STEPS)
            for i in range(servers)
        ]
        service = start_service(
            scratch_path, [s.url for s in standins], COMFYUI_DOWN_GRACE=str(grace)
        )
        try:
            http = httpx.Client(base_url=service.url, timeout=httpx.Timeout(60, connect=10))
            name = http.post(
                "/upload-image", files={"image": ("bench.png", photo, "image/png")}
            ).json()["imageName"]
            started = time.monotonic()
            ids = [
                http.post(
                    "/generate-avatar-by-image",
                    json={"imageName": name, "seed": seed, "async": True},
                ).json()["jobId"]
                for seed in range(jobs)
            ]
            killed = False
            records: dict[str, dict] = {}
            while len(records) < len(ids):
                if (
                    kill_after is not None
                    and not killed
                    and time.monotonic() - started > kill_after
                ):
                    standins[0].kill()
                    killed = True
                for job_id in ids:
                    if job_id in records:
                        continue
                    record = http.get(f"/jobs/{job_id}").json()
                    if record["status"] in {"succeeded", "failed", "cancelled"}:
                        records[job_id] = record
                time.sleep(0.1)
            http.close()
        finally:
            service.stop()
            for standin in standins:
                standin.stop()
        database = scratch_path / "instance" / "avatar_service.sqlite3"
        with sqlite3.connect(database) as connection:
            affected = {
                row[0]
                for row in connection.execute(
                    "SELECT job_id FROM abandoned_prompts WHERE server = ?", (standins[0].url,)
                )
            }
    totals = {job_id: r["timings"].get("totalMs", 0) / 1000 for job_id, r in records.items()}
    created = min(_moment(r["createdAt"]) for r in records.values())
    finished = max(_moment(r["finishedAt"]) for r in records.values())
    others = [t for job_id, t in totals.items() if job_id not in affected]
    moved = [t for job_id, t in totals.items() if job_id in affected]
    return {
        "lost": sum(r["status"] != "succeeded" for r in records.values()),
        "makespan_s": round(finished - created, 2),
        "affected": len(moved),
        "affected_mean_s": round(statistics.fmean(moved), 2) if moved else None,
        "others_mean_s": round(statistics.fmean(others), 2) if others else None,
    }


def _moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def run(servers: int, job_seconds: float, jobs: int, grace: float, kill_after: float) -> dict:
    baseline = one_run(servers, job_seconds, jobs, grace, None)
    killed = one_run(servers, job_seconds, jobs, grace, kill_after)
    return {
        "servers": servers,
        "job_seconds": job_seconds,
        "jobs": jobs,
        "grace_s": grace,
        "kill_after_s": kill_after,
        "baseline": baseline,
        "killed": killed,
        "extra_makespan_s": round(killed["makespan_s"] - baseline["makespan_s"], 2),
    }


def as_markdown(result: dict) -> str:
    base, kill = result["baseline"], result["killed"]
    extra = (
        "n/a"
        if kill["affected_mean_s"] is None
        else f"{kill['affected_mean_s']} s vs {kill['others_mean_s']} s for the others"
    )
    return "\n".join(
        [
            f"{result['servers']} stand-in servers at {result['job_seconds']} s per job, "
            f"{result['jobs']} async jobs, one server killed (SIGKILL) {result['kill_after_s']} s "
            f"in, COMFYUI_DOWN_GRACE={result['grace_s']:g}, measured on "
            f"{time.strftime('%Y-%m-%d')}:",
            "",
            "| measure | undisturbed (baseline) | one server killed |",
            "|---|---:|---:|",
            f"| jobs lost | {base['lost']} | **{kill['lost']}** |",
            f"| makespan of the batch | {base['makespan_s']} s | {kill['makespan_s']} s |",
            f"| jobs moved off the killed server | - | {kill['affected']} |",
            f"| mean time of a moved job | - | {extra} |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=0.25)
    parser.add_argument("--jobs", type=int, default=96)
    parser.add_argument("--grace", type=float, default=10.0)
    parser.add_argument("--kill-after", type=float, default=2.0)
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    result = run(args.servers, args.job_seconds, args.jobs, args.grace, args.kill_after)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "failover.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
