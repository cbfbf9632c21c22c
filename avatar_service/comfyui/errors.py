"""What can go wrong talking to ComfyUI; catch at the level you need.

Exceptions::

    ComfyUIError
    ├── ComfyUIUnavailable     connection refused, reset or timed out
    ├── ComfyUIProtocolError   an answer that is not what ComfyUI 0.3.x sends
    └── PromptRejected         POST /prompt answered 400: ``error`` and ``node_errors`` kept
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ComfyUIError(Exception):
    """Base of everything that can go wrong talking to ComfyUI."""

    def __init__(self, message: str, *, server: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.server = server


class ComfyUIUnavailable(ComfyUIError):
    """ComfyUI could not be reached (refused, reset), or did not answer in time (timed_out)."""

    def __init__(self, message: str, *, server: str = "", timed_out: bool = False) -> None:
        super().__init__(message, server=server)
        self.timed_out = timed_out


class ComfyUIProtocolError(ComfyUIError):
    """ComfyUI answered something unexpected."""

    def __init__(self, message: str, *, server: str = "", status: int | None = None) -> None:
        super().__init__(message, server=server)
        self.status = status


class PromptRejected(ComfyUIError):
    """ComfyUI refused the graph at validation; ``error`` and ``node_errors`` are its own words."""

    def __init__(
        self,
        message: str,
        *,
        server: str = "",
        error: Mapping[str, Any] | None = None,
        node_errors: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, server=server)
        self.error = dict(error or {})
        self.node_errors = dict(node_errors or {})

    def refuses_input(self, node: str, input_name: str) -> bool:
        """Whether ComfyUI refused this input of this node by the node's own check (LoadImage's
        ``image``: a file missing from its input folder)."""
        errors = (self.node_errors.get(node) or {}).get("errors") or []
        return any(
            isinstance(error, dict)
            and error.get("type") == "custom_validation_failed"
            and (error.get("extra_info") or {}).get("input_name") == input_name
            for error in errors
        )

    @property
    def server_lacks_something(self) -> bool:
        """Whether the server, not the request, is at fault: a node class it does not have, or
        a choice (checkpoint, sampler...) missing from its lists."""
        message = str(self.error.get("message", ""))
        if self.error.get("type") == "invalid_prompt" and "does not exist" in message:
            return True
        return any(
            isinstance(error, dict) and error.get("type") == "value_not_in_list"
            for node in self.node_errors.values()
            if isinstance(node, dict)
            for error in node.get("errors") or []
        )
