"""API keys: 401 and 403 in the one error shape, job ownership, and signed tokens for browsers."""

from __future__ import annotations

import httpx
import pytest

from tests.helpers import wait_for

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
ADMIN = "admin-0123456789abcdef"
MISSING_KEY = {
    "error": {
        "code": "unauthorized",
        "message": "this service needs an API key: send Authorization: Bearer <key>",
    }
}
UNKNOWN_KEY = {
    "error": {
        "code": "unauthorized",
        "message": "unknown API key (send Authorization: Bearer <key>)",
    }
}
BAD_TOKEN = {
    "error": {
        "code": "unauthorized",
        "message": "the token is not valid for this job or has expired; "
        "read the job record again for fresh links",
    }
}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_service):
    """A service with two user keys and an admin key."""
    return make_service(api_keys=f"{KEY_A},{KEY_B}", admin_api_keys=ADMIN)


@pytest.fixture
def keyed_client(make_app):
    """A test client of an in-process app with two user keys and an admin key."""
    return make_app(api_keys=f"{KEY_A},{KEY_B}", admin_api_keys=ADMIN).test_client()


def make_job(service, photo: bytes, key: str) -> dict:
    """Upload and generate with a key; the finished record."""
    name = service.http.post(
        "/upload-image", files={"image": ("p.png", photo, "image/png")}, headers=bearer(key)
    ).json()["imageName"]
    answer = service.http.post(
        "/generate-avatar-by-image", json={"imageName": name}, headers=bearer(key)
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/upload-image"),
        ("POST", "/generate-avatar-by-image"),
        ("GET", "/styles"),
        ("GET", "/jobs/" + "0" * 32),
        ("DELETE", "/jobs/" + "0" * 32),
        ("GET", "/jobs/" + "0" * 32 + "/events"),
        ("GET", "/avatars/" + "0" * 32 + "_0.png"),
    ],
)
def test_missing_key_is_401(keyed_client, method, path):
    """Without a key every route but the public ones is 401 with WWW-Authenticate: Bearer."""
    answer = keyed_client.open(path, method=method)
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.get_json() == MISSING_KEY


@pytest.mark.parametrize("header", ["Bearer wrong-key-0123456789", "Basic " + KEY_A, "Bearer"])
def test_unknown_key_is_401(keyed_client, header):
    """A wrong key, another scheme, or an empty bearer is 401 unauthorized."""
    answer = keyed_client.get("/styles", headers={"Authorization": header})
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert answer.get_json() == UNKNOWN_KEY


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/service-info", "/openapi.json", "/docs"])
def test_public_routes_need_no_key(keyed_client, path):
    """Health, readiness, service info, the document and the docs answer without a key."""
    # /readyz is 200 at once: the fake ComfyUI's websocket is up as soon as the service starts.
    answer = keyed_client.get(path)
    assert answer.status_code == 200


def test_service_info_says_a_key_is_needed(keyed_client):
    """GET /service-info tells a client whether to ask for a key, and the upload limits."""
    info = keyed_client.get("/service-info").get_json()
    assert info["authRequired"] is True
    assert info["limits"]["maxUploadBytes"] == 10 * 1024 * 1024
    assert info["limits"]["minImageSide"] == 64
    assert info["styles"] == "http://localhost/styles"


def test_owner_reads_other_key_gets_403_admin_reads(keyed, photo):
    """The creating key and an admin key reach the job; another valid key gets 403 forbidden."""
    job = make_job(keyed, photo, KEY_A)
    job_id = job["jobId"]
    avatar_path = "/avatars/" + job["avatars"][0]["fileName"]
    forbidden = {
        "error": {
            "code": "forbidden",
            "message": "this job was created with another API key",
            "details": {"jobId": job_id},
        }
    }
    for method, path in [
        ("GET", f"/jobs/{job_id}"),
        ("GET", f"/jobs/{job_id}/events"),
        ("GET", f"/jobs/{job_id}/preview"),
        ("POST", f"/jobs/{job_id}/cancel"),
        ("DELETE", f"/jobs/{job_id}"),
        ("GET", avatar_path),
    ]:
        answer = keyed.http.request(method, path, headers=bearer(KEY_B))
        assert answer.status_code == 403, (method, path)
        assert answer.json() == forbidden
    assert keyed.http.get(f"/jobs/{job_id}", headers=bearer(KEY_A)).status_code == 200
    assert keyed.http.get(f"/jobs/{job_id}", headers=bearer(ADMIN)).status_code == 200
    assert keyed.http.get(avatar_path, headers=bearer(KEY_A)).status_code == 200
    assert keyed.http.get(avatar_path, headers=bearer(ADMIN)).status_code == 200


def test_unknown_job_with_a_key_is_404(keyed_client):
    """A valid key asking for a job that does not exist gets 404, not 403."""
    answer = keyed_client.get("/jobs/" + "1" * 32, headers=bearer(KEY_B))
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] == "job_not_found"


def test_record_links_carry_a_token_that_opens_events_and_avatars(keyed, photo):
    """links.events, links.preview and avatar urls carry ?token=; with it no header is needed."""
    job = make_job(keyed, photo, KEY_A)
    links = job["links"]
    assert "token=" in links["events"] and "token=" in links["preview"]
    assert "token=" not in links["self"]
    avatar_url = job["avatars"][0]["url"]
    assert "token=" in avatar_url
    with httpx.Client(timeout=10) as browser:  # no Authorization header, as a browser
        image = browser.get(avatar_url)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"
        # behind a key, shared caches must not keep it for others
        assert "private" in image.headers["cache-control"]
        assert "public" not in image.headers["cache-control"]
        events = browser.get(links["events"])
        assert events.status_code == 200
        assert "event: state" in events.text
        assert '"status":"succeeded"' in events.text
        # the token of one job opens nothing else, and not the record itself
        token = links["events"].split("token=", 1)[1]
        assert browser.get(links["self"] + "?token=" + token).json() == MISSING_KEY
        other = make_job(keyed, photo, KEY_A)
        answer = browser.get(f"{keyed.url}/jobs/{other['jobId']}/events?token={token}")
        assert answer.status_code == 401
        assert answer.json() == BAD_TOKEN


def test_expired_or_forged_token_is_401(make_service, photo):
    """A token past TOKEN_TTL, or one with a changed signature, is refused."""
    service = make_service(api_keys=KEY_A, token_ttl=1)
    job = make_job(service, photo, KEY_A)
    events_url = job["links"]["events"]
    forged = events_url[:-2] + ("AA" if not events_url.endswith("AA") else "BB")
    assert service.http.get(forged).json() == BAD_TOKEN
    answer = wait_for(
        lambda: (refused := service.http.get(events_url)).status_code == 401 and refused,
        timeout=5,
        message="the token expired",
        interval=0.2,
    )
    assert answer.status_code == 401
    assert answer.json() == BAD_TOKEN


def test_keys_file_with_admin(make_service, tmp_path, photo):
    """API_KEYS_FILE: one key a line, "admin" after a key makes it an admin key."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"# team keys\n{KEY_A}\n{ADMIN} admin\n\n", encoding="utf-8")
    service = make_service(api_keys_file=str(keys))
    job = make_job(service, photo, KEY_A)
    assert service.http.get(f"/jobs/{job['jobId']}", headers=bearer(ADMIN)).status_code == 200
    assert service.http.get("/styles", headers=bearer(KEY_B)).json() == UNKNOWN_KEY


def test_without_keys_everything_stays_open(service, photo):
    """No keys configured: no header needed and no token in the links (today's behaviour)."""
    assert service.http.get("/service-info").json()["authRequired"] is False
    name = service.upload(photo)
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    assert "token=" not in job["links"]["events"]
    assert "token=" not in job["avatars"][0]["url"]
    avatar = service.http.get(job["avatars"][0]["url"])
    assert avatar.headers["cache-control"] == "public, max-age=86400"
