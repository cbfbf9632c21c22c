"""The installed ``avatar`` command, run as a process against the live service and the stand-in."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path

import pytest

from avatar_service.config import Settings
from avatar_service.photos.faces import Box
from tests.conftest import make_photo
from tests.photos import ASTRONAUT_FACE, astronaut, chelsea, png
from tests.receivers import Receiver, Reply

AVATAR = Path(sys.executable).with_name("avatar")
RUN_TIMEOUT = 60
HAS_API_KEYS = "api_keys" in {field.name for field in fields(Settings)}


@pytest.fixture(scope="module")
def avatar() -> Path:
    """The console script that `make setup` installs in the virtual environment."""
    if not AVATAR.exists():
        pytest.fail(f"{AVATAR} is missing: `make setup` installs the project (pip install -e .)")
    return AVATAR


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without the command's own settings, plain output, plus ``extra``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"AVATAR_SERVER", "AVATAR_KEY", "TTY_COMPATIBLE", "FORCE_COLOR"}
    }
    return {**env, "NO_COLOR": "1", "COLUMNS": "200", **extra}


def run(avatar: Path, *args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run the command to its end (with a hard bound) and capture its output."""
    return subprocess.run(
        [str(avatar), *args],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    """Two small photos on disk."""
    folder = tmp_path / "photos"
    folder.mkdir()
    paths = []
    for name, colour in (("alice.png", (200, 80, 40)), ("bob.jpg", (40, 90, 200))):
        path = folder / name
        path.write_bytes(make_photo(colour, fmt="JPEG" if name.endswith(".jpg") else "PNG"))
        paths.append(path)
    return paths


def job_ids(stderr: str) -> dict[str, str]:
    """photo file name -> job id, from the progress lines."""
    return dict(re.findall(r"^(\S+): job ([0-9a-f]{32}) queued", stderr, flags=re.M))


def test_generate_saves_an_avatar_per_photo(avatar, service, photos, tmp_path):
    """Two photos at once: progress per job, files saved as <photo>-<style>-<seed>, exit 0."""
    out = tmp_path / "out"
    result = run(
        avatar,
        "generate",
        *map(str, photos),
        "--size",
        "128x128",
        "--gender",
        "female",
        "--out",
        str(out),
        cwd=tmp_path,
        AVATAR_SERVER=service.url,
    )
    assert result.returncode == 0, result.stderr
    ids = job_ids(result.stderr)
    assert sorted(ids) == ["alice.png", "bob.jpg"]
    expected_lines = []
    for photo in photos:
        record = service.http.get(f"/jobs/{ids[photo.name]}").json()
        assert (record["status"], record["gender"], record["width"]) == ("succeeded", "female", 128)
        saved = out / f"{photo.stem}-avatar-{record['seed']}.png"
        produced = tmp_path / "generated_avatar" / record["avatars"][0]["fileName"]
        assert saved.read_bytes() == produced.read_bytes()
        expected_lines.append(f"{photo} -> {saved}")
        for line in ("uploading", "running KSampler step 70/70", "saving", "done"):
            assert f"{photo.name}: {line}\n" in result.stderr
    assert result.stdout.splitlines() == expected_lines
    assert sorted(path.name for path in out.iterdir()) == sorted(
        Path(line.split(" -> ")[1]).name for line in expected_lines
    )


def test_generate_prints_the_face_and_the_crop_before_the_job(avatar, service, tmp_path):
    """The astronaut and a cat: one line for the face, one for the crop, before each job is
    queued; the crop is the one the job then uses; --json carries both."""
    folder = tmp_path / "in"
    folder.mkdir()
    portrait, cat = folder / "astronaut.png", folder / "cat.png"
    portrait.write_bytes(png(astronaut()))
    cat.write_bytes(png(chelsea()))
    args = ["generate", str(portrait), str(cat), "--size", "1024x512", "--server", service.url]
    plain = run(avatar, *args, "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    ids = job_ids(plain.stderr)
    for photo in (portrait, cat):
        record = service.http.get(f"/jobs/{ids[photo.name]}").json()
        framing = service.http.get(
            f"/photos/{record['imageName']}/framing", params={"width": 1024, "height": 512}
        ).json()
        assert framing["crop"] == record["crop"]
        crop = record["crop"]
        lines = [line for line in plain.stderr.splitlines() if line.startswith(f"{photo.name}: ")]
        if photo is portrait:
            face = framing["faces"][0]
            face_line = f"face: {face['width']}x{face['height']} at ({face['x']}, {face['y']})"
            how = "around the face"
        else:
            face_line, how = "face: none found", "centre"
        crop_line = f"crop: {crop['width']}x{crop['height']} at ({crop['x']}, {crop['y']}), {how}"
        assert lines[:4] == [
            f"{photo.name}: uploading",
            f"{photo.name}: {face_line}",
            f"{photo.name}: {crop_line}",
            f"{photo.name}: job {record['jobId']} queued",
        ]
    assert Box.from_dict(service.http.get(f"/jobs/{ids['astronaut.png']}").json()["crop"]).contains(
        ASTRONAUT_FACE
    )

    as_json = run(avatar, *args, "--json", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    first, second = json.loads(as_json.stdout)["results"]
    for result in (first, second):
        record = service.http.get(f"/jobs/{result['jobId']}").json()
        assert result["crop"] == record["crop"]
    uploaded = service.http.post(
        "/upload-image", files={"image": ("a.png", portrait.read_bytes(), "image/png")}
    ).json()
    assert first["face"] == uploaded["faces"][0]
    assert (first["crop"]["source"], second["face"], second["crop"]["source"]) == (
        "face",
        None,
        "center",
    )


def test_generate_json_and_no_overwrite(avatar, service, photos, tmp_path):
    """--json prints each result; the same seed twice saves a second file beside the first."""
    args = ["generate", str(photos[0]), "--seed", "42", "--size", "64x64", "--json"]
    first = run(avatar, *args, "--server", service.url, cwd=tmp_path)
    second = run(avatar, *args, "--server", service.url, cwd=tmp_path)
    assert (first.returncode, second.returncode) == (0, 0), first.stderr + second.stderr
    results = [json.loads(first.stdout)["results"], json.loads(second.stdout)["results"]]
    for answer, name in zip(results, ["alice-avatar-42.png", "alice-avatar-42-2.png"], strict=True):
        record = service.http.get(f"/jobs/{answer[0]['jobId']}").json()
        assert answer == [
            {
                "photo": str(photos[0]),
                "jobId": record["jobId"],
                "status": "succeeded",
                "style": "avatar",
                "seed": 42,
                "files": [name],
                "face": None,
                "crop": record["crop"],
                "error": None,
            }
        ]
        assert record["crop"]["source"] == "center"
    assert (tmp_path / "alice-avatar-42.png").stat().st_size > 0
    assert (tmp_path / "alice-avatar-42-2.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "content", "message", "error"),
    [
        pytest.param(
            ["--style", "nope"],
            None,
            "style: unknown style; one of ['avatar', 'cartoon'] [invalid_fields]",
            {
                "code": "invalid_fields",
                "message": "style: unknown style; one of ['avatar', 'cartoon']",
                "details": {"fields": {"style": "unknown style; one of ['avatar', 'cartoon']"}},
            },
            id="unknown-style",
        ),
        pytest.param(
            [],
            b"this is not a photo",
            "the file is not an image; send a JPEG, PNG or WebP photo [unsupported_image_type]",
            {
                "code": "unsupported_image_type",
                "message": "the file is not an image; send a JPEG, PNG or WebP photo",
                "details": {"accepted": ["JPEG", "PNG", "WEBP"]},
            },
            id="not-an-image",
        ),
    ],
)
def test_generate_exits_1_with_the_service_error(
    avatar, service, photos, tmp_path, args, content, message, error
):
    """A refused request exits 1 with the service's message, on stderr and in --json."""
    photo = photos[0]
    if content is not None:
        photo.write_bytes(content)
    plain = run(avatar, "generate", str(photo), *args, "--server", service.url, cwd=tmp_path)
    assert plain.returncode == 1
    assert plain.stderr.splitlines()[-1] == f"{photo}: {message}"
    assert plain.stdout == ""
    as_json = run(
        avatar, "generate", str(photo), *args, "--json", "--server", service.url, cwd=tmp_path
    )
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["results"][0]["error"] == error
    assert not list(tmp_path.glob("alice-*"))


def test_a_failed_job_exits_1_with_comfyuis_error(avatar, service, standin, photos, tmp_path):
    """A job that fails in ComfyUI: exit 1, the job's error message, no file."""
    standin.set_faults(fail_at_node="KSampler")
    result = run(avatar, "generate", str(photos[0]), "--server", service.url, cwd=tmp_path)
    assert result.returncode == 1
    last = result.stderr.splitlines()[-1]
    assert last.startswith(f"{photos[0]}: ComfyUI failed while running node ")
    assert last.endswith("[comfyui_execution_error]")
    assert "alice.png: failed" in result.stderr
    assert not list(tmp_path.glob("alice-*"))


def test_unreachable_service_and_bad_usage(avatar, photos, tmp_path):
    """No service: exit 1 saying so; a malformed --size: usage error, exit 2; --version."""
    down = run(avatar, "styles", "--server", "http://127.0.0.1:9", cwd=tmp_path)
    assert down.returncode == 1
    assert down.stderr.startswith("error: cannot reach the avatar service at http://127.0.0.1:9")
    usage = run(avatar, "generate", str(photos[0]), "--size", "big", cwd=tmp_path)
    assert usage.returncode == 2
    assert "Invalid value for '--size': use WIDTHxHEIGHT, e.g. 768x768" in usage.stderr
    version = run(avatar, "--version", cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, "avatar, version 0.1.0\n")


def test_every_command_answers_errors_as_json_with_json(avatar, service, tmp_path):
    """With --json an error is {"error": ...} on stdout (service's or the client's), exit 1."""
    unknown = run(avatar, "jobs", "nope", "--json", "--server", service.url, cwd=tmp_path)
    assert unknown.returncode == 1
    assert json.loads(unknown.stdout) == {
        "error": {"code": "job_not_found", "message": "unknown job", "details": {"jobId": "nope"}}
    }
    assert unknown.stderr == "error: unknown job [job_not_found]\n"
    cancel = run(avatar, "cancel", "nope", "--json", "--server", service.url, cwd=tmp_path)
    assert cancel.returncode == 1
    assert json.loads(cancel.stdout)["error"]["code"] == "job_not_found"
    down = run(avatar, "styles", "--json", "--server", "http://127.0.0.1:9", cwd=tmp_path)
    assert down.returncode == 1
    error = json.loads(down.stdout)["error"]
    assert (error["code"], error["details"]) == ("client_error", {})
    assert error["message"].startswith("cannot reach the avatar service at http://127.0.0.1:9")


def test_a_size_the_service_refuses_exits_2_before_uploading(avatar, tmp_path, photos):
    """--size outside /service-info's limits: exit 2, nothing uploaded; --json says it as JSON."""
    info = {"limits": {"minSide": 64, "maxSide": 1024, "sideStep": 16}}
    with Receiver() as receiver:
        receiver.script(*[Reply(body=json.dumps(info).encode())] * 3)
        server = receiver.url("")
        odd = run(
            avatar,
            "generate",
            str(photos[0]),
            "--size",
            "700x512",
            "--server",
            server,
            cwd=tmp_path,
        )
        big = run(
            avatar,
            "generate",
            str(photos[0]),
            "--size",
            "1536x1536",
            "--json",
            "--server",
            server,
            cwd=tmp_path,
        )
        fine = run(
            avatar,
            "generate",
            str(photos[0]),
            "--size",
            "1008x512",
            "--server",
            server,
            cwd=tmp_path,
        )
        sent = receiver.wait_for(4)
    rule = "must be an integer from 64 to 1024 and a multiple of 16"
    assert odd.returncode == 2
    assert odd.stderr == f"Error: Invalid value for '--size': width: {rule}\n"
    assert odd.stdout == ""
    assert big.returncode == 2
    assert json.loads(big.stdout) == {
        "error": {
            "code": "invalid_fields",
            "message": "several fields are invalid",
            "details": {"fields": {"width": rule, "height": rule}},
        }
    }
    # Only the accepted size went on to upload the photo.
    assert [request.path for request in sent] == ["/service-info"] * 3 + ["/upload-image"]
    assert fine.returncode == 1


def test_size_rules_default_without_service_info(avatar, service, photos, tmp_path):
    """A service without the limits in /service-info: the defaults 64..2048 step 8 apply."""
    with Receiver() as receiver:
        receiver.script(Reply(status=404, body=b"{}"))
        odd = run(
            avatar,
            "generate",
            str(photos[0]),
            "--size",
            "2056x512",
            "--server",
            receiver.url(""),
            cwd=tmp_path,
        )
        sent = receiver.wait_for(1)
    assert odd.returncode == 2
    rule = "must be an integer from 64 to 2048 and a multiple of 8"
    assert odd.stderr == f"Error: Invalid value for '--size': width: {rule}\n"
    assert [request.path for request in sent] == ["/service-info"]
    live = run(
        avatar,
        "generate",
        str(photos[0]),
        "--size",
        "700x512",
        "--server",
        service.url,
        cwd=tmp_path,
    )
    assert live.returncode == 2
    assert live.stderr.endswith(f"width: {rule}\n")


def test_styles(avatar, service, tmp_path):
    """`avatar styles` lists the styles; --json prints GET /styles as it is."""
    table = run(avatar, "styles", cwd=tmp_path, AVATAR_SERVER=service.url)
    assert table.returncode == 0, table.stderr
    assert "avatar (default)" in table.stdout and "cartoon" in table.stdout
    assert "512x512" in table.stdout
    raw = run(avatar, "styles", "--json", cwd=tmp_path, AVATAR_SERVER=service.url)
    assert json.loads(raw.stdout) == service.http.get("/styles").json()


def test_jobs_and_cancel(avatar, service, standin, photo, tmp_path):
    """`avatar jobs ID` shows a job, `avatar cancel ID` cancels it; errors exit 1."""
    standin.set_faults(step_delay=0.2)
    image_name = service.upload(photo)
    job_id = service.http.post(
        "/generate-avatar-by-image", json={"imageName": image_name, "async": True}
    ).json()["jobId"]
    service.wait_job(job_id, until=lambda record: record["status"] == "running")
    shown = run(avatar, "jobs", job_id, "--server", service.url, cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == f"job {job_id}: running"
    cancelled = run(avatar, "cancel", job_id, "--server", service.url, cwd=tmp_path)
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout == f"job {job_id}: cancelled\n"
    assert service.http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    as_json = run(avatar, "jobs", job_id, "--json", "--server", service.url, cwd=tmp_path)
    assert json.loads(as_json.stdout) == service.http.get(f"/jobs/{job_id}").json()

    again = run(avatar, "cancel", job_id, "--server", service.url, cwd=tmp_path)
    assert again.returncode == 1
    assert again.stderr.startswith("error: ")
    assert again.stderr.rstrip().endswith("[job_already_ended]")
    unknown = run(avatar, "jobs", "f" * 32, "--server", service.url, cwd=tmp_path)
    assert (unknown.returncode, unknown.stderr) == (1, "error: unknown job [job_not_found]\n")


def test_ctrl_c_cancels_the_jobs_it_started(avatar, service, standin, photos, tmp_path):
    """Ctrl-C while the jobs run: each is cancelled in the service, nothing saved, exit 130."""
    standin.set_faults(step_delay=0.2)
    with subprocess.Popen(
        [str(avatar), "generate", *map(str, photos), "--server", service.url],
        cwd=tmp_path,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        lines: queue.Queue[str] = queue.Queue()
        reader = threading.Thread(target=lambda: [lines.put(line) for line in process.stderr])
        reader.start()
        seen: list[str] = []
        deadline = time.monotonic() + 20
        try:
            # Both jobs made (the second photo may still be uploading when the first runs),
            # and one of them running.
            while len(job_ids("".join(seen))) < 2 or not any(
                "running KSampler" in line for line in seen
            ):
                assert time.monotonic() < deadline, f"no two jobs and a sampler step: {seen}"
                try:
                    seen.append(lines.get(timeout=0.5))
                except queue.Empty:
                    assert process.poll() is None, f"ended early: {seen}"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=20) == 130
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
        reader.join(5)
        stdout = process.stdout.read()
    while not lines.empty():
        seen.append(lines.get())
    stderr = "".join(seen)
    assert "interrupted: cancelling the jobs started by this command\n" in stderr
    ids = job_ids(stderr)
    assert sorted(ids) == ["alice.png", "bob.jpg"]
    for name, job_id in ids.items():
        assert service.http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
        assert f"{name}: cancelled\n" in stderr
    assert stdout == ""
    assert not list(tmp_path.glob("*-avatar-*"))


def test_progress_bars_on_a_terminal(avatar, service, standin, photos, tmp_path):
    """On a terminal each photo gets a progress bar with its steps."""
    standin.set_faults(step_delay=0.02)  # slower than the display's refresh, so steps are drawn
    result = run(
        avatar,
        "generate",
        str(photos[0]),
        "--size",
        "64x64",
        "--server",
        service.url,
        cwd=tmp_path,
        TTY_COMPATIBLE="1",
        COLUMNS="120",
    )
    assert result.returncode == 0, result.stderr
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", result.stderr)
    final = plain.strip().splitlines()[-1]
    assert re.fullmatch(r"alice\.png done ━+ 70/70 steps \d:\d\d:\d\d", final.strip()), final
    assert re.search(r"alice\.png KSampler ━+\s+\d+/70 steps", plain), plain
    assert "\x1b[" in result.stderr, "a live display uses terminal control sequences"
    assert result.stdout.startswith(f"{photos[0]} -> ")


def test_key_is_sent_as_bearer_and_401_is_explained(avatar, tmp_path):
    """--key / AVATAR_KEY go out as a Bearer header; a 401 prints the service's message."""
    refusal = {"error": {"code": "unauthorized", "message": "a valid API key is required"}}
    with Receiver() as receiver:
        receiver.script(
            Reply(body=json.dumps({"jobId": "a" * 32, "status": "cancelled"}).encode()),
            Reply(status=401, body=json.dumps(refusal).encode()),
        )
        server = receiver.url("")
        ok = run(avatar, "cancel", "a" * 32, "--server", server, cwd=tmp_path, AVATAR_KEY="k1")
        refused = run(avatar, "cancel", "a" * 32, "--server", server, "--key", "k2", cwd=tmp_path)
        sent = receiver.wait_for(2)
    assert (ok.returncode, ok.stdout) == (0, f"job {'a' * 32}: cancelled\n")
    assert (refused.returncode, refused.stderr) == (
        1,
        "error: a valid API key is required (use --key KEY or set AVATAR_KEY) [unauthorized]\n",
    )
    assert [request.headers["authorization"] for request in sent] == ["Bearer k1", "Bearer k2"]
    assert [request.path for request in sent] == [f"/jobs/{'a' * 32}/cancel"] * 2


@pytest.mark.skipif(not HAS_API_KEYS, reason="API keys not available in this build")
def test_generate_with_api_keys_on(avatar, make_service, photos, tmp_path):
    """With keys on: no key exits 1 with the service's 401; AVATAR_KEY makes it work."""
    key = "cli-key-0123456789abcdef"
    service = make_service(api_keys=key)
    refused = run(avatar, "generate", str(photos[0]), "--server", service.url, cwd=tmp_path)
    assert refused.returncode == 1
    assert refused.stderr.rstrip().endswith(
        "send Authorization: Bearer <key> (use --key KEY or set AVATAR_KEY) [unauthorized]"
    )
    done = run(
        avatar, "generate", str(photos[0]), "--server", service.url, cwd=tmp_path, AVATAR_KEY=key
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{photos[0]} -> ")


def test_queue_text_shows_the_estimated_start():
    """The queue column says the place and, when the service estimates it, the start."""
    from datetime import UTC, datetime, timedelta

    from avatar_cli.progress import queue_text

    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    past = (datetime.now(UTC) - timedelta(seconds=5)).isoformat().replace("+00:00", "Z")
    assert queue_text({"queuePosition": 2}) == "queued #2"
    assert queue_text({"queuePosition": None}) == "queued"
    assert queue_text({"queuePosition": 3, "estimatedStartAt": soon}) in {
        "queued #3, starts in ~29 s",
        "queued #3, starts in ~30 s",
    }
    assert queue_text({"queuePosition": 1, "estimatedStartAt": past}) == (
        "queued #1, starting any moment"
    )
    assert queue_text({"queuePosition": 1, "estimatedStartAt": "soon"}) == "queued #1"


def test_framing_lines_name_several_faces_and_detection_off():
    """Two faces: the largest, with the count; FACE_POLICY=off: faces are not looked for."""
    from avatar_cli.progress import framing_lines

    crop = {"x": 0, "y": 10, "width": 300, "height": 150, "source": "face"}
    faces = [
        {"x": 20, "y": 30, "width": 90, "height": 100, "confidence": 40.0},
        {"x": 200, "y": 30, "width": 50, "height": 60, "confidence": 12.5},
    ]
    assert framing_lines({"faces": faces, "crop": crop, "policy": "prefer"}) == [
        "face: 90x100 at (20, 30) (the largest of 2)",
        "crop: 300x150 at (0, 10), around the face",
    ]
    centre = {"x": 0, "y": 37, "width": 451, "height": 226, "source": "center"}
    assert framing_lines({"faces": [], "crop": centre, "policy": "off"}) == [
        "face: not looked for (FACE_POLICY=off)",
        "crop: 451x226 at (0, 37), centre",
    ]
