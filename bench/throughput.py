"""Throughput across several ComfyUI servers: the service vs the servers' own capacity.

Starts N stand-in ComfyUI processes (each job takes ``--job-seconds``) and the service in front
of all of them. Baseline: the servers' capacity measured in the same run, by queueing prompts
straight into every server at once and timing until all are done. Then the service gets
``--sync`` synchronous requests (each holding its connection) and ``--async`` asynchronous ones
at once. Reports jobs per second as a share of the capacity, errors, mix-ups (each avatar's
embedded prompt must carry its own job's seed), and the service's peak RSS and threads. Usage::

    python -m bench.throughput [--servers 4] [--job-seconds 0.25] [--sync 64] [--async 256]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
from PIL import Image

from bench.fleet import ResourceSampler, start_service, start_standin
from bench.latency import ROOT, photo_bytes, update_results

MARK_START, MARK_END = "<!-- bench:throughput:start -->", "<!-- bench:throughput:end -->"
STEPS = 70  # sampler steps of the shipped avatar style


def workflow() -> dict:
    graph = json.loads((ROOT / "workflows" / "avatar.json").read_text())
    return graph.get("prompt", graph)


def direct_capacity(urls: list[str], per_server: int, photo: bytes, window: int = 2) -> float:
    """Jobs per second the servers manage when a direct client keeps each one busy.

    Each server always has ``window`` prompts (one running, one waiting), as many as the
    service gives it by default, so the GPU never idles and its queue never grows.
    """
    graph = workflow()

    def feed(url: str) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            name = http.post(
                "/upload/image", files={"image": ("bench.png", photo, "image/png")}
            ).json()["name"]
            outstanding: deque[str] = deque()
            for seed in range(per_server):
                prompt = json.loads(json.dumps(graph))
                for node in prompt.values():
                    if node["class_type"] == "LoadImage":
                        node["inputs"]["image"] = name
                    elif node["class_type"] == "KSampler":
                        node["inputs"]["seed"] = seed
                prompt_id = str(uuid.uuid4())
                http.post("/prompt", json={"prompt": prompt, "prompt_id": prompt_id})
                outstanding.append(prompt_id)
                while len(outstanding) >= window or (seed == per_server - 1 and outstanding):
                    if http.get(f"/history/{outstanding[0]}").json():
                        outstanding.popleft()
                    else:
                        time.sleep(0.01)

    started = time.monotonic()
    with ThreadPoolExecutor(len(urls)) as pool:
        list(pool.map(feed, urls))
    return len(urls) * per_server / (time.monotonic() - started)


def seed_in_png(data: bytes) -> int | None:
    """The KSampler seed of the prompt ComfyUI embedded in a PNG (None when absent)."""
    with Image.open(io.BytesIO(data)) as image:
        prompt = json.loads(image.info.get("prompt", "{}"))
    for node in prompt.values():
        if node.get("class_type") == "KSampler":
            return int(node["inputs"]["seed"])
    return None


def through_service(url: str, sync: int, asynchronous: int, photo: bytes, pid: int) -> dict:
    """Submit the jobs, wait for all, and check every avatar."""
    http = httpx.Client(base_url=url, timeout=httpx.Timeout(300, connect=10))
    name = http.post("/upload-image", files={"image": ("bench.png", photo, "image/png")}).json()[
        "imageName"
    ]
    sync_answers: list[httpx.Response] = []
    lock = threading.Lock()

    def sync_request(seed: int) -> None:
        with httpx.Client(base_url=url, timeout=httpx.Timeout(300, connect=10)) as own:
            answer = own.post("/generate-avatar-by-image", json={"imageName": name, "seed": seed})
        with lock:
            sync_answers.append(answer)

    with ResourceSampler(pid) as resources:
        waiters = [
            threading.Thread(target=sync_request, args=(seed,)) for seed in range(1, sync + 1)
        ]
        for waiter in waiters:
            waiter.start()
        async_ids = []
        for seed in range(sync + 1, sync + asynchronous + 1):
            answer = http.post(
                "/generate-avatar-by-image",
                json={"imageName": name, "seed": seed, "async": True},
            )
            if answer.status_code == 202:
                async_ids.append(answer.json()["jobId"])
        for waiter in waiters:
            waiter.join()
        records = {}
        pending = list(async_ids)
        while pending:
            still = []
            for job_id in pending:
                record = http.get(f"/jobs/{job_id}").json()
                if record["status"] in {"succeeded", "failed", "cancelled"}:
                    records[job_id] = record
                else:
                    still.append(job_id)
            pending = still
            time.sleep(0.2)
    early = sum(answer.status_code == 202 for answer in sync_answers)
    for answer in sync_answers:
        if answer.status_code in {200, 202}:
            record = answer.json()
            if answer.status_code == 202:
                record = http.get(f"/jobs/{record['jobId']}").json()
            records[record["jobId"]] = record
    failed = (sync + asynchronous) - sum(r["status"] == "succeeded" for r in records.values())
    mixups = 0
    for record in records.values():
        if record["status"] != "succeeded":
            continue
        data = http.get(f"/avatars/{record['avatars'][0]['fileName']}").content
        mixups += seed_in_png(data) != record["seed"]
    created = [_moment(r["createdAt"]) for r in records.values()]
    finished = [_moment(r["finishedAt"]) for r in records.values() if r["finishedAt"]]
    elapsed = max(finished) - min(created)
    http.close()
    return {
        "jobs": sync + asynchronous,
        "elapsed_s": round(elapsed, 2),
        "jobs_per_s": round(len(finished) / elapsed, 2),
        "errors": failed,
        "early_202": early,
        "mixups": mixups,
        "peak_rss_mb": round(resources.peak_rss_mb, 1),
        "peak_threads": resources.peak_threads,
    }


def _moment(stamp: str) -> float:
    return datetime.fromisoformat(stamp).timestamp()


def run(servers: int, job_seconds: float, sync: int, asynchronous: int) -> dict:
    photo = photo_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        standins = [
            start_standin(scratch_path, f"comfyui{i}", step_delay=job_seconds / STEPS)
            for i in range(servers)
        ]
        try:
            per_server = max(8, (sync + asynchronous) // servers // 2)
            capacity = direct_capacity([s.url for s in standins], per_server, photo)
            service = start_service(scratch_path, [s.url for s in standins])
            try:
                result = through_service(service.url, sync, asynchronous, photo, service.popen.pid)
            finally:
                service.stop()
        finally:
            for standin in standins:
                standin.stop()
    result.update(
        servers=servers,
        job_seconds=job_seconds,
        sync=sync,
        asynchronous=asynchronous,
        capacity_jobs_per_s=round(capacity, 2),
        share_of_capacity=round(result["jobs_per_s"] / capacity, 3),
    )
    return result


def as_markdown(result: dict) -> str:
    return "\n".join(
        [
            f"{result['servers']} stand-in servers at {result['job_seconds']} s per job, "
            f"{result['sync']} sync + {result['asynchronous']} async jobs at once, measured on "
            f"{time.strftime('%Y-%m-%d')}:",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| servers' capacity, fed directly (baseline) | {result['capacity_jobs_per_s']} "
            "jobs/s |",
            f"| through the service | {result['jobs_per_s']} jobs/s |",
            f"| **share of capacity** | **{result['share_of_capacity']:.1%}** |",
            f"| errors / mix-ups / sync answered 202 early | {result['errors']} / "
            f"{result['mixups']} / {result['early_202']} |",
            f"| service peak RSS / threads | {result['peak_rss_mb']} MB / "
            f"{result['peak_threads']} |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--job-seconds", type=float, default=0.25)
    parser.add_argument("--sync", type=int, default=64)
    parser.add_argument("--async", dest="asynchronous", type=int, default=256)
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    result = run(args.servers, args.job_seconds, args.sync, args.asynchronous)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
