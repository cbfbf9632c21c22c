"""A real PostgreSQL for the tests: TEST_DATABASE_URL, the local server, or a throwaway one.

Each test gets a schema of its own (created, then dropped with everything in it), so runs of
the suite that share one server never see each other's tables. Without any PostgreSQL the
tests that need one are skipped with the reason, unless REQUIRE_POSTGRES=1 (CI), where they
fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

# The local server of a development machine (trust auth), tried when TEST_DATABASE_URL is unset.
LOCAL_URLS = (
    "postgresql://postgres@127.0.0.1:5432/test",
    "postgresql://root@127.0.0.1:5432/test",
)


def unavailable(reason: str) -> None:
    """Skip (or, with REQUIRE_POSTGRES=1, fail) a test that needs PostgreSQL."""
    message = f"PostgreSQL tests not run: {reason}"
    if os.environ.get("REQUIRE_POSTGRES") == "1":
        pytest.fail(f"{message} (REQUIRE_POSTGRES=1)", pytrace=False)
    pytest.skip(message)


def answers(url: str) -> str | None:
    """None when the server at ``url`` answers, else why not."""
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def find_server(scratch: Path) -> tuple[str, subprocess.Popen | None]:
    """A server's URL (and the throwaway server's process when one had to be started)."""
    configured = os.environ.get("TEST_DATABASE_URL")
    if configured:
        problem = answers(configured)
        if problem:
            unavailable(f"TEST_DATABASE_URL does not answer: {problem}")
        return configured, None
    problems = []
    for url in LOCAL_URLS:
        problem = answers(url)
        if problem is None:
            return url, None
        problems.append(problem)
    return start_throwaway(scratch, problems)


def start_throwaway(scratch: Path, problems: list[str]) -> tuple[str, subprocess.Popen]:
    """initdb + postgres on a free port in ``scratch`` (not possible as root)."""
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if not (initdb and postgres):
        unavailable(
            f"no server answers on 127.0.0.1:5432 ({problems[-1]}), TEST_DATABASE_URL is "
            "unset, and initdb/postgres are not installed"
        )
    if os.geteuid() == 0:
        unavailable(
            f"no server answers on 127.0.0.1:5432 ({problems[-1]}), TEST_DATABASE_URL is "
            "unset, and a throwaway server cannot be started as root"
        )
    from tests.receivers import free_port

    data = scratch / "pgdata"
    subprocess.run(
        [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    port = free_port()
    process = subprocess.Popen(
        [postgres, "-D", str(data), "-p", str(port), "-k", str(scratch), "-h", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 30
    while answers(url) is not None:
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            unavailable("a throwaway PostgreSQL did not start within 30 s")
        time.sleep(0.1)
    return url, process


def in_schema(url: str, schema: str) -> str:
    """``url`` with every connection's search_path set to ``schema``."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


class Schema:
    """A fresh schema on the test server: ``url`` reaches it; dropped by ``drop()``."""

    def __init__(self, server_url: str) -> None:
        import psycopg

        self.server_url = server_url
        self.name = f"test_{uuid.uuid4().hex[:16]}"
        with psycopg.connect(server_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'CREATE SCHEMA "{self.name}"')
        self.url = in_schema(server_url, self.name)

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.server_url, autocommit=True, connect_timeout=5) as connection:
            connection.execute(f'DROP SCHEMA IF EXISTS "{self.name}" CASCADE')
