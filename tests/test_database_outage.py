"""A database that goes away and comes back: answers stay clear and fast, nothing is stranded.

The service reaches PostgreSQL through a TCP proxy that the test cuts (connections dropped, new
ones refused) and restores, over real sockets.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.helpers import wait_for
from tests.tcp_proxy import TcpProxy

# Long enough for any answer the service gives during an outage, shorter than the pool's own
# wait for a busy pool (10 s): an answer that comes only after that wait fails the test.
ANSWER_WITHIN = httpx.Timeout(5.0, connect=2.0)


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    """A proxy to the test's PostgreSQL schema; ``proxy.url`` is the DATABASE_URL through it."""
    parts = urlsplit(postgres_url)
    forwarder = TcpProxy((parts.hostname, parts.port or 5432)).start()
    netloc = f"{parts.username}@127.0.0.1:{forwarder.port}"
    forwarder.url = urlunsplit(parts._replace(netloc=netloc))  # type: ignore[attr-defined]
    try:
        yield forwarder
    finally:
        forwarder.stop()


def test_requests_during_an_outage_answer_503_database_unavailable_and_recover(
    make_service, photo, proxy
):
    """With the database cut, job reads and new jobs answer 503 database_unavailable with
    Retry-After (not after the pool's long wait, not 500), readiness says why at once, and the
    same requests succeed again soon after the database is back."""
    service = make_service(database_url=proxy.url)
    name = service.upload(photo)
    job_id = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()[
        "jobId"
    ]
    with httpx.Client(base_url=service.url, timeout=ANSWER_WITHIN) as http:
        proxy.cut()
        for method, path, body in (
            ("GET", f"/jobs/{job_id}", None),
            ("POST", "/generate-avatar-by-image", {"imageName": name, "async": True}),
        ):
            answer = http.request(method, path, json=body)
            assert answer.status_code == 503, answer.text
            assert answer.json() == {
                "error": {
                    "code": "database_unavailable",
                    "message": "the service's database does not answer; try again shortly",
                }
            }
            assert answer.headers["Retry-After"] == "2"
        ready = http.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"]["ok"] is False

        proxy.restore()
        wait_for(lambda: http.get(f"/jobs/{job_id}").status_code == 200, timeout=10)
        assert http.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_a_synchronous_generate_cut_off_answers_its_job_id(make_service, photo, proxy, standin):
    """A synchronous generate whose job exists when the database goes away answers 202 with
    the job's id and Location (its client polls; it never pays for a second avatar)."""
    standin.set_faults(step_delay=0.05)
    service = make_service(database_url=proxy.url)
    name = service.upload(photo)
    answers: list[httpx.Response] = []
    request = threading.Thread(
        target=lambda: answers.append(
            service.http.post("/generate-avatar-by-image", json={"imageName": name})
        )
    )
    request.start()
    wait_for(lambda: service.services.engine.dispatcher.runs(), timeout=10)
    proxy.cut()
    request.join(30)
    [answer] = answers
    assert answer.status_code == 202, answer.text
    body = answer.json()
    assert len(body["jobId"]) == 32
    assert answer.headers["Location"].endswith(f"/jobs/{body['jobId']}")
    proxy.restore()
