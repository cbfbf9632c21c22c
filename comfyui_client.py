"""ComfyUI client: the public face of ``avatar_service.comfyui``, usable on its own.

One ``ComfyUIClient`` per ComfyUI server: HTTP calls with explicit timeouts, and one websocket
whose reader thread turns ComfyUI's messages into typed events routed to the watch of their
prompt. Nothing here is a copy: every name comes from ``avatar_service.comfyui``. For example::

    client = ComfyUIClient("http://127.0.0.1:8188", timeout=httpx.Timeout(30, connect=5))
    client.start()  # the websocket reader thread: it connects, and reconnects, by itself
    client.wait_connected(10)
    graph["25"]["inputs"]["image"] = client.upload_image(png_bytes, "me.png")
    watch = client.watch("avatar-1")  # before queueing, so that no event is missed
    client.queue_prompt(graph, prompt_id="avatar-1")  # PromptRejected if ComfyUI refuses it
    while not isinstance(watch.events.get(timeout=120), ExecutionEnded | ExecutionFailed):
        pass  # ExecutionStarted, NodeStarted, Progress, PreviewReady (see watch.preview)...
    entry = client.history("avatar-1")  # how it ended (succeeded, failure) and its outputs
    png, content_type = client.view(entry.images(["7"])[0])
    client.close()

Catch ``ComfyUIError`` for everything, or one of ``ComfyUIUnavailable`` (refused, reset, timed
out), ``ComfyUIProtocolError`` (an unexpected answer) and ``PromptRejected`` (validation failed:
ComfyUI's ``error`` and ``node_errors`` kept).
"""

from __future__ import annotations

from avatar_service.comfyui import (
    ComfyUIClient,
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    Disconnected,
    ExecutionEnded,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionStarted,
    HistoryEntry,
    NodeStarted,
    OutputImage,
    Preview,
    PreviewReady,
    Progress,
    PromptEvent,
    PromptRejected,
    PromptWatch,
    QueueChanged,
    Reconnected,
)

__all__ = [
    "ComfyUIClient",
    "ComfyUIError",
    "ComfyUIProtocolError",
    "ComfyUIUnavailable",
    "Disconnected",
    "ExecutionEnded",
    "ExecutionFailed",
    "ExecutionInterrupted",
    "ExecutionStarted",
    "HistoryEntry",
    "NodeStarted",
    "OutputImage",
    "Preview",
    "PreviewReady",
    "Progress",
    "PromptEvent",
    "PromptRejected",
    "PromptWatch",
    "QueueChanged",
    "Reconnected",
]
