"""A few hundred jobs through one process: descriptors, threads and held state come back.

The service runs for weeks: whatever a job opens (database connections, sockets, threads) must
be closed when it ends, on the embedded SQLite and on PostgreSQL. Counted from inside the
process (``/proc/self/fd``), with the stand-in in the same process (its own share is constant).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from avatar_service.http.server import serve
from avatar_service.persistence.sqlite import POOL_IDLE
from tests.conftest import TERMINAL, LiveService

JOBS = 240
AT_ONCE = 8
# Descriptors a settled process may hold beyond its level before the work; a leak of one per
# job would be JOBS. Pooled database connections are counted apart (see below).
SLACK = 4
# Descriptors of one pooled connection: SQLite's database file and its WAL, or a socket.
PER_CONNECTION = {"sqlite": 2, "postgresql": 1}


def open_descriptors() -> int:
    """The descriptors this process has open now."""
    return len(os.listdir("/proc/self/fd"))


def descriptors_beside_pool(database) -> Callable[[], int]:
    """Open descriptors, less those of the database pool's connections (a pool keeps more
    open after a busier moment, within its own bound, which is checked apart)."""
    per_connection = PER_CONNECTION[database.dialect.name]
    return lambda: open_descriptors() - per_connection * database.open_connections()


def run_jobs(service: LiveService, name: str, seeds: range) -> list[str]:
    """Each seed's job to its end, AT_ONCE at a time, synchronous and asynchronous mixed."""

    def one(seed: int) -> str:
        body = {"imageName": name, "seed": seed, "width": 64, "height": 64}
        if seed % 2:
            return service.http.post("/generate-avatar-by-image", json=body).json()["status"]
        answer = service.http.post("/generate-avatar-by-image", json={**body, "async": True})
        return service.wait_job(answer.json()["jobId"])["status"]

    with ThreadPoolExecutor(AT_ONCE) as pool:
        return list(pool.map(one, seeds))


def settled(measure, level: int, timeout: float = 15.0) -> int:
    """``measure()`` once it is back to ``level`` + SLACK (polled with a bound); else its
    last value."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > level + SLACK and time.monotonic() < deadline:
        time.sleep(0.05)
        value = measure()
    return value


def check_nothing_accumulates(service: LiveService, photo: bytes, pool_bound: int) -> None:
    database = service.services.database
    descriptors = descriptors_beside_pool(database)
    name = service.upload(photo)
    assert set(run_jobs(service, name, range(1, 2 * AT_ONCE + 1))) == {"succeeded"}  # warm-up
    fds = settled(descriptors, 0, timeout=0)
    threads = settled(threading.active_count, 0, timeout=0)

    statuses = run_jobs(service, name, range(100, 100 + JOBS))

    assert statuses == ["succeeded"] * JOBS
    assert set(statuses) <= TERMINAL
    assert settled(descriptors, fds) <= fds + SLACK
    assert settled(threading.active_count, threads) <= threads + SLACK
    assert database.open_connections() <= pool_bound
    # Events are kept per job for late readers, within their documented bounds.
    events = service.services.events
    assert events.held() <= events.retention_jobs


def test_nothing_accumulates_per_job_on_sqlite(make_service, photo):
    """240 jobs on the embedded SQLite: descriptors and threads come back to their level."""
    check_nothing_accumulates(make_service(), photo, pool_bound=POOL_IDLE)


def test_nothing_accumulates_per_job_on_postgres(make_service, photo, postgres_url):
    """240 jobs on PostgreSQL: descriptors and threads come back to their level."""
    service = make_service(database_url=postgres_url)
    check_nothing_accumulates(
        service, photo, pool_bound=service.services.settings.database_pool_size
    )


def test_serves_with_more_than_1024_descriptors_open(service, photo):
    """Connections whose descriptors are above 1023 are served (poll, not select)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(2048, hard), hard))
    ballast = []
    try:
        while open_descriptors() < 1100:
            ballast.append(os.open(os.devnull, os.O_RDONLY))
        with httpx.Client(base_url=service.url, timeout=30) as fresh:  # a socket above 1023
            assert fresh.get("/healthz").status_code == 200
            name = fresh.post(
                "/upload-image", files={"image": ("me.png", photo, "image/png")}
            ).json()["imageName"]
            answer = fresh.post("/generate-avatar-by-image", json={"imageName": name})
            assert answer.status_code == 200, answer.text
            assert answer.json()["status"] == "succeeded"
    finally:
        for descriptor in ballast:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


class FailingLoop:
    """Waitress's ``run()`` as seen by ``serve``: it raises ``failures`` times, then ends."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.runs = 0

    def run(self) -> None:
        self.runs += 1
        if self.runs <= self.failures:
            raise ValueError("filedescriptor out of range in select()")


def test_a_failing_serving_loop_is_logged_and_served_again(caplog):
    """An error out of the serving loop is logged as critical and the loop runs again."""
    loop = FailingLoop(failures=2)
    assert serve(loop) == 0
    assert loop.runs == 3
    failures = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert [r.getMessage() for r in failures] == ["the serving loop failed; serving again"] * 2
    assert "filedescriptor out of range" in caplog.text


def test_a_loop_failing_again_and_again_stops_the_process_loudly(caplog):
    """Five failures within a minute: serve returns 1 (exit status) and says why."""
    loop = FailingLoop(failures=100)
    assert serve(loop) == 1
    assert loop.runs == 5
    assert "the serving loop failed 5 times in 60 s: stopping" in caplog.text
