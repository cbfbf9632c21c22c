"""The aiohttp application: ComfyUI's HTTP and websocket surface, queue worker, control API."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import heapq
import io
import ipaddress
import itertools
import json
import logging
import mimetypes
import os
import struct
import sys
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from aiohttp import WSMsgType, web
from PIL import Image

from comfyui_standin.catalogue import CHECKPOINTS, CUSTOM_NODE_PACKS, INPUT_FILES, OBJECT_INFO
from comfyui_standin.executor import Executor, QueueItem
from comfyui_standin.faults import Faults
from comfyui_standin.nodes import Dirs
from comfyui_standin.page import index_response
from comfyui_standin.validation import validate_prompt

logger = logging.getLogger(__name__)

COMFYUI_VERSION = "0.3.64"
MAX_UPLOAD_SIZE = 100 * 1024 * 1024
MAX_HISTORY = 10000
SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")
MODEL_FOLDERS = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
]
#: binary websocket event types
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
#: image formats of a type-1 frame
JPEG, PNG = 1, 2


def _empty(status: int) -> web.Response:
    return web.Response(status=status)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@web.middleware
async def origin_only_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """403 when a loopback Host is called with an Origin of another host:port (like ComfyUI)."""
    if request.method == "OPTIONS":
        return web.Response()
    host = request.headers.get("Host")
    origin = request.headers.get("Origin")
    if host and origin:
        host_netloc = host.lower()
        origin_netloc = urlparse(origin).netloc.lower()
        if _is_loopback(urlparse("//" + host_netloc).hostname) and host_netloc != origin_netloc:
            return _empty(403)
    return await handler(request)


class ComfyServer:
    """All state of one running stand-in (one "process" of ComfyUI)."""

    def __init__(
        self,
        *,
        dirs: Dirs,
        faults: Faults,
        checkpoints: list[str],
        cache: bool,
        previews: bool,
        custom_nodes: list[str],
        recorder: Recorder,
        on_restart: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.dirs = dirs
        self.faults = faults
        self.checkpoints = sorted(checkpoints)
        self.recorder = recorder
        self.cache = cache
        self.previews = previews
        enabled_custom = {name for pack in custom_nodes for name in CUSTOM_NODE_PACKS[pack]}
        all_custom = {name for names in CUSTOM_NODE_PACKS.values() for name in names}
        self.classes = [
            name for name in OBJECT_INFO if name not in all_custom or name in enabled_custom
        ]
        self.executor = Executor(dirs, faults, cache=cache, previews=previews)
        self.sockets: dict[str, web.WebSocketResponse] = {}
        self.socket_flags: dict[str, dict[str, Any]] = {}
        self.all_sockets: set[web.WebSocketResponse] = set()
        self._reset_state()
        self._outbox: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue()
        self._sender: asyncio.Task | None = None
        self._worker: asyncio.Task | None = None
        self._sending = False

    def _reset_state(self) -> None:
        self.number = 0
        self.queue: list[tuple[Any, str, int, QueueItem]] = []
        self._seq = itertools.count()
        self.running: QueueItem | None = None
        self.history: dict[str, dict] = {}
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self.free_request: dict[str, Any] | None = None
        self.wakeup = asyncio.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def start_tasks(self) -> None:
        """Start the message sender and the queue worker."""
        self._sender = asyncio.create_task(self._send_loop())
        self._worker = asyncio.create_task(self._work_loop())

    async def stop_tasks(self) -> None:
        """Stop the worker and sender and close every websocket."""
        for task in (self._worker, self._sender):
            if task is not None:
                task.cancel()
        for task in (self._worker, self._sender):
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._worker = self._sender = None
        await self.close_websockets()

    async def close_websockets(self) -> None:
        """Close every websocket, registered or orphaned."""
        for ws in list(self.all_sockets):
            await ws.close(code=1001, message=b"server restart")
        self.all_sockets.clear()
        self.sockets.clear()
        self.socket_flags.clear()

    async def restart(self) -> None:
        """Like a process restart: forget queue, history and cache; drop every websocket."""
        await self.stop_tasks()
        self._reset_state()
        self.executor = Executor(self.dirs, self.faults, cache=self.cache, previews=self.previews)
        self._outbox = asyncio.Queue()
        self.start_tasks()

    def is_idle(self) -> bool:
        """Nothing pending, nothing running, no message waiting to be sent."""
        return (
            not self.queue and self.running is None and self._outbox.empty() and not self._sending
        )

    # -- messaging ---------------------------------------------------------------------------
    def queue_info(self) -> dict[str, Any]:
        """``{"exec_info": {"queue_remaining": N}}``."""
        return {"exec_info": {"queue_remaining": len(self.queue) + (self.running is not None)}}

    def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """Queue a JSON message for one client (sid) or every registered socket (None)."""
        text = json.dumps({"type": event, "data": data})

        async def deliver() -> None:
            for ws in self._recipients(sid):
                await self._send_ws(ws, text)

        self._outbox.put_nowait(deliver)

    def send_progress(
        self, data: dict[str, Any], preview: bytes | None, meta: dict, sid: str | None
    ) -> None:
        """Queue ``progress`` and its preview: type 4 before it, or type 1 after it."""
        text = json.dumps({"type": "progress", "data": data})
        image_format = PNG if meta.get("image_type") == "image/png" else JPEG

        async def deliver() -> None:
            for client, ws in self._recipients_with_ids(sid):
                wants_meta = self.socket_flags.get(client, {}).get("supports_preview_metadata")
                if preview is not None and wants_meta:
                    meta_bytes = json.dumps(meta).encode("utf-8")
                    header = struct.pack(">II", PREVIEW_IMAGE_WITH_METADATA, len(meta_bytes))
                    await self._send_ws(ws, header + meta_bytes + preview)
                await self._send_ws(ws, text)
                if preview is not None and not wants_meta:
                    header = struct.pack(">II", PREVIEW_IMAGE, image_format)
                    await self._send_ws(ws, header + preview)

        self._outbox.put_nowait(deliver)

    def set_last_node(self, node_id: str | None) -> None:
        """Remember the executing node for late-connecting sockets."""
        self.last_node_id = node_id

    def drop_websockets(self) -> None:
        """Cut every websocket connection without a close handshake (in message order)."""

        async def cut() -> None:
            self.abort_websockets()

        self._outbox.put_nowait(cut)

    def abort_websockets(self) -> None:
        """Cut every websocket connection now, without a close handshake."""
        for ws in list(self.all_sockets):
            transport = getattr(ws._req, "transport", None) if ws._req else None
            if transport is not None:
                transport.abort()

    def broadcast_status(self) -> None:
        """The ``status`` broadcast sent on every queue change."""
        self.send("status", {"status": self.queue_info()}, None)

    def _recipients_with_ids(self, sid: str | None) -> list[tuple[str, web.WebSocketResponse]]:
        if sid is None:
            return list(self.sockets.items())
        ws = self.sockets.get(sid)
        return [(sid, ws)] if ws is not None else []

    def _recipients(self, sid: str | None) -> list[web.WebSocketResponse]:
        return [ws for _, ws in self._recipients_with_ids(sid)]

    @staticmethod
    async def _send_ws(ws: web.WebSocketResponse, payload: str | bytes) -> None:
        if ws.closed:
            return
        try:
            if isinstance(payload, str):
                await ws.send_str(payload)
            else:
                await ws.send_bytes(payload)
        except (ConnectionError, RuntimeError) as exc:
            logger.debug("websocket send failed: %s", exc)

    async def _send_loop(self) -> None:
        while True:
            deliver = await self._outbox.get()
            self._sending = True
            try:
                await deliver()
            except Exception:
                logger.exception("sending a websocket message failed")
            finally:
                self._sending = False

    # -- queue worker ----------------------------------------------------------------------------
    def enqueue(self, item: QueueItem) -> None:
        """Add an accepted prompt to the pending heap."""
        heapq.heappush(self.queue, (item.number, item.prompt_id, next(self._seq), item))
        self.broadcast_status()
        self.wakeup.set()

    def _apply_free(self) -> None:
        if self.free_request and self.free_request.get("free_memory"):
            self.executor.free_memory()
        self.free_request = None

    async def _work_loop(self) -> None:
        while True:
            if self.free_request is not None:
                self._apply_free()
            if not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
                continue
            item = heapq.heappop(self.queue)[3]
            self.running = item
            self.broadcast_status()
            self.client_id = item.extra_data.get("client_id")
            try:
                entry = await self.executor.execute(item, self)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("executor crashed on prompt %s", item.prompt_id)
                entry = {
                    "prompt": item.public(),
                    "outputs": {},
                    "status": {"status_str": "error", "completed": False, "messages": []},
                    "meta": {},
                }
            self.history[item.prompt_id] = entry
            while len(self.history) > MAX_HISTORY:
                self.history.pop(next(iter(self.history)))
            self.running = None
            self.broadcast_status()
            if self.client_id is not None:
                self.send("executing", {"node": None, "prompt_id": item.prompt_id}, self.client_id)
            self.last_node_id = None

    # -- snapshots -------------------------------------------------------------------------------
    def queue_json(self) -> dict[str, Any]:
        """Body of GET /queue (pending in raw heap order)."""
        return copy.deepcopy(
            {
                "queue_running": [self.running.public()] if self.running else [],
                "queue_pending": [entry[3].public() for entry in self.queue],
            }
        )

    def history_json(self, max_items: int | None = None, offset: int = -1) -> dict[str, Any]:
        """Body of GET /history."""
        if offset < 0 and max_items is not None:
            offset = len(self.history) - max_items
        out: dict[str, Any] = {}
        for index, (key, value) in enumerate(self.history.items()):
            if index >= offset:
                out[key] = value
                if max_items is not None and len(out) >= max_items:
                    break
        return copy.deepcopy(out)

    def object_info(self) -> dict[str, Any]:
        """Body of GET /object_info with the live input-file and checkpoint lists."""
        files = self.input_images()
        out = {}
        for name in self.classes:
            info = copy.deepcopy(OBJECT_INFO[name])
            for group in info["input"].values():
                for spec in group.values():
                    if isinstance(spec, list) and spec and spec[0] == INPUT_FILES:
                        spec[0] = list(files)
                    elif isinstance(spec, list) and spec and spec[0] == CHECKPOINTS:
                        spec[0] = list(self.checkpoints)
            out[name] = info
        return out

    def validation_catalogue(self) -> dict[str, Any]:
        """Catalogue for validation (LoadImage's list is never consulted there)."""
        return self.object_info()

    def input_images(self) -> list[str]:
        """Top-level files of the input dir whose name says image (what LoadImage lists)."""
        try:
            names = os.listdir(self.dirs.input)
        except FileNotFoundError:
            return []
        images = []
        for name in names:
            kind = mimetypes.guess_type(name)[0]
            if kind and kind.startswith("image/") and (self.dirs.input / name).is_file():
                images.append(name)
        return sorted(images)


class Recorder:
    """What the stand-in received, for tests to inspect."""

    def __init__(self) -> None:
        self.prompts: list[Any] = []
        self.interrupts: list[dict | None] = []
        self.queue_requests: list[Any] = []
        # "METHOD /path" (without the /api prefix) -> how many requests arrived.
        self.request_counts: Counter[str] = Counter()
        self.control_connections: set[Any] = set()


# ------------------------------------------------------------------------------------------------
# Route handlers


def build_app(state: Callable[[], ComfyServer], control: Control) -> web.Application:
    """The aiohttp application; ``state()`` answers the current ComfyServer."""

    @web.middleware
    async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
        path = (
            request.path.removeprefix("/api") if request.path.startswith("/api/") else request.path
        )
        control.recorder.request_counts[f"{request.method} {path}"] += 1
        if not path.startswith("/_standin/"):
            return await handler(request)
        # Remembered so that refusing connections does not cut its own control request.
        control.recorder.control_connections.add(request.protocol)
        try:
            return await handler(request)
        finally:
            control.recorder.control_connections.discard(request.protocol)

    app = web.Application(
        client_max_size=MAX_UPLOAD_SIZE, middlewares=[count_requests, origin_only_middleware]
    )
    routes = Routes(state)
    table = [
        ("GET", "/", routes.index),
        ("GET", "/ws", routes.websocket),
        ("GET", "/prompt", routes.get_prompt),
        ("POST", "/prompt", routes.post_prompt),
        ("GET", "/queue", routes.get_queue),
        ("POST", "/queue", routes.post_queue),
        ("POST", "/interrupt", routes.post_interrupt),
        ("GET", "/history", routes.get_history),
        ("GET", "/history/{prompt_id}", routes.get_history_item),
        ("POST", "/history", routes.post_history),
        ("GET", "/system_stats", routes.system_stats),
        ("GET", "/features", routes.features),
        ("GET", "/object_info", routes.object_info),
        ("GET", "/object_info/{node_class}", routes.object_info_one),
        ("GET", "/embeddings", routes.embeddings),
        ("GET", "/models", routes.models),
        ("GET", "/models/{folder}", routes.models_folder),
        ("POST", "/free", routes.free),
        ("POST", "/upload/image", routes.upload_image),
        ("GET", "/view", routes.view),
    ]
    for method, path, handler in table:
        for route in (path, "/api" + path):
            if method == "GET":
                # Like ComfyUI's route table: every GET route answers HEAD too.
                app.router.add_get(route, handler)
            else:
                app.router.add_route(method, route, handler)
    app.router.add_get("/_standin/faults", control.get_faults)
    app.router.add_post("/_standin/faults", control.post_faults)
    app.router.add_delete("/_standin/faults", control.clear_faults)
    app.router.add_post("/_standin/faults/clear", control.clear_faults)
    app.router.add_post("/_standin/restart", control.restart)
    app.router.add_get("/_standin/requests", control.requests)
    return app


class Control:
    """Handlers of the stand-in's own control API under /_standin/."""

    def __init__(
        self,
        faults: Faults,
        recorder: Recorder,
        restart: Callable[[], Awaitable[None]],
        refuse_for: Callable[[float], None],
    ) -> None:
        self.faults = faults
        self.recorder = recorder
        self._restart = restart
        self._refuse_for = refuse_for

    async def get_faults(self, request: web.Request) -> web.Response:
        """GET /_standin/faults: the current switches."""
        return web.json_response(self.faults.as_dict())

    async def post_faults(self, request: web.Request) -> web.StreamResponse:
        """POST /_standin/faults {field: value, ..., "duration": s for refuse_connections}."""
        body = await request.json()
        if not isinstance(body, dict):
            return web.json_response({"error": "body must be an object"}, status=400)
        duration = body.pop("duration", None)
        refuse = body.pop("refuse_connections", None)
        try:
            self.faults.update(**body)
        except (TypeError, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        answer = self.faults.as_dict()
        if refuse:
            answer["refuse_connections"] = True
        response = web.json_response(answer)
        await response.prepare(request)
        await response.write_eof()
        if refuse:
            self._refuse_for(float(duration) if duration is not None else 1.0)
        elif refuse is False:
            self.faults.refuse_connections = False
        return response

    async def clear_faults(self, request: web.Request) -> web.Response:
        """DELETE /_standin/faults (or POST /_standin/faults/clear): every switch off."""
        self.faults.clear()
        return web.json_response(self.faults.as_dict())

    async def restart(self, request: web.Request) -> web.Response:
        """POST /_standin/restart: forget queue, history and cache; drop every websocket."""
        await self._restart()
        return web.json_response({"restarted": True})

    async def requests(self, request: web.Request) -> web.Response:
        """GET /_standin/requests: what the stand-in received so far."""
        return web.json_response(
            {
                "prompts": self.recorder.prompts,
                "interrupts": self.recorder.interrupts,
                "queue_requests": self.recorder.queue_requests,
                "request_counts": dict(self.recorder.request_counts),
            }
        )


class Routes:
    """ComfyUI's route handlers."""

    def __init__(self, state: Callable[[], ComfyServer]) -> None:
        self.state = state

    async def index(self, request: web.Request) -> web.Response:
        """GET /: where ComfyUI serves its frontend, a page saying this is the stand-in."""
        return index_response(COMFYUI_VERSION)

    # -- websocket -----------------------------------------------------------------------------
    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        """GET /ws?clientId=...: status first, then events; same-id sockets replace each other."""
        server = self.state()
        ws = web.WebSocketResponse(max_msg_size=MAX_UPLOAD_SIZE)
        await ws.prepare(request)
        sid = request.rel_url.query.get("clientId", "")
        if sid:
            server.sockets.pop(sid, None)
        else:
            sid = uuid.uuid4().hex
        server.sockets[sid] = ws
        server.all_sockets.add(ws)
        try:
            server.send("status", {"status": server.queue_info(), "sid": sid}, sid)
            if server.client_id == sid and server.last_node_id is not None:
                server.send("executing", {"node": server.last_node_id}, sid)
            first = True
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    try:
                        data = json.loads(message.data)
                    except ValueError:
                        data = None
                    if (
                        first
                        and isinstance(data, dict)
                        and data.get("type") == "feature_flags"
                        and isinstance(data.get("data"), dict)
                    ):
                        server.socket_flags[sid] = data["data"]
                        server.send("feature_flags", server_features(), sid)
                    first = False
        finally:
            # Unconditional, like ComfyUI: closing an old socket orphans a newer one.
            server.sockets.pop(sid, None)
            server.socket_flags.pop(sid, None)
            server.all_sockets.discard(ws)
        return ws

    # -- prompt and queue ------------------------------------------------------------------------
    async def get_prompt(self, request: web.Request) -> web.Response:
        """GET /prompt."""
        return web.json_response(self.state().queue_info())

    async def post_prompt(self, request: web.Request) -> web.Response:
        """POST /prompt: validate, number and queue a prompt."""
        server = self.state()
        try:
            body = await request.json()
        except ValueError:
            server.recorder.prompts.append({"_raw": await request.text()})
            raise
        server.recorder.prompts.append(copy.deepcopy(body))
        if "number" in body:
            number: int | float = float(body["number"])
        else:
            number = server.number
            if body.get("front"):
                number = -number
            server.number += 1
        if "prompt" not in body:
            error = {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            }
            return web.json_response({"error": error, "node_errors": {}}, status=400)
        prompt = copy.deepcopy(body["prompt"])
        prompt_id = str(body.get("prompt_id", uuid.uuid4()))
        if server.faults.reject_prompts:
            return web.json_response(rejection_body(prompt), status=400)
        result = validate_prompt(
            prompt,
            server.validation_catalogue(),
            server.dirs,
            body.get("partial_execution_targets"),
        )
        extra_data = copy.deepcopy(body.get("extra_data", {}))
        if "client_id" in body:
            extra_data["client_id"] = body["client_id"]
        if not result.ok:
            return web.json_response(
                {"error": result.error, "node_errors": result.node_errors}, status=400
            )
        sensitive = {
            key: extra_data.pop(key) for key in SENSITIVE_EXTRA_DATA_KEYS if key in extra_data
        }
        item = QueueItem(number, prompt_id, prompt, extra_data, result.good_outputs, sensitive)
        server.enqueue(item)
        return web.json_response(
            {"prompt_id": prompt_id, "number": number, "node_errors": result.node_errors}
        )

    async def get_queue(self, request: web.Request) -> web.Response:
        """GET /queue."""
        return web.json_response(self.state().queue_json())

    async def post_queue(self, request: web.Request) -> web.Response:
        """POST /queue {"clear": true} / {"delete": [prompt_id...]}."""
        server = self.state()
        body = await request.json()
        server.recorder.queue_requests.append(copy.deepcopy(body))
        if body.get("clear"):
            server.queue.clear()
            server.broadcast_status()
        if "delete" in body:
            for prompt_id in body["delete"]:
                for index, entry in enumerate(server.queue):
                    if entry[1] == prompt_id:
                        server.queue.pop(index)
                        heapq.heapify(server.queue)
                        server.broadcast_status()
                        break
        return web.Response()

    async def post_interrupt(self, request: web.Request) -> web.Response:
        """POST /interrupt [{"prompt_id": ...}]: targeted only if that prompt runs; else global."""
        server = self.state()
        try:
            body = await request.json()
        except ValueError:
            body = None
        server.recorder.interrupts.append(copy.deepcopy(body))
        prompt_id = body.get("prompt_id") if isinstance(body, dict) else None
        if prompt_id:
            if server.running is not None and server.running.prompt_id == prompt_id:
                server.executor.interrupt_requested = True
        else:
            server.executor.interrupt_requested = True
        return web.Response()

    # -- history ---------------------------------------------------------------------------------
    async def get_history(self, request: web.Request) -> web.Response:
        """GET /history[?max_items=N&offset=K]."""
        query = request.rel_url.query
        max_items = int(query["max_items"]) if "max_items" in query else None
        offset = int(query["offset"]) if "offset" in query else -1
        return web.json_response(self.state().history_json(max_items, offset))

    async def get_history_item(self, request: web.Request) -> web.Response:
        """GET /history/{prompt_id}: ``{}`` until done."""
        server = self.state()
        prompt_id = request.match_info["prompt_id"]
        if prompt_id in server.history:
            return web.json_response({prompt_id: copy.deepcopy(server.history[prompt_id])})
        return web.json_response({})

    async def post_history(self, request: web.Request) -> web.Response:
        """POST /history {"clear": true} / {"delete": [ids]}."""
        server = self.state()
        body = await request.json()
        if body.get("clear"):
            server.history.clear()
        for prompt_id in body.get("delete", []):
            server.history.pop(prompt_id, None)
        return web.Response()

    # -- info --------------------------------------------------------------------------------
    async def system_stats(self, request: web.Request) -> web.Response:
        """GET /system_stats."""
        total, free = _memory()
        stats = {
            "system": {
                "os": os.name,
                "ram_total": total,
                "ram_free": free,
                "comfyui_version": COMFYUI_VERSION,
                "required_frontend_version": "1.27.10",
                "installed_templates_version": "0.1.95",
                "required_templates_version": "0.1.95",
                "python_version": sys.version,
                "pytorch_version": "none (comfyui_standin)",
                "embedded_python": False,
                "argv": list(sys.argv),
            },
            "devices": [
                {
                    "name": "cpu",
                    "type": "cpu",
                    "index": None,
                    "vram_total": total,
                    "vram_free": free,
                    "torch_vram_total": total,
                    "torch_vram_free": free,
                }
            ],
        }
        return web.json_response(stats)

    async def features(self, request: web.Request) -> web.Response:
        """GET /features."""
        return web.json_response(server_features())

    async def object_info(self, request: web.Request) -> web.Response:
        """GET /object_info."""
        return web.json_response(self.state().object_info())

    async def object_info_one(self, request: web.Request) -> web.Response:
        """GET /object_info/{class}: ``{}`` for an unknown class."""
        name = request.match_info["node_class"]
        info = self.state().object_info()
        return web.json_response({name: info[name]} if name in info else {})

    async def embeddings(self, request: web.Request) -> web.Response:
        """GET /embeddings."""
        return web.json_response([])

    async def models(self, request: web.Request) -> web.Response:
        """GET /models."""
        return web.json_response(MODEL_FOLDERS)

    async def models_folder(self, request: web.Request) -> web.Response:
        """GET /models/{folder}: 404 for an unknown folder."""
        folder = request.match_info["folder"]
        if folder not in MODEL_FOLDERS:
            return _empty(404)
        if folder == "checkpoints":
            return web.json_response(self.state().checkpoints)
        return web.json_response([])

    async def free(self, request: web.Request) -> web.Response:
        """POST /free {"unload_models", "free_memory"}: applied by the worker when idle."""
        server = self.state()
        body = await request.json()
        request_flags = dict(server.free_request or {})
        for key in ("unload_models", "free_memory"):
            if body.get(key):
                request_flags[key] = True
        server.free_request = request_flags
        server.wakeup.set()
        return web.Response()

    # -- files ---------------------------------------------------------------------------------
    def _dir_by_type(self, kind: str | None) -> Path | None:
        dirs = self.state().dirs
        return {"input": dirs.input, "output": dirs.output, "temp": dirs.temp}.get(kind or "")

    async def upload_image(self, request: web.Request) -> web.Response:
        """POST /upload/image (multipart image, type, subfolder, overwrite)."""
        post = await request.post()
        image = post.get("image")
        overwrite = post.get("overwrite")
        kind = post.get("type")
        upload_dir = self._dir_by_type("input" if kind is None else str(kind))
        if upload_dir is None:
            raise ValueError(f"unknown upload type {kind!r}")  # ComfyUI answers 500 too
        if image is None:
            return _empty(400)
        if isinstance(image, str):
            raise TypeError("'image' must be a file field")  # ComfyUI answers 500 too
        filename = image.filename
        if not filename:
            return _empty(400)
        subfolder = str(post.get("subfolder", ""))
        base = os.path.abspath(upload_dir)
        folder = os.path.join(base, os.path.normpath(subfolder))
        path = os.path.abspath(os.path.join(folder, filename))
        if os.path.commonpath((base, path)) != base:
            return _empty(400)
        os.makedirs(folder, exist_ok=True)
        data = image.file.read()
        stem, ext = os.path.splitext(filename)
        duplicate = False
        if overwrite not in ("true", "1"):
            counter = 1
            while os.path.exists(path):
                if _sha256_file(path) == hashlib.sha256(data).hexdigest():
                    duplicate = True
                    break
                filename = f"{stem} ({counter}){ext}"
                path = os.path.join(folder, filename)
                counter += 1
        if not duplicate:
            tmp = path + ".part"
            with open(tmp, "wb") as handle:
                handle.write(data)
            os.replace(tmp, path)
        return web.json_response(
            {"name": filename, "subfolder": subfolder, "type": kind or "input"}
        )

    async def view(self, request: web.Request) -> web.StreamResponse:
        """GET /view?filename&type&subfolder[&preview&channel]."""
        server = self.state()
        faults = server.faults
        if faults.view_delay > 0:
            await asyncio.sleep(faults.view_delay)
        if faults.view_status is not None:
            return _empty(int(faults.view_status))
        query = request.rel_url.query
        if "filename" not in query:
            return _empty(404)
        filename = query["filename"]
        base: Path | None = None
        for tag, cut, directory in (
            ("[output]", 9, server.dirs.output),
            ("[input]", 8, server.dirs.input),
            ("[temp]", 7, server.dirs.temp),
        ):
            if filename.endswith(tag):
                filename, base = filename[:-cut], directory
                break
        if not filename:
            return _empty(400)
        if filename[0] == "/" or ".." in filename:
            return _empty(400)
        if base is None:
            base = self._dir_by_type(query.get("type", "output"))
        if base is None:
            return _empty(400)
        directory = os.path.abspath(base)
        if "subfolder" in query:
            full = os.path.abspath(os.path.join(directory, query["subfolder"]))
            if os.path.commonpath((full, directory)) != directory:
                return _empty(403)
            directory = full
        filename = os.path.basename(filename)
        path = os.path.join(directory, filename)
        if not os.path.isfile(path):
            return _empty(404)
        disposition = {"Content-Disposition": f'filename="{filename}"'}
        if "preview" in query:
            return _preview_response(path, query["preview"], query.get("channel", ""), disposition)
        channel = query.get("channel") or "rgba"
        if channel in ("rgb", "a"):
            return _channel_response(path, channel, disposition)
        content_type = mimetypes.guess_type(filename)[0] or "application/octet-stream"
        if content_type in {
            "text/html",
            "text/html-sandboxed",
            "application/xhtml+xml",
            "text/javascript",
            "text/css",
        }:
            content_type = "application/octet-stream"
        return web.FileResponse(path, headers={**disposition, "Content-Type": content_type})


def server_features() -> dict[str, Any]:
    """The server's feature flags."""
    return {"supports_preview_metadata": True, "max_upload_size": MAX_UPLOAD_SIZE}


def rejection_body(prompt: Any) -> dict[str, Any]:
    """A realistic 400 body for the reject_prompts fault."""
    node_errors: dict[str, Any] = {}
    if isinstance(prompt, dict):
        outputs = [
            node_id
            for node_id, node in prompt.items()
            if isinstance(node, dict) and node.get("class_type") in ("SaveImage", "PreviewImage")
        ]
        for node_id, node in prompt.items():
            if isinstance(node, dict) and node.get("class_type") == "LoadImage":
                image = node.get("inputs", {}).get("image")
                node_errors[node_id] = {
                    "errors": [
                        {
                            "type": "custom_validation_failed",
                            "message": "Custom validation failed for node",
                            "details": f"image - Invalid image file: {image}",
                            "extra_info": {"input_name": "image"},
                        }
                    ],
                    "dependent_outputs": outputs,
                    "class_type": "LoadImage",
                }
                break
    error = {
        "type": "prompt_outputs_failed_validation",
        "message": "Prompt outputs failed validation",
        "details": "",
        "extra_info": {},
    }
    return {"error": error, "node_errors": node_errors}


def _sha256_file(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def _preview_response(path: str, preview: str, channel: str, headers: dict) -> web.Response:
    parts = preview.split(";")
    image_format = parts[0]
    if image_format not in ("webp", "jpeg") or "a" in channel:
        image_format = "webp"
    quality = int(parts[-1]) if parts[-1].isdigit() else 90
    with Image.open(path) as image:
        if image_format == "jpeg" or channel == "rgb":
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, quality=quality)
    return web.Response(
        body=buffer.getvalue(), content_type=f"image/{image_format}", headers=headers
    )


def _channel_response(path: str, channel: str, headers: dict) -> web.Response:
    with Image.open(path) as image:
        if channel == "rgb":
            result = image.convert("RGB")
        else:
            alpha = (
                image.getchannel("A")
                if "A" in image.getbands()
                else Image.new("L", image.size, 255)
            )
            result = Image.new("RGBA", image.size, (0, 0, 0, 0))
            result.putalpha(alpha)
        buffer = io.BytesIO()
        result.save(buffer, format="PNG")
    return web.Response(body=buffer.getvalue(), content_type="image/png", headers=headers)
