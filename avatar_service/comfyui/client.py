"""ComfyUIClient: the HTTP calls and the one long-lived websocket per ComfyUI server.

HTTP goes through ``transport`` (a connection pool, timeouts and errors); ``sent_photos``
(``uploads``) remembers the photos the server already has; each prompt's events go to its
``PromptWatch`` (``watch``).

The websocket is opened once, with a clientId of its own, before any prompt is queued. A reader
thread turns each message into a typed event (see ``events``) and routes it to the watch
registered for its ``prompt_id`` (the service chooses the prompt_id itself, so no event can reach
the wrong job). When the socket drops it reconnects with backoff and tells every watch
(``Disconnected``, ``Reconnected``), so the job can reconcile through ``/history`` and
``/queue``: ``history`` answers a ``HistoryEntry``, ``queue_state`` a place in the queue. Errors
are the ``ComfyUIError`` tree of ``errors``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import websocket

from . import frames
from .errors import ComfyUIProtocolError, PromptRejected
from .events import (
    Disconnected,
    PreviewReady,
    PromptEvent,
    QueueChanged,
    Reconnected,
    read_message,
    read_preview,
    unfollowed,
)
from .history import HistoryEntry, OutputImage
from .queue import QueueSnapshot
from .transport import Response, Timeouts, Transport, body_start, json_or_empty
from .uploads import SentPhotos
from .watch import PromptWatch

logger = logging.getLogger(__name__)


class ComfyUIClient:
    """One ComfyUI server: HTTP with explicit timeouts, and a websocket reader thread."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: Timeouts,
        reconnect_max: float = 10.0,
        ping_interval: float = 20.0,
        on_connect: Callable[[ComfyUIClient], None] | None = None,
        client_id: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or f"avatar-service-{uuid.uuid4().hex}"
        self.timeout = timeout
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.on_connect = on_connect
        self._http = Transport(self.base_url, timeout)
        # Photos this server has (sent since the websocket last connected).
        self.sent_photos = SentPhotos()
        self._watches: dict[str, PromptWatch] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        # Set to cut a reconnect backoff short (HTTP answered again, or closing).
        self._retry_now = threading.Event()
        self._stopping = threading.Event()
        self._socket: websocket.WebSocket | None = None
        self._thread: threading.Thread | None = None
        self._helpers: list[threading.Thread] = []
        self._queue_lock = threading.Lock()
        self._queue_cache: QueueSnapshot | None = None
        self._running_prompt: str | None = None
        self.last_error: str | None = None
        # time.monotonic() when the websocket was last up (or the client was made).
        self.disconnected_since = time.monotonic()
        # Text and binary messages received (pongs excluded): a socket ComfyUI no longer
        # sends to (see reconnect) stops counting even though it still answers pings.
        self.messages_received = 0

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the websocket reader thread (it connects, and reconnects, by itself)."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._read_forever, name=f"comfyui-ws {self.base_url}", daemon=True
            )
            self._thread.start()

    def close(self) -> None:
        """Stop the reader thread and close the socket and the HTTP pool."""
        self._stopping.set()
        self._retry_now.set()
        sock = self._socket
        if sock is not None:
            sock.abort()
        if self._thread is not None:
            self._thread.join(timeout=5)
        # on_connect callbacks use the HTTP pool: let them finish before closing it.
        for helper in self._helpers:
            helper.join(timeout=self.timeout.read or 30)
        self._http.close()

    @property
    def connected(self) -> bool:
        """Whether the websocket is up now."""
        return self._connected.is_set()

    def reconnect(self, reason: str) -> None:
        """Drop the websocket so the reader opens a new one (and every watch reconciles).

        ComfyUI keeps one socket per clientId and forgets the id when *any* socket with it
        closes, so a stale earlier socket closing late leaves the current one registered to
        nobody: it then receives nothing, not even broadcasts. A new connection heals that.
        """
        sock = self._socket
        if sock is not None:
            logger.warning("ComfyUI %s: reconnecting the websocket: %s", self.base_url, reason)
            self.last_error = reason
            sock.abort()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the websocket; True when it is up."""
        return self._connected.wait(timeout)

    @property
    def ws_url(self) -> str:
        """The websocket address, with this client's clientId."""
        parts = urlsplit(self.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        path = parts.path.rstrip("/") + "/ws"
        return urlunsplit((scheme, parts.netloc, path, f"clientId={self.client_id}", ""))

    # -- watches ---------------------------------------------------------------------------

    def watch(self, prompt_id: str, *, new_prompt: bool = False) -> PromptWatch:
        """Register for the events of ``prompt_id``; do it before queueing the prompt
        (``new_prompt``: then, while the socket stays up, the watch hears all of them)."""
        watch = PromptWatch(prompt_id, hears_all=new_prompt and self.connected)
        with self._lock:
            self._watches[prompt_id] = watch
        return watch

    def unwatch(self, prompt_id: str) -> None:
        """Stop routing events of ``prompt_id``."""
        with self._lock:
            self._watches.pop(prompt_id, None)

    # -- HTTP ------------------------------------------------------------------------------

    def system_stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /system_stats (optionally with a shorter timeout, for health checks)."""
        return self._json("GET", "/system_stats", within=timeout)

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: every node class the server can run, with its inputs."""
        return self._json("GET", "/object_info")

    def upload_image(self, data: bytes, filename: str, *, subfolder: str = "") -> str:
        """POST /upload/image; return the LoadImage value for the name ComfyUI actually kept."""
        answer = self._json(
            "POST",
            "/upload/image",
            fields={
                "image": (filename, data, "image/png"),
                "type": "input",
                "subfolder": subfolder,
                "overwrite": "false",
            },
        )
        name = answer.get("name")
        if not isinstance(name, str) or not name:
            raise ComfyUIProtocolError(
                f"/upload/image answered without a name: {answer!r}", server=self.base_url
            )
        kept_subfolder = answer.get("subfolder") or ""
        return f"{kept_subfolder}/{name}" if kept_subfolder else name

    def queue_prompt(self, graph: Mapping[str, Any], *, prompt_id: str) -> dict[str, Any]:
        """POST /prompt with our client_id and prompt_id; PromptRejected on a 400.

        Answers ComfyUI's ``node_errors`` of a prompt accepted with only some outputs valid
        (empty when the whole graph was accepted).
        """
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        response = self._request("POST", "/prompt", json=body)
        if response.status == 400:
            answer = json_or_empty(response)
            error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
            raise PromptRejected(
                error.get("message") or "ComfyUI rejected the prompt",
                server=self.base_url,
                error=error,
                node_errors=answer.get("node_errors") or {},
            )
        node_errors = self._decode(response, "/prompt").get("node_errors")
        return dict(node_errors) if isinstance(node_errors, dict) else {}

    def history(self, prompt_id: str, *, timeout: float | None = None) -> HistoryEntry | None:
        """GET /history/{prompt_id}: the entry once the prompt has ended, else None (within
        ``timeout`` seconds when given, if shorter than the client's own)."""
        answer = self._json("GET", f"/history/{prompt_id}", within=timeout)
        return HistoryEntry.of_prompt(answer, prompt_id)

    def queue(self) -> dict[str, Any]:
        """GET /queue."""
        return self._json("GET", "/queue")

    def queue_state(self, prompt_id: str, *, newer_than: float) -> tuple[str, int | None]:
        """Where a prompt is: ("running", 0), ("pending", 1 = next to start), or ("absent", None).

        Read from one shared GET /queue asked for no earlier than ``newer_than`` (a
        ``time.monotonic()`` value): however many jobs wait, ComfyUI builds the (large) queue
        answer once per refresh, not once per job.
        """
        return self._queue_snapshot(newer_than).place_of(prompt_id)

    def _queue_snapshot(self, newer_than: float) -> QueueSnapshot:
        with self._queue_lock:
            snapshot = self._queue_cache
            if snapshot is None or snapshot.asked_at < newer_than:
                asked_at = time.monotonic()
                snapshot = QueueSnapshot.from_answer(self.queue(), asked_at)
                self._queue_cache = snapshot
            return snapshot

    def interrupt(self, prompt_id: str) -> None:
        """POST /interrupt for this prompt only (a no-op if another prompt is running)."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    def delete_pending(self, prompt_ids: Sequence[str]) -> None:
        """POST /queue {"delete": [...]}: remove pending prompts (running ones are untouched)."""
        self._request("POST", "/queue", json={"delete": list(prompt_ids)})

    def view(self, image: OutputImage, *, timeout: float | None = None) -> tuple[bytes, str]:
        """GET /view: the bytes and content type of an image ComfyUI produced (within
        ``timeout`` seconds when given, if shorter than the client's own)."""
        response = self._request("GET", "/view", fields=image.to_dict(), within=timeout)
        if response.status != 200:
            raise ComfyUIProtocolError(
                f"/view of {image.filename!r} answered {response.status}",
                server=self.base_url,
                status=response.status,
            )
        return response.data, response.headers.get("content-type", "application/octet-stream")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._decode(self._request(method, path, **kwargs), path)

    def _decode(self, response: Response, path: str) -> dict[str, Any]:
        if response.status != 200:
            raise ComfyUIProtocolError(
                f"{path} answered {response.status}: {body_start(response)!r}",
                server=self.base_url,
                status=response.status,
            )
        answer = json_or_empty(response)
        if not isinstance(answer, dict):
            raise ComfyUIProtocolError(f"{path} answered non-object JSON", server=self.base_url)
        return answer

    def _request(self, method: str, path: str, **options: Any) -> Response:
        response = self._http.request(method, path, **options)
        if not self._connected.is_set():
            self._retry_now.set()  # ComfyUI answers again: reconnect the websocket now
        return response

    # -- websocket reader ------------------------------------------------------------------

    def _read_forever(self) -> None:
        delay = 0.25
        was_connected = False
        while not self._stopping.is_set():
            try:
                sock = websocket.create_connection(
                    self.ws_url,
                    timeout=self.timeout.connect,
                    suppress_origin=True,
                    enable_multithread=True,
                    # The library checks UTF-8 byte by byte in Python (about half the reader's
                    # CPU); json.loads decodes the bytes, strictly, in C instead.
                    skip_utf8_validation=True,
                )
            except (OSError, websocket.WebSocketException) as exc:
                self.last_error = f"websocket connect failed: {exc}"
                logger.debug("ComfyUI %s: %s", self.base_url, self.last_error)
                self._retry_now.wait(delay)
                self._retry_now.clear()
                delay = min(delay * 2, self.reconnect_max)
                continue
            delay = 0.25
            self._socket = sock
            # The close handshake, unless the connection already ended (the server closed it,
            # or sent its close frame, already answered).
            handshake = True
            try:
                sock.send(
                    json.dumps(
                        {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
                    )
                )
                # A server that restarted may have an empty input folder.
                self.sent_photos.clear()
                self._connected.set()
                self.last_error = None
                logger.info("ComfyUI %s: websocket connected", self.base_url)
                if was_connected:
                    self._broadcast(Reconnected())
                was_connected = True
                if self.on_connect is not None:
                    helper = threading.Thread(
                        target=self.on_connect, args=(self,), name="comfyui-on-connect", daemon=True
                    )
                    self._helpers = [t for t in self._helpers if t.is_alive()] + [helper]
                    helper.start()
                handshake = self._read_socket(sock)
            except frames.ConnectionClosed as exc:
                handshake = False
                self.last_error = f"websocket dropped: {exc}"
            except (OSError, websocket.WebSocketException) as exc:
                self.last_error = f"websocket dropped: {exc}"
            except frames.FrameError as exc:
                self.last_error = f"websocket protocol error: {exc}"
            except Exception as exc:  # a message we cannot handle must not end the reader
                logger.exception("ComfyUI %s: websocket reader failed", self.base_url)
                self.last_error = f"websocket reader failed: {exc!r}"
            finally:
                self._connected.clear()
                self.disconnected_since = time.monotonic()
                self._socket = None
                if handshake:
                    sock.close(timeout=1)
                sock.shutdown()
            if not self._stopping.is_set():
                logger.warning("ComfyUI %s: websocket lost (%s)", self.base_url, self.last_error)
                self._broadcast(Disconnected())

    def _read_socket(self, sock: websocket.WebSocket) -> bool:
        """Read messages until the server closes (False: its close frame was answered) or the
        client stops (True: the close handshake is still to be made)."""
        # The library sends (pings, pongs, the close); frames.py decodes what arrives, several
        # frames per read of the socket (see there why).
        sock.settimeout(self.ping_interval)
        assert sock.sock is not None  # connected
        reader = frames.FrameReader(sock.sock.recv)
        awaiting_pong = False
        while not self._stopping.is_set():
            try:
                opcode, data = reader.message()
            except TimeoutError:
                if awaiting_pong:
                    raise websocket.WebSocketException("no answer to ping") from None
                sock.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            if opcode == frames.TEXT:
                self.messages_received += 1
                self._on_text(data)
            elif opcode == frames.BINARY:
                self.messages_received += 1
                self._on_binary(data)
            elif opcode == frames.PING:
                sock.pong(data)
            elif opcode == frames.CLOSE:
                self.last_error = "server closed the websocket"
                sock.send_close()
                return False
        return True

    def _on_text(self, raw: bytes) -> None:
        if unfollowed(raw):
            return
        message = read_message(raw)
        if message is None:
            logger.warning("ComfyUI %s: unreadable websocket message %.200r", self.base_url, raw)
            return
        if message.kind == "status":
            # The queue changed: queued jobs may want to re-read their position.
            self._broadcast(QueueChanged())
            return
        prompt_id = message.prompt_id
        if message.kind == "execution_start":
            self._running_prompt = prompt_id
        elif (
            message.kind == "executing"
            and message.data.get("node") is None
            and self._running_prompt == prompt_id
        ):
            self._running_prompt = None
        if prompt_id is None:
            return
        with self._lock:
            watch = self._watches.get(prompt_id)
        if watch is not None:
            watch.deliver(message)

    def _on_binary(self, raw: bytes) -> None:
        found = read_preview(raw, self._running_prompt)
        if found is None:
            return
        prompt_id, preview = found
        with self._lock:
            watch = self._watches.get(prompt_id)
        if watch is not None:
            watch.preview = preview
            watch.put(PreviewReady())

    def _broadcast(self, event: PromptEvent) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.put(event)
