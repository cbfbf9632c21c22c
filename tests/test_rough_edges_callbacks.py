"""Callback URLs: schemes and hosts are case-insensitive, in a request's callbackUrl and in
WEBHOOK_ALLOWED_URLS alike; paths stay case-sensitive."""

from __future__ import annotations

import re

import pytest

from avatar_service.delivery.webhooks import allowed_url_pattern, is_allowed_callback
from tests.receivers import Receiver


@pytest.mark.parametrize(
    ("entry", "callback"),
    [
        pytest.param("http://127.0.0.1:{port}/allowed/", "HTTP://127.0.0.1:{port}/allowed/job"),
        pytest.param("http://127.0.0.1:{port}/allowed/", "Http://127.0.0.1:{port}/allowed/job"),
        pytest.param("HTTP://127.0.0.1:{port}/allowed/", "http://127.0.0.1:{port}/allowed/job"),
        pytest.param("http://localhost:{port}/allowed/", "http://LOCALHOST:{port}/allowed/job"),
        pytest.param("http://LocalHost:{port}/allowed/", "HTTP://localhost:{port}/allowed/job"),
    ],
)
def test_callback_url_in_another_case_is_accepted_and_delivered(
    make_service, standin, photo, entry, callback
):
    """A callbackUrl whose scheme or host differs in case from its entry gets its webhook."""
    with Receiver() as receiver:
        service = make_service(webhook_allowed_urls=entry.format(port=receiver.port))
        name = service.upload(photo)
        answer = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": name, "callbackUrl": callback.format(port=receiver.port)},
        )
        assert answer.status_code == 200, answer.text
        [delivery] = receiver.wait_for(1, timeout=15)
    assert delivery.path == "/allowed/job"
    assert delivery.json()["data"]["jobId"] == answer.json()["jobId"]


def test_paths_stay_case_sensitive(make_service, photo):
    """A path that differs in case is another resource: still refused."""
    service = make_service(webhook_allowed_urls="http://127.0.0.1:9/allowed/")
    name = service.upload(photo)
    answer = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "callbackUrl": "HTTP://127.0.0.1:9/ALLOWED/job"},
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "invalid_fields",
            "message": "callbackUrl: must start with one of the URLs allowed by "
            "WEBHOOK_ALLOWED_URLS",
            "details": {
                "fields": {
                    "callbackUrl": "must start with one of the URLs allowed by WEBHOOK_ALLOWED_URLS"
                }
            },
        }
    }


ENTRIES = [
    "https://hooks.example.com/",
    "https://hooks.example.com",
    "http://127.0.0.1:8080/cb",
    "https://api.example.org/v1/hooks/",
    "HTTPS://Upper.Example.NET:8443/In/",
    "http://[::1]:8080/cb",
]
URLS = [
    "https://hooks.example.com/",
    "https://hooks.example.com",
    "https://hooks.example.com?x=1",
    "https://HOOKS.Example.COM/x",
    "HTTPS://hooks.example.com/x",
    "https://hooks.example.com:443/x",
    "HTTPS://HOOKS.EXAMPLE.COM:443",
    "http://127.0.0.1:8080/cb",
    "HTTP://127.0.0.1:8080/cb/job/1",
    "http://127.0.0.1:8080/cb?job=1",
    "https://API.example.org/v1/hooks/abc",
    "https://upper.example.net:8443/In/x",
    "hTTps://UPPER.example.net:8443/In/",
    "http://[::1]:8080/cb/x",
    # refused by the rule: the pattern may refuse or let through, the rule decides
    "https://upper.example.net:8443/in/x",
    "https://hooks.example.com.evil.com/",
    "http://127.0.0.1:8080/cbx",
    "http://hooks.example.com/",
]


@pytest.mark.parametrize("url", URLS)
@pytest.mark.parametrize("entry", ENTRIES)
def test_the_published_pattern_never_refuses_an_allowed_url(entry, url):
    """The request schema's pattern for an entry matches every URL the entry allows."""
    if is_allowed_callback(url, [entry]):
        assert re.match(allowed_url_pattern(entry), url), (entry, url)


@pytest.mark.parametrize(
    ("entry", "url"),
    [
        ("https://hooks.example.com/", "ftp://hooks.example.com/"),
        ("https://hooks.example.com/", "https://other.example.com/"),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:8081/cb"),
        ("http://127.0.0.1:8080/cb", "http://127.0.0.1:8080/CB"),
        ("https://api.example.org/v1/hooks/", "https://api.example.org/v1/"),
    ],
)
def test_the_pattern_still_refuses_other_places(entry, url):
    """Another scheme, host, port or path does not match the entry's pattern."""
    assert not re.match(allowed_url_pattern(entry), url)


def test_the_service_info_publishes_the_case_insensitive_pattern(make_service):
    """GET /service-info carries the pattern, readable by ECMA-262 (no inline flags)."""
    service = make_service(webhook_allowed_urls="https://Hooks.Example.com/cb/")
    callbacks = service.http.get("/service-info").json()["callbackUrls"]
    assert callbacks["allowed"] == ["https://Hooks.Example.com/cb/"]
    pattern = callbacks["pattern"]
    assert "(?i" not in pattern
    assert re.match(pattern, "HTTPS://HOOKS.example.COM/cb/job")
    assert not re.match(pattern, "https://hooks.example.com/CB/job")
