"""The production WSGI server: waitress, answering its own errors in the service's JSON shape.

Waitress refuses some requests before the app sees them: a header block or URL over
``max_request_header_size`` (431), a body over ``max_request_body_size`` (413), a malformed
request line or chunked body (400), an unknown transfer coding (501). It writes those answers
itself, as text; here its error task writes ``{"error": {"code", "message", "details"}}`` instead.
The body limit is the app's own ``MAX_CONTENT_LENGTH``, so an oversized upload is refused from its
``Content-Length`` alone rather than spooled to disk first.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, cast

from flask import Flask
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.server import create_server as create_waitress_server
from waitress.task import ErrorTask

logger = logging.getLogger(__name__)

# The serving loop is entered again after a failure, unless it fails this often: then the
# process exits with status 1 (for its supervisor to restart it), saying why.
LOOP_FAILURES_MAX, LOOP_FAILURES_WINDOW = 5, 60.0

# Waitress's error classes by status, as the service's error codes.
_CODES = {
    400: "bad_request",
    413: "payload_too_large",
    431: "request_headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


class _JsonErrorTask(ErrorTask):
    """Waitress's answer to a request it refused, in the service's error shape."""

    def execute(self) -> None:
        # Waitress gives an error task the request's parser, which holds the error (its stubs
        # say the error itself).
        error = cast(HTTPRequestParser, self.request).error
        assert error is not None, "an error task is made for a refused request"
        body: dict[str, Any] = {
            "code": _CODES.get(error.code, "bad_request"),
            "message": f"{error.reason}: {error.body}",
        }
        if error.code == 413:
            body["details"] = {"maxBytes": self.channel.server.adj.max_request_body_size}
        data = json.dumps({"error": body}).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers = [*self.response_headers, ("Content-Type", "application/json")]
        self.set_close_on_finish()
        self.content_length = len(data)
        self.write(data)


class _JsonErrorChannel(HTTPChannel):
    error_task_class = _JsonErrorTask


def create_server(
    app: Flask, *, host: str, port: int, threads: int, **options: Any
) -> BaseWSGIServer | MultiSocketServer:
    """A waitress server for ``app`` (bound, not yet serving) whose own errors are JSON."""
    server = create_waitress_server(
        app,
        host=host,
        port=port,
        threads=threads,
        max_request_body_size=app.config["MAX_CONTENT_LENGTH"],
        ident="avatar-service",
        # poll(2), not select(2): select cannot watch a descriptor above 1023, and a busy
        # process (many connections, database files, sockets to ComfyUI) has more.
        asyncore_use_poll=True,
        **options,
    )
    # One address gives one server; several (a host name with IPv4 and IPv6 addresses) give a
    # MultiSocketServer, which makes no channels itself.
    if isinstance(server, BaseWSGIServer):
        server.channel_class = _JsonErrorChannel
    return server


def serve(server: Any, *, clock: Any = time.monotonic) -> int:
    """Run waitress's loop until shutdown (0). An error raised out of the loop is logged and
    the loop entered again (connections and jobs in flight carry on); after
    ``LOOP_FAILURES_MAX`` failures within ``LOOP_FAILURES_WINDOW`` seconds: 1. Never a silent
    exit."""
    failures: list[float] = []
    while True:
        try:
            server.run()
            return 0
        except Exception:
            now = clock()
            failures = [at for at in failures if now - at < LOOP_FAILURES_WINDOW] + [now]
            if len(failures) >= LOOP_FAILURES_MAX:
                logger.critical(
                    "the serving loop failed %d times in %.0f s: stopping",
                    len(failures),
                    LOOP_FAILURES_WINDOW,
                    exc_info=True,
                )
                return 1
            logger.critical("the serving loop failed; serving again", exc_info=True)
