"""Cost of face detection at upload: the same photos uploaded with FACE_POLICY=off and =prefer.

Two service processes (``python app.py``, waitress) run side by side, one with detection off
(the baseline) and one with the default ``prefer``; uploads alternate between them photo by
photo, so machine noise hits both alike. A third process with ``FACE_POLICY=require`` times the
refusal of a faceless phone-sized photo. Upload needs no ComfyUI, so none is started. Usage::

    python -m bench.face_detection [--runs 30] [--update-docs]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
from PIL import Image

from avatar_service.photos.faces import FaceDetector
from avatar_service.photos.store import STORED_LONG_SIDE, STORED_SHORT_SIDE, reduced_copy
from bench.latency import free_port, percentile, process, update_results
from tests import photos

ROOT = Path(__file__).resolve().parent.parent
MARK_START, MARK_END = "<!-- bench:faces:start -->", "<!-- bench:faces:end -->"


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def phone_photo() -> Image.Image:
    """A 4032x3024 landscape photo with the portrait off-centre, as a phone takes it."""
    canvas = photos.gradient((4032, 3024))
    canvas.paste(photos.astronaut().resize((2400, 2400)), (300, 400))
    return canvas


def cases() -> list[tuple[str, bytes]]:
    """The photos uploaded, named as in the table."""
    return [
        ("astronaut 512x512 PNG", encoded(photos.astronaut(), "PNG")),
        ("portrait 2048x2048 JPEG", encoded(photos.astronaut().resize((2048, 2048)), "JPEG")),
        ("phone photo 4032x3024 JPEG (one face)", encoded(phone_photo(), "JPEG")),
        ("phone photo 4032x3024 JPEG (no face)", encoded(photos.gradient((4032, 3024)), "JPEG")),
    ]


def detector_alone(data: bytes, runs: int) -> float:
    """p50 seconds of what an upload adds for faces: read the stored PNG back, reduce, detect."""
    with Image.open(io.BytesIO(data)) as image:
        image = image.convert("RGB")
    short, long = sorted(image.size)
    scale = min(1.0, STORED_SHORT_SIDE / short, STORED_LONG_SIDE / long)
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    stored = io.BytesIO()
    image.save(stored, format="PNG")
    detector = FaceDetector()
    samples = []
    for _ in range(runs + 3):
        started = time.perf_counter()
        stored.seek(0)
        with Image.open(stored) as written:
            size = written.size
            small = reduced_copy(written)
        detector.detect(small, size=size)
        samples.append(time.perf_counter() - started)
    return percentile(samples[3:], 0.5)


def start_service(stack: ExitStack, scratch: Path, policy: str) -> httpx.Client:
    port = free_port()
    env = {
        "COMFYUI_URL": f"http://127.0.0.1:{free_port()}",  # nothing listens: uploads need none
        "PORT": str(port),
        "FACE_POLICY": policy,
        "UPLOAD_DIR": str(scratch / policy / "uploads"),
        "OUTPUT_DIR": str(scratch / policy / "generated_avatar"),
        "INSTANCE_PATH": str(scratch / policy / "instance"),
        "LOG_LEVEL": "ERROR",
        "MAX_UPLOAD_MB": "20",
    }
    url = f"http://127.0.0.1:{port}"
    stack.enter_context(process([sys.executable, "app.py"], env, f"{url}/healthz"))
    return stack.enter_context(httpx.Client(base_url=url, timeout=60))


def timed_upload(client: httpx.Client, data: bytes, expect: int) -> float:
    started = time.perf_counter()
    answer = client.post("/upload-image", files={"image": ("bench.jpg", data)})
    elapsed = time.perf_counter() - started
    if answer.status_code != expect:
        raise RuntimeError(f"upload answered {answer.status_code}, not {expect}: {answer.text}")
    return elapsed


def run(runs: int) -> dict:
    photo_cases = cases()
    rows = []
    with tempfile.TemporaryDirectory() as scratch, ExitStack() as stack:
        scratch_path = Path(scratch)
        off = start_service(stack, scratch_path, "off")
        prefer = start_service(stack, scratch_path, "prefer")
        require = start_service(stack, scratch_path, "require")
        for name, data in photo_cases:
            timings: dict[str, list[float]] = {"off": [], "prefer": []}
            warmup = 3
            for index in range(runs + warmup):
                order = ("off", "prefer") if index % 2 else ("prefer", "off")
                for side in order:
                    client = off if side == "off" else prefer
                    elapsed = timed_upload(client, data, 201)
                    if index >= warmup:
                        timings[side].append(elapsed)
            detect_p50 = detector_alone(data, runs) * 1000
            off_p50 = percentile(timings["off"], 0.5) * 1000
            prefer_p50 = percentile(timings["prefer"], 0.5) * 1000
            rows.append(
                {
                    "photo": name,
                    "bytes": len(data),
                    "off_p50_ms": round(off_p50, 1),
                    "prefer_p50_ms": round(prefer_p50, 1),
                    "ratio_p50": round(prefer_p50 / off_p50, 2),
                    "detect_p50_ms": round(detect_p50, 1),
                }
            )
        faceless = photo_cases[-1][1]
        refusals = [timed_upload(require, faceless, 422) for _ in range(runs + 3)][3:]
    return {
        "runs": runs,
        "rows": rows,
        "require_refusal": {
            "photo": photo_cases[-1][0],
            "p50_ms": round(percentile(refusals, 0.5) * 1000, 1),
            "p95_ms": round(percentile(refusals, 0.95) * 1000, 1),
        },
    }


def as_markdown(result: dict) -> str:
    lines = [
        f"{result['runs']} uploads of each photo per policy (alternating), p50 of the whole "
        f"`POST /upload-image`, measured on {time.strftime('%Y-%m-%d')} ({os.cpu_count()} CPUs):",
        "",
        "| photo | `FACE_POLICY=off` (ms) | `prefer` (ms) | ratio prefer / off | "
        "detector alone (ms) |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['photo']} | {row['off_p50_ms']} | {row['prefer_p50_ms']} | "
            f"**{row['ratio_p50']}** | {row['detect_p50_ms']} |"
        )
    refusal = result["require_refusal"]
    lines += [
        "",
        "The detector alone is what an upload adds for faces, in one process: reading the stored "
        "PNG back, reducing it (`reduced_copy`) and `FaceDetector.detect`; the upload also "
        "decodes, scales and writes the photo.",
        "",
        f"`FACE_POLICY=require` refuses the {refusal['photo']} with `422 no_face_found` in "
        f"{refusal['p50_ms']} ms (p50; p95 {refusal['p95_ms']} ms), decoding included.",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument(
        "--update-docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    result = run(args.runs)
    results_dir = ROOT / "bench" / "results"
    results_dir.mkdir(exist_ok=True)
    (results_dir / "face_detection.json").write_text(json.dumps(result, indent=2) + "\n")
    markdown = as_markdown(result)
    print(markdown)
    if args.update_docs:
        update_results(markdown, MARK_START, MARK_END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
