"""The web page at ``GET /``: one HTML page and its static script and style, served as files."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, current_app, render_template

from .schemas import MAX_SIDE, MIN_SIDE, SIDE_STEP

bp = Blueprint(
    "page",
    __name__,
    template_folder="web",
    static_folder="web/assets",
    static_url_path="/web",
)


@bp.get("/")
def index() -> Response:
    """The page: upload a photo, pick the options, follow the job, see and keep the avatar."""
    settings = current_app.extensions["avatar_service"].settings
    html = render_template(
        "index.html",
        max_upload_bytes=settings.max_upload_bytes,
        min_side=MIN_SIDE,
        max_side=MAX_SIDE,
        side_step=SIDE_STEP,
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = content_security_policy(settings.public_base_url)
    response.headers["Cache-Control"] = "no-cache"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def content_security_policy(public_base_url: str = "") -> str:
    """A strict policy: scripts and styles from this origin only, no inline code, no frames."""
    extra = ""
    if public_base_url:
        # Avatar and event URLs are built on PUBLIC_BASE_URL, which may be another origin.
        parts = urlsplit(public_base_url)
        extra = f" {parts.scheme}://{parts.netloc}"
    return "; ".join(
        [
            "default-src 'none'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src 'self' blob: data:{extra}",
            f"connect-src 'self'{extra}",
            "form-action 'self'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
        ]
    )
