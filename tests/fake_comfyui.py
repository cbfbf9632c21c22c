"""FakeComfyUI: an in-process ComfyUI client that a test scripts, for tests without sockets.

``FakeComfyUI`` has the constructor and the public interface of
``avatar_service.comfyui.ComfyUIClient`` and plays a ComfyUI server behind it. It opens no
socket and starts no thread: nothing happens on the "server" unless the test says so (or the
code under test asks). Every call it receives is kept in ``calls`` (name and arguments, in
order; ``requests`` has only the HTTP ones).

Scripting a prompt (messages in the order recording 01_success shows)::

    fake = FakeComfyUI("http://gpu-1:8188")
    fake.start()                      # the websocket is "up"; on_connect is called at once
    ...                               # the code under test uploads and queues a prompt
    [prompt_id] = fake.pending        # queued, waiting in ComfyUI's queue: nothing runs yet
    fake.begin(prompt_id)             # execution_start, execution_cached, the first node
    fake.progress(prompt_id, 1, 20)   # a sampler step
    fake.preview(prompt_id)           # a binary live preview frame
    fake.finish(prompt_id)            # the other nodes, executed, execution_success, the
                                      # history entry, status, and executing null last

``finish`` (like ``progress`` and ``fail``) begins a waiting prompt first. The other endings:

- ``fail(prompt_id)``: execution_error (recording 05), an error history entry;
- ``interrupt_elsewhere(prompt_id)``: someone else's POST /interrupt (recording 06); the
  client's own ``interrupt(prompt_id)`` of the running prompt ends it the same way;
- ``forget(prompt_id)``: the server lost the prompt silently; ``restart()`` loses every prompt
  and drops the websocket (``Disconnected`` then ``Reconnected``);
- ``go_down()`` / ``come_back()``: connections refused (``ComfyUIUnavailable``), then back;
- ``lacks(class_type)``: a graph using that class is refused with POST /prompt's 400
  (``PromptRejected``, as recording 04); ``reject_next(answer)`` refuses the next one with any
  recorded 400 answer (``recorded_rejection``); ``accept_partly(node_errors)``: a 200 with
  node_errors;
- ``fail_view(times, status=500)`` or ``fail_view(times, timed_out=True)``: /view fails;
- ``deafen()``: the websocket hears nothing until ``reconnect`` is asked;
- ``adopt(prompt_id, graph)``: a prompt queued before the test (by a previous run).

``on_queue`` (a callable taking the prompt_id) runs after each prompt is queued: a script set
up beforehand; ``autorun=True`` makes it ``finish``, so every prompt succeeds at once.

History entries are read with ``HistoryEntry.from_answer`` from answers shaped like the
recordings, and messages reach the watches through ``read_message``, ``PromptWatch.deliver`` and
``read_preview``, the package's own readers: a change of format breaks the fake too.

``FakeComfyUIs`` is a client factory for ``create_app({..., "COMFYUI_CLIENT_FACTORY": ...})``
that keeps each fake it makes by URL: ``fakes["http://gpu-1:8188"]``.
"""

from __future__ import annotations

import copy
import io
import json
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from avatar_service.comfyui import (
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    Disconnected,
    HistoryEntry,
    OutputImage,
    PreviewReady,
    PromptRejected,
    PromptWatch,
    QueueChanged,
    QueueSnapshot,
    Reconnected,
)
from avatar_service.comfyui.events import read_message, read_preview
from avatar_service.comfyui.uploads import SentPhotos
from tests.helpers import RECORDINGS_DIR

# Node classes whose results are images ComfyUI lists in history and /view serves.
OUTPUT_CLASSES = frozenset({"SaveImage", "PreviewImage"})
# The HTTP calls, as opposed to the client's own bookkeeping (watch, start, close...).
HTTP_CALLS = frozenset(
    {
        "system_stats",
        "object_info",
        "upload_image",
        "queue_prompt",
        "history",
        "queue",
        "queue_state",
        "interrupt",
        "delete_pending",
        "view",
    }
)


def _recording(name: str) -> dict[str, Any]:
    return json.loads((RECORDINGS_DIR / name).read_text(encoding="utf-8"))


def _recorded_answers(name: str, path_prefix: str) -> list[tuple[str, Any]]:
    """(label, JSON answer) of every recorded request whose path starts with ``path_prefix``."""
    return [
        (step["label"], step["response"].get("json"))
        for step in _recording(name)["steps"]
        if step.get("request", {}).get("path", "").startswith(path_prefix)
    ]


def recorded_rejection(label: str) -> dict[str, Any]:
    """A recorded 400 answer of POST /prompt (recording 04), by the start of its label."""
    for step_label, answer in _recorded_answers("04_validation_errors.json", "/prompt"):
        if step_label.startswith(label) and isinstance(answer, dict) and "error" in answer:
            return copy.deepcopy(answer)
    raise KeyError(f"no recorded rejection labelled {label!r}")


def recorded_object_info() -> dict[str, Any]:
    """The /object_info entries recorded from a core ComfyUI 0.3.64 (no custom nodes)."""
    info: dict[str, Any] = {}
    for name in ("10_misc_endpoints.json", "13_object_info_extra.json"):
        for _, answer in _recorded_answers(name, "/object_info/"):
            info.update(answer or {})
    info.pop("ImpactConcatConditionings", None)
    return info


def recorded_system_stats() -> dict[str, Any]:
    """The /system_stats answer of the real ComfyUI the recordings come from."""
    [(_, answer)] = _recorded_answers("10_misc_endpoints.json", "/system_stats")
    return answer


def png(size: tuple[int, int] = (64, 64), colour: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    """A small PNG, as /view serves an output image."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass(frozen=True)
class Call:
    """One call the fake received: the method's name and its arguments by name."""

    name: str
    args: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class _Prompt:
    """A prompt the fake server knows: its queue item, where it is, its history entry."""

    number: int
    prompt_id: str
    graph: Mapping[str, Any]
    client_id: str
    phase: str = "pending"  # pending, running, ended
    node: str | None = None
    executed: list[str] = field(default_factory=list)
    messages: list[list[Any]] = field(default_factory=list)
    history: dict[str, Any] | None = None

    @property
    def outputs(self) -> list[str]:
        return [
            node_id
            for node_id, node in self.graph.items()
            if node.get("class_type") in OUTPUT_CLASSES
        ]

    def item(self) -> list[Any]:
        """The 5-element queue item of GET /queue."""
        return [
            self.number,
            self.prompt_id,
            self.graph,
            {"client_id": self.client_id},
            self.outputs,
        ]


class FakeComfyUI:
    """A scripted ComfyUI server behind the ComfyUIClient interface; see the module docstring."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: Any = None,
        reconnect_max: float = 10.0,
        ping_interval: float = 20.0,
        on_connect: Callable[[Any], None] | None = None,
        client_id: str | None = None,
        autorun: bool = False,
        image_size: tuple[int, int] = (64, 64),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id or f"avatar-service-{uuid.uuid4().hex}"
        self.timeout = timeout
        self.reconnect_max = reconnect_max
        self.ping_interval = ping_interval
        self.on_connect = on_connect
        self.image_size = image_size
        self.on_queue: Callable[[str], None] | None = self.finish if autorun else None
        self.calls: list[Call] = []
        # Every websocket frame the client received: text frames as JSON, {"binary": n} else.
        self.frames: list[dict[str, Any]] = []
        self.uploads: dict[str, bytes] = {}
        self.last_error: str | None = None
        self.disconnected_since = time.monotonic()
        self.messages_received = 0
        self._lock = threading.RLock()
        self._connected = threading.Event()
        self._watches: dict[str, PromptWatch] = {}
        self.sent_photos = SentPhotos()
        self._prompts: dict[str, _Prompt] = {}
        self._number = 0
        self._down = False
        self._deaf = False
        self._missing: set[str] = set()
        self._rejections: list[dict[str, Any]] = []
        self._partial: list[dict[str, Any]] = []
        self._view_faults: list[Exception] = []
        self._object_info = recorded_object_info()

    # -- what the test reads ---------------------------------------------------------------

    @property
    def requests(self) -> list[Call]:
        """The HTTP calls received, in order."""
        with self._lock:
            return [call for call in self.calls if call.name in HTTP_CALLS]

    def names(self) -> list[str]:
        """The names of the HTTP calls received, in order."""
        return [call.name for call in self.requests]

    def calls_named(self, name: str) -> list[Call]:
        """The calls of one name, in order."""
        with self._lock:
            return [call for call in self.calls if call.name == name]

    @property
    def pending(self) -> list[str]:
        """The prompts waiting in the fake's queue, next first."""
        with self._lock:
            waiting = [p for p in self._prompts.values() if p.phase == "pending"]
            return [p.prompt_id for p in sorted(waiting, key=lambda p: p.number)]

    @property
    def running(self) -> str | None:
        """The prompt running now, if any."""
        with self._lock:
            return next((p.prompt_id for p in self._prompts.values() if p.phase == "running"), None)

    @property
    def queued(self) -> list[str]:
        """Every prompt ever queued here (and still known), oldest first."""
        with self._lock:
            return [p.prompt_id for p in sorted(self._prompts.values(), key=lambda p: p.number)]

    def graph_of(self, prompt_id: str) -> Mapping[str, Any]:
        """The graph a prompt was queued with."""
        with self._lock:
            return self._prompts[prompt_id].graph

    def watched(self) -> list[str]:
        """The prompt ids whose events are routed now."""
        with self._lock:
            return list(self._watches)

    # -- the client's lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """The websocket comes up at once (unless the server is down); on_connect is called."""
        self._record("start")
        if not self._down:
            self._up(announce=False)

    def close(self) -> None:
        """Nothing to release; the websocket is down from now on."""
        self._record("close")
        self._connected.clear()

    @property
    def connected(self) -> bool:
        """Whether the websocket is up."""
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the websocket (the test brings it up)."""
        return self._connected.wait(timeout)

    def reconnect(self, reason: str) -> None:
        """A new websocket at once: a deaf one hears again; every watch is told."""
        self._record("reconnect", reason=reason)
        self.last_error = reason
        if self.connected:
            self._deaf = False
            self._broadcast(Disconnected())
            self._up(announce=True)

    # -- watches ---------------------------------------------------------------------------

    def watch(self, prompt_id: str, *, new_prompt: bool = False) -> PromptWatch:
        """Register for the events of ``prompt_id`` (``new_prompt``: not queued yet)."""
        self._record("watch", prompt_id=prompt_id)
        watch = PromptWatch(prompt_id, hears_all=new_prompt and self._hears())
        with self._lock:
            self._watches[prompt_id] = watch
        return watch

    def unwatch(self, prompt_id: str) -> None:
        """Stop routing events of ``prompt_id``."""
        self._record("unwatch", prompt_id=prompt_id)
        with self._lock:
            self._watches.pop(prompt_id, None)

    # -- HTTP ------------------------------------------------------------------------------

    def system_stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        """GET /system_stats: the recorded answer of a real ComfyUI."""
        self._request("system_stats", timeout=timeout)
        return copy.deepcopy(recorded_system_stats())

    def object_info(self) -> dict[str, Any]:
        """GET /object_info: the recorded core classes, minus those this server lacks."""
        self._request("object_info")
        with self._lock:
            return {k: copy.deepcopy(v) for k, v in self._object_info.items()}

    def upload_image(self, data: bytes, filename: str, *, subfolder: str = "") -> str:
        """POST /upload/image without overwrite: kept under its own name, or under the name of
        the same bytes already there, else ``stem (1).ext``, ``stem (2).ext``... (as recording
        08 shows)."""
        self._request("upload_image", filename=filename, subfolder=subfolder, size=len(data))
        stem, dot, extension = filename.rpartition(".")
        candidates = [filename] + [f"{stem} ({n}){dot}{extension}" for n in range(1, 1000)]
        with self._lock:
            for candidate in candidates:
                name = f"{subfolder}/{candidate}" if subfolder else candidate
                if self.uploads.setdefault(name, data) == data:
                    return name
        raise AssertionError("the fake keeps at most 1000 photos of one name")

    def queue_prompt(self, graph: Mapping[str, Any], *, prompt_id: str) -> dict[str, Any]:
        """POST /prompt: queued (or refused with the 400 a real server sends)."""
        self._request("queue_prompt", graph=graph, prompt_id=prompt_id)
        with self._lock:
            self._number += 1
            answer = self._refusal(graph)
            if answer is not None:
                error = answer.get("error") if isinstance(answer.get("error"), dict) else {}
                raise PromptRejected(
                    error.get("message") or "ComfyUI rejected the prompt",
                    server=self.base_url,
                    error=error,
                    node_errors=answer.get("node_errors") or {},
                )
            node_errors = self._partial.pop(0) if self._partial else {}
            self._prompts[prompt_id] = _Prompt(
                self._number, prompt_id, _as_sent(graph), self.client_id
            )
            self._status()
        if self.on_queue is not None:
            self.on_queue(prompt_id)
        return dict(node_errors)

    def history(self, prompt_id: str, *, timeout: float | None = None) -> HistoryEntry | None:
        """GET /history/{prompt_id}: the entry once the prompt has ended, else None."""
        self._request("history", prompt_id=prompt_id)
        with self._lock:
            prompt = self._prompts.get(prompt_id)
            answer = {prompt_id: copy.deepcopy(prompt.history)} if prompt and prompt.history else {}
        return HistoryEntry.of_prompt(answer, prompt_id)

    def queue(self) -> dict[str, Any]:
        """GET /queue."""
        self._request("queue")
        return self._queue_answer()

    def queue_state(self, prompt_id: str, *, newer_than: float) -> tuple[str, int | None]:
        """Where a prompt is, read from a fresh GET /queue answer."""
        self._request("queue_state", prompt_id=prompt_id)
        return QueueSnapshot.from_answer(self._queue_answer(), time.monotonic()).place_of(prompt_id)

    def interrupt(self, prompt_id: str) -> None:
        """POST /interrupt {prompt_id}: ends that prompt if it is the running one."""
        self._request("interrupt", prompt_id=prompt_id)
        with self._lock:
            if self.running == prompt_id:
                self._interrupted(self._prompts[prompt_id])

    def delete_pending(self, prompt_ids: Sequence[str]) -> None:
        """POST /queue {"delete": [...]}: waiting prompts are removed, a running one is not."""
        self._request("delete_pending", prompt_ids=list(prompt_ids))
        with self._lock:
            removed = [
                pid for pid in prompt_ids if pid in self._prompts and pid in set(self.pending)
            ]
            for prompt_id in removed:
                del self._prompts[prompt_id]
            if removed:
                self._status()

    def view(self, image: OutputImage, *, timeout: float | None = None) -> tuple[bytes, str]:
        """GET /view of an output image (a PNG of ``image_size``)."""
        self._request("view", image=image.to_dict())
        with self._lock:
            if self._view_faults:
                raise self._view_faults.pop(0)
            known = any(
                image.to_dict() in (output.get("images") or [])
                for prompt in self._prompts.values()
                if prompt.history
                for output in prompt.history["outputs"].values()
            )
        if not known:
            raise ComfyUIProtocolError(
                f"/view of {image.filename!r} answered 404", server=self.base_url, status=404
            )
        return png(self.image_size), "image/png"

    # -- scripting: a prompt's life --------------------------------------------------------

    def adopt(self, prompt_id: str, graph: Mapping[str, Any]) -> None:
        """A prompt of this client queued before the test began (by a previous run)."""
        with self._lock:
            self._number += 1
            self._prompts[prompt_id] = _Prompt(
                self._number, prompt_id, _as_sent(graph), self.client_id
            )

    def begin(self, prompt_id: str | None = None) -> str:
        """The prompt (the next waiting one by default) starts: execution_start, the first node."""
        with self._lock:
            prompt = self._prompts[prompt_id or self.pending[0]]
            if prompt.phase == "running":
                return prompt.prompt_id
            assert prompt.phase == "pending", f"prompt {prompt.prompt_id} is {prompt.phase}"
            assert self.running is None, f"prompt {self.running} is running already"
            prompt.phase = "running"
            self._send("execution_start", prompt, timestamp=_now_ms())
            self._send("execution_cached", prompt, nodes=[], timestamp=_now_ms())
            self._execute(prompt, next(iter(prompt.graph)))
            return prompt.prompt_id

    def progress(
        self, prompt_id: str, value: int, maximum: int, *, node: str | None = None
    ) -> None:
        """A sampler step (the KSampler node by default) of a prompt, begun if it waits."""
        with self._lock:
            prompt = self._prompts[self.begin(prompt_id)]
            node = node or _first_of(prompt.graph, "KSampler") or prompt.node
            if node != prompt.node:
                self._execute(prompt, node)
            self._send("progress", prompt, value=value, max=maximum, node=node)

    def preview(self, prompt_id: str, data: bytes | None = None) -> None:
        """A binary live preview frame (type 1, JPEG) while the prompt runs."""
        with self._lock:
            self.begin(prompt_id)
            image = data if data is not None else _jpeg()
            frame = struct.pack(">II", 1, 1) + image
            found = read_preview(frame, self.running)
            if found is None or not self._hears():
                return
            self.messages_received += 1
            self.frames.append({"binary": len(frame)})
            watch = self._watches.get(found[0])
            if watch is not None:
                watch.preview = found[1]
                watch.put(PreviewReady())

    def finish(self, prompt_id: str | None = None) -> None:
        """The prompt runs to success: every node, executed, execution_success, its history
        entry, status, and executing null (begun first if it waits)."""
        with self._lock:
            prompt = self._prompts[self.begin(prompt_id)]
            for node in list(prompt.graph):
                if node not in prompt.executed and node != prompt.node:
                    self._execute(prompt, node)
            prompt.executed.append(prompt.node or "")
            outputs = {}
            for index, node in enumerate(prompt.outputs):
                images = [
                    {
                        "filename": f"ComfyUI_temp_{prompt.number:05d}_{index}_.png",
                        "subfolder": "",
                        "type": "temp",
                    }
                ]
                outputs[node] = {"images": images}
                self._send("executed", prompt, node=node, display_node=node, output=outputs[node])
            self._send("execution_success", prompt, timestamp=_now_ms())
            self._end(prompt, "success", outputs)

    def fail(
        self,
        prompt_id: str | None = None,
        *,
        node_id: str | None = None,
        exception_type: str = "PIL.UnidentifiedImageError",
        exception_message: str = "cannot identify image file\n",
    ) -> None:
        """execution_error on a node (the current one by default), as recording 05 shows."""
        with self._lock:
            prompt = self._prompts[self.begin(prompt_id)]
            node = node_id or prompt.node or ""
            self._send(
                "execution_error",
                prompt,
                node_id=node,
                node_type=prompt.graph.get(node, {}).get("class_type"),
                executed=list(prompt.executed),
                exception_message=exception_message,
                exception_type=exception_type,
                traceback=[],
                current_inputs={},
                current_outputs=[],
                timestamp=_now_ms(),
            )
            self._end(prompt, "error", {})

    def interrupt_elsewhere(self, prompt_id: str | None = None) -> None:
        """Someone else interrupts the prompt (begun first if it waits)."""
        with self._lock:
            self._interrupted(self._prompts[self.begin(prompt_id)])

    def forget(self, prompt_id: str | None = None) -> None:
        """The server no longer knows the prompt (every prompt by default), silently."""
        with self._lock:
            for known in [prompt_id] if prompt_id else list(self._prompts):
                self._prompts.pop(known, None)

    def restart(self) -> None:
        """The server restarts: its queue and history are lost, the websocket drops and is back."""
        with self._lock:
            self.forget()
        self._broadcast(Disconnected())
        self._up(announce=True)

    # -- scripting: faults -----------------------------------------------------------------

    def go_down(self, *, since: float | None = None) -> None:
        """Connections are refused from now on; the websocket is lost (at ``since``, a
        ``time.monotonic()`` value, for a server that went away earlier)."""
        with self._lock:
            self._down = True
            self.last_error = "websocket connect failed: [Errno 111] Connection refused"
            self.disconnected_since = time.monotonic() if since is None else since
            self._connected.clear()
        self._broadcast(Disconnected())

    def come_back(self) -> None:
        """Connections are accepted again and the websocket is back."""
        with self._lock:
            self._down = False
        self._up(announce=True)

    def lacks(self, class_type: str) -> None:
        """The server has no such node class: graphs using it are refused (invalid_prompt)."""
        with self._lock:
            self._missing.add(class_type)
            self._object_info.pop(class_type, None)

    def reject_next(self, answer: Mapping[str, Any], *, times: int = 1) -> None:
        """The next POST /prompt calls answer 400 with this body (see ``recorded_rejection``)."""
        with self._lock:
            self._rejections.extend(copy.deepcopy(dict(answer)) for _ in range(times))

    def accept_partly(self, node_errors: Mapping[str, Any]) -> None:
        """The next POST /prompt is accepted with these node_errors (some outputs invalid)."""
        with self._lock:
            self._partial.append(copy.deepcopy(dict(node_errors)))

    def fail_view(self, times: int = 1, *, status: int = 500, timed_out: bool = False) -> None:
        """The next ``times`` /view calls answer ``status`` (or time out)."""
        error: Exception = (
            ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer GET /view in time",
                server=self.base_url,
                timed_out=True,
            )
            if timed_out
            else ComfyUIProtocolError(
                f"/view answered {status}", server=self.base_url, status=status
            )
        )
        with self._lock:
            self._view_faults.extend([error] * times)

    def deafen(self) -> None:
        """The websocket stays open but ComfyUI sends nothing to it (until a reconnect)."""
        with self._lock:
            self._deaf = True

    # -- inside ----------------------------------------------------------------------------

    def _record(self, name: str, **args: Any) -> None:
        with self._lock:
            self.calls.append(Call(name, args))

    def _request(self, name: str, **args: Any) -> None:
        """Record an HTTP call; refused while the server is down."""
        self._record(name, **args)
        if self._down:
            raise ComfyUIUnavailable(
                f"cannot reach ComfyUI at {self.base_url} ([Errno 111] Connection refused)",
                server=self.base_url,
            )

    def _refusal(self, graph: Mapping[str, Any]) -> dict[str, Any] | None:
        """The 400 answer a graph gets, if any (the caller holds the lock)."""
        if self._rejections:
            return self._rejections.pop(0)
        for node_id, node in graph.items():
            if node.get("class_type") in self._missing:
                return {
                    "error": {
                        "type": "invalid_prompt",
                        "message": f"Cannot execute because node {node['class_type']} does "
                        "not exist.",
                        "details": f"Node ID '#{node_id}'",
                        "extra_info": {},
                    },
                    "node_errors": {},
                }
        return None

    def _up(self, *, announce: bool) -> None:
        """The websocket is up: the first status frame, ``Reconnected`` (unless it is the first
        connection), then on_connect, outside the lock (it may call back)."""
        with self._lock:
            if self._down:
                return
            self.sent_photos.clear()  # as the client does on every connection
            self._connected.set()
            self.last_error = None
            self._send_message(
                {"type": "status", "data": {"status": self._exec_info(), "sid": self.client_id}}
            )
        if announce:
            self._broadcast(Reconnected())
        if self.on_connect is not None:
            self.on_connect(self)

    def _hears(self) -> bool:
        return self.connected and not self._deaf

    def _send(self, kind: str, prompt: _Prompt, **data: Any) -> None:
        """A message about one prompt (kept in its history's messages when ComfyUI keeps it)."""
        body = {**data, "prompt_id": prompt.prompt_id}
        if kind in {
            "execution_start",
            "execution_cached",
            "execution_success",
            "execution_error",
            "execution_interrupted",
        }:
            prompt.messages.append([kind, body])
        self._send_message({"type": kind, "data": body})

    def _send_message(self, message: dict[str, Any]) -> None:
        """Deliver one text frame as ComfyUIClient's reader would route it."""
        if not self._hears():
            return
        self.messages_received += 1
        self.frames.append(message)
        read = read_message(json.dumps(message))
        assert read is not None, message
        if read.kind == "status":
            self._broadcast(QueueChanged())
            return
        watch = self._watches.get(read.prompt_id or "")
        if watch is not None:
            watch.deliver(read)

    def _broadcast(self, event: Any) -> None:
        with self._lock:
            watches = list(self._watches.values())
        for watch in watches:
            watch.put(event)

    def _execute(self, prompt: _Prompt, node: str) -> None:
        if prompt.node is not None and prompt.node not in prompt.executed:
            prompt.executed.append(prompt.node)
        prompt.node = node
        self._send("executing", prompt, node=node, display_node=node)

    def _interrupted(self, prompt: _Prompt) -> None:
        node = prompt.node or ""
        self._send(
            "execution_interrupted",
            prompt,
            node_id=node,
            node_type=prompt.graph.get(node, {}).get("class_type"),
            executed=list(prompt.executed),
            timestamp=_now_ms(),
        )
        self._end(prompt, "error", {})

    def _end(self, prompt: _Prompt, status: str, outputs: dict[str, Any]) -> None:
        """The history entry is written, then status, then ``executing`` null (recording 01)."""
        prompt.phase = "ended"
        prompt.history = {
            "prompt": prompt.item(),
            "outputs": outputs,
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": copy.deepcopy(prompt.messages),
            },
            "meta": {
                node: {
                    "node_id": node,
                    "display_node": node,
                    "parent_node": None,
                    "real_node_id": node,
                }
                for node in outputs
            },
        }
        self._status()
        self._send_message(
            {"type": "executing", "data": {"node": None, "prompt_id": prompt.prompt_id}}
        )

    def _exec_info(self) -> dict[str, Any]:
        remaining = sum(p.phase != "ended" for p in self._prompts.values())
        return {"exec_info": {"queue_remaining": remaining}}

    def _status(self) -> None:
        self._send_message({"type": "status", "data": {"status": self._exec_info()}})

    def _queue_answer(self) -> dict[str, Any]:
        with self._lock:
            running = [p.item() for p in self._prompts.values() if p.phase == "running"]
            pending = [self._prompts[pid].item() for pid in self.pending]
        # ComfyUI answers its heap array, not execution order: the reader must sort it.
        return copy.deepcopy({"queue_running": running, "queue_pending": pending[::-1]})


class FakeComfyUIs:
    """A COMFYUI_CLIENT_FACTORY: one ``FakeComfyUI`` per server URL, kept by URL."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.made: dict[str, FakeComfyUI] = {}

    def __call__(self, base_url: str, **kwargs: Any) -> FakeComfyUI:
        """Make the fake of one server (with the client's own keyword arguments)."""
        fake = FakeComfyUI(base_url, **kwargs, **self.options)
        self.made[fake.base_url] = fake
        return fake

    def __getitem__(self, url: str) -> FakeComfyUI:
        return self.made[url.rstrip("/")]

    def __iter__(self) -> Iterator[FakeComfyUI]:
        return iter(list(self.made.values()))


def _as_sent(graph: Mapping[str, Any]) -> dict[str, Any]:
    """The graph as ComfyUI receives it: through JSON, a copy of plain dicts and lists."""
    return json.loads(json.dumps(graph, default=dict))


def _first_of(graph: Mapping[str, Any], class_type: str) -> str | None:
    return next((nid for nid, node in graph.items() if node.get("class_type") == class_type), None)


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
