"""The web page at GET / and the stand-in signal it reads from /readyz (no browser needed)."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from avatar_service.comfyui import runs_standin
from avatar_service.http.page import content_security_policy
from tests.conftest import FAKE_COMFYUI_URL
from tests.replay_server import Answer, ReplayServer, step

STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)


@pytest.fixture
def client(make_app, fake_comfyui):
    """A test client of an app whose ComfyUI never answers (a FakeComfyUI that is down)."""
    app = make_app()
    fake_comfyui[FAKE_COMFYUI_URL].go_down()
    return app.test_client()


class _Inline(HTMLParser):
    """Collects what a strict CSP would block: inline scripts, styles and event handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = dict(attrs)
        if "id" in names:
            self.ids.append(names["id"])
        if tag == "script":
            if not names.get("src"):
                self.problems.append("inline <script>")
            self.scripts.append(names.get("src") or "")
        if tag == "style":
            self.problems.append("inline <style>")
        for name, _ in attrs:
            if name == "style" or name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")


def test_index_is_a_strict_csp_page(client):
    """GET / is the page, with a strict CSP and nothing inline that the CSP would block."""
    answer = client.get("/")
    assert answer.status_code == 200
    assert answer.mimetype == "text/html"
    assert answer.headers["Content-Security-Policy"] == STRICT_CSP
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    html = answer.get_data(as_text=True)
    parser = _Inline()
    parser.feed(html)
    assert parser.problems == []
    assert parser.scripts == ["/web/app.js"]
    assert len(parser.ids) == len(set(parser.ids)), "duplicate element ids"
    assert 'data-max-upload-bytes="10485760"' in html
    assert 'data-min-side="64"' in html and 'data-max-side="2048"' in html


def test_every_id_the_script_uses_exists(client):
    """Each element the script looks up by id is in the page (a renamed id breaks nothing)."""
    parser = _Inline()
    parser.feed(client.get("/").get_data(as_text=True))
    with client.get("/web/app.js") as answer:
        script = answer.get_data(as_text=True)
    used = set(re.findall(r'\$\("([\w-]+)"\)', script))
    assert used, "the script looks up no element"
    assert used - set(parser.ids) == set()


@pytest.mark.parametrize(
    ("path", "mimetype"),
    [
        ("/web/app.js", "text/javascript"),
        ("/web/style.css", "text/css"),
        ("/web/icon.svg", "image/svg+xml"),
    ],
)
def test_assets_are_served(client, path, mimetype):
    """The script, style and icon ship in the package and are served from it."""
    with client.get(path) as answer:
        assert answer.status_code == 200
        assert answer.mimetype == mimetype
        assert len(answer.data) > 100


def test_unknown_asset_is_a_json_404(client):
    """A missing asset answers the one error shape."""
    answer = client.get("/web/nope.js")
    assert answer.status_code == 404
    assert answer.get_json() == {
        "error": {
            "code": "not_found",
            "message": "The requested URL was not found on the server. If you entered the URL "
            "manually please check your spelling and try again.",
        }
    }


def test_csp_allows_the_public_base_url():
    """With PUBLIC_BASE_URL on another origin, avatars and streams from it are allowed."""
    policy = content_security_policy("https://avatars.example.com/api")
    assert "img-src 'self' blob: data: https://avatars.example.com;" in policy
    assert "connect-src 'self' https://avatars.example.com;" in policy


def test_real_comfyui_is_not_the_standin(recording):
    """/system_stats as recorded from a real ComfyUI is not taken for the stand-in."""
    stats = step(recording("10_misc_endpoints.json"), "system_stats")["response"]["json"]
    assert runs_standin(stats) is False
    assert runs_standin({}) is False
    assert runs_standin({"system": "odd"}) is False


def test_readyz_says_standin(service):
    """On the stand-in, /readyz says so for the server and as a whole."""
    report = service.http.get("/readyz").json()
    assert report["standin"] is True
    assert [state["standin"] for state in report["servers"].values()] == [True]


def test_readyz_on_a_real_comfyui_is_not_standin(make_service, recording):
    """Against a replay of a real ComfyUI's /system_stats, /readyz does not claim the stand-in."""
    stats = step(recording("10_misc_endpoints.json"), "system_stats")
    replay = ReplayServer(frames=[], start_ms=0, ids={}, answers=[Answer(stats)]).start()
    try:
        service = make_service(comfyui_url=replay.url)
        report = service.http.get("/readyz").json()
        assert report["standin"] is False
        server = report["servers"][replay.url]
        assert (server["http"], server["version"], server["standin"]) == (True, "0.3.64", False)
        service.stop()  # before the replay, so no socket to it is left open
    finally:
        replay.stop()


def test_readyz_keeps_saying_standin_while_the_standin_is_down(make_service, standin):
    """A stand-in that stops answering is still the stand-in: the banner stays while it is down."""
    service = make_service(comfyui_url=standin.url)
    assert service.http.get("/readyz").json()["standin"] is True
    standin.stop()
    answer = service.http.get("/readyz")
    report = answer.json()
    assert (answer.status_code, report["ready"], report["standin"]) == (503, False, True)
    server = report["servers"][standin.url]
    assert (server["http"], server["standin"]) == (False, True)
    assert report["reason"] == "no ComfyUI server is reachable"


def test_readyz_with_no_server_answering_is_not_standin(client):
    """When no ComfyUI answers, nothing is known: no stand-in banner."""
    report = client.get("/readyz").get_json()
    assert report["standin"] is False
    assert report["ready"] is False
