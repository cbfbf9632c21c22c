"""GET /: a real ComfyUI serves its web page there, and gateways use it as their liveness ping."""

from __future__ import annotations

import re

import httpx
import pytest

from comfyui_standin import StandIn


@pytest.mark.parametrize("path", ["/", "/api/"])
def test_root_serves_a_page_that_says_it_is_the_stand_in(standin: StandIn, path: str) -> None:
    """GET / (and /api/, like every ComfyUI route) answers 200 text/html, never cached."""
    response = httpx.get(standin.url + path, timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html"
    assert (
        response.headers["cache-control"],
        response.headers["pragma"],
        response.headers["expires"],
    ) == ("no-cache", "no-cache", "0")
    page = response.text
    assert "<title>Stand-in ComfyUI</title>" in page
    assert "This is not a real ComfyUI." in page
    assert "ComfyUI 0.3.64" in page


def test_root_page_links_to_nothing(standin: StandIn) -> None:
    """The page loads nothing and links nowhere: no URLs, no href/src attributes."""
    response = httpx.get(standin.url + "/", timeout=5)
    assert response.status_code == 200
    page = response.text
    assert re.search(r"https?://|//[a-z]", page, re.IGNORECASE) is None
    assert re.search(r"\b(href|src|action)\s*=", page, re.IGNORECASE) is None


def test_root_answers_head_like_every_get_route(standin: StandIn) -> None:
    """HEAD / (a common liveness probe) and HEAD on other GET routes answer 200 without a body."""
    for path in ("/", "/api/", "/queue", "/system_stats"):
        response = httpx.head(standin.url + path, timeout=5)
        assert (path, response.status_code, response.content) == (path, 200, b"")
    assert httpx.head(standin.url + "/", timeout=5).headers["content-type"] == "text/html"
