"""Forwarding generated avatars to UPLOAD_URL through the outbox: multipart content, retries,
and failures recorded, never raised."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from avatar_service.delivery.forwarding import AvatarForwarder
from avatar_service.delivery.retry import backoff_delay, parse_retry_after, redact_url
from tests.helpers import wait_for
from tests.receivers import Drop, Receiver, Reply, Slow, free_port

FAST = {"backoff": 0.01, "backoff_max": 0.05}
TIMEOUT = httpx.Timeout(5.0)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording upload receiver answering 200 JSON unless scripted otherwise."""
    with Receiver() as server:
        yield server


@pytest.fixture
def avatar(tmp_path: Path) -> Path:
    """A file with every byte value in it, so any mangling of the upload shows."""
    path = tmp_path / "avatar.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64 + os.urandom(4096))
    return path


@pytest.fixture
def make_forwarder(tmp_path: Path) -> Iterator[Callable[..., AvatarForwarder]]:
    """Start forwarders on the test's database; each is stopped after the test."""
    made: list[AvatarForwarder] = []

    def make(url: str, **options: object) -> AvatarForwarder:
        options = {"db_path": tmp_path / "service.sqlite3", "timeout": TIMEOUT, **FAST, **options}
        forwarder = AvatarForwarder(url=url, **options)  # type: ignore[arg-type]
        made.append(forwarder)
        forwarder.start()
        return forwarder

    yield make
    for forwarder in made:
        forwarder.stop()


def forward(
    forwarder: AvatarForwarder,
    path: Path,
    *,
    filename: str = "a.png",
    job_id: str = "j1",
    fields: dict[str, str] | None = None,
) -> None:
    """Enqueue the forwarding of one file."""
    forwarder.enqueue(
        job_id=job_id,
        path=path,
        filename=filename,
        content_type="image/png",
        fields=fields or {"jobId": job_id},
    )


def settled(forwarder: AvatarForwarder, filename: str = "a.png", job_id: str = "j1") -> dict:
    """Wait (bounded) until the forwarding of ``filename`` is delivered or failed; its outcome."""

    def outcome() -> dict | None:
        found = forwarder.outcomes(job_id).get(filename)
        return found if found and found["state"] != "pending" else None

    return wait_for(outcome, timeout=10)


def test_file_and_fields_arrive_under_the_configured_names(receiver, avatar, make_forwarder):
    """The file goes under field_name with its name and type, beside every form field."""
    forwarder = make_forwarder(receiver.url("/upload"), field_name="avatar")
    fields = {"jobId": "abc123", "seed": "42", "width": "512", "height": "768", "gender": "female"}

    forward(forwarder, avatar, filename="abc123_0.png", job_id="abc123", fields=fields)

    assert settled(forwarder, "abc123_0.png", "abc123") == {
        "state": "delivered",
        "ok": True,
        "url": receiver.url("/upload"),
        "attempts": 1,
        "status": 200,
        "error": None,
        "response": {"ok": True},
        "nextAttemptAt": None,
    }
    [request] = receiver.received
    assert request.path == "/upload"
    assert request.headers["content-type"].startswith("multipart/form-data; boundary=")
    got_fields, got_files = request.multipart()
    assert got_fields == fields
    assert got_files == {"avatar": ("abc123_0.png", "image/png", avatar.read_bytes())}


def test_outcomes_are_json_ready(receiver, avatar, make_forwarder):
    """outcomes() gives exactly the outcome fields per file and survives json.dumps."""
    forwarder = make_forwarder(receiver.url())
    forward(forwarder, avatar)
    settled(forwarder)

    assert json.loads(json.dumps(forwarder.outcomes("j1"))) == {
        "a.png": {
            "state": "delivered",
            "ok": True,
            "url": receiver.url(),
            "attempts": 1,
            "status": 200,
            "error": None,
            "response": {"ok": True},
            "nextAttemptAt": None,
        }
    }


def test_text_answer_is_kept_truncated(receiver, avatar, make_forwarder):
    """A non-JSON answer is recorded as text, cut to 500 characters."""
    receiver.script(Reply(200, b"x" * 2000, {"Content-Type": "text/plain"}))
    forwarder = make_forwarder(receiver.url())

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert outcome["ok"] is True
    assert outcome["response"] == "x" * 500


@pytest.mark.parametrize(
    "failure",
    [Reply(500, b"boom", {}), Reply(503, b"", {}), Reply(408), Reply(429), Drop()],
    ids=["500", "503", "408", "429", "dropped-connection"],
)
def test_two_failures_then_success_delivers_once(receiver, avatar, make_forwarder, failure):
    """Transient failures are retried; the third attempt succeeds and is the only success."""
    receiver.script(failure, failure, Reply(201, b'{"id": 7}'))
    forwarder = make_forwarder(receiver.url(), max_attempts=3)

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert (outcome["ok"], outcome["attempts"], outcome["status"], outcome["error"]) == (
        True,
        3,
        201,
        None,
    )
    assert outcome["response"] == {"id": 7}
    requests = receiver.received
    assert len(requests) == 3
    # Every attempt carried the whole file.
    assert {r.multipart()[1]["file"][2] for r in requests} == {avatar.read_bytes()}


def test_gives_up_after_max_attempts(receiver, avatar, make_forwarder, caplog):
    """A receiver that keeps failing gets max_attempts tries; each failure is logged."""
    receiver.default = Reply(502, b"bad gateway", {"Content-Type": "text/plain"})
    forwarder = make_forwarder(receiver.url(), max_attempts=4)

    with caplog.at_level("WARNING", logger="avatar_service.delivery.outbox"):
        forward(forwarder, avatar)
        outcome = settled(forwarder)

    assert outcome == {
        "state": "failed",
        "ok": False,
        "url": receiver.url(),
        "attempts": 4,
        "status": 502,
        "error": "HTTP 502",
        "response": "bad gateway",
        "nextAttemptAt": None,
    }
    assert len(receiver.received) == 4
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 3 + ["ERROR"]
    assert [r.args[3] for r in caplog.records] == [1, 2, 3, 4]
    assert avatar.exists()


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_client_errors_are_not_retried(receiver, avatar, make_forwarder, status):
    """A 4xx other than 408/429 means the request is wrong: one attempt only."""
    receiver.script(Reply(status, b'{"error": "no"}'))
    forwarder = make_forwarder(receiver.url(), max_attempts=5)

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert (outcome["ok"], outcome["attempts"], outcome["status"]) == (False, 1, status)
    assert outcome["error"] == f"HTTP {status}"
    assert outcome["response"] == {"error": "no"}
    assert len(receiver.received) == 1


def test_unreachable_url_is_an_outcome_not_an_exception(avatar, make_forwarder):
    """Nothing listening: failed, every attempt made, a clear connection error."""
    url = f"http://127.0.0.1:{free_port()}/upload"
    forwarder = make_forwarder(url, max_attempts=2)

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert (outcome["ok"], outcome["attempts"], outcome["status"], outcome["response"]) == (
        False,
        2,
        None,
        None,
    )
    assert outcome["error"] is not None
    assert outcome["error"].startswith("connection failed: ")
    assert avatar.read_bytes().startswith(b"\x89PNG")


def test_timeout_is_retried(receiver, avatar, make_forwarder):
    """A receiver slower than the read timeout counts as a failed attempt and is retried."""
    receiver.script(Slow(5.0), Reply())
    forwarder = make_forwarder(receiver.url(), timeout=httpx.Timeout(5.0, read=0.2))

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert (outcome["ok"], outcome["attempts"]) == (True, 2)
    assert len(receiver.received) == 2


def test_missing_file_is_an_outcome_not_an_exception(receiver, tmp_path, make_forwarder):
    """A file that cannot be read fails for good without any request being made."""
    forwarder = make_forwarder(receiver.url(), max_attempts=5)

    forward(forwarder, tmp_path / "gone.png", filename="gone.png")

    outcome = settled(forwarder, "gone.png")
    assert (outcome["ok"], outcome["attempts"], outcome["status"]) == (False, 1, None)
    assert outcome["error"] is not None
    assert outcome["error"].startswith("cannot read gone.png")
    assert receiver.received == []


def test_retry_after_is_honoured(receiver, avatar, make_forwarder):
    """Retry-After: 1 makes the next attempt wait at least a second despite a tiny backoff."""
    receiver.script(Reply(429, b"", {"Retry-After": "1"}), Reply())
    forwarder = make_forwarder(receiver.url(), backoff_max=5.0)

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert (outcome["ok"], outcome["attempts"]) == (True, 2)
    first, second = receiver.received
    assert second.at - first.at >= 1.0


def test_retry_after_is_capped_by_backoff_max(receiver, avatar, make_forwarder):
    """A huge Retry-After is cut to backoff_max, so the upload still completes promptly."""
    receiver.script(Reply(503, b"", {"Retry-After": "3600"}), Reply())
    forwarder = make_forwarder(receiver.url(), backoff_max=0.05)

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert (outcome["ok"], outcome["attempts"]) == (True, 2)
    first, second = receiver.received
    assert second.at - first.at < 30


def test_concurrent_enqueues_all_arrive(receiver, avatar, make_forwarder):
    """Forwardings enqueued from many threads at once are each delivered exactly once."""
    forwarder = make_forwarder(receiver.url())

    def upload(index: int) -> None:
        forward(forwarder, avatar, filename=f"{index}.png", job_id=str(index))

    threads = [threading.Thread(target=upload, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)

    outcomes = [settled(forwarder, f"{i}.png", str(i)) for i in range(16)]
    assert all(o["ok"] and o["attempts"] == 1 for o in outcomes)
    job_ids = sorted(int(r.multipart()[0]["jobId"]) for r in receiver.received)
    assert job_ids == list(range(16))


def test_url_in_outcome_hides_credentials(receiver, avatar, make_forwarder):
    """User info and query string of UPLOAD_URL never reach the outcome."""
    url = f"http://user:pw@127.0.0.1:{receiver.port}/up?token=secret"
    forwarder = make_forwarder(url)

    forward(forwarder, avatar)

    outcome = settled(forwarder)
    assert outcome["ok"] is True
    assert outcome["url"] == f"http://127.0.0.1:{receiver.port}/up"
    assert receiver.received[0].path == "/up?token=secret"


@pytest.mark.parametrize(
    "options",
    [{"url": "ftp://x/"}, {"max_attempts": 0}, {"backoff": -1}, {"backoff_max": -1}],
    ids=["scheme", "max_attempts", "backoff", "backoff_max"],
)
def test_bad_options_are_refused(options, tmp_path):
    """Wrong configuration fails at construction, not at the first upload."""
    with pytest.raises(ValueError):
        AvatarForwarder(
            **{
                "url": "http://127.0.0.1:1/",
                "db_path": tmp_path / "service.sqlite3",
                "timeout": TIMEOUT,
                **options,
            }
        )


@pytest.mark.parametrize(
    ("attempt", "retry_after", "jitter", "expected"),
    [
        (1, None, 0.0, 0.5),
        (2, None, 0.0, 1.0),
        (3, None, 0.0, 2.0),
        (6, None, 0.0, 10.0),  # capped
        (1000, None, 0.0, 10.0),  # no overflow
        (1, None, 0.999999, 0.55),  # jitter adds at most 10%
        (3, 4.0, 0.0, 4.0),  # Retry-After replaces the exponential delay
        (1, 3600.0, 0.0, 10.0),  # ...but never beyond the cap
        (1, -5.0, 0.0, 0.0),
    ],
)
def test_backoff_delay(attempt, retry_after, jitter, expected):
    """Exponential delay from base, replaced by Retry-After, jittered, capped."""
    assert backoff_delay(attempt, 0.5, 10.0, retry_after, jitter=jitter) == pytest.approx(expected)


def test_backoff_delay_refuses_attempt_zero():
    """Attempts count from 1."""
    with pytest.raises(ValueError):
        backoff_delay(0, 0.5, 10.0)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("120", 120.0),
        (" 3 ", 3.0),
        ("1.5", 1.5),
        ("-1", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(header, expected):
    """Delay-seconds and HTTP dates are understood; anything else is ignored."""
    from datetime import UTC, datetime

    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://u:p@host.example/x?token=1#f", "https://host.example/x"),
        ("http://127.0.0.1:8080/up", "http://127.0.0.1:8080/up"),
        ("http://[::1]:9/a", "http://[::1]:9/a"),
        ("http://host:99999/", "<invalid url>"),
    ],
)
def test_redact_url(url, expected):
    """Logged and reported URLs lose user info, query and fragment."""
    assert redact_url(url) == expected
