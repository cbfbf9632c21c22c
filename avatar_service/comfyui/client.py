"""ComfyUIClient: the HTTP calls and the one long-lived websocket per ComfyUI server.

The websocket is opened once, with a clientId of its own, before any prompt is queued. A reader
thread turns each message into a typed event (``ExecutionStarted``, ``NodeStarted``, ``Progress``,
``ExecutionEnded``, ``ExecutionFailed``...) and routes it to the watch registered for its
``prompt_id`` (the service chooses the prompt_id itself, so no event can reach the wrong job). When
the socket drops it reconnects with backoff and tells every watch (``Disconnected``,
``Reconnected``), so the job can reconcile through ``/history`` and ``/queue``. This module alone
knows ComfyUI's message, history, queue and output formats: ``history`` answers a
``HistoryEntry``, ``queue_state`` a place in the queue.

Exceptions::

    ComfyUIError
    ├── ComfyUIUnavailable     connection refused, reset or timed out
    ├── ComfyUIProtocolError   an answer that is not what ComfyUI 0.3.x sends
    └── PromptRejected         POST /prompt answered 400: ``error`` and ``node_errors`` kept
"""

from __future__ import annotations

import json
import logging
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import websocket

logger = logging.getLogger(__name__)

# Binary websocket frames: a big-endian uint32 event type first.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


# What the stand-in ComfyUI (comfyui_standin) reports as its pytorch_version in /system_stats; a
# real ComfyUI reports the torch it runs (e.g. "2.14.1+cu130").
STANDIN_MARKER = "comfyui_standin"


def runs_standin(system_stats: Mapping[str, Any]) -> bool:
    """Whether a /system_stats answer comes from the stand-in ComfyUI rather than a real one."""
    system = system_stats.get("system")
    version = system.get("pytorch_version") if isinstance(system, Mapping) else None
    return isinstance(version, str) and STANDIN_MARKER in version


class ComfyUIError(Exception):
    """Base of everything that can go wrong talking to ComfyUI."""

    def __init__(self, message: str, *, server: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.server = server


class ComfyUIUnavailable(ComfyUIError):
    """ComfyUI could not be reached (refused, reset), or did not answer in time (timed_out)."""

    def __init__(self, message: str, *, server: str = "", timed_out: bool = False) -> None:
        super().__init__(message, server=server)
        self.timed_out = timed_out


class ComfyUIProtocolError(ComfyUIError):
    """ComfyUI answered something unexpected."""

    def __init__(self, message: str, *, server: str = "", status: int | None = None) -> None:
        super().__init__(message, server=server)
        self.status = status


class PromptRejected(ComfyUIError):
    """ComfyUI refused the graph at validation; ``error`` and ``node_errors`` are its own words."""

    def __init__(
        self,
        message: str,
        *,
        server: str = "",
        error: Mapping[str, Any] | None = None,
        node_errors: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, server=server)
        self.error = dict(error or {})
        self.node_errors = dict(node_errors or {})

    @property
    def server_lacks_something(self) -> bool:
        """Whether the server, not the request, is at fault: a node class it does not have, or
        a choice (checkpoint, sampler...) missing from its lists."""
        message = str(self.error.get("message", ""))
        if self.error.get("type") == "invalid_prompt" and "does not exist" in message:
            return True
        return any(
            isinstance(error, dict) and error.get("type") == "value_not_in_list"
            for node in self.node_errors.values()
            if isinstance(node, dict)
            for error in node.get("errors") or []
        )


# -- typed events of one prompt ---------------------------------------------------------------


@dataclass(frozen=True)
class ExecutionStarted:
    """ComfyUI started running the prompt."""


@dataclass(frozen=True)
class NodeStarted:
    """A node of the prompt started."""

    node: str


@dataclass(frozen=True)
class Progress:
    """A step of a node that reports progress (the sampler)."""

    node: str
    value: Any
    max: Any


@dataclass(frozen=True)
class ExecutionEnded:
    """``executing`` with ``node: null``: the prompt ended (its history is written just before)."""


@dataclass(frozen=True)
class ExecutionFailed:
    """``execution_error``: a node raised."""

    node_id: Any = None
    node_type: Any = None
    exception_type: Any = None
    exception_message: str = ""

    @classmethod
    def from_message(cls, data: Mapping[str, Any]) -> ExecutionFailed:
        """Read ComfyUI's execution_error payload."""
        return cls(
            node_id=data.get("node_id"),
            node_type=data.get("node_type"),
            exception_type=data.get("exception_type"),
            exception_message=str(data.get("exception_message", "")).strip(),
        )


@dataclass(frozen=True)
class ExecutionInterrupted:
    """``execution_interrupted``: the prompt was interrupted."""


@dataclass(frozen=True)
class PreviewReady:
    """A new live preview image of the prompt is in ``PromptWatch.preview``."""


@dataclass(frozen=True)
class QueueChanged:
    """ComfyUI's queue changed (a ``status`` broadcast)."""


@dataclass(frozen=True)
class Disconnected:
    """The websocket dropped: events may have been missed."""


@dataclass(frozen=True)
class Reconnected:
    """The websocket is up again: events may have been missed while it was down."""


PromptEvent = (
    ExecutionStarted
    | NodeStarted
    | Progress
    | ExecutionEnded
    | ExecutionFailed
    | ExecutionInterrupted
    | PreviewReady
    | QueueChanged
    | Disconnected
    | Reconnected
)


@dataclass(frozen=True)
class OutputImage:
    """One image a prompt produced, as ``/view`` wants it named."""

    filename: str
    subfolder: str = ""
    folder_type: str = "output"

    def to_dict(self) -> dict[str, str]:
        """ComfyUI's own shape of the image reference."""
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.folder_type}


@dataclass(frozen=True)
class HistoryEntry:
    """A prompt's ``/history`` entry: how it ended and what it produced."""

    succeeded: bool
    failure: ExecutionFailed | None
    interrupted: bool
    status: Mapping[str, Any]
    outputs: Mapping[str, Any]

    @classmethod
    def from_answer(cls, entry: Mapping[str, Any]) -> HistoryEntry:
        """Read one entry of GET /history/{prompt_id}."""
        status = entry.get("status") or {}
        messages = {
            item[0]: item[1]
            for item in status.get("messages") or []
            if isinstance(item, list | tuple) and len(item) == 2
        }
        error = messages.get("execution_error")
        return cls(
            succeeded=status.get("status_str") == "success",
            failure=ExecutionFailed.from_message(error) if isinstance(error, dict) else None,
            interrupted="execution_interrupted" in messages,
            status=status,
            outputs=entry.get("outputs") or {},
        )

    def images(self, output_nodes: Sequence[str]) -> list[OutputImage]:
        """The images of the given output nodes, in node order."""
        return [
            OutputImage(
                filename=str(image["filename"]),
                subfolder=str(image.get("subfolder", "")),
                folder_type=str(image.get("type", "output")),
            )
            for node_id in output_nodes
            for image in (self.outputs.get(node_id) or {}).get("images") or []
            if isinstance(image, dict) and image.get("filename")
        ]


@dataclass
class Preview:
    """The latest live preview image of a running prompt."""

    content_type: str
    data: bytes


@dataclass(frozen=True)
class _QueueSnapshot:
    """One GET /queue answer: the running prompt ids and each pending prompt's position."""

    asked_at: float
    running: frozenset[str]
    positions: Mapping[str, int]

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any], asked_at: float) -> _QueueSnapshot:
        running = frozenset(
            item_id for item in answer.get("queue_running") or [] if (item_id := _item_id(item))
        )
        # queue_pending is ComfyUI's heap array, not execution order: sort by number, then id.
        pending = sorted(
            (item for item in answer.get("queue_pending") or [] if _item_id(item) is not None),
            key=lambda item: (float(item[0]), str(item[1])),
        )
        # 1 = the next to start (the running prompt is not counted), as the service's own queue.
        positions = {str(item[1]): index + 1 for index, item in enumerate(pending)}
        return cls(asked_at, running, positions)


@dataclass
class PromptWatch:
    """Events of one prompt as the reader thread routes them (plus synthetic ``reconnected``...)."""

    prompt_id: str
    events: queue.Queue[Any] = field(default_factory=queue.Queue)
    preview: Preview | None = None


class ComfyUIClient:
    """One ComfyUI server: HTTP with explicit timeouts, and a websocket reader thread."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: httpx.Timeout,
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
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)
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
        self._queue_cache: _QueueSnapshot | None = None
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

    def watch(self, prompt_id: str) -> PromptWatch:
        """Register for the events of ``prompt_id``; do it before queueing the prompt."""
        watch = PromptWatch(prompt_id)
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
        if timeout is None:
            return self._json("GET", "/system_stats")
        return self._json("GET", "/system_stats", timeout=httpx.Timeout(timeout))

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: every node class the server can run, with its inputs."""
        return self._json("GET", "/object_info")

    def upload_image(self, data: bytes, filename: str, *, subfolder: str = "") -> str:
        """POST /upload/image; return the LoadImage value for the name ComfyUI actually kept."""
        answer = self._json(
            "POST",
            "/upload/image",
            files={"image": (filename, data, "image/png")},
            data={"type": "input", "subfolder": subfolder, "overwrite": "false"},
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
        if response.status_code == 400:
            answer = _json_or_empty(response)
            error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
            raise PromptRejected(
                error.get("message") or "ComfyUI rejected the prompt",
                server=self.base_url,
                error=error,
                node_errors=answer.get("node_errors") or {},
            )
        node_errors = self._decode(response, "/prompt").get("node_errors")
        return dict(node_errors) if isinstance(node_errors, dict) else {}

    def history(self, prompt_id: str) -> HistoryEntry | None:
        """GET /history/{prompt_id}: the entry once the prompt has ended, else None."""
        answer = self._json("GET", f"/history/{prompt_id}")
        entry = answer.get(prompt_id)
        return HistoryEntry.from_answer(entry) if isinstance(entry, dict) else None

    def queue(self) -> dict[str, Any]:
        """GET /queue."""
        return self._json("GET", "/queue")

    def queue_state(self, prompt_id: str, *, newer_than: float) -> tuple[str, int | None]:
        """Where a prompt is: ("running", 0), ("pending", 1 = next to start), or ("absent", None).

        Read from one shared GET /queue asked for no earlier than ``newer_than`` (a
        ``time.monotonic()`` value): however many jobs wait, ComfyUI builds the (large) queue
        answer once per refresh, not once per job.
        """
        snapshot = self._queue_snapshot(newer_than)
        if prompt_id in snapshot.running:
            return "running", 0
        position = snapshot.positions.get(prompt_id)
        if position is not None:
            return "pending", position
        return "absent", None

    def _queue_snapshot(self, newer_than: float) -> _QueueSnapshot:
        with self._queue_lock:
            snapshot = self._queue_cache
            if snapshot is None or snapshot.asked_at < newer_than:
                asked_at = time.monotonic()
                snapshot = _QueueSnapshot.from_answer(self.queue(), asked_at)
                self._queue_cache = snapshot
            return snapshot

    def interrupt(self, prompt_id: str) -> None:
        """POST /interrupt for this prompt only (a no-op if another prompt is running)."""
        self._request("POST", "/interrupt", json={"prompt_id": prompt_id})

    def delete_pending(self, prompt_ids: Sequence[str]) -> None:
        """POST /queue {"delete": [...]}: remove pending prompts (running ones are untouched)."""
        self._request("POST", "/queue", json={"delete": list(prompt_ids)})

    def view(self, image: OutputImage) -> tuple[bytes, str]:
        """GET /view: the bytes and content type of an image ComfyUI produced."""
        response = self._request("GET", "/view", params=image.to_dict())
        if response.status_code != 200:
            raise ComfyUIProtocolError(
                f"/view of {image.filename!r} answered {response.status_code}",
                server=self.base_url,
                status=response.status_code,
            )
        return response.content, response.headers.get("content-type", "application/octet-stream")

    def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        return self._decode(self._request(method, path, **kwargs), path)

    def _decode(self, response: httpx.Response, path: str) -> dict[str, Any]:
        if response.status_code != 200:
            raise ComfyUIProtocolError(
                f"{path} answered {response.status_code}: {response.text[:300]!r}",
                server=self.base_url,
                status=response.status_code,
            )
        answer = _json_or_empty(response)
        if not isinstance(answer, dict):
            raise ComfyUIProtocolError(f"{path} answered non-object JSON", server=self.base_url)
        return answer

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path} in time ({exc})",
                server=self.base_url,
                timed_out=True,
            ) from exc
        except httpx.TransportError as exc:
            raise ComfyUIUnavailable(
                f"cannot reach ComfyUI at {self.base_url} ({exc})", server=self.base_url
            ) from exc
        if not self._connected.is_set():
            self._retry_now.set()  # ComfyUI answers again: reconnect the websocket now
        if response.status_code >= 500:
            raise ComfyUIProtocolError(
                f"{method} {path} answered {response.status_code}: {response.text[:300]!r}",
                server=self.base_url,
                status=response.status_code,
            )
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
            try:
                sock.send(
                    json.dumps(
                        {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
                    )
                )
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
                self._read_socket(sock)
            except (OSError, websocket.WebSocketException) as exc:
                self.last_error = f"websocket dropped: {exc}"
            except Exception as exc:  # a message we cannot handle must not end the reader
                logger.exception("ComfyUI %s: websocket reader failed", self.base_url)
                self.last_error = f"websocket reader failed: {exc!r}"
            finally:
                self._connected.clear()
                self.disconnected_since = time.monotonic()
                self._socket = None
                sock.close(timeout=1)
                sock.shutdown()  # close() skips the socket once the library saw it drop
            if not self._stopping.is_set():
                logger.warning("ComfyUI %s: websocket lost (%s)", self.base_url, self.last_error)
                self._broadcast(Disconnected())

    def _read_socket(self, sock: websocket.WebSocket) -> None:
        sock.settimeout(self.ping_interval)
        awaiting_pong = False
        while not self._stopping.is_set():
            try:
                opcode, frame = sock.recv_data_frame(True)
            except websocket.WebSocketTimeoutException:
                if awaiting_pong:
                    raise websocket.WebSocketException("no answer to ping") from None
                sock.ping()
                awaiting_pong = True
                continue
            awaiting_pong = False
            if opcode == websocket.ABNF.OPCODE_TEXT:
                self.messages_received += 1
                self._on_text(frame.data)
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                self.messages_received += 1
                self._on_binary(frame.data)
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                self.last_error = "server closed the websocket"
                return

    def _on_text(self, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
            kind = message["type"]
            data = message.get("data") or {}
        except (ValueError, KeyError, TypeError, AttributeError):
            data = None
        if not isinstance(data, dict):
            logger.warning("ComfyUI %s: unreadable websocket message %.200r", self.base_url, raw)
            return
        prompt_id = data.get("prompt_id")
        if prompt_id is not None:
            prompt_id = str(prompt_id)
        if kind == "status":
            # The queue changed: queued jobs may want to re-read their position.
            self._broadcast(QueueChanged())
            return
        if kind == "execution_start":
            self._running_prompt = prompt_id
        elif kind == "executing" and data.get("node") is None and self._running_prompt == prompt_id:
            self._running_prompt = None
        if prompt_id is None:
            return
        event = _typed_event(kind, data)
        if event is None:
            return
        with self._lock:
            watch = self._watches.get(prompt_id)
        if watch is not None:
            watch.events.put(event)

    def _on_binary(self, raw: bytes) -> None:
        if len(raw) < 8:
            return
        (event,) = struct.unpack(">I", raw[:4])
        if event == PREVIEW_IMAGE:
            (fmt,) = struct.unpack(">I", raw[4:8])
            prompt_id, content_type, image = (
                self._running_prompt,
                _PREVIEW_FORMATS.get(fmt),
                raw[8:],
            )
        elif event == PREVIEW_IMAGE_WITH_METADATA:
            (length,) = struct.unpack(">I", raw[4:8])
            try:
                meta = json.loads(raw[8 : 8 + length])
            except ValueError:
                return
            if not isinstance(meta, dict):
                return
            prompt_id, content_type = meta.get("prompt_id"), meta.get("image_type")
            image = raw[8 + length :]
        else:
            return
        if not prompt_id or not content_type:
            return
        with self._lock:
            watch = self._watches.get(prompt_id)
        if watch is not None:
            watch.preview = Preview(content_type, image)
            watch.events.put(PreviewReady())

    def _broadcast(self, event: PromptEvent) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.events.put(event)


def _typed_event(kind: str, data: Mapping[str, Any]) -> PromptEvent | None:
    """The typed event of one websocket message about a prompt (None: not one we follow)."""
    if kind == "execution_start":
        return ExecutionStarted()
    if kind == "executing":
        node = data.get("node")
        return ExecutionEnded() if node is None else NodeStarted(str(node))
    if kind == "progress":
        return Progress(str(data.get("node")), data.get("value"), data.get("max"))
    if kind == "execution_error":
        return ExecutionFailed.from_message(data)
    if kind == "execution_interrupted":
        return ExecutionInterrupted()
    return None


def _item_id(item: Any) -> str | None:
    if isinstance(item, list | tuple) and len(item) >= 2:
        return str(item[1])
    return None


def _json_or_empty(response: httpx.Response) -> Any:
    if not response.content:
        return {}
    try:
        return response.json()
    except ValueError:
        return {}
