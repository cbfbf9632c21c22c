"""Memory of the service while it takes photo uploads: peak and lasting resident size (RSS).

The service runs as its own process (``python app.py``, waitress); its resident size is read
from ``/proc/<pid>/status`` (Linux). The peak of each scenario is the kernel's high-water mark
(``VmHWM``), reset just before the scenario by writing ``5`` to ``/proc/<pid>/clear_refs``, so
no short peak is missed. The baseline is the idle service, after one small warm-up upload.
Uploads never call ComfyUI, so ``COMFYUI_URL`` points at a port where nothing listens. Usage::

    python -m bench.upload_memory [--concurrent 32] [--jpeg-mb 20] [--update-docs]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
from PIL import Image, ImageDraw, ImageFilter

from bench.latency import ROOT, free_port, process, update_results

MARK_START, MARK_END = "<!-- bench:upload-memory:start -->", "<!-- bench:upload-memory:end -->"
MAX_IMAGE_PIXELS = 40_000_000  # the service's default
MIB = 1024 * 1024


def proc_status(pid: int) -> dict[str, int]:
    """The memory lines of /proc/<pid>/status, in bytes."""
    values = {}
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            name, _, rest = line.partition(":")
            if name in {"VmRSS", "VmHWM"}:
                values[name] = int(rest.split()[0]) * 1024
    return values


def reset_peak(pid: int) -> None:
    """Set the process's high-water mark (VmHWM) back to its current resident size."""
    with open(f"/proc/{pid}/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")


def settle(pid: int, seconds: float = 1.0) -> int:
    """The resident size after a quiet moment."""
    time.sleep(seconds)
    return proc_status(pid)["VmRSS"]


def photo_jpeg(target_bytes: int) -> tuple[bytes, tuple[int, int]]:
    """A camera-like 3:2 JPEG (gradients, shapes, fine grain) of about ``target_bytes``.

    Its pixel count is chosen from a small sample's bytes per pixel, within MAX_IMAGE_PIXELS.
    """

    def picture(size: tuple[int, int]) -> Image.Image:
        width, height = size
        base = Image.linear_gradient("L").resize(size).convert("RGB")
        draw = ImageDraw.Draw(base)
        for index in range(12):
            x, y = (index * 7919) % width, (index * 104729) % height
            radius = width // (6 + index)
            draw.ellipse(
                (x - radius, y - radius, x + radius, y + radius),
                fill=((index * 67) % 256, (index * 131) % 256, (index * 29) % 256),
            )
        base = base.filter(ImageFilter.GaussianBlur(2))
        grain = Image.merge("RGB", [Image.effect_noise(size, 40).convert("L")] * 3)
        return Image.blend(base, grain, 0.35)

    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=97)
        return buffer.getvalue()

    sample = (1200, 800)
    per_pixel = len(encode(picture(sample))) / (sample[0] * sample[1])
    pixels = min(MAX_IMAGE_PIXELS * 0.98, target_bytes / per_pixel)
    height = int(math.sqrt(pixels / 1.5))
    size = (int(height * 1.5), height)
    return encode(picture(size)), size


def worst_case_png() -> tuple[bytes, tuple[int, int]]:
    """The most pixels the service accepts, in a file of a few hundred KB: a plain RGB PNG."""
    side = math.isqrt(MAX_IMAGE_PIXELS)
    image = Image.new("RGB", (side, side), (120, 90, 60))
    ImageDraw.Draw(image).rectangle((side // 4, side // 4, side // 2, side // 2), fill=(9, 9, 9))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), (side, side)


def upload(client: httpx.Client, data: bytes, name: str) -> int:
    return client.post("/upload-image", files={"image": (name, data)}).status_code


def run(concurrent: int, jpeg_mb: float, service_dir: Path) -> dict:
    jpeg, jpeg_size = photo_jpeg(int(jpeg_mb * MIB))
    png, png_size = worst_case_png()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        port = free_port()
        service_url = f"http://127.0.0.1:{port}"
        env = {
            "COMFYUI_URL": f"http://127.0.0.1:{free_port()}",  # uploads never call ComfyUI
            "PORT": str(port),
            "UPLOAD_DIR": str(scratch_path / "uploads"),
            "OUTPUT_DIR": str(scratch_path / "generated_avatar"),
            "INSTANCE_PATH": str(scratch_path / "instance"),
            "MAX_UPLOAD_MB": str(max(10.0, math.ceil(len(jpeg) / MIB) + 1)),
            "LOG_LEVEL": "ERROR",
            # Every upload of the burst waits for its turn, so all of them are decoded.
            "DECODE_WAIT": "600",
        }
        args = [sys.executable, str(service_dir / "app.py")]
        with process(args, env, f"{service_url}/healthz", cwd=service_dir) as proc:
            pid = proc.pid
            client = httpx.Client(base_url=service_url, timeout=300)
            try:
                small = io.BytesIO()
                Image.new("RGB", (640, 480), (90, 120, 150)).save(small, format="JPEG")
                for name in ("warm.jpg", "warm.png"):  # load every plugin and code path once
                    assert upload(client, small.getvalue(), name) == 201
                idle = settle(pid)

                reset_peak(pid)
                before = proc_status(pid)["VmRSS"]
                jpeg_status = upload(client, jpeg, "big.jpg")
                jpeg_peak = proc_status(pid)["VmHWM"]
                jpeg_after = settle(pid)

                reset_peak(pid)
                statuses: list[int] = []
                lock = threading.Lock()

                def one() -> None:
                    with httpx.Client(base_url=service_url, timeout=300) as own:
                        status = upload(own, png, "worst.png")
                    with lock:
                        statuses.append(status)

                started = time.perf_counter()
                threads = [threading.Thread(target=one) for _ in range(concurrent)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                elapsed = time.perf_counter() - started
                burst_peak = proc_status(pid)["VmHWM"]
                burst_after = settle(pid, 2.0)
            finally:
                client.close()
    return {
        "idle_mib": round(idle / MIB, 1),
        "jpeg": {
            "file_mib": round(len(jpeg) / MIB, 2),
            "pixels": list(jpeg_size),
            "status": jpeg_status,
            "before_mib": round(before / MIB, 1),
            "peak_mib": round(jpeg_peak / MIB, 1),
            "increase_mib": round((jpeg_peak - before) / MIB, 1),
            "ratio_to_file": round((jpeg_peak - before) / len(jpeg), 2),
            "after_mib": round(jpeg_after / MIB, 1),
        },
        "burst": {
            "uploads": concurrent,
            "file_kib": round(len(png) / 1024, 1),
            "pixels": list(png_size),
            "statuses": {str(code): statuses.count(code) for code in sorted(set(statuses))},
            "seconds": round(elapsed, 1),
            "peak_mib": round(burst_peak / MIB, 1),
            "increase_mib": round((burst_peak - idle) / MIB, 1),
            "after_mib": round(burst_after / MIB, 1),
        },
    }


def as_markdown(result: dict) -> str:
    jpeg, burst = result["jpeg"], result["burst"]
    statuses = ", ".join(f"{count}x {code}" for code, count in burst["statuses"].items())
    return "\n".join(
        [
            f"Measured on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs), default settings "
            "(`MAX_CONCURRENT_DECODES=2`; `DECODE_WAIT=600` so that every upload is decoded); "
            f"idle service (baseline): **{result['idle_mib']} MiB**.",
            "",
            "| scenario | peak RSS (MiB) | peak increase | RSS after (MiB) |",
            "|---|---:|---:|---:|",
            f"| one {jpeg['file_mib']} MiB JPEG, {jpeg['pixels'][0]}x{jpeg['pixels'][1]} "
            f"(answer {jpeg['status']}) | {jpeg['peak_mib']} | {jpeg['increase_mib']} MiB = "
            f"**{jpeg['ratio_to_file']}x the file size** | {jpeg['after_mib']} |",
            f"| {burst['uploads']} concurrent {burst['file_kib']} KiB PNGs of "
            f"{burst['pixels'][0]}x{burst['pixels'][1]} ({statuses}, {burst['seconds']} s) | "
            f"**{burst['peak_mib']}** | {burst['increase_mib']} MiB | {burst['after_mib']} |",
        ]
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrent", type=int, default=32)
    parser.add_argument("--jpeg-mb", type=float, default=20.0)
    parser.add_argument(
        "--service-dir",
        type=Path,
        default=ROOT,
        help="checkout whose app.py is measured (default: this one), e.g. an older version",
    )
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    result = run(args.concurrent, args.jpeg_mb, args.service_dir.resolve())
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "upload_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
