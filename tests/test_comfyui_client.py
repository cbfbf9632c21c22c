"""ComfyUIClient against a tiny websocket server sending odd frames: the reader keeps going."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from aiohttp import WSMsgType, web

from avatar_service.comfyui import (
    ComfyUIClient,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    Disconnected,
    ExecutionEnded,
    OutputImage,
    Progress,
    PromptWatch,
    Reconnected,
)

ODD_FRAMES: list[str | bytes] = [
    "not json",
    json.dumps(["a", "list"]),
    json.dumps({"type": "executing", "data": ["not", "a", "dict"]}),
    json.dumps({"type": "progress"}),
    json.dumps({"no": "type"}),
    b"\x00\x00",
    struct.pack(">II", 4, 5) + b"[1,2]",  # preview metadata that is not an object
    struct.pack(">II", 9, 0),  # unknown binary event
]

# A text frame that is not UTF-8 (its bytes are sent as they are).
NOT_UTF8 = b'{"type": "status", "data": "\xff\xfe"}'


@contextmanager
def serve(app: web.Application) -> Iterator[str]:
    """``app`` served on a free port of 127.0.0.1 from a thread of its own; its base URL."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def start() -> None:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        state["runner"] = runner
        state["port"] = site._server.sockets[0].getsockname()[1]

    def run() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(state["runner"].cleanup())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    ready.wait(5)
    try:
        yield f"http://127.0.0.1:{state['port']}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@contextmanager
def websocket_server(send: Callable[[web.WebSocketResponse], Awaitable[None]]) -> Iterator[str]:
    """A websocket server on a free port whose handler reads the client's feature_flags frame,
    then runs ``send``; its base URL."""

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the client's feature_flags frame
        await send(ws)
        async for _ in ws:
            pass
        return ws

    app = web.Application()
    app.router.add_get("/ws", ws_handler)
    with serve(app) as url:
        yield url


@contextmanager
def following(url: str, **options: Any) -> Iterator[tuple[ComfyUIClient, PromptWatch]]:
    """A started client of ``url`` and its watch of prompt 'p1' (closed after the block)."""
    client = ComfyUIClient(url, timeout=httpx.Timeout(5, connect=2), **options)
    watch = client.watch("p1")
    client.start()
    try:
        yield client, watch
    finally:
        client.close()


@pytest.fixture
def odd_server() -> Iterator[str]:
    """A websocket server that sends ODD_FRAMES, then a real event for prompt 'p1'."""

    async def send(ws: web.WebSocketResponse) -> None:
        for frame in ODD_FRAMES:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        await ws.send_frame(NOT_UTF8, WSMsgType.TEXT)
        await ws.send_str(
            json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}})
        )

    with websocket_server(send) as url:
        yield url


def test_reader_survives_odd_frames(odd_server: str) -> None:
    """Unreadable JSON, non-object data, text that is not UTF-8 and bad binary frames are
    skipped, not fatal."""
    with following(odd_server) as (client, watch):
        assert watch.events.get(timeout=5) == ExecutionEnded()
        assert client.connected


BURST = 400  # progress messages sent back to back, so that many share one read


@pytest.fixture
def burst_server() -> Iterator[str]:
    """A websocket server that sends BURST progress messages for prompt 'p1' at once, with a
    text frame of over 64 KiB (an 8-byte length) in the middle, then the prompt's end."""

    async def send(ws: web.WebSocketResponse) -> None:
        for value in range(1, BURST + 1):
            data = {"node": "3", "value": value, "max": BURST, "prompt_id": "p1"}
            await ws.send_str(json.dumps({"type": "progress", "data": data}))
            if value == BURST // 2:
                big = {"node": "9", "output": {"text": ["x" * 70_000]}, "prompt_id": "p1"}
                await ws.send_str(json.dumps({"type": "executed", "data": big}))
        await ws.send_str(
            json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}})
        )

    with websocket_server(send) as url:
        yield url


def test_messages_arriving_together_are_each_read_in_order(burst_server: str) -> None:
    """Messages that arrive in one burst (several per read, one larger than a read) each
    reach the prompt's watch, in order, none lost or merged."""
    with following(burst_server) as (client, watch):
        events = [watch.events.get(timeout=5) for _ in range(BURST + 1)]
        assert events == [Progress("3", value, BURST) for value in range(1, BURST + 1)] + [
            ExecutionEnded()
        ]
        assert client.messages_received == BURST + 2


@pytest.fixture
def odd_http_server() -> Iterator[str]:
    """ComfyUI's routes under a path prefix (as behind a proxy): /system_stats answers,
    /queue takes 3 s, /history answers 500 with a body and /view 404."""

    async def stats(request: web.Request) -> web.Response:
        return web.json_response({"system": {}, "devices": []})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.json_response({})

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="Traceback: something broke")

    async def missing(request: web.Request) -> web.Response:
        asked = dict(request.query) == {"filename": "a b.png", "subfolder": "sub", "type": "output"}
        return web.Response(status=404 if asked else 400)  # 404 only for the right query

    app = web.Application()
    app.router.add_get("/comfy/system_stats", stats)
    app.router.add_get("/comfy/queue", slow)
    app.router.add_get("/comfy/history/{prompt_id}", broken)
    app.router.add_get("/comfy/view", missing)
    with serve(app) as url:
        yield url + "/comfy"


def test_http_answers_and_failures_map_to_the_error_tree(odd_http_server: str) -> None:
    """Calls go under the base URL's path; a slow answer is ComfyUIUnavailable(timed_out), a
    5xx and an unexpected status are ComfyUIProtocolError with the status and the body's start."""
    client = ComfyUIClient(odd_http_server, timeout=httpx.Timeout(0.5, connect=2))
    try:
        assert client.system_stats() == {"system": {}, "devices": []}
        with pytest.raises(ComfyUIUnavailable) as slow:
            client.queue()
        assert slow.value.timed_out
        assert "did not answer GET /queue in time" in slow.value.message
        with pytest.raises(ComfyUIProtocolError) as broken:
            client.history("p1")
        assert broken.value.status == 500
        assert "Traceback: something broke" in broken.value.message
        with pytest.raises(ComfyUIProtocolError) as missing:
            client.view(OutputImage("a b.png", "sub", "output"))
        assert missing.value.status == 404
        assert missing.value.message == "/view of 'a b.png' answered 404"
    finally:
        client.close()


def test_a_refused_connection_is_unavailable_not_a_timeout() -> None:
    """Nothing listening: ComfyUIUnavailable, not timed out (the call may be retried at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the call: nothing listens there
    client = ComfyUIClient(f"http://127.0.0.1:{port}", timeout=httpx.Timeout(5, connect=2))
    try:
        with pytest.raises(ComfyUIUnavailable) as refused:
            client.system_stats()
        assert not refused.value.timed_out
        assert f"cannot reach ComfyUI at http://127.0.0.1:{port}" in refused.value.message
    finally:
        client.close()


CONNECTIONS = web.AppKey("connections", list)


def quiet_server(*, answer_pings: bool) -> web.Application:
    """A websocket server that says nothing for 1 s after the client's feature_flags frame,
    then sends the end of prompt 'p1'; ``app[CONNECTIONS]`` lists the sockets opened."""

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        request.app[CONNECTIONS].append(request.remote)
        ws = web.WebSocketResponse(autoping=answer_pings)
        await ws.prepare(request)
        await ws.receive()  # the client's feature_flags frame

        async def later() -> None:
            await asyncio.sleep(1.0)
            end = {"type": "executing", "data": {"node": None, "prompt_id": "p1"}}
            await ws.send_str(json.dumps(end))

        sending = asyncio.ensure_future(later())
        async for _ in ws:  # reading, as ComfyUI does: pings are answered here (autoping)
            pass
        sending.cancel()
        return ws

    app = web.Application()
    app[CONNECTIONS] = []
    app.router.add_get("/ws", ws_handler)
    return app


def test_a_quiet_socket_is_pinged_and_kept() -> None:
    """A server silent for several ping intervals but answering pings keeps its one socket,
    and what it sends after is read."""
    app = quiet_server(answer_pings=True)
    with serve(app) as url, following(url, ping_interval=0.2) as (client, watch):
        assert watch.events.get(timeout=5) == ExecutionEnded()
        assert client.connected
        assert len(app[CONNECTIONS]) == 1


def test_a_socket_that_answers_no_ping_is_opened_again() -> None:
    """A socket whose server answers no ping is given up after one more interval and a new
    one is opened (the watch hears of the reconnection)."""
    app = quiet_server(answer_pings=False)
    with serve(app) as url, following(url, ping_interval=0.2) as (_client, watch):
        assert watch.events.get(timeout=5) == Disconnected()
        assert watch.events.get(timeout=5) == Reconnected()
        assert len(app[CONNECTIONS]) == 2
