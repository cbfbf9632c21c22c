"""ComfyUI's ``/queue`` answer: which prompts run, and where each pending one stands."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class QueueSnapshot:
    """One GET /queue answer: the running prompt ids and each pending prompt's position."""

    asked_at: float
    running: frozenset[str]
    positions: Mapping[str, int]

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any], asked_at: float) -> QueueSnapshot:
        """Read GET /queue, asked at ``asked_at`` (a ``time.monotonic()`` value)."""
        running = frozenset(
            item_id for item in answer.get("queue_running") or [] if (item_id := _item_id(item))
        )
        # queue_pending is ComfyUI's heap array, not execution order: sort by number, then id.
        pending = sorted(
            (item for item in answer.get("queue_pending") or [] if _item_id(item) is not None),
            key=lambda item: (float(item[0]), str(item[1])),
        )
        # 1 = the next to start (the running prompt is not counted), as the service's own queue.
        positions = {str(item[1]): index + 1 for index, item in enumerate(pending)}
        return cls(asked_at, running, positions)

    def place_of(self, prompt_id: str) -> tuple[str, int | None]:
        """("running", 0), ("pending", 1 = next to start), or ("absent", None)."""
        if prompt_id in self.running:
            return "running", 0
        position = self.positions.get(prompt_id)
        if position is not None:
            return "pending", position
        return "absent", None


def _item_id(item: Any) -> str | None:
    """The prompt id of one queue item ``[number, prompt_id, graph, extra, outputs]``."""
    if isinstance(item, list | tuple) and len(item) >= 2:
        return str(item[1])
    return None
