"""SaveImageWebsocket, the example node a real ComfyUI loads by default: a client that does what
ComfyUI's websockets_api_example_ws_images.py does gets every image as a PNG binary frame."""

from __future__ import annotations

import io
import json
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websocket
from PIL import Image

from comfyui_standin import StandIn

CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SAVE_NODE = "save_image_websocket_node"
PREVIEW_IMAGE, PREVIEW_IMAGE_WITH_METADATA, PNG = 1, 4, 2


@pytest.fixture
def server(tmp_path: Path) -> Iterator[StandIn]:
    """A stand-in with the checkpoint ComfyUI's example asks for."""
    standin = StandIn(root=tmp_path / "ws-images", checkpoints=(CHECKPOINT,)).start()
    try:
        yield standin
    finally:
        standin.stop()


def text_to_image(batch_size: int = 2, output: str = "SaveImageWebsocket") -> dict:
    """A small text-to-image graph (as in ComfyUI's example) ending in ``output``."""
    graph: dict = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT}},
        "5": {
            "class_type": "EmptyLatentImage",
            "inputs": {"width": 96, "height": 64, "batch_size": batch_size},
        },
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a portrait", "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "seed": 5,
                "steps": 3,
                "cfg": 8,
                "sampler_name": "euler",
                "scheduler": "normal",
                "denoise": 1,
                "model": ["4", 0],
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        SAVE_NODE: {"class_type": output, "inputs": {"images": ["8", 0]}},
    }
    if output == "SaveImage":
        graph[SAVE_NODE]["inputs"]["filename_prefix"] = "compare"
    return graph


class ExampleClient:
    """What ComfyUI's example does: a websocket under a client id, POST /api/prompt, then every
    message until ``executing`` with node null; binary frames kept per executing node."""

    def __init__(self, server: StandIn, *, preview_metadata: bool = False) -> None:
        self.url = server.url
        self.client_id = str(uuid.uuid4())
        self.ws = websocket.WebSocket()
        self.ws.connect(f"ws://127.0.0.1:{server.port}/ws?clientId={self.client_id}", timeout=10)
        if preview_metadata:
            flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            self.ws.send(json.dumps(flags))

    def close(self) -> None:
        self.ws.close()

    def run(self, prompt: dict) -> tuple[str, dict[str, list[bytes]], list[object]]:
        """Queue ``prompt``; its id, the binary frames per node, and every message in order."""
        answer = httpx.post(
            f"{self.url}/api/prompt",
            json={"prompt": prompt, "client_id": self.client_id},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        prompt_id = answer.json()["prompt_id"]
        frames: dict[str, list[bytes]] = {}
        messages: list[object] = []
        current = ""
        while True:
            out = self.ws.recv()  # bounded by the socket timeout
            if isinstance(out, str):
                message = json.loads(out)
                messages.append(message)
                data = message["data"]
                if message["type"] == "executing" and data.get("prompt_id") == prompt_id:
                    if data["node"] is None:
                        return prompt_id, frames, messages
                    current = data["node"]
            else:
                messages.append(out)
                frames.setdefault(current, []).append(out)


@pytest.fixture
def client(server: StandIn) -> Iterator[ExampleClient]:
    """The example's client, connected."""
    example = ExampleClient(server)
    try:
        yield example
    finally:
        example.close()


def test_each_image_arrives_as_a_png_frame(server, client):
    """Two images, two type-1 PNG frames from the node, each the full-size image."""
    prompt_id, frames, _ = client.run(text_to_image(batch_size=2))
    assert list(frames) == [SAVE_NODE]
    assert len(frames[SAVE_NODE]) == 2
    images = []
    for frame in frames[SAVE_NODE]:
        assert struct.unpack(">II", frame[:8]) == (PREVIEW_IMAGE, PNG)
        with Image.open(io.BytesIO(frame[8:])) as image:
            assert image.format == "PNG"
            images.append(image.convert("RGB"))
    assert [image.size for image in images] == [(96, 64), (96, 64)]
    # The same pixels SaveImage would have written.
    _, _, _ = client.run(text_to_image(batch_size=2, output="SaveImage"))
    saved = sorted(server.output_dir.glob("compare_*.png"))
    assert len(saved) == 2
    for path, image in zip(saved, images, strict=True):
        with Image.open(path) as written:
            assert written.convert("RGB").tobytes() == image.tobytes()
    history = httpx.get(f"{server.url}/history/{prompt_id}").json()[prompt_id]
    assert SAVE_NODE not in history["outputs"]
    assert history["status"]["status_str"] == "success"


def test_one_progress_per_image_and_no_executed(client):
    """The node says progress 0 of 2 and 1 of 2, each followed by its frame, and no executed."""
    _, _, messages = client.run(text_to_image(batch_size=2))
    start = messages.index(
        next(m for m in messages if isinstance(m, dict) and m["data"].get("node") == SAVE_NODE)
    )
    tail = [
        (m["type"], m["data"]["value"], m["data"]["max"])
        if isinstance(m, dict) and m["type"] == "progress"
        else "frame"
        if isinstance(m, bytes)
        else m["type"]
        for m in messages[start:]
        if not isinstance(m, dict) or m["type"] not in {"progress_state", "status"}
    ]
    assert tail == [
        "executing",
        ("progress", 0, 2),
        "frame",
        ("progress", 1, 2),
        "frame",
        "execution_success",
        "executing",
    ]
    executed = [m for m in messages if isinstance(m, dict) and m["type"] == "executed"]
    assert executed == []


def test_the_node_is_never_taken_from_the_cache(client):
    """The same prompt again: the rest comes from the cache, the images are sent again."""
    client.run(text_to_image(batch_size=1))
    _, frames, messages = client.run(text_to_image(batch_size=1))
    cached = next(m for m in messages if isinstance(m, dict) and m["type"] == "execution_cached")
    assert SAVE_NODE not in cached["data"]["nodes"]
    assert set(cached["data"]["nodes"]) == {"3", "4", "5", "6", "7", "8"}
    assert len(frames[SAVE_NODE]) == 1


def test_with_preview_metadata_the_frame_says_png(server):
    """A client that negotiated preview metadata gets type 4 with image/png before progress."""
    example = ExampleClient(server, preview_metadata=True)
    try:
        prompt_id, frames, messages = example.run(text_to_image(batch_size=1))
    finally:
        example.close()
    [frame] = frames[SAVE_NODE]
    kind, length = struct.unpack(">II", frame[:8])
    assert kind == PREVIEW_IMAGE_WITH_METADATA
    meta = json.loads(frame[8 : 8 + length])
    assert meta == {
        "node_id": SAVE_NODE,
        "prompt_id": prompt_id,
        "display_node_id": SAVE_NODE,
        "parent_node_id": None,
        "real_node_id": SAVE_NODE,
        "image_type": "image/png",
    }
    with Image.open(io.BytesIO(frame[8 + length :])) as image:
        assert (image.format, image.size) == ("PNG", (96, 64))
    after = messages[messages.index(frame) + 1]
    assert after["type"] == "progress" and after["data"]["node"] == SAVE_NODE


def test_object_info_entry(server):
    """GET /object_info/SaveImageWebsocket answers the entry of a real ComfyUI."""
    info = httpx.get(f"{server.url}/object_info/SaveImageWebsocket").json()
    assert info == {
        "SaveImageWebsocket": {
            "input": {"required": {"images": ["IMAGE"]}},
            "input_order": {"required": ["images"]},
            "output": [],
            "output_is_list": [],
            "output_name": [],
            "name": "SaveImageWebsocket",
            "display_name": "SaveImageWebsocket",
            "description": "",
            "python_module": "custom_nodes.websocket_image_save",
            "category": "image",
            "output_node": True,
        }
    }
