"""ComfyUI: the client (HTTP and websocket), its formats, and workflow templates.

The only package that reads what ComfyUI sends. Its face is this module (the client, its errors
and typed events, history, queue and system answers) and ``workflows`` (the templates):

- ``client``   ComfyUIClient: the HTTP calls and the websocket reader thread
- ``errors``   the ComfyUIError tree
- ``events``   websocket messages -> typed prompt events, live previews
- ``history``  a prompt's /history entry and its output images
- ``queue``    the /queue answer: running and pending prompts
- ``system``   what /system_stats and /object_info answers mean (stand-in, version, catalogue)
- ``uploads``  the photos a server already has (each sent once)
- ``watch``    PromptWatch: one prompt's events, queued or relayed on the reader thread
- ``workflows`` API-format graph templates: load, roles, patch a copy, check, import
"""

from __future__ import annotations

from .client import ComfyUIClient
from .errors import ComfyUIError, ComfyUIProtocolError, ComfyUIUnavailable, PromptRejected
from .events import (
    Disconnected,
    ExecutionEnded,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionStarted,
    NodeStarted,
    Preview,
    PreviewReady,
    Progress,
    PromptEvent,
    QueueChanged,
    Reconnected,
)
from .history import HistoryEntry, OutputImage
from .queue import QueueSnapshot
from .system import (
    STANDIN_MARKER,
    SystemStats,
    catalogue_signature,
    catalogue_size,
    runs_standin,
)
from .watch import PromptWatch

__all__ = [
    "STANDIN_MARKER",
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
    "QueueSnapshot",
    "Reconnected",
    "SystemStats",
    "catalogue_signature",
    "catalogue_size",
    "runs_standin",
]
