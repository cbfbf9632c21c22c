"""End-to-end latency of one generation: through the service vs a minimal direct ComfyUI client.

Both sides run against the same stand-in ComfyUI (its own process, zero render delay). The direct
client makes the calls any client must: upload the photo, POST /prompt, wait for ``executing``
null on the websocket, GET /history, GET /view. The service (its own process, waitress) adds its
HTTP layer, validation, the job record in SQLite, the avatar file and its answer; it sends a
photo to a server once (the seed's flow is one upload, then generations from it) and reads a
prompt's outputs from its websocket messages, so it makes only POST /prompt and GET /view for a
photo the server has; ``--fresh-photos`` makes every service run use a photo uploaded to the
service just before (untimed), which the service must send within the run. Runs alternate
between the two sides so machine noise hits both alike. CPU per job is read for each side: the
service process's user + system time from ``/proc/<pid>/stat`` over the measured runs
(everything it did: its HTTP layer, its job threads, its background loops; with
``--fresh-photos``, less what each untimed upload cost), and the direct client's own process
clock around its runs (the benchmark process does nothing else meanwhile). Usage::

    python -m bench.latency [--runs 200] [--size 64] [--fresh-photos] [--update-docs]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import websocket
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS_PAGE = ROOT / "docs" / "benchmarks.md"
MARK_START, MARK_END = "<!-- bench:latency:start -->", "<!-- bench:latency:end -->"
FRESH_START = "<!-- bench:latency-fresh:start -->"
FRESH_END = "<!-- bench:latency-fresh:end -->"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up in {timeout}s")


@contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str, *, cwd: Path = ROOT
) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(
        args, cwd=cwd, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        wait_http(ready_url)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # After the command: state is field 3, utime and stime are fields 14 and 15 (1-based).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def photo_bytes(shade: int = 0) -> bytes:
    image = Image.new("RGB", (256, 256), (180, 120, 90 + shade % 160))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class DirectClient:
    """The least a client must do to get one avatar out of ComfyUI: the baseline."""

    def __init__(self, base_url: str, graph: dict) -> None:
        self.base_url = base_url
        self.graph = graph
        self.client_id = uuid.uuid4().hex
        self.http = httpx.Client(base_url=base_url, timeout=30)
        ws_url = base_url.replace("http://", "ws://") + f"/ws?clientId={self.client_id}"
        # As the service does: websocket-client's own UTF-8 check is pure Python and would
        # double this client's CPU; json.loads checks the bytes anyway.
        self.ws = websocket.create_connection(
            ws_url, timeout=30, suppress_origin=True, skip_utf8_validation=True
        )

    def close(self) -> None:
        self.ws.close()
        self.http.close()

    def generate(self, photo: bytes, seed: int, size: int) -> bytes:
        upload = self.http.post(
            "/upload/image",
            files={"image": ("bench.png", photo, "image/png")},
            data={"overwrite": "true"},
        ).json()
        graph = json.loads(json.dumps(self.graph))
        for node in graph.values():
            inputs = node["inputs"]
            if node["class_type"] == "LoadImage":
                inputs["image"] = upload["name"]
            elif node["class_type"] == "KSampler":
                inputs["seed"] = seed
            elif node["class_type"] == "ImageScale":
                inputs["width"] = inputs["height"] = size
        prompt_id = str(uuid.uuid4())
        self.http.post(
            "/prompt", json={"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        ).raise_for_status()
        while True:
            message = self.ws.recv()
            if isinstance(message, bytes):
                continue
            data = json.loads(message)
            if (
                data["type"] == "executing"
                and data["data"].get("node") is None
                and data["data"].get("prompt_id") == prompt_id
            ):
                break
        entry = self.http.get(f"/history/{prompt_id}").json()[prompt_id]
        image = next(iter(entry["outputs"].values()))["images"][0]
        return self.http.get(
            "/view",
            params={
                "filename": image["filename"],
                "subfolder": image["subfolder"],
                "type": image["type"],
            },
        ).content


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def summarise(samples: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(percentile(samples, 0.50) * 1000, 2),
        "p95_ms": round(percentile(samples, 0.95) * 1000, 2),
        "mean_ms": round(statistics.fmean(samples) * 1000, 2),
    }


def run(runs: int, size: int, *, fresh_photos: bool = False) -> dict:
    graph = json.loads((ROOT / "workflows" / "avatar.json").read_text())
    graph = graph.get("prompt", graph)
    photo = photo_bytes()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        comfy_port, service_port = free_port(), free_port()
        comfy_url = f"http://127.0.0.1:{comfy_port}"
        service_url = f"http://127.0.0.1:{service_port}"
        dirs = {name: scratch_path / name for name in ("input", "output", "temp")}
        for path in dirs.values():
            path.mkdir()
        standin_args = [
            sys.executable, "-m", "comfyui_standin", "--port", str(comfy_port),
            "--input-dir", str(dirs["input"]), "--output-dir", str(dirs["output"]),
            "--temp-dir", str(dirs["temp"]), "--node-cost", "0", "--pixel-cost", "0",
        ]  # fmt: skip
        service_env = {
            "COMFYUI_URL": comfy_url,
            "PORT": str(service_port),
            "UPLOAD_DIR": str(scratch_path / "uploads"),
            "OUTPUT_DIR": str(scratch_path / "generated_avatar"),
            "LOG_LEVEL": "WARNING",
            "INSTANCE_PATH": str(scratch_path / "instance"),
        }
        with (
            process(standin_args, {}, f"{comfy_url}/system_stats"),
            process([sys.executable, "app.py"], service_env, f"{service_url}/readyz") as app,
        ):
            direct = DirectClient(comfy_url, graph)
            service = httpx.Client(base_url=service_url, timeout=60)
            try:
                image_name = service.post(
                    "/upload-image", files={"image": ("bench.png", photo, "image/png")}
                ).json()["imageName"]
                timings: dict[str, list[float]] = {"service": [], "direct": []}
                direct_cpu = upload_cpu = 0.0
                warmup = 10
                for index in range(runs + warmup):
                    if index == warmup:
                        service_cpu_start = process_cpu_seconds(app.pid)
                        upload_cpu = 0.0
                    seed = index + 1
                    if fresh_photos:  # a photo ComfyUI does not have yet: sent within the run
                        before = process_cpu_seconds(app.pid)
                        image_name = service.post(
                            "/upload-image",
                            files={"image": ("bench.png", photo_bytes(index + 1), "image/png")},
                        ).json()["imageName"]
                        upload_cpu += process_cpu_seconds(app.pid) - before
                    order = ("service", "direct") if index % 2 else ("direct", "service")
                    for side in order:
                        started = time.perf_counter()
                        if side == "direct":
                            cpu_started = time.process_time()
                            direct.generate(photo, seed, size)
                            if index >= warmup:
                                direct_cpu += time.process_time() - cpu_started
                        else:
                            answer = service.post(
                                "/generate-avatar-by-image",
                                json={
                                    "imageName": image_name,
                                    "seed": seed,
                                    "width": size,
                                    "height": size,
                                },
                            )
                            answer.raise_for_status()
                        elapsed = time.perf_counter() - started
                        if index >= warmup:
                            timings[side].append(elapsed)
                service_cpu = process_cpu_seconds(app.pid) - service_cpu_start - upload_cpu
            finally:
                service.close()
                direct.close()
    result = {
        "runs": runs,
        "size": size,
        "fresh_photos": fresh_photos,
        "direct": summarise(timings["direct"]),
        "service": summarise(timings["service"]),
    }
    result["direct"]["cpu_ms_per_job"] = round(direct_cpu / runs * 1000, 2)
    result["service"]["cpu_ms_per_job"] = round(service_cpu / runs * 1000, 2)
    result["ratio_p50"] = round(result["service"]["p50_ms"] / result["direct"]["p50_ms"], 2)
    result["ratio_p95"] = round(result["service"]["p95_ms"] / result["direct"]["p95_ms"], 2)
    result["ratio_cpu"] = round(
        result["service"]["cpu_ms_per_job"] / result["direct"]["cpu_ms_per_job"], 2
    )
    return result


def as_markdown(result: dict) -> str:
    direct, service = result["direct"], result["service"]
    return "\n".join(
        [
            f"{result['runs']} runs each, {result['size']}x{result['size']} avatar, "
            + (
                "each service run from a new photo, "
                if result["fresh_photos"]
                else "every service run from one photo, "
            )
            + "stand-in ComfyUI with zero render delay, measured on "
            f"{time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs):",
            "",
            "| path | p50 (ms) | p95 (ms) | mean (ms) | CPU per job (ms) |",
            "|---|---:|---:|---:|---:|",
            f"| direct ComfyUI client (baseline) | {direct['p50_ms']} | {direct['p95_ms']} | "
            f"{direct['mean_ms']} | {direct['cpu_ms_per_job']} |",
            f"| through the service | {service['p50_ms']} | {service['p95_ms']} | "
            f"{service['mean_ms']} | {service['cpu_ms_per_job']} |",
            f"| **ratio service / direct** | **{result['ratio_p50']}** | "
            f"**{result['ratio_p95']}** | | **{result['ratio_cpu']}** |",
        ]
    )


def update_results(
    markdown: str, start: str = MARK_START, end: str = MARK_END, page: Path = RESULTS_PAGE
) -> None:
    """Replace the block between the ``start`` and ``end`` markers of ``page`` with ``markdown``."""
    text = page.read_text(encoding="utf-8")
    head, tail = text.index(start) + len(start), text.index(end)
    page.write_text(text[:head] + "\n" + markdown + "\n" + text[tail:], encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument(
        "--fresh-photos",
        action="store_true",
        help="each service run from a photo uploaded just before (untimed, its CPU not counted)",
    )
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    result = run(args.runs, args.size, fresh_photos=args.fresh_photos)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    name = "latency-fresh.json" if args.fresh_photos else "latency.json"
    (results_dir / name).write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        if args.fresh_photos:
            update_results(markdown, FRESH_START, FRESH_END)
        else:
            update_results(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
