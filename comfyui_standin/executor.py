"""Runs one queued prompt the way ComfyUI's executor does: scheduling, cache, events, history."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from PIL import Image

from comfyui_standin.catalogue import OBJECT_INFO
from comfyui_standin.cost import count_pixels, node_seconds
from comfyui_standin.faults import Faults
from comfyui_standin.nodes import NODES, Dirs, NodeContext
from comfyui_standin.validation import full_type_name, is_link

logger = logging.getLogger(__name__)

#: events that reach only the submitter's socket (nobody when the prompt has no client_id)
TARGETED = {"execution_start", "execution_cached", "executing", "executed"}
TARGETED |= {"execution_success", "execution_error"}


class Interrupted(Exception):
    """Raised at an interrupt check point when an interrupt was requested."""


class Messenger(Protocol):
    """What the executor needs from the server to talk to websocket clients."""

    def send(self, event: str, data: dict[str, Any], sid: str | None) -> None:
        """Queue a JSON message for ``sid`` (None = every registered socket)."""

    def send_progress(
        self, data: dict[str, Any], preview: bytes | None, meta: dict, sid: str | None
    ) -> None:
        """Queue a ``progress`` message plus its binary preview frame, in the wire order."""

    def drop_websockets(self) -> None:
        """Cut every websocket connection."""

    def set_last_node(self, node_id: str | None) -> None:
        """Remember the node that is executing (for late-connecting sockets)."""


@dataclass
class QueueItem:
    """One accepted prompt: the 5 public fields plus the stripped sensitive extra_data."""

    number: int | float
    prompt_id: str
    prompt: dict[str, Any]
    extra_data: dict[str, Any]
    outputs: list[str]
    sensitive: dict[str, Any] = field(default_factory=dict)

    def public(self) -> list[Any]:
        """``[number, prompt_id, prompt, extra_data, outputs_to_execute]`` as in /queue."""
        return [self.number, self.prompt_id, self.prompt, self.extra_data, self.outputs]


def now_ms() -> int:
    """Milliseconds since the epoch, as ComfyUI stamps its messages."""
    return int(time.time() * 1000)


def _format_value(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    if isinstance(value, list) and value and isinstance(value[0], Image.Image):
        return f"<IMAGE batch of {len(value)}, {value[0].width}x{value[0].height}>"
    if isinstance(value, dict) and "samples" in value:
        return f"<LATENT batch of {len(value['samples'])}>"
    return f"<{type(value).__name__}>"


class Executor:
    """Executes prompts one at a time and keeps ComfyUI's "classic" cache between them."""

    def __init__(self, dirs: Dirs, faults: Faults, *, cache: bool, previews: bool) -> None:
        self.dirs = dirs
        self.faults = faults
        self.cache_enabled = cache
        self.previews = previews
        self.outputs_cache: dict[Any, tuple] = {}
        self.ui_cache: dict[Any, dict] = {}
        self.preview_prefixes: dict[str, str] = {}
        self.interrupt_requested = False

    def free_memory(self) -> None:
        """Forget every cached output (POST /free {"free_memory": true})."""
        self.outputs_cache.clear()
        self.ui_cache.clear()
        self.preview_prefixes.clear()

    # ----------------------------------------------------------------------------------------
    def _signatures(self, prompt: dict[str, Any]) -> dict[str, Any]:
        memo: dict[str, Any] = {}
        visiting: set[str] = set()

        def signature(node_id: str) -> Any:
            if node_id in memo:
                return memo[node_id]
            if node_id in visiting:
                raise RecursionError(f"dependency cycle at node {node_id}")
            visiting.add(node_id)
            node = prompt[node_id]
            node_def = NODES[node["class_type"]]
            inputs = node.get("inputs", {})
            changed = node_def.is_changed(self.dirs, inputs) if node_def.is_changed else None
            parts = []
            for name in sorted(inputs):
                value = inputs[name]
                if is_link(value) and value[0] in prompt:
                    parts.append((name, ("link", signature(value[0]), value[1])))
                else:
                    parts.append((name, json.dumps(value, sort_keys=True, default=str)))
            visiting.discard(node_id)
            memo[node_id] = (node["class_type"], changed, tuple(parts))
            return memo[node_id]

        result = {}
        for node_id in prompt:
            try:
                result[node_id] = signature(node_id)
            except Exception:
                result[node_id] = None
        return result

    # ----------------------------------------------------------------------------------------
    async def execute(self, item: QueueItem, messenger: Messenger) -> dict[str, Any]:
        """Run ``item`` and answer its history entry."""
        run = _Run(self, item, messenger)
        return await run.execute()

    async def checkpoint(self, node_id: str, messenger: Messenger) -> None:
        """An interrupt/hang check point (node start, sampler step)."""
        while self.faults.hang and not self.interrupt_requested:
            await asyncio.sleep(0.01)
        if self.interrupt_requested:
            self.interrupt_requested = False
            raise Interrupted(node_id)


class _Run:
    """State of one prompt execution."""

    def __init__(self, executor: Executor, item: QueueItem, messenger: Messenger) -> None:
        self.executor = executor
        self.item = item
        self.messenger = messenger
        self.prompt = item.prompt
        self.prompt_id = item.prompt_id
        self.client_id: str | None = item.extra_data.get("client_id")
        self.messages: list[list[Any]] = []
        self.node_states: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, tuple] = {}
        self.ui: dict[str, dict] = {}
        self.executed: list[str] = []
        self.signatures: dict[str, Any] = {}

    # -- messaging ---------------------------------------------------------------------------
    def send(self, event: str, data: dict[str, Any]) -> None:
        if event in TARGETED:
            if self.client_id is not None:
                self.messenger.send(event, data, self.client_id)
        else:
            self.messenger.send(event, data, self.client_id)
        if event == "executing":
            self.messenger.set_last_node(data["node"])

    def record(self, event: str, data: dict[str, Any]) -> None:
        self.messages.append([event, data])
        self.send(event, data)

    def send_executed(self, node_id: str, ui: Any) -> None:
        """The ``executed`` message of an output node (``ui`` is None for cached ones without)."""
        self.send(
            "executed",
            {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": self.prompt_id},
        )

    def progress_state(self, node_id: str, value: float, maximum: float, state: str) -> None:
        self.node_states[node_id] = {
            "value": value,
            "max": maximum,
            "state": state,
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }
        nodes = {key: dict(value) for key, value in self.node_states.items()}
        self.send("progress_state", {"prompt_id": self.prompt_id, "nodes": nodes})

    # -- scheduling ----------------------------------------------------------------------------
    def _plan(self, cached: Callable[[str], bool]) -> tuple[dict, dict, dict]:
        pending: dict[str, bool] = {}
        blocking: dict[str, dict[str, bool]] = {}
        block_count: dict[str, int] = {}
        links: list[tuple[str, str]] = []
        for output_id in self.item.outputs:
            stack = [output_id]
            while stack:
                node_id = stack.pop()
                if node_id in pending:
                    continue
                pending[node_id] = True
                blocking.setdefault(node_id, {})
                block_count.setdefault(node_id, 0)
                for value in self.prompt[node_id]["inputs"].values():
                    if is_link(value) and value[0] in self.prompt:
                        if not cached(value[0]):
                            stack.append(value[0])
                        links.append((value[0], node_id))
        for source, target in links:
            if cached(source) or source not in pending:
                continue
            if target not in blocking[source]:
                blocking[source][target] = True
                block_count[target] += 1
        return pending, blocking, block_count

    @staticmethod
    def _pick(ready: list[str], blocking: dict[str, dict], is_output: Callable) -> str:
        # Output nodes first, then nodes one or two links away from an output (UI-friendly).
        for node_id in ready:
            if is_output(node_id):
                return node_id
        for node_id in ready:
            if any(is_output(b) for b in blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in blocking[node_id]:
                if any(is_output(b) for b in blocking.get(blocked, {})):
                    return node_id
        return ready[0]

    # -- execution -------------------------------------------------------------------------------
    async def execute(self) -> dict[str, Any]:
        executor = self.executor
        executor.interrupt_requested = False
        signatures = self.signatures = executor._signatures(self.prompt)
        if executor.cache_enabled:
            live = set(signatures.values())
            for cache in (executor.outputs_cache, executor.ui_cache):
                for key in [key for key in cache if key not in live]:
                    del cache[key]
        else:
            executor.outputs_cache.clear()
            executor.ui_cache.clear()

        def cached(node_id: str) -> bool:
            return signatures.get(node_id) in executor.outputs_cache

        def is_output(node_id: str) -> bool:
            return NODES[self.prompt[node_id]["class_type"]].output_node

        self.record("execution_start", {"prompt_id": self.prompt_id, "timestamp": now_ms()})
        self.record(
            "execution_cached",
            {
                "nodes": [node_id for node_id in self.prompt if cached(node_id)],
                "prompt_id": self.prompt_id,
                "timestamp": now_ms(),
            },
        )
        pending, blocking, block_count = self._plan(cached)
        status, completed, final = "success", True, None
        current = None
        try:
            while pending:
                ready = [node_id for node_id in pending if block_count[node_id] == 0]
                if not ready:
                    raise RuntimeError("Dependency cycle detected")
                current = self._pick(ready, blocking, is_output)
                await self._execute_node(current, signatures.get(current), cached(current))
                del pending[current]
                for blocked in blocking[current]:
                    block_count[blocked] -= 1
                current = None
        except Interrupted:
            status, completed = "error", False
            final = [
                "execution_interrupted",
                {
                    "prompt_id": self.prompt_id,
                    "node_id": current,
                    "node_type": self.prompt[current]["class_type"] if current else None,
                    "executed": list(self.executed),
                    "timestamp": now_ms(),
                },
            ]
        except Exception as exc:
            status, completed = "error", False
            logger.info("prompt %s failed at node %s: %s", self.prompt_id, current, exc)
            final = ["execution_error", self._error_data(current, exc)]
        if final is None:
            final = ["execution_success", {"prompt_id": self.prompt_id, "timestamp": now_ms()}]
        self.messages.append(final)
        if final[0] == "execution_interrupted":
            self.messenger.send(final[0], final[1], self.client_id)
        else:
            self.send(final[0], final[1])
        return self._history(signatures, status, completed)

    def _error_data(self, node_id: str | None, exc: Exception) -> dict[str, Any]:
        node = self.prompt.get(node_id or "", {})
        inputs = getattr(exc, "_standin_inputs", {})
        return {
            "prompt_id": self.prompt_id,
            "node_id": node_id,
            "node_type": node.get("class_type"),
            "executed": list(self.executed),
            "exception_message": f"{exc}\n",
            "exception_type": full_type_name(type(exc)),
            "traceback": traceback.format_tb(sys.exc_info()[2]),
            "current_inputs": {name: [_format_value(value)] for name, value in inputs.items()},
            "current_outputs": list(self.prompt),
            "timestamp": now_ms(),
        }

    def _history(self, signatures: dict[str, Any], status: str, completed: bool) -> dict:
        executor = self.executor
        outputs: dict[str, Any] = {}
        meta: dict[str, Any] = {}
        for node_id in self.prompt:
            ui = self.ui.get(node_id)
            if ui is None and executor.cache_enabled:
                ui = executor.ui_cache.get(signatures.get(node_id))
            if ui is not None:
                outputs[node_id] = ui
                meta[node_id] = {
                    "node_id": node_id,
                    "display_node": node_id,
                    "parent_node": None,
                    "real_node_id": node_id,
                }
        return {
            "prompt": self.item.public(),
            "outputs": outputs,
            "status": {"status_str": status, "completed": completed, "messages": self.messages},
            "meta": meta,
        }

    def _input_value(self, value: list) -> Any:
        source, slot = value
        if source not in self.outputs:
            self.outputs[source] = self.executor.outputs_cache[self.signatures[source]]
        return self.outputs[source][slot]

    async def _execute_node(self, node_id: str, signature: Any, is_cached: bool) -> None:
        executor = self.executor
        node = self.prompt[node_id]
        class_type = node["class_type"]
        node_def = NODES[class_type]
        if is_cached:
            self.outputs[node_id] = executor.outputs_cache[signature]
            if node_def.output_node:
                self.send_executed(node_id, executor.ui_cache.get(signature))
            self.progress_state(node_id, 1, 1, "finished")
            self.executed.append(node_id)
            return
        self.progress_state(node_id, 0.0, 1.0, "running")
        self.send(
            "executing", {"node": node_id, "display_node": node_id, "prompt_id": self.prompt_id}
        )
        faults = executor.faults
        if faults.drop_websockets:
            faults.drop_websockets = False
            self.messenger.drop_websockets()
        await executor.checkpoint(node_id, self.messenger)

        declared = declared_inputs(class_type)
        kwargs: dict[str, Any] = {}
        for name, value in node["inputs"].items():
            if isinstance(value, list) and is_link(value):
                kwargs[name] = self._input_value(value)
            elif name in declared:
                kwargs[name] = value
        progress = {"value": 1.0, "max": 1.0}

        async def on_step(value: int, maximum: int, make_preview: Callable[[], Any]) -> None:
            delay = faults.step_delay
            await asyncio.sleep(delay if delay > 0 else 0)
            await executor.checkpoint(node_id, self.messenger)
            progress.update(value=value, max=maximum)
            self.progress_state(node_id, value, maximum, "running")
            preview = None
            if executor.previews:
                preview = _jpeg(make_preview())
            meta = {**self._preview_meta(node_id), "image_type": "image/jpeg"}
            data = {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id}
            self.messenger.send_progress(data, preview, meta, self.client_id)

        async def send_image(value: int, maximum: int, image: Image.Image) -> None:
            # As ComfyUI's progress hook: an interrupt check, then progress and the image.
            await executor.checkpoint(node_id, self.messenger)
            progress.update(value=value, max=maximum)
            self.progress_state(node_id, value, maximum, "running")
            png = await asyncio.to_thread(_png, image)
            meta = {**self._preview_meta(node_id), "image_type": "image/png"}
            data = {"value": value, "max": maximum, "prompt_id": self.prompt_id, "node": node_id}
            self.messenger.send_progress(data, png, meta, self.client_id)

        ctx = NodeContext(
            node_id=node_id,
            prompt=self.prompt,
            extra_pnginfo=self.item.extra_data.get("extra_pnginfo"),
            dirs=executor.dirs,
            preview_prefixes=executor.preview_prefixes,
            on_step=on_step,
            send_image=send_image,
        )
        started = time.monotonic()
        try:
            if faults.fail_at_node is not None and faults.fail_at_node in (node_id, class_type):
                raise RuntimeError(
                    f"Stand-in fault: failure injected at node {node_id} ({class_type})"
                )
            if node_def.is_async:
                result = await node_def.function(ctx, **kwargs)
            else:
                # ComfyUI executes in its own thread: big Pillow work must not stall the server.
                result = await asyncio.to_thread(node_def.function, ctx, **kwargs)
        except Interrupted:
            raise
        except Exception as exc:
            exc._standin_inputs = {  # type: ignore[attr-defined]
                name: value for name, value in kwargs.items()
            }
            raise
        if node_def.output_node:
            outputs: tuple = ()
            ui = result
            produced: Any = kwargs.get("images")
        else:
            outputs, ui = result, None
            produced = outputs
        await self._take_cost(started, count_pixels(produced))
        if ui is not None:
            self.ui[node_id] = ui
            self.send_executed(node_id, ui)
        self.progress_state(node_id, progress["max"], progress["max"], "finished")
        self.outputs[node_id] = outputs
        if executor.cache_enabled and signature is not None:
            executor.outputs_cache[signature] = outputs
            if ui is not None:
                executor.ui_cache[signature] = ui
        self.executed.append(node_id)

    def _preview_meta(self, node_id: str) -> dict[str, Any]:
        """The metadata of a binary image frame (format 4), but its image_type."""
        return {
            "node_id": node_id,
            "prompt_id": self.prompt_id,
            "display_node_id": node_id,
            "parent_node_id": None,
            "real_node_id": node_id,
        }

    async def _take_cost(self, started: float, pixels: int) -> None:
        """Hold the node until its cost (node_cost + pixel_cost per megapixel) has passed.

        Like a real node's work, this is not cut short by an interrupt: ComfyUI notices one at
        the next node start or sampler step, so the prompt stays running in /queue meanwhile.
        """
        remaining = started + node_seconds(self.executor.faults, pixels) - time.monotonic()
        if remaining > 0:
            await asyncio.sleep(remaining)


def declared_inputs(class_type: str) -> set[str]:
    """Names of the inputs a class declares (required + optional)."""
    spec = OBJECT_INFO[class_type]["input"]
    return set(spec.get("required", {})) | set(spec.get("optional", {}))


def _png(image: Image.Image) -> bytes:
    """A whole image as ComfyUI sends it on the websocket (PNG, compress level 1)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()
