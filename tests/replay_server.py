"""A replay of recorded ComfyUI 0.3.64 transcripts over real sockets (HTTP and websocket).

The recordings (tests/recordings) hold what a real server sent. ReplayServer serves
them verbatim to whoever connects, with one substitution: recorded prompt_id and client_id / sid
values are replaced by the ones the client actually sent (POST /prompt body, ``/ws?clientId=``),
so that the client can route events. Timestamps, numbers and every other field stay as recorded.

* Websocket: frames recorded up to ``start_ms`` (the connect ``status``, a ``feature_flags``
  answer) are sent when a socket connects; a recorded ``client_sent`` entry makes the replay wait
  for the client's own first message there. Later frames are played after the client's POST
  /prompt, keeping the recorded gaps (scaled by ``speed``). Text frames are ``json.dumps`` of the
  recorded message, as ComfyUI's ``send_json`` sends them; binary frames are rebuilt from the
  recorded 8-byte header (type 4: header + metadata JSON) plus a real JPEG of the recorded size.
* HTTP: each request gets the first registered ``Answer`` with the same method, path and query
  (after the id substitution) whose phase matches the phase of the client's prompt: ``idle``
  before POST /prompt, ``queued`` until its ``execution_start`` frame is sent, ``running`` until
  its ``executing`` null frame is sent, ``done`` after. So ``/history/<id>`` and ``/queue`` answer
  what a real server answers at that point of the run. Recorded image bodies are described only:
  /view sends a real PNG of the recorded byte size, dimensions and text-chunk keys. Requests with
  no recorded answer get 404 with an empty body and are listed in ``unanswered``.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from PIL import Image, ImageDraw
from PIL.PngImagePlugin import PngInfo

PROMPT = "<prompt_id>"
CLIENT = "<client_id>"
GATE_TIMEOUT = 10.0
CLIENT_MESSAGE_TIMEOUT = 5.0


def step(recording: dict, label: str) -> dict:
    """The one recorded request/response step whose label starts with ``label``."""
    found = [s for s in recording["steps"] if s.get("label", "").startswith(label)]
    assert len(found) == 1, f"{len(found)} steps labelled {label!r} in {recording['scenario']}"
    return found[0]


def socket_frames(recording: dict, socket: str | None = None) -> list[dict]:
    """The websocket entries of one recorded socket (the only one when ``socket`` is None)."""
    return [entry for entry in recording["ws"] if entry.get("socket") == socket]


@dataclass(frozen=True)
class Answer:
    """A recorded HTTP exchange, served while the client's prompt is in one of ``phases``."""

    step: dict
    ids: dict[str, str] = field(default_factory=dict)
    phases: frozenset[str] | None = None
    any_query: bool = False


@dataclass(frozen=True)
class Logged:
    """One request the replay answered."""

    at: float
    method: str
    path: str
    query: dict[str, str]
    phase: str
    status: int
    body: bytes


class ReplayServer:
    """Serves one recorded scenario on 127.0.0.1:<free port>, in a thread of its own."""

    def __init__(
        self,
        *,
        frames: Iterable[dict],
        start_ms: int,
        ids: dict[str, str],
        answers: Iterable[Answer],
        speed: float = 0.2,
    ) -> None:
        self.frames = list(frames)
        self.start_ms = start_ms
        self.ids = dict(ids)
        self.answers = list(answers)
        self.speed = speed
        self.phase = "idle"
        self.prompt_id: str | None = None
        self.client_id: str | None = None
        self.requests: list[Logged] = []
        self.unanswered: list[str] = []
        self.prompts: list[dict] = []
        self.uploads: list[dict[str, Any]] = []
        self.client_messages: list[str] = []
        self.sent: list[tuple[float, str, dict]] = []
        self.errors: list[str] = []
        self._gates: list[tuple[Callable[[dict], bool], threading.Event]] = []
        self._sockets: list[web.WebSocketResponse] = []
        self._tasks: set[asyncio.Task] = set()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> ReplayServer:
        """Bind a free port and serve."""
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        """Close every socket and the listener, then end the loop and its thread."""
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_route("*", "/{tail:.*}", self._http)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for ws in list(self._sockets):
            await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    # -- control for tests -----------------------------------------------------------------

    def hold(self, predicate: Callable[[dict], bool]) -> threading.Event:
        """Hold back the first played frame for which ``predicate(message)`` holds until set."""
        gate = threading.Event()
        self._gates.append((predicate, gate))
        return gate

    def sent_types(self) -> list[str]:
        """The ``type`` of every frame sent so far (``binary`` for binary frames)."""
        return [kind for _, kind, _ in self.sent]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10.0) -> None:
        """Poll ``condition`` until it holds, failing after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"replay: condition not met within {timeout} s")
            time.sleep(0.01)

    # -- substitution ----------------------------------------------------------------------

    def _substitute(self, text: str, ids: dict[str, str]) -> str:
        actual = {PROMPT: self.prompt_id, CLIENT: self.client_id}
        for recorded, role in ids.items():
            if actual[role] is not None:
                text = text.replace(recorded, actual[role])
        return text

    def _ours(self, message: dict) -> bool:
        data = message.get("data")
        prompt_id = data.get("prompt_id") if isinstance(data, dict) else None
        return prompt_id is not None and self.ids.get(prompt_id) == PROMPT

    # -- websocket -------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        self.client_id = request.query.get("clientId") or self.client_id
        self._sockets.append(ws)
        try:
            for entry in self.frames:
                if entry["t_ms"] > self.start_ms:
                    break
                if entry.get("event") == "client_sent":
                    await self._receive_client_message(ws)
                elif "event" not in entry:
                    await self._send(ws, entry)
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    self.client_messages.append(message.data)
        finally:
            self._sockets.remove(ws)
        return ws

    async def _receive_client_message(self, ws: web.WebSocketResponse) -> None:
        try:
            message = await ws.receive(timeout=CLIENT_MESSAGE_TIMEOUT)
        except TimeoutError:
            self.errors.append("the client sent no first message where the recording has one")
            return
        if message.type == WSMsgType.TEXT:
            self.client_messages.append(message.data)

    async def _play(self) -> None:
        """Send the frames recorded after ``start_ms``, keeping their (scaled) gaps."""
        began = self._loop.time()
        for entry in self.frames:
            if entry["t_ms"] <= self.start_ms or "event" in entry:
                continue
            due = began + (entry["t_ms"] - self.start_ms) / 1000 * self.speed
            await asyncio.sleep(max(0.0, due - self._loop.time()))
            message = entry.get("text") or _binary_message(entry["binary"])
            for predicate, gate in self._gates:
                if not gate.is_set() and predicate(message):
                    await self._wait_gate(gate)
            for ws in list(self._sockets):
                if not ws.closed:
                    await self._send(ws, entry)

    async def _wait_gate(self, gate: threading.Event) -> None:
        deadline = self._loop.time() + GATE_TIMEOUT
        while not gate.is_set():
            if self._loop.time() > deadline:
                self.errors.append("a held frame was never released")
                return
            await asyncio.sleep(0.01)

    async def _send(self, ws: web.WebSocketResponse, entry: dict) -> None:
        if "text" in entry:
            message = entry["text"]
            await ws.send_str(self._substitute(json.dumps(message), self.ids))
            kind = message["type"]
            if kind == "execution_start" and self._ours(message):
                self.phase = "running"
            if kind == "executing" and message["data"].get("node") is None and self._ours(message):
                self.phase = "done"
        else:
            message = _binary_message(entry["binary"])
            await ws.send_bytes(self._binary_frame(entry["binary"]))
            kind = "binary"
        self.sent.append((time.monotonic(), kind, message))

    def _binary_frame(self, recorded: dict) -> bytes:
        header = recorded["decoded_header"]
        image = header["image"]
        picture = jpeg_of_size(image["width"], image["height"], image["size_bytes"])
        first_8 = bytes.fromhex(recorded["first_8_bytes_hex"])
        if header["event_type"] == 4:
            metadata = self._substitute(json.dumps(header["metadata"]), self.ids).encode()
            if len(metadata) == header["metadata_length"]:
                return first_8 + metadata + picture
            return struct.pack(">II", 4, len(metadata)) + metadata + picture
        return first_8 + picture

    # -- HTTP ------------------------------------------------------------------------------

    async def _http(self, request: web.Request) -> web.Response:
        if request.content_type == "multipart/form-data":
            fields: dict[str, Any] = {}
            async for part in await request.multipart():
                data = await part.read()
                fields[part.name] = (
                    {"filename": part.filename, "size": len(data)}
                    if part.filename
                    else data.decode()
                )
            self.uploads.append(fields)
        elif request.can_read_body:
            body = await request.read()
            if request.method == "POST" and request.path == "/prompt":
                sent = json.loads(body)
                self.prompts.append(sent)
                self.prompt_id = str(sent.get("prompt_id"))
                self.client_id = sent.get("client_id") or self.client_id
        query = dict(request.query)
        phase = self.phase
        answer = self._find(request.method, request.path, query)
        if answer is None:
            self.unanswered.append(f"{request.method} {request.path_qs}")
            response = web.Response(status=404)
        else:
            response = self._render(answer)
            if request.path == "/prompt" and request.method == "POST" and response.status == 200:
                self.phase = "queued"
                task = self._loop.create_task(self._play())
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self.requests.append(
            Logged(
                time.monotonic(),
                request.method,
                request.path,
                query,
                phase,
                response.status,
                response.body or b"",
            )
        )
        return response

    def _find(self, method: str, path: str, query: dict[str, str]) -> Answer | None:
        for answer in self.answers:
            recorded = answer.step["request"]
            if recorded["method"] != method:
                continue
            if answer.phases is not None and self.phase not in answer.phases:
                continue
            if self._substitute(recorded["path"], answer.ids) != path:
                continue
            if not answer.any_query and (recorded.get("query") or {}) != query:
                continue
            return answer
        return None

    def _render(self, answer: Answer) -> web.Response:
        recorded = answer.step["response"]
        headers = {
            name: value
            for name, value in recorded["headers"].items()
            if name in {"content-type", "content-disposition", "cache-control"}
        }
        if "json" in recorded:
            body = self._substitute(json.dumps(recorded["json"]), answer.ids).encode()
        elif "image" in recorded:
            image = recorded["image"]
            body = png_of_size(
                image["width"],
                image["height"],
                image["size_bytes"],
                mode=image["mode"],
                text_keys=list(image.get("png_text_chunks") or {}),
            )
        elif "text" in recorded:
            body = recorded["text"].encode()
        else:
            assert recorded.get("body_empty"), f"cannot serve {recorded!r}"
            body = b""
        response = web.Response(status=recorded["status"], body=body)
        for name, value in headers.items():
            response.headers[name] = value
        return response


def _binary_message(recorded: dict) -> dict:
    """What a binary frame carries, for gates and logs: its decoded header."""
    return {"type": "binary", "data": recorded["decoded_header"]}


def _picture(width: int, height: int, mode: str) -> Image.Image:
    image = Image.new(mode, (width, height), "#6a8caf")
    draw = ImageDraw.Draw(image)
    draw.ellipse((width // 4, height // 5, 3 * width // 4, 4 * height // 5), fill="#e8c39e")
    return image


def png_of_size(
    width: int, height: int, size: int, *, mode: str = "RGB", text_keys: list[str] | None = None
) -> bytes:
    """A real PNG of exactly ``size`` bytes: the text chunks carry the padding."""
    keys = text_keys or ["prompt"]

    def encode(padding: int) -> bytes:
        info = PngInfo()
        for index, key in enumerate(keys):
            info.add_text(key, " " * padding if index == 0 else "")
        buffer = io.BytesIO()
        _picture(width, height, mode).save(buffer, format="PNG", pnginfo=info)
        return buffer.getvalue()

    base = len(encode(0))
    assert base <= size, f"a {width}x{height} PNG needs {base} bytes, more than {size}"
    data = encode(size - base)
    assert len(data) == size
    return data


def jpeg_of_size(width: int, height: int, size: int) -> bytes:
    """A real JPEG of exactly ``size`` bytes: comment (COM) segments after SOI carry the padding."""
    for quality in (90, 80, 70):
        buffer = io.BytesIO()
        _picture(width, height, "RGB").save(buffer, format="JPEG", quality=quality)
        data = buffer.getvalue()
        padding = size - len(data)
        if padding == 0:
            return data
        if padding >= 4:
            break
    else:
        raise AssertionError(f"cannot make a {width}x{height} JPEG of {size} bytes")
    segments = []
    while padding:
        payload = min(padding - 4, 65533)
        if 0 < padding - 4 - payload < 4:  # leave enough for one more whole segment
            payload -= 4
        segments.append(b"\xff\xfe" + struct.pack(">H", payload + 2) + b" " * payload)
        padding -= payload + 4
    return data[:2] + b"".join(segments) + data[2:]
