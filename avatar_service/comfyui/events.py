"""ComfyUI's websocket messages, read into typed events of one prompt and live previews.

Text messages are JSON ``{"type": ..., "data": {...}}``; ``read_message`` checks that shape and
``typed_event`` turns the ones about a prompt into ``ExecutionStarted``, ``NodeStarted``,
``Progress``, ``ExecutionEnded``, ``ExecutionFailed`` or ``ExecutionInterrupted``. Binary messages
start with a big-endian uint32 event type; ``read_preview`` reads the live preview images.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Binary websocket frames: a big-endian uint32 event type first.
PREVIEW_IMAGE = 1
PREVIEW_IMAGE_WITH_METADATA = 4
_PREVIEW_FORMATS = {1: "image/jpeg", 2: "image/png"}


@dataclass(frozen=True)
class ExecutionStarted:
    """ComfyUI started running the prompt."""


@dataclass(frozen=True)
class NodeStarted:
    """A node of the prompt started."""

    node: str


@dataclass(frozen=True)
class Progress:
    """A step of a node that reports progress (the sampler)."""

    node: str
    value: Any
    max: Any


@dataclass(frozen=True)
class ExecutionEnded:
    """``executing`` with ``node: null``: the prompt ended (its history is written just before)."""


@dataclass(frozen=True)
class ExecutionFailed:
    """``execution_error``: a node raised."""

    node_id: Any = None
    node_type: Any = None
    exception_type: Any = None
    exception_message: str = ""

    @classmethod
    def from_message(cls, data: Mapping[str, Any]) -> ExecutionFailed:
        """Read ComfyUI's execution_error payload."""
        return cls(
            node_id=data.get("node_id"),
            node_type=data.get("node_type"),
            exception_type=data.get("exception_type"),
            exception_message=str(data.get("exception_message", "")).strip(),
        )


@dataclass(frozen=True)
class ExecutionInterrupted:
    """``execution_interrupted``: the prompt was interrupted."""


@dataclass(frozen=True)
class PreviewReady:
    """A new live preview image of the prompt is in ``PromptWatch.preview``."""


@dataclass(frozen=True)
class QueueChanged:
    """ComfyUI's queue changed (a ``status`` broadcast)."""


@dataclass(frozen=True)
class Disconnected:
    """The websocket dropped: events may have been missed."""


@dataclass(frozen=True)
class Reconnected:
    """The websocket is up again: events may have been missed while it was down."""


PromptEvent = (
    ExecutionStarted
    | NodeStarted
    | Progress
    | ExecutionEnded
    | ExecutionFailed
    | ExecutionInterrupted
    | PreviewReady
    | QueueChanged
    | Disconnected
    | Reconnected
)


@dataclass
class Preview:
    """The latest live preview image of a running prompt."""

    content_type: str
    data: bytes


@dataclass(frozen=True)
class Message:
    """One text websocket message: its ``type`` and its ``data`` object."""

    kind: str
    data: Mapping[str, Any]

    @property
    def prompt_id(self) -> str | None:
        """The prompt the message is about, if it names one."""
        prompt_id = self.data.get("prompt_id")
        return None if prompt_id is None else str(prompt_id)


# ``progress_state`` (one or more per sampler step, each with the state of every node so far: half
# of a job's messages, and the largest) says nothing the service follows that ``progress`` and
# ``executing`` do not. ComfyUI writes each message with aiohttp's ``send_json`` (``json.dumps``,
# ``type`` first), so these are known by their first bytes and never parsed; one written
# otherwise is parsed, and dropped by ``typed_event``.
_UNFOLLOWED_PREFIX = b'{"type": "progress_state", '


def unfollowed(raw: bytes) -> bool:
    """Whether a text message is one the service does not follow, told without parsing it."""
    return raw.startswith(_UNFOLLOWED_PREFIX)


_DECODER = json.JSONDecoder()


def read_message(raw: bytes | str) -> Message | None:
    """A text websocket message, or None when it is not ``{"type": ..., "data": {...}}``."""
    try:
        # Decoded strictly here, and parsed in C: ``json.loads`` would first guess the bytes'
        # encoding and match whitespace around the document in Python (ComfyUI sends none).
        text = raw.decode() if isinstance(raw, bytes) else raw
        message, end = _DECODER.raw_decode(text)
        if end != len(text):
            message = json.loads(text)  # whitespace after it (or more: then ValueError)
        kind = message["type"]
        data = message.get("data") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(data, dict):
        return None
    return Message(str(kind), data)


def typed_event(message: Message) -> PromptEvent | None:
    """The typed event of one message about a prompt (None: not one the service follows)."""
    kind, data = message.kind, message.data
    if kind == "execution_start":
        return ExecutionStarted()
    if kind == "executing":
        node = data.get("node")
        return ExecutionEnded() if node is None else NodeStarted(str(node))
    if kind == "progress":
        return Progress(str(data.get("node")), data.get("value"), data.get("max"))
    if kind == "execution_error":
        return ExecutionFailed.from_message(data)
    if kind == "execution_interrupted":
        return ExecutionInterrupted()
    return None


def read_preview(raw: bytes, running_prompt: str | None) -> tuple[str, Preview] | None:
    """The prompt and image of a binary preview frame (None: not a preview of a known prompt).

    A plain PREVIEW_IMAGE frame names no prompt: it belongs to the one running now.
    """
    if len(raw) < 8:
        return None
    (event,) = struct.unpack(">I", raw[:4])
    prompt_id: Any
    content_type: Any
    if event == PREVIEW_IMAGE:
        (fmt,) = struct.unpack(">I", raw[4:8])
        prompt_id, content_type, image = running_prompt, _PREVIEW_FORMATS.get(fmt), raw[8:]
    elif event == PREVIEW_IMAGE_WITH_METADATA:
        (length,) = struct.unpack(">I", raw[4:8])
        try:
            meta = json.loads(raw[8 : 8 + length])
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        prompt_id, content_type = meta.get("prompt_id"), meta.get("image_type")
        image = raw[8 + length :]
    else:
        return None
    # Watches are keyed by the prompt_id string; anything else could not be routed anyway.
    if not isinstance(prompt_id, str) or not prompt_id:
        return None
    if not isinstance(content_type, str) or not content_type:
        return None
    return prompt_id, Preview(content_type, image)
