"""comfyui_client on its own, without the service: one avatar prompt through the stand-in."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

import avatar_service.comfyui
import comfyui_client
from comfyui_client import (
    ComfyUIClient,
    ExecutionEnded,
    ExecutionStarted,
    NodeStarted,
    PromptEvent,
)
from comfyui_standin import StandIn
from tests.conftest import REPO_ROOT, make_photo


def avatar_graph(image: str, *, seed: int, size: int) -> dict[str, Any]:
    """The shipped avatar graph with its photo, seed and size set, as bench/latency.py does."""
    graph = json.loads((REPO_ROOT / "workflows" / "avatar.json").read_text(encoding="utf-8"))
    graph = graph.get("prompt", graph)
    for node in graph.values():
        inputs = node["inputs"]
        if node["class_type"] == "LoadImage":
            inputs["image"] = image
        elif node["class_type"] == "KSampler":
            inputs["seed"] = seed
        elif node["class_type"] == "ImageScale":
            inputs["width"] = inputs["height"] = size
    return graph


def test_client_alone_queues_follows_and_fetches_an_avatar(standin: StandIn) -> None:
    """Upload, watch, queue, follow the events to ExecutionEnded, read history, view the PNG."""
    client = ComfyUIClient(standin.url, timeout=httpx.Timeout(30, connect=5))
    client.start()
    try:
        assert client.wait_connected(10)
        name = client.upload_image(make_photo((200, 90, 40)), "standalone.png")
        prompt_id = str(uuid.uuid4())
        watch = client.watch(prompt_id)
        graph = avatar_graph(name, seed=7, size=256)
        assert client.queue_prompt(graph, prompt_id=prompt_id) == {}
        events: list[PromptEvent] = []
        while not isinstance(event := watch.events.get(timeout=30), ExecutionEnded):
            events.append(event)
        client.unwatch(prompt_id)
        assert ExecutionStarted() in events
        assert NodeStarted("4") in events  # the KSampler

        entry = client.history(prompt_id)
        assert entry is not None and entry.succeeded and entry.failure is None
        (image,) = entry.images(["7"])
        data, content_type = client.view(image)
        assert content_type == "image/png"
        with Image.open(io.BytesIO(data)) as avatar:
            assert (avatar.format, avatar.size) == ("PNG", (256, 256))
    finally:
        client.close()


def test_module_reexports_the_package_and_documents_itself() -> None:
    """comfyui_client holds no code of its own: each name is the package's, and it shows usage."""
    for name in comfyui_client.__all__:
        assert getattr(comfyui_client, name) is getattr(avatar_service.comfyui, name), name
    assert "client.watch(" in (comfyui_client.__doc__ or "")
    assert Path(comfyui_client.__file__).parent == REPO_ROOT
