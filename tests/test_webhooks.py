"""Signed job webhooks: signing, the callback allow-list, and persistent delivery with retries."""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from avatar_service.delivery.webhooks import (
    InvalidSecret,
    InvalidWebhook,
    WebhookDispatcher,
    build_body,
    is_allowed_callback,
    verify,
)
from tests.helpers import wait_for
from tests.receivers import Drop, Receiver, Reply, Slow, free_port
from tests.signing import sign
from tests.test_records import TABLES

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
FAST = {"backoff": 0.01, "backoff_max": 0.05}
JOB = {"jobId": "0f" * 16, "status": "succeeded", "avatars": ["a_0.png"], "note": "héllo ✓"}


# --- signing -------------------------------------------------------------------------------------


def test_sign_matches_the_standard_webhooks_reference_vector():
    """The signature published with the Standard Webhooks reference libraries is made by the
    tests' signer and accepted by verify()."""
    body = b'{"test": 2432232314}'
    reference = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

    signature = sign(SECRET, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)

    assert signature == reference
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": reference,
    }
    assert verify(SECRET, headers, body, now=1614265330) is True


def _headers(secret: str, body: bytes, *, timestamp: int = 1_700_000_000) -> dict[str, str]:
    return {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, "msg_1", timestamp, body),
    }


def test_verify_accepts_a_fresh_signed_message():
    """A message signed with the secret verifies, with header names in any case."""
    body = b'{"a":1}'
    headers = {k.title(): v for k, v in _headers(SECRET, body).items()}

    assert verify(SECRET, headers, body, now=1_700_000_010) is True


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda h, b: (h, b), True),
        (lambda h, b: (h, b + b" "), False),
        (lambda h, b: ({**h, "webhook-id": "msg_2"}, b), False),
        (lambda h, b: ({**h, "webhook-timestamp": "1700000001"}, b), False),
        (lambda h, b: ({**h, "webhook-signature": "v1,AAAA"}, b), False),
        (
            lambda h, b: (
                {**h, "webhook-signature": h["webhook-signature"].replace("v1", "v2")},
                b,
            ),
            False,
        ),
        (lambda h, b: ({**h, "webhook-signature": "v1,bad " + h["webhook-signature"]}, b), True),
        (lambda h, b: ({**h, "webhook-signature": h["webhook-signature"] + " v1,bad"}, b), True),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), False),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-id"}, b), False),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), False),
    ],
    ids=[
        "unchanged",
        "body",
        "id",
        "timestamp",
        "signature",
        "version",
        "one-of-several-first",
        "one-of-several-last",
        "no-signature",
        "no-id",
        "timestamp-not-a-number",
    ],
)
def test_verify_rejects_altered_messages(change, expected):
    """Any change to id, timestamp, body or signature fails; one good signature of many passes."""
    body = b'{"a":1}'
    headers, body = change(_headers(SECRET, body), body)

    assert verify(SECRET, headers, body, now=1_700_000_000) is expected


def test_verify_rejects_another_secret():
    """A message signed with another key does not verify."""
    body = b"{}"
    headers = _headers("whsec_" + "QUJD" * 8, body)

    assert verify(SECRET, headers, body, now=1_700_000_000) is False


@pytest.mark.parametrize(
    ("age", "expected"), [(-301, False), (-300, True), (0, True), (300, True), (301, False)]
)
def test_verify_timestamp_tolerance(age, expected):
    """Timestamps more than tolerance seconds from now, either way, are refused."""
    body = b"{}"

    result = verify(SECRET, _headers(SECRET, body), body, tolerance=300, now=1_700_000_000 + age)

    assert result is expected


def test_raw_secret_without_prefix_is_used_as_utf8_bytes():
    """A secret without whsec_ is its own UTF-8 key, and differs from the whsec_ form."""
    body = b"{}"
    headers = _headers("plain-secret-ü", body)

    assert verify("plain-secret-ü", headers, body, now=1_700_000_000) is True
    assert verify(SECRET, headers, body, now=1_700_000_000) is False


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_", ""])
def test_unusable_secrets_are_refused(secret, tmp_path):
    """A malformed or empty secret fails at construction, not at the first delivery."""
    with pytest.raises(InvalidSecret):
        WebhookDispatcher(db_path=tmp_path / "db", secret=secret, timeout=httpx.Timeout(1.0))


# --- body ----------------------------------------------------------------------------------------


def test_body_is_compact_utf8_json_with_type_timestamp_and_data():
    """The body is {"type","timestamp","data"} as compact UTF-8 JSON with an ISO UTC timestamp."""
    body = build_body("job.succeeded", JOB, at=1_700_000_000.25)

    assert body == (
        '{"type":"job.succeeded","timestamp":"2023-11-14T22:13:20.250Z","data":'
        + json.dumps(JOB, separators=(",", ":"), ensure_ascii=False)
        + "}"
    ).encode("utf-8")


@pytest.mark.parametrize(
    ("event_type", "data"),
    [
        ("job.started", {}),
        ("", {}),
        ("job.failed", {"x": object()}),
        ("job.failed", {"x": float("nan")}),
    ],
)
def test_bad_events_are_refused(event_type, data):
    """Unknown event types and data that is not JSON cannot be enqueued."""
    with pytest.raises(InvalidWebhook):
        build_body(event_type, data)


# --- allow-list ----------------------------------------------------------------------------------

ALLOWED = [
    "https://hooks.example.com/",
    "http://127.0.0.1:8080/cb",
    "https://api.example.org/v1/hooks/",
]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.example.com/", True),
        ("https://hooks.example.com", True),
        ("https://hooks.example.com/any/path?x=1", True),
        ("https://HOOKS.Example.COM/x", True),
        ("HTTPS://hooks.example.com/x", True),
        ("https://hooks.example.com:443/x", True),
        ("http://127.0.0.1:8080/cb", True),
        ("http://127.0.0.1:8080/cb/job/1", True),
        ("http://127.0.0.1:8080/cb?job=1", True),
        ("https://api.example.org/v1/hooks/abc", True),
        # user info, the classic way to smuggle another host in
        ("https://hooks.example.com@evil.com/", False),
        ("https://user:pass@hooks.example.com/", False),
        ("https://hooks.example.com%40evil.com/", False),
        ("https://hooks.example.com\\@evil.com/", False),
        # other hosts that contain or resemble the allowed one
        ("https://evil.com/https://hooks.example.com/", False),
        ("https://hooks.example.com.evil.com/", False),
        ("https://evilhooks.example.com/", False),
        ("https://sub.hooks.example.com/", False),
        ("https://hooks.example.com./", False),
        ("https://hooks%2eexample.com/", False),
        # scheme and port
        ("http://hooks.example.com/", False),
        ("https://hooks.example.com:8443/", False),
        ("http://127.0.0.1/cb", False),
        ("http://127.0.0.1:80/cb", False),
        ("https://hooks.example.com:99999/", False),
        ("ftp://hooks.example.com/", False),
        ("javascript:alert(1)//hooks.example.com/", False),
        ("file:///etc/passwd", False),
        ("//hooks.example.com/", False),
        ("hooks.example.com/", False),
        ("https:///hooks.example.com/", False),
        # paths
        ("http://127.0.0.1:8080/cbx", False),
        ("http://127.0.0.1:8080/", False),
        ("http://127.0.0.1:8080/other", False),
        ("http://127.0.0.1:8080/cb/../admin", False),
        ("http://127.0.0.1:8080/cb/%2e%2e/admin", False),
        ("http://127.0.0.1:8080/cb/%2E%2E", False),
        ("https://api.example.org/v1/hooks", False),
        ("https://api.example.org/v1/hooks/..%2fadmin", False),
        ("https://api.example.org/v1/other", False),
        # whitespace and control characters that parsers strip or split on
        (" https://hooks.example.com/", False),
        ("https://hooks.example.com/\nx", False),
        ("https://hooks.exa\tmple.com/", False),
        ("https://hooks.example.com/\x00", False),
        ("", False),
    ],
)
def test_is_allowed_callback(url, expected):
    """Scheme, host and port match exactly and the path by prefix; tricks are refused."""
    assert is_allowed_callback(url, ALLOWED) is expected


def test_empty_allow_list_allows_nothing():
    """Without configured entries no callback URL is accepted."""
    assert is_allowed_callback("https://hooks.example.com/", []) is False


def test_unparseable_allow_list_entries_match_nothing():
    """A malformed entry is skipped rather than matching loosely."""
    assert is_allowed_callback("https://hooks.example.com/", ["hooks.example.com", "*"]) is False


# --- dispatcher ----------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording webhook receiver answering 200 unless scripted otherwise."""
    with Receiver() as server:
        yield server


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """The SQLite file shared by the dispatchers of one test."""
    return tmp_path / "service.sqlite3"


@pytest.fixture
def make_dispatcher(db_path: Path) -> Iterator[Callable[..., WebhookDispatcher]]:
    """Start dispatchers on the test's database; each is stopped after the test."""
    made: list[WebhookDispatcher] = []

    def make(*, start: bool = True, **options: object) -> WebhookDispatcher:
        options = {"secret": SECRET, "timeout": httpx.Timeout(5.0), **FAST, **options}
        dispatcher = WebhookDispatcher(db_path=db_path, **options)  # type: ignore[arg-type]
        made.append(dispatcher)
        if start:
            dispatcher.start()
        return dispatcher

    yield make
    for dispatcher in made:
        dispatcher.stop()


def _state(dispatcher: WebhookDispatcher, job_id: str, state: str) -> dict | None:
    """The job's only delivery once it reached ``state``, else None (for polling)."""
    [delivery] = dispatcher.deliveries(job_id)
    return delivery if delivery["state"] == state else None


def test_delivery_is_signed_and_verifies_on_the_receiver(receiver, make_dispatcher):
    """The receiver gets the exact body, and verify() accepts its raw bytes and headers."""
    dispatcher = make_dispatcher()

    msg_id = dispatcher.enqueue(
        job_id="j1", url=receiver.url(), event_type="job.succeeded", data=JOB
    )

    [request] = receiver.wait_for(1)
    assert re.fullmatch(r"msg_[0-9a-f]{32}", msg_id)
    assert request.headers["webhook-id"] == msg_id
    assert request.headers["content-type"] == "application/json"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 60
    assert verify(SECRET, request.headers, request.body) is True
    message = request.json()
    assert (message["type"], message["data"]) == ("job.succeeded", JOB)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["timestamp"])
    # The signature is tied to this body, secret and a recent timestamp.
    assert verify(SECRET, request.headers, request.body + b" ") is False
    assert verify("whsec_" + "QUJD" * 8, request.headers, request.body) is False
    assert verify(SECRET, request.headers, request.body, now=time.time() + 3600) is False


def test_deliveries_are_recorded_json_ready(receiver, make_dispatcher):
    """deliveries() lists id, url, event type, state, each attempt and the next attempt time."""
    dispatcher = make_dispatcher()
    msg_id = dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.failed", data={})

    delivery = wait_for(lambda: _state(dispatcher, "j1", "delivered"))

    [attempt] = delivery.pop("attempts")
    assert delivery == {
        "id": msg_id,
        "url": receiver.url(),
        "eventType": "job.failed",
        "state": "delivered",
        "nextAttemptAt": None,
    }
    assert (attempt["status"], attempt["error"]) == (200, None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", attempt["at"])
    assert isinstance(attempt["durationMs"], int)
    assert json.loads(json.dumps(dispatcher.deliveries("j1")))[0]["id"] == msg_id
    assert dispatcher.deliveries("unknown-job") == []


def test_failures_are_retried_with_the_same_id_and_body(receiver, make_dispatcher):
    """Two failures (500, dropped connection) then success: three attempts, one id, one body."""
    receiver.script(Reply(500, b"no", {}), Drop(), Reply(204, b"", {}))
    dispatcher = make_dispatcher()
    msg_id = dispatcher.enqueue(
        job_id="j1", url=receiver.url(), event_type="job.succeeded", data=JOB
    )

    delivery = wait_for(lambda: _state(dispatcher, "j1", "delivered"))

    requests = receiver.received
    assert len(requests) == 3
    assert {r.headers["webhook-id"] for r in requests} == {msg_id}
    assert {r.body for r in requests} == {requests[0].body}
    assert all(verify(SECRET, r.headers, r.body) for r in requests)
    assert [(a["status"], a["error"] is None) for a in delivery["attempts"]] == [
        (500, False),
        (None, False),
        (204, True),
    ]
    assert delivery["attempts"][0]["error"] == "HTTP 500"
    assert delivery["attempts"][1]["error"].startswith("connection dropped: ")


def test_client_errors_are_retried_too(receiver, make_dispatcher):
    """Any non-2xx answer counts as a failed attempt (a receiver may be misconfigured briefly)."""
    receiver.script(Reply(404, b"", {}))
    dispatcher = make_dispatcher()
    dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.succeeded", data={})

    delivery = wait_for(lambda: _state(dispatcher, "j1", "delivered"))

    assert [a["status"] for a in delivery["attempts"]] == [404, 200]


def test_gives_up_after_max_attempts(receiver, make_dispatcher, caplog):
    """A receiver that keeps failing gets max_attempts tries, then the delivery is failed."""
    receiver.default = Reply(503, b"", {})
    dispatcher = make_dispatcher(max_attempts=3)

    with caplog.at_level("WARNING", logger="avatar_service.delivery.webhooks"):
        dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.failed", data={})
        delivery = wait_for(lambda: _state(dispatcher, "j1", "failed"))

    assert [a["status"] for a in delivery["attempts"]] == [503, 503, 503]
    assert delivery["nextAttemptAt"] is None
    assert len(receiver.received) == 3
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "ERROR"]


def test_timestamp_is_of_the_attempt_and_signature_follows_it(receiver, make_dispatcher):
    """A retry a second later carries a newer timestamp, still signed correctly."""
    receiver.script(Reply(503, b"", {"Retry-After": "1"}))
    dispatcher = make_dispatcher(backoff_max=5.0)
    dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.succeeded", data={})

    first, second = receiver.wait_for(2)

    assert second.at - first.at >= 1.0
    assert int(second.headers["webhook-timestamp"]) > int(first.headers["webhook-timestamp"])
    assert first.headers["webhook-signature"] != second.headers["webhook-signature"]
    assert verify(SECRET, second.headers, second.body) is True


def test_unsigned_without_secret(receiver, make_dispatcher, caplog):
    """Without a secret: id and timestamp are sent, no signature, and one warning at start."""
    with caplog.at_level("WARNING", logger="avatar_service.delivery.webhooks"):
        dispatcher = make_dispatcher(secret=None)
        dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.succeeded", data={})
        dispatcher.enqueue(job_id="j2", url=receiver.url(), event_type="job.succeeded", data={})
        requests = receiver.wait_for(2)

    assert all("webhook-signature" not in r.headers for r in requests)
    assert all(r.headers["webhook-id"].startswith("msg_") for r in requests)
    assert all(r.headers["webhook-timestamp"].isdigit() for r in requests)
    assert ["unsigned" in r.getMessage() for r in caplog.records] == [True]


def test_pending_delivery_survives_a_restart(db_path, make_dispatcher):
    """Enqueued while the receiver is down; a new dispatcher on the same file delivers it once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    first = make_dispatcher(max_attempts=1000, backoff=0.05, backoff_max=0.1)
    msg_id = first.enqueue(job_id="j1", url=url, event_type="job.succeeded", data=JOB)
    wait_for(lambda: len(first.deliveries("j1")[0]["attempts"]) >= 2)
    first.stop()
    failed_attempts = len(first.deliveries("j1")[0]["attempts"])

    with Receiver(port=port) as receiver:
        second = make_dispatcher(max_attempts=1000)
        delivery = wait_for(lambda: _state(second, "j1", "delivered"))
        second.stop()
        requests = receiver.received

    assert len(requests) == 1
    assert requests[0].headers["webhook-id"] == msg_id
    assert verify(SECRET, requests[0].headers, requests[0].body) is True
    assert requests[0].json()["data"] == JOB
    attempts = delivery["attempts"]
    assert len(attempts) == failed_attempts + 1
    assert all(a["error"].startswith("connection failed: ") for a in attempts[:-1])
    assert (attempts[-1]["status"], attempts[-1]["error"]) == (200, None)


def test_enqueue_before_start_is_kept_until_start(receiver, make_dispatcher):
    """A delivery enqueued while no dispatcher runs is stored and sent once one starts."""
    dispatcher = make_dispatcher(start=False)
    dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.cancelled", data={})
    assert _state(dispatcher, "j1", "pending") is not None
    assert receiver.received == []

    dispatcher.start()

    wait_for(lambda: _state(dispatcher, "j1", "delivered"))
    assert receiver.received[0].json()["type"] == "job.cancelled"


def test_slow_receiver_does_not_hold_up_other_jobs(make_dispatcher):
    """While one receiver hangs, another job's webhook is delivered."""
    with Receiver(default=Slow(30.0)) as slow, Receiver() as fast:
        dispatcher = make_dispatcher()
        dispatcher.enqueue(job_id="slow", url=slow.url(), event_type="job.succeeded", data={})
        slow.wait_for(1)
        dispatcher.enqueue(job_id="fast", url=fast.url(), event_type="job.succeeded", data={})

        wait_for(lambda: _state(dispatcher, "fast", "delivered"))

        assert _state(dispatcher, "slow", "pending") is not None
        assert _state(dispatcher, "slow", "pending")["attempts"] == []


def test_receiver_slower_than_the_timeout_is_retried(receiver, make_dispatcher):
    """An answer slower than the read timeout is a failed attempt; the retry succeeds."""
    receiver.script(Slow(5.0))
    dispatcher = make_dispatcher(timeout=httpx.Timeout(5.0, read=0.2))
    dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.succeeded", data={})

    delivery = wait_for(lambda: _state(dispatcher, "j1", "delivered"))

    assert delivery["attempts"][0]["error"].startswith("timed out: ")
    assert delivery["attempts"][1]["status"] == 200


def test_many_jobs_each_delivered_once(receiver, make_dispatcher):
    """Twenty webhooks for twenty jobs arrive exactly once each."""
    dispatcher = make_dispatcher()
    ids = {
        dispatcher.enqueue(job_id=f"j{i}", url=receiver.url(), event_type="job.succeeded", data={})
        for i in range(20)
    }

    wait_for(lambda: all(_state(dispatcher, f"j{i}", "delivered") for i in range(20)))

    assert sorted(r.headers["webhook-id"] for r in receiver.received) == sorted(ids)


def test_stop_does_not_wait_out_a_backoff(receiver, make_dispatcher):
    """stop() returns promptly while a delivery waits a long backoff."""
    receiver.default = Reply(500, b"", {})
    dispatcher = make_dispatcher(backoff=60.0, backoff_max=60.0)
    dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.succeeded", data={})
    receiver.wait_for(1)
    wait_for(lambda: dispatcher.deliveries("j1")[0]["attempts"])

    started = time.monotonic()
    dispatcher.stop(timeout=5.0)

    assert time.monotonic() - started < 5.0
    assert _state(dispatcher, "j1", "pending")["nextAttemptAt"] is not None


def test_tables_live_beside_other_tables_in_a_shared_file(db_path, receiver, make_dispatcher):
    """The outbox's tables live in the service's one database file, beside tables it does not
    know, which keep their rows."""
    with sqlite3.connect(db_path) as other:
        other.execute("CREATE TABLE notes (id TEXT PRIMARY KEY)")
        other.execute("INSERT INTO notes VALUES ('j1')")
    other.close()
    dispatcher = make_dispatcher()
    dispatcher.enqueue(job_id="j1", url=receiver.url(), event_type="job.succeeded", data={})
    wait_for(lambda: _state(dispatcher, "j1", "delivered"))

    connection = sqlite3.connect(db_path)
    try:
        tables = {
            r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        notes = connection.execute("SELECT id FROM notes").fetchall()
        mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
    finally:
        connection.close()
    assert tables == TABLES | {"notes"}
    assert notes == [("j1",)]
    assert mode == "wal"


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"url": "ftp://x/"}, InvalidWebhook),
        ({"event_type": "job.started"}, InvalidWebhook),
        ({"data": {"x": {1, 2}}}, InvalidWebhook),
    ],
)
def test_enqueue_refuses_bad_webhooks(make_dispatcher, options, error):
    """Nothing is stored for a webhook that could never be sent."""
    dispatcher = make_dispatcher(start=False)
    arguments = {
        "job_id": "j1",
        "url": "http://127.0.0.1:1/",
        "event_type": "job.failed",
        "data": {},
    }

    with pytest.raises(error):
        dispatcher.enqueue(**{**arguments, **options})

    assert dispatcher.deliveries("j1") == []
