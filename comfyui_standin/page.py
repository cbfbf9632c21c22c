"""The page at ``GET /``: where a real ComfyUI serves its web frontend (index.html)."""

from __future__ import annotations

from aiohttp import web

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Stand-in ComfyUI</title>
</head>
<body>
<h1>Stand-in ComfyUI</h1>
<p><strong>This is not a real ComfyUI.</strong> It is the stand-in ComfyUI of the avatar service,
for development and tests: it speaks the HTTP and websocket protocol of ComfyUI {version},
but it runs no model and has no graph editor. Its images are Pillow stylisations of the input,
not generated avatars.</p>
<p>ComfyUI's API answers here as usual, with or without the <code>/api</code> prefix:
<code>POST /prompt</code>, <code>GET /queue</code>, <code>GET /history</code>, <code>GET /ws</code>,
<code>POST /upload/image</code>, <code>GET /view</code>, <code>POST /interrupt</code>,
<code>GET /system_stats</code>, <code>GET /object_info</code>.</p>
<p>Its own fault switches and speed settings are under <code>/_standin/faults</code>.</p>
</body>
</html>
"""


def index_response(version: str) -> web.Response:
    """The answer to GET / (and /api/): 200 text/html, never cached, like ComfyUI's index.html."""
    return web.Response(
        body=PAGE.format(version=version).encode("utf-8"),
        headers={
            "Content-Type": "text/html",
            "Cache-Control": "no-cache",
            "Pragma": "no-cache",
            "Expires": "0",
        },
    )
