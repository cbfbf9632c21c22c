"""The TypeScript client's tools (node, npm and the packages of clients/typescript), or a skip.

Without node or npm, or when ``npm ci`` cannot install the packages (no registry), the tests
that need them are skipped with the reason, unless ``CI=true`` or ``REQUIRE_NODE=1``, where
they fail.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CLIENT_DIR = REPO_ROOT / "clients" / "typescript"
NPM_CI_TIMEOUT = 300


def unavailable(message: str) -> None:
    """Skip (or, in CI or with REQUIRE_NODE=1, fail) a test that needs node and its packages."""
    if os.environ.get("REQUIRE_NODE") == "1" or os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true or REQUIRE_NODE=1)", pytrace=False)
    pytest.skip(message)


def client_tools() -> Path:
    """The folder of the client's installed packages' commands (``npm ci`` run if needed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        unavailable("node and npm are needed for the TypeScript client's tests")
    bin_dir = CLIENT_DIR / "node_modules" / ".bin"
    wanted = ("tsc", "openapi-typescript", "redocly")
    if not all((bin_dir / name).exists() for name in wanted):
        try:
            run = subprocess.run(
                ["npm", "ci", "--no-audit", "--no-fund"],
                cwd=CLIENT_DIR,
                capture_output=True,
                text=True,
                timeout=NPM_CI_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired:
            unavailable(f"npm ci in {CLIENT_DIR} took over {NPM_CI_TIMEOUT}s (npm registry?)")
        if run.returncode != 0:
            unavailable(
                f"npm ci failed in {CLIENT_DIR} (npm registry unreachable?): {run.stderr[-500:]}"
            )
    return bin_dir
