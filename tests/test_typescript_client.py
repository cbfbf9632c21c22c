"""The document a frontend is generated from: linted, typed and used by a TypeScript module.

Against the live service on the stand-in: Redocly's recommended rules find nothing in the
document; openapi-typescript makes the types of ``clients/typescript`` from it; ``tsc
--strict`` checks the module against them; node runs it (upload, generate, follow the events,
download, the error codes) with keys on and off.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, make_photo
from tests.node import CLIENT_DIR, client_tools

KEY = "typescript-key-0123456789abcdef"
TIMEOUT = 120


@pytest.fixture
def tools() -> Path:
    """The client's package commands, installed (or the test skipped, or failed in CI)."""
    return client_tools()


def run(command: list[str], **options) -> subprocess.CompletedProcess:
    """A command of the client's tools, its output kept for the assertion's message."""
    return subprocess.run(
        command, capture_output=True, text=True, timeout=TIMEOUT, check=False, **options
    )


def served_document(service, tmp_path: Path) -> Path:
    """The live /openapi.json, written to a file."""
    answer = service.http.get("/openapi.json")
    assert answer.status_code == 200
    path = tmp_path / "openapi.json"
    path.write_text(answer.text, encoding="utf-8")
    return path


def test_redocly_finds_nothing_in_the_document(service, tools, tmp_path):
    """Redocly's recommended rules (redocly.yaml): no error and no warning in the document."""
    document = served_document(service, tmp_path)
    lint = run(
        [
            str(tools / "redocly"),
            "lint",
            str(document),
            "--config",
            str(REPO_ROOT / "redocly.yaml"),
            "--format=json",
        ],
        cwd=tmp_path,
    )
    report = json.loads(lint.stdout[lint.stdout.index("{") :])
    assert report["totals"] == {"errors": 0, "warnings": 0, "ignored": 0}, report["problems"]
    assert lint.returncode == 0, lint.stderr[-2000:]


@pytest.mark.parametrize("keys", [False, True], ids=["open", "with-keys"])
def test_the_typescript_module_types_and_runs(make_service, tools, tmp_path, keys):
    """Types from the live document; the module passes tsc --strict; node runs it end to end."""
    service = make_service(**({"api_keys": KEY} if keys else {}))
    document = served_document(service, tmp_path)
    generated = run(
        [str(tools / "openapi-typescript"), str(document), "-o", str(CLIENT_DIR / "src/api.ts")]
    )
    assert generated.returncode == 0, generated.stderr[-2000:]
    check = run([str(tools / "tsc"), "--noEmit", "--strict", "-p", str(CLIENT_DIR)])
    assert check.returncode == 0, check.stdout[-4000:]
    compiled = run([str(tools / "tsc"), "-p", str(CLIENT_DIR)])  # into clients/typescript/build
    assert compiled.returncode == 0, compiled.stdout[-4000:]
    photo = tmp_path / "me.png"
    photo.write_bytes(make_photo((200, 80, 40)))
    node = run(
        [
            "node",
            str(CLIENT_DIR / "build/main.js"),
            service.url,
            str(photo),
            *([KEY] if keys else []),
        ],
        cwd=CLIENT_DIR,
    )
    assert node.returncode == 0, node.stderr[-4000:]
    seen = json.loads(node.stdout)
    assert seen["authRequired"] is keys
    assert seen["styles"] == seen["installedStyles"] == ["avatar", "cartoon"]
    assert seen["status"] == "succeeded"
    assert seen["events"][0] == "state"
    assert seen["events"][-1] in {"state", "succeeded"}
    assert seen["avatarIsPng"] is True
    assert [(error["status"], error["code"]) for error in seen["errors"]] == [
        (400, "invalid_fields"),
        (404, "image_not_found"),
        (409, "job_already_ended"),
    ]
    assert seen["errors"][0]["fields"] == ["width"]
