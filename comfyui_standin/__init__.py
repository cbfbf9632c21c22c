"""A stand-in ComfyUI 0.3.64 for development and tests: same HTTP/websocket protocol, no GPU.

It does not generate real avatars: its sampler is a deterministic Pillow stylisation of the
input image. Start it in-process with ``StandIn(...).start()`` or from a shell with
``python -m comfyui_standin --port 8188``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiohttp import web

from comfyui_standin.catalogue import CUSTOM_NODE_PACKS
from comfyui_standin.faults import Faults
from comfyui_standin.nodes import Dirs
from comfyui_standin.server import ComfyServer, Control, Recorder, build_app

__all__ = ["Faults", "StandIn"]

logger = logging.getLogger(__name__)

_LOOP_TIMEOUT = 10.0


class StandIn:
    """A stand-in ComfyUI server running in its own event loop in a daemon thread."""

    def __init__(
        self,
        *,
        root: Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        input_dir: Path | None = None,
        output_dir: Path | None = None,
        temp_dir: Path | None = None,
        checkpoints: Sequence[str] = ("dreamshaper_8.safetensors",),
        cache: bool = True,
        previews: bool = False,
        custom_nodes: Sequence[str] = (),
        faults: Faults | None = None,
    ) -> None:
        unknown = set(custom_nodes) - set(CUSTOM_NODE_PACKS)
        if unknown:
            raise ValueError(f"unknown custom node pack(s): {', '.join(sorted(unknown))}")
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="comfyui-standin-")) if root is None else root
        self.input_dir = Path(input_dir) if input_dir else self.root / "input"
        self.output_dir = Path(output_dir) if output_dir else self.root / "output"
        self.temp_dir = Path(temp_dir) if temp_dir else self.root / "temp"
        for directory in (self.input_dir, self.output_dir, self.temp_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.host = host
        self.port = port
        self.checkpoints = list(checkpoints)
        self.cache = cache
        self.previews = previews
        self.custom_nodes = list(custom_nodes)
        self.faults = faults if faults is not None else Faults()
        self._recorder = Recorder()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ComfyServer | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._reopen_handle: asyncio.TimerHandle | None = None
        self.faults.add_listener(self._on_fault_change)

    # -- properties -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8188``."""
        return f"http://{self.host}:{self.port}"

    @property
    def dirs(self) -> Dirs:
        """The input, output and temp directories."""
        return Dirs(self.input_dir, self.output_dir, self.temp_dir)

    @property
    def prompts(self) -> list[Any]:
        """Body of every POST /prompt received, in order."""
        return list(self._recorder.prompts)

    @property
    def interrupts(self) -> list[dict | None]:
        """Body of every POST /interrupt (None when body-less or not JSON)."""
        return list(self._recorder.interrupts)

    @property
    def queue_requests(self) -> list[Any]:
        """Body of every POST /queue."""
        return list(self._recorder.queue_requests)

    def request_count(self, route: str) -> int:
        """How many requests arrived for ``route``, e.g. ``"GET /queue"`` (``/api`` included)."""
        return self._recorder.request_counts[route]

    def requests_under(self, prefix: str) -> int:
        """How many requests arrived for routes starting ``prefix``, e.g. ``"GET /history/"``."""
        counts = dict(self._recorder.request_counts)
        return sum(count for route, count in counts.items() if route.startswith(prefix))

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> StandIn:
        """Start listening; returns once the port accepts connections."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._async_start())
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.run_until_complete(self._async_stop())
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._async_stop())
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="comfyui-standin", daemon=True)
        self._thread.start()
        if not ready.wait(_LOOP_TIMEOUT):
            raise TimeoutError("stand-in did not start in time")
        if failure:
            self._thread.join(_LOOP_TIMEOUT)
            self._thread = self._loop = None
            raise failure[0]
        logger.info("ComfyUI stand-in listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Close sockets, stop the worker and the loop, join the thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(_LOOP_TIMEOUT)
        self._thread = self._loop = None

    def close(self) -> None:
        """Stop, and delete the root directory when the stand-in created it."""
        self.stop()
        self.faults.remove_listener(self._on_fault_change)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def restart(self) -> None:
        """Like a ComfyUI process restart: forget queue, history and cache, close websockets."""
        self._call(self._require_server().restart())

    # -- faults ------------------------------------------------------------------------------------
    def set_faults(self, **changes: Any) -> None:
        """Set fault switches, e.g. ``set_faults(step_delay=0.05, hang=True)``."""
        self.faults.update(**changes)

    def clear_faults(self) -> None:
        """Turn every fault off."""
        self.faults.clear()

    # -- snapshots --------------------------------------------------------------------------------
    def queue_snapshot(self) -> dict[str, Any]:
        """Same as GET /queue."""
        return self._call(self._snapshot(lambda server: server.queue_json()))

    def history_snapshot(self) -> dict[str, Any]:
        """Same as GET /history."""
        return self._call(self._snapshot(lambda server: server.history_json()))

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Block until nothing is pending or running and every message is sent."""
        deadline = time.monotonic() + timeout
        while True:
            if self._call(self._snapshot(lambda server: server.is_idle())):
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(f"stand-in still busy after {timeout} s")
            time.sleep(0.005)

    # -- internals ---------------------------------------------------------------------------------
    def _require_server(self) -> ComfyServer:
        if self._server is None or self._loop is None:
            raise RuntimeError("stand-in is not running")
        return self._server

    def _call(self, coro: Any) -> Any:
        if self._loop is None:
            coro.close()
            raise RuntimeError("stand-in is not running")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_LOOP_TIMEOUT)

    async def _snapshot(self, read: Any) -> Any:
        return read(self._require_server())

    async def _async_start(self) -> None:
        self._server = ComfyServer(
            dirs=self.dirs,
            faults=self.faults,
            checkpoints=self.checkpoints,
            cache=self.cache,
            previews=self.previews,
            custom_nodes=self.custom_nodes,
            recorder=self._recorder,
        )
        control = Control(self.faults, self._recorder, self._restart_async, self._refuse_for)
        app = build_app(lambda: self._require_server(), control)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        self._server.start_tasks()
        if not self.faults.refuse_connections:
            await self._listen()

    async def _listen(self) -> None:
        assert self._runner is not None
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        self._site = site
        if self.port == 0:
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            self.port = sockets[0].getsockname()[1]

    async def _async_stop(self) -> None:
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
            self._reopen_handle = None
        # Stop accepting first, so a client reconnecting while websockets close finds the port
        # closed instead of getting a connection that the cleanup below would strand.
        if self._site is not None:
            await self._site.stop()
            self._site = None
        if self._server is not None:
            await self._server.stop_tasks()
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None
        self._site = None
        self._server = None

    async def _restart_async(self) -> None:
        await self._require_server().restart()

    async def _set_refusing(self, refuse: bool) -> None:
        if refuse:
            # Like a ComfyUI that went away: no new connections, websockets and HTTP
            # connections cut (a control request switching this on is answered first).
            if self._site is not None:
                await self._site.stop()
                self._site = None
            if self._server is not None:
                self._server.abort_websockets()
            server = self._runner.server if self._runner is not None else None
            for handler in list(server.connections) if server is not None else []:
                if handler in self._recorder.control_connections:
                    handler.close()
                else:
                    handler.force_close()
        elif self._site is None and self._runner is not None:
            await self._listen()

    def _refuse_for(self, seconds: float) -> None:
        """From the loop thread: refuse connections now and listen again after ``seconds``."""
        assert self._loop is not None
        self.faults.refuse_connections = True
        if self._reopen_handle is not None:
            self._reopen_handle.cancel()
        self._reopen_handle = self._loop.call_later(
            seconds, lambda: setattr(self.faults, "refuse_connections", False)
        )

    def _on_fault_change(self, name: str, value: Any) -> None:
        if name != "refuse_connections" or self._loop is None or self._runner is None:
            return
        loop = self._loop
        in_loop = threading.current_thread() is self._thread
        if in_loop:
            loop.create_task(self._set_refusing(bool(value)))
        else:
            asyncio.run_coroutine_threadsafe(self._set_refusing(bool(value)), loop).result(
                _LOOP_TIMEOUT
            )
