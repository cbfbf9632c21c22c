"""Real HTTP receivers on 127.0.0.1 that record what they get and fail on cue."""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Reply:
    """Answer with this status, headers and body."""

    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


@dataclass(frozen=True)
class Drop:
    """Read the request, then close the connection without answering."""


@dataclass(frozen=True)
class Slow:
    """Wait ``delay`` seconds (or until the receiver stops), then answer ``reply``."""

    delay: float
    reply: Reply = field(default_factory=Reply)


Action = Reply | Drop | Slow


@dataclass(frozen=True)
class Received:
    """One request as it arrived: raw body bytes and headers with lower-case names."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> object:
        """The body parsed as JSON."""
        return json.loads(self.body)

    def multipart(self) -> tuple[dict[str, str], dict[str, tuple[str | None, str, bytes]]]:
        """Multipart fields and files: ({name: value}, {name: (filename, type, bytes)})."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + self.body)
        fields: dict[str, str] = {}
        files: dict[str, tuple[str | None, str, bytes]] = {}
        for part in message.iter_parts():
            assert isinstance(part, Message)
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True)
            filename = part.get_filename()
            if filename is None:
                fields[str(name)] = payload.decode("utf-8")
            else:
                files[str(name)] = (filename, part.get_content_type(), payload)
        return fields, files


class Receiver:
    """A threaded HTTP server that records every POST (and GET) and answers from a script.

    Scripted actions are used in order, one per request; when the script is empty every request
    gets ``default``. Use as a context manager, or call ``start`` and ``stop``.
    """

    def __init__(self, *, port: int = 0, default: Action | None = None) -> None:
        self._port = port
        self.default: Action = default or Reply()
        self._script: deque[Action] = deque()
        self._received: list[Received] = []
        self._lock = threading.Condition()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def script(self, *actions: Action) -> Receiver:
        """Queue actions for the next requests, in order."""
        with self._lock:
            self._script.extend(actions)
        return self

    @property
    def port(self) -> int:
        """The port the receiver listens on (or listened on, once stopped)."""
        return self._port

    def url(self, path: str = "/hook") -> str:
        """The full URL of ``path`` on this receiver."""
        return f"http://127.0.0.1:{self._port}{path}"

    @property
    def received(self) -> list[Received]:
        """A copy of the requests received so far."""
        with self._lock:
            return list(self._received)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until at least ``count`` requests arrived, at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self._received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"expected {count} requests within {timeout}s, got {len(self._received)}"
                    )
                self._lock.wait(remaining)
            return list(self._received)

    def start(self) -> Receiver:
        """Listen on 127.0.0.1 in a background thread."""
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self._port), self._make_handler())
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close the socket; slow answers end at once."""
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _next_action(self) -> Action:
        with self._lock:
            return self._script.popleft() if self._script else self.default

    def _record(self, received: Received) -> None:
        with self._lock:
            self._received.append(received)
            self._lock.notify_all()

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self._answer("POST")

            def do_GET(self) -> None:
                self._answer("GET")

            def _answer(self, method: str) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {name.lower(): value for name, value in self.headers.items()}
                action = receiver._next_action()
                receiver._record(Received(method, self.path, headers, body, time.monotonic()))
                if isinstance(action, Drop):
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(action, Slow):
                    receiver._stopping.wait(action.delay)
                    action = action.reply
                self.send_response(action.status)
                for name, value in action.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(action.body)))
                self.end_headers()
                self.wfile.write(action.body)

            def log_message(self, format: str, *args: object) -> None:
                """Keep test output quiet."""

        return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Restarting on the same port (the "receiver comes back" case) must not hit TIME_WAIT.
    allow_reuse_address = True
    # Many concurrent senders must not overflow the listen backlog (a dropped SYN costs 1s).
    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        """Stay quiet when a client hangs up (timeouts, closed pools); report anything else."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)  # type: ignore[arg-type]


def free_port() -> int:
    """A port nothing listens on right now (for "receiver is down" cases)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
