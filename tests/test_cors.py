"""CORS: a page on another origin can upload, generate, follow the events and fetch the avatar.

The requests below are the ones a browser sends: a preflight OPTIONS with Origin,
Access-Control-Request-Method and Access-Control-Request-Headers, then the real request with
Origin; the page can read the answer only when Access-Control-Allow-Origin names its origin.
"""

from __future__ import annotations

import pytest

PAGE = "https://app.example.com"
KEY = "page-key-0123456789abcdef"


def preflight(http, path: str, method: str, headers: str, origin: str = PAGE):
    """The OPTIONS request a browser sends before a non-simple cross-origin request (``http``:
    a live service's client, or an app's test client)."""
    return http.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )


@pytest.fixture
def cors_service(make_service):
    """A service with API keys that allows the page's origin."""
    return make_service(cors_origins=f"{PAGE},https://other.example.com", api_keys=KEY)


@pytest.fixture
def cors_client(make_app):
    """A test client of an in-process app with API keys that allows the page's origin."""
    return make_app(cors_origins=f"{PAGE},https://other.example.com", api_keys=KEY).test_client()


def test_page_on_another_origin_runs_the_whole_flow(cors_service, photo):
    """Preflights pass without a key, and every answer names the page's origin."""
    service = cors_service
    check = preflight(service.http, "/upload-image", "POST", "authorization")
    assert check.status_code == 200
    assert check.headers["access-control-allow-origin"] == PAGE
    assert "POST" in check.headers["access-control-allow-methods"]
    assert "authorization" in check.headers["access-control-allow-headers"].lower()
    origin = {"Origin": PAGE, "Authorization": f"Bearer {KEY}"}
    upload = service.http.post(
        "/upload-image", files={"image": ("p.png", photo, "image/png")}, headers=origin
    )
    assert upload.status_code == 201
    assert upload.headers["access-control-allow-origin"] == PAGE

    check = preflight(
        service.http,
        "/generate-avatar-by-image",
        "POST",
        "authorization,content-type,idempotency-key",
    )
    assert check.status_code == 200
    allowed = check.headers["access-control-allow-headers"].lower()
    assert {"authorization", "content-type", "idempotency-key"} <= {
        h.strip() for h in allowed.split(",")
    }
    answer = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": upload.json()["imageName"], "async": True},
        headers={**origin, "Idempotency-Key": "page-1"},
    )
    assert answer.status_code == 202
    assert answer.headers["access-control-allow-origin"] == PAGE
    exposed = {
        h.strip().lower() for h in answer.headers["access-control-expose-headers"].split(",")
    }
    assert {"location", "retry-after", "x-ratelimit-remaining", "x-request-id"} <= exposed
    record = answer.json()

    # EventSource sends no custom header: the token in links.events stands in for the key.
    events = service.http.get(
        record["links"]["events"], headers={"Origin": PAGE, "Accept": "text/event-stream"}
    )
    assert events.status_code == 200
    assert events.headers["access-control-allow-origin"] == PAGE
    assert events.headers["content-type"].startswith("text/event-stream")
    assert "event: succeeded" in events.text

    done = service.http.get(f"/jobs/{record['jobId']}", headers=origin).json()
    image = service.http.get(done["avatars"][0]["url"], headers={"Origin": PAGE})
    assert image.status_code == 200
    assert image.headers["access-control-allow-origin"] == PAGE


def test_errors_are_readable_cross_origin(cors_client):
    """A 401 carries the CORS headers too, so the page can read why it failed."""
    answer = cors_client.get("/styles", headers={"Origin": PAGE})
    assert answer.status_code == 401
    assert answer.headers["access-control-allow-origin"] == PAGE
    assert "www-authenticate" in answer.headers["access-control-expose-headers"].lower()


def test_other_origins_get_no_cors_headers(cors_client):
    """An origin not in CORS_ORIGINS gets no Access-Control-Allow-Origin: the browser blocks it."""
    check = preflight(cors_client, "/upload-image", "POST", "authorization", "https://evil.test")
    assert "access-control-allow-origin" not in check.headers
    answer = cors_client.get("/healthz", headers={"Origin": "https://evil.test"})
    assert "access-control-allow-origin" not in answer.headers


def test_no_cors_by_default(app_client):
    """Without CORS_ORIGINS no route answers a cross-origin browser (today's behaviour)."""
    check = preflight(app_client, "/upload-image", "POST", "content-type")
    assert "access-control-allow-origin" not in check.headers


@pytest.mark.parametrize("origin", [PAGE, None])
def test_answers_vary_on_origin_even_with_one_allowed_origin(make_app, origin):
    """With one allowed origin, answers still say Vary: Origin, so caches do not mix them up."""
    client = make_app(cors_origins=PAGE).test_client()
    headers = {"Origin": origin} if origin else {}
    answer = client.get("/healthz", headers=headers)
    assert "origin" in answer.headers["vary"].lower()
    check = preflight(client, "/upload-image", "POST", "content-type")
    assert check.headers["access-control-allow-origin"] == PAGE
    assert "origin" in check.headers["vary"].lower()
