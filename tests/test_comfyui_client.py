"""ComfyUIClient against a tiny websocket server sending odd frames: the reader keeps going."""

from __future__ import annotations

import asyncio
import json
import struct
import threading
from collections.abc import Iterator

import httpx
import pytest
from aiohttp import web

from avatar_service.comfyui import ComfyUIClient, ExecutionEnded

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


@pytest.fixture
def odd_server() -> Iterator[str]:
    """A websocket server that sends ODD_FRAMES, then a real event for prompt 'p1'."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    state: dict = {}

    async def ws_handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the client's feature_flags frame
        for frame in ODD_FRAMES:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        await ws.send_str(
            json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p1"}})
        )
        async for _ in ws:
            pass
        return ws

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/ws", ws_handler)
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
    yield f"http://127.0.0.1:{state['port']}"
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def test_reader_survives_odd_frames(odd_server: str) -> None:
    """Unreadable JSON, non-object data and bad binary frames are skipped, not fatal."""
    client = ComfyUIClient(odd_server, timeout=httpx.Timeout(5, connect=2))
    watch = client.watch("p1")
    client.start()
    try:
        assert watch.events.get(timeout=5) == ExecutionEnded()
        assert client.connected
    finally:
        client.close()
