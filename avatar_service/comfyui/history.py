"""A prompt's ``/history`` entry: how it ended and which images it produced."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .events import ExecutionFailed


@dataclass(frozen=True)
class OutputImage:
    """One image a prompt produced, as ``/view`` wants it named."""

    filename: str
    subfolder: str = ""
    folder_type: str = "output"

    def to_dict(self) -> dict[str, str]:
        """ComfyUI's own shape of the image reference."""
        return {"filename": self.filename, "subfolder": self.subfolder, "type": self.folder_type}


@dataclass(frozen=True)
class HistoryEntry:
    """A prompt's ``/history`` entry: how it ended and what it produced."""

    succeeded: bool
    failure: ExecutionFailed | None
    interrupted: bool
    status: Mapping[str, Any]
    outputs: Mapping[str, Any]

    @classmethod
    def from_answer(cls, entry: Mapping[str, Any]) -> HistoryEntry:
        """Read one entry of GET /history/{prompt_id}."""
        status = entry.get("status") or {}
        messages = {
            item[0]: item[1]
            for item in status.get("messages") or []
            if isinstance(item, list | tuple) and len(item) == 2
        }
        error = messages.get("execution_error")
        return cls(
            succeeded=status.get("status_str") == "success",
            failure=ExecutionFailed.from_message(error) if isinstance(error, dict) else None,
            interrupted="execution_interrupted" in messages,
            status=status,
            outputs=entry.get("outputs") or {},
        )

    @classmethod
    def heard(cls, outputs: Mapping[str, Any]) -> HistoryEntry:
        """The success entry of a prompt whose every message was heard: ``execution_success``
        came, and ``outputs`` are what its ``executed`` messages said each node made (ComfyUI
        writes the same outputs into its history, cached nodes included)."""
        return cls(
            succeeded=True,
            failure=None,
            interrupted=False,
            status={"status_str": "success", "completed": True},
            outputs=dict(outputs),
        )

    @classmethod
    def of_prompt(cls, answer: Mapping[str, Any], prompt_id: str) -> HistoryEntry | None:
        """The entry of ``prompt_id`` in a GET /history/{prompt_id} answer (None: not ended)."""
        entry = answer.get(prompt_id)
        return cls.from_answer(entry) if isinstance(entry, dict) else None

    def images(self, output_nodes: Sequence[str]) -> list[OutputImage]:
        """The images of the given output nodes, in node order."""
        return [
            OutputImage(
                filename=str(image["filename"]),
                subfolder=str(image.get("subfolder", "")),
                folder_type=str(image.get("type", "output")),
            )
            for node_id in output_nodes
            for image in (self.outputs.get(node_id) or {}).get("images") or []
            if isinstance(image, dict) and image.get("filename")
        ]
