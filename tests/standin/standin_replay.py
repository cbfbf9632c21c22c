"""Replays recorded ComfyUI transcripts against the stand-in and compares what comes back.

Volatile values (ids, timestamps, queue numbers, random and counter parts of file names,
machine paths, tracebacks) are normalised on both sides; everything else must be equal, so
the recordings stay the source of truth.
"""

from __future__ import annotations

import ast
import copy
import io
import json
import re
import threading
import time
from typing import Any

import httpx
import websocket
from PIL import Image

from comfyui_standin import StandIn

VOLATILE_KEYS = {"prompt_id", "timestamp", "sid", "client_id"}
#: machine facts of /system_stats
VOLATILE_KEYS |= {"argv", "python_version", "pytorch_version", "ram_total", "ram_free"}
VOLATILE_KEYS |= {"vram_total", "vram_free", "torch_vram_total", "torch_vram_free"}
SHAPE_ONLY_KEYS = {"exception_message"}


def synthetic_photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A deterministic, photo-like RGB test image (gradients plus a face-ish disc)."""
    image = Image.new("RGB", (width, height))
    pixels = image.load()
    for y in range(height):
        for x in range(width):
            pixels[x, y] = (
                (x * 255 // max(1, width - 1) + seed * 40) % 256,
                (y * 255 // max(1, height - 1) + seed * 90) % 256,
                ((x + y) * 128 // max(1, width + height) + seed * 20) % 256,
            )
    cx, cy, r = width // 2, height // 2, min(width, height) // 4
    for y in range(max(0, cy - r), min(height, cy + r)):
        for x in range(max(0, cx - r), min(width, cx + r)):
            if (x - cx) ** 2 + (y - cy) ** 2 <= r * r:
                pixels[x, y] = (230, 190 - seed * 30 % 128, 160)
    return image


def png_bytes(image: Image.Image) -> bytes:
    """Encode as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def content_for(field: dict[str, Any]) -> bytes:
    """Bytes for a recorded multipart file field (the recording only describes them)."""
    description = field.get("content", "")
    match = re.fullmatch(r"PNG (\d+)x(\d+) RGB", description)
    if match:
        # Same recorded size -> same bytes, different size -> different bytes.
        width, height = int(match.group(1)), int(match.group(2))
        return png_bytes(synthetic_photo(width, height, seed=field.get("size", 0) % 7))
    if description.startswith("not an image: "):
        return ast.literal_eval(description[len("not an image: ") :])
    if description.startswith("empty"):
        return b""
    raise AssertionError(f"cannot rebuild multipart content {description!r}")


def normalise(value: Any, key: str | None = None) -> Any:
    """Replace volatile values by placeholders, keep everything else."""
    if key in VOLATILE_KEYS and value is not None:
        return f"<{key}>"
    if key == "traceback" and isinstance(value, list):
        assert value and all(isinstance(line, str) for line in value)
        return "<traceback>"
    if key in SHAPE_ONLY_KEYS:
        return shape(value)
    if key == "number" and isinstance(value, (int, float)):
        return "<number>"
    if key == "current_outputs" and isinstance(value, list):
        return sorted(value)
    if key == "errors" and isinstance(value, list):
        # ComfyUI iterates a set of input names: the order of a node's errors is not stable.
        return sorted((normalise(item) for item in value), key=json.dumps)
    if key == "filename" and isinstance(value, str):
        return normalise_filename(value)
    if key == "details" and isinstance(value, str):
        return re.sub(r"Invalid image file: .*", "Invalid image file: <name>", value)
    if isinstance(value, dict):
        return {k: normalise(v, k) for k, v in value.items()}
    if isinstance(value, list):
        if key == "prompt" and len(value) == 5 and isinstance(value[2], dict):
            _number, _, prompt, extra, outputs = value
            return ["<number>", "<prompt_id>", normalise(prompt), normalise(extra), outputs]
        return [normalise(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def normalise_filename(name: str) -> str:
    """Hide PreviewImage's random letters and the file counter."""
    name = re.sub(r"ComfyUI_temp_[a-z]{5}_", "ComfyUI_temp_xxxxx_", name)
    return re.sub(r"_\d{5}_\.png$", "_NNNNN_.png", name)


def shape(value: Any) -> Any:
    """Structure of a value: dict keys and element shapes, scalar types."""
    if isinstance(value, dict):
        return {k: shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [shape(item) for item in value]
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if value is None:
        return None
    return type(value).__name__


def normalise_history_keys(body: Any) -> Any:
    """History bodies are keyed by prompt id."""
    if isinstance(body, dict) and all(isinstance(v, dict) and "status" in v for v in body.values()):
        return [normalise(v) for v in body.values()]
    return normalise(body)


class Socket:
    """A websocket-client connection that collects every frame in a background thread."""

    def __init__(self, url: str, client_id: str | None) -> None:
        query = f"?clientId={client_id}" if client_id else ""
        self.ws = websocket.create_connection(url.replace("http", "ws", 1) + "/ws" + query)
        self.frames: list[Any] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                opcode, data = self.ws.recv_data()
            except Exception:
                return
            if opcode == websocket.ABNF.OPCODE_TEXT:
                frame: Any = json.loads(data.decode("utf-8"))
            elif opcode == websocket.ABNF.OPCODE_BINARY:
                frame = bytes(data)
            else:
                return
            with self._lock:
                self.frames.append(frame)

    def messages(self) -> list[dict[str, Any]]:
        """The JSON frames received so far."""
        with self._lock:
            return [frame for frame in self.frames if isinstance(frame, dict)]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> dict[str, Any]:
        """Poll (bounded) until a JSON frame matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for message in self.messages():
                if predicate(message):
                    return message
            time.sleep(0.005)
        raise TimeoutError("expected websocket message did not arrive")

    def wait_done(self, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """Wait for ``executing {node: null, prompt_id}``."""
        return self.wait_for(
            lambda m: (
                m["type"] == "executing"
                and m["data"].get("node") is None
                and m["data"].get("prompt_id") == prompt_id
            ),
            timeout,
        )

    def close(self) -> None:
        """Close the connection (even a broken one) and join the reader."""
        try:
            self.ws.close(timeout=1)
        except Exception:
            pass
        finally:
            self.ws.shutdown()
        self._thread.join(5)


def recorded_ws_messages(recording: dict, socket: str | None = None) -> list[dict]:
    """The JSON frames of a recording (optionally of one labelled socket)."""
    return [
        entry["text"]
        for entry in recording["ws"]
        if "text" in entry and (socket is None or entry.get("socket") == socket)
    ]


def message_outline(messages: list[dict]) -> list[Any]:
    """Normalised (type, data) pairs; progress_state keeps node ids, states and values."""
    out = []
    for message in messages:
        data = message["data"]
        if message["type"] == "progress_state":
            data = {k: (v["value"], v["max"], v["state"]) for k, v in data["nodes"].items()}
            out.append(["progress_state", normalise(data)])
        else:
            out.append([message["type"], normalise(data)])
    return out


def first_prompt_step(recording: dict) -> dict:
    """The first POST /prompt request body of a recording."""
    for step in recording["steps"]:
        request = step.get("request", {})
        if request.get("method") == "POST" and request.get("path") == "/prompt":
            return request["json"]
    raise AssertionError("recording has no POST /prompt")


def warm_up(standin: StandIn, recording: dict, photo: bytes) -> None:
    """Bring the cache into the state the recording started in (from its first cached list)."""
    cached = next(
        (
            m["data"]["nodes"]
            for m in recorded_ws_messages(recording)
            if m["type"] == "execution_cached"
        ),
        [],
    )
    if not cached:
        return
    body = copy.deepcopy(first_prompt_step(recording))
    prompt = body["prompt"]
    if "4" in prompt and "4" not in cached:
        prompt["4"]["inputs"]["seed"] += 1
    if "25" in prompt and "25" not in cached:
        httpx.post(
            standin.url + "/upload/image",
            files={"image": ("warmup.png", png_bytes(synthetic_photo(64, 64, seed=5)))},
        ).raise_for_status()
        prompt["25"]["inputs"]["image"] = "warmup.png"
    for key in [key for key in prompt if key not in cached and key not in ("4", "25")]:
        if prompt[key]["class_type"] == "SaveImage":
            del prompt[key]
    response = httpx.post(standin.url + "/prompt", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    standin.wait_idle()


class Replayer:
    """Sends a recording's HTTP steps to the stand-in and collects pairs to compare."""

    def __init__(self, standin: StandIn, client: httpx.Client) -> None:
        self.standin = standin
        self.client = client
        self.ids: dict[str, str] = {}
        self.filenames: dict[str, str] = {}

    def _map(self, text: str) -> str:
        for recorded, ours in {**self.ids, **self.filenames}.items():
            text = text.replace(recorded, ours)
        return text

    def send(self, request: dict[str, Any]) -> httpx.Response:
        """Rebuild and send one recorded request."""
        path = self._map(request["path"])
        params = {k: self._map(v) for k, v in (request.get("query") or {}).items()}
        method = request["method"]
        if "multipart" in request:
            files, data = [], {}
            for field in request["multipart"]:
                if "filename" in field:
                    files.append(
                        (
                            field["name"],
                            (field["filename"], content_for(field), field["content_type"]),
                        )
                    )
                else:
                    data[field["name"]] = field["value"]
            return self.client.request(method, path, params=params, files=files, data=data)
        if "raw_body" in request:
            headers = {"Content-Type": request.get("content_type", "application/octet-stream")}
            return self.client.request(
                method, path, params=params, content=request["raw_body"], headers=headers
            )
        if "json" in request:
            body = json.loads(self._map(json.dumps(request["json"])))
            return self.client.request(method, path, params=params, json=body)
        return self.client.request(method, path, params=params)

    def learn(self, recorded: Any, ours: Any) -> None:
        """Pair recorded ids / file names with ours by walking both bodies in parallel."""
        if isinstance(recorded, dict) and isinstance(ours, dict):
            for key, value in recorded.items():
                if key == "prompt_id" and isinstance(value, str) and isinstance(ours.get(key), str):
                    self.ids.setdefault(value, ours[key])
                elif (
                    key == "filename" and isinstance(value, str) and isinstance(ours.get(key), str)
                ):
                    self.filenames.setdefault(value, ours[key])
                elif key in ours:
                    self.learn(value, ours[key])
            if len(recorded) == 1 and len(ours) == 1:
                (rk, rv), (ok, ov) = next(iter(recorded.items())), next(iter(ours.items()))
                if isinstance(rv, dict) and "status" in rv:
                    self.ids.setdefault(rk, ok)
                    self.learn(rv, ov)
        elif isinstance(recorded, list) and isinstance(ours, list):
            for r_item, o_item in zip(recorded, ours, strict=False):
                self.learn(r_item, o_item)


def compare_response(recorded: dict[str, Any], ours: httpx.Response, label: str) -> None:
    """Status, content type, and body (normalised JSON, text, empty or image facts)."""
    assert ours.status_code == recorded["status"], (label, ours.status_code, ours.text[:300])
    headers = recorded.get("headers", {})
    if "content-type" in headers:
        assert ours.headers.get("content-type") == headers["content-type"], label
    if "content-disposition" in headers:
        assert normalise_filename(ours.headers["content-disposition"].strip('"')) == (
            normalise_filename(headers["content-disposition"].strip('"'))
        ), label
    if recorded.get("body_empty"):
        assert ours.content == b"", label
    if "text" in recorded:
        assert ours.text == recorded["text"], label
    if "json" in recorded:
        assert normalise_history_keys(ours.json()) == normalise_history_keys(recorded["json"]), (
            label
        )
    if "image" in recorded:
        facts = recorded["image"]
        with Image.open(io.BytesIO(ours.content)) as image:
            assert (image.format, image.width, image.height, image.mode) == (
                facts["format"],
                facts["width"],
                facts["height"],
                facts["mode"],
            ), label
            chunks = set(getattr(image, "text", {}) or {})
        assert chunks == set(facts.get("png_text_chunks", {})), label
