"""Switchable faults and speed settings: what the stand-in should get wrong or slow, per test."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

#: how long things take rather than what goes wrong; ``clear()`` puts back the start-up values
SPEED_FIELDS = ("step_delay", "node_cost", "pixel_cost")
#: fields that take a number of seconds (or seconds per megapixel), never negative
SECONDS_FIELDS = (*SPEED_FIELDS, "view_delay")


@dataclass
class Faults:
    """Mutable fault switches; safe to set from the test thread while the server runs.

    step_delay: seconds per sampler step. node_cost: seconds every executed node takes at
    least. pixel_cost: seconds more per megapixel a node produces (its output images and
    latents; for SaveImage/PreviewImage the images it writes). fail_at_node: node id or
    class_type that raises (execution_error). hang: the running prompt blocks at its next check
    point until interrupted or cleared. drop_websockets: one-shot, cut every websocket at the
    next node start. refuse_connections: stop listening (ECONNREFUSED), cut websockets, close
    keep-alive connections. view_delay / view_status: slow or failing GET /view.
    reject_prompts: every POST /prompt gets a 400 validation error.
    """

    step_delay: float = 0.0
    node_cost: float = 0.0
    pixel_cost: float = 0.0
    fail_at_node: str | None = None
    hang: bool = False
    drop_websockets: bool = False
    refuse_connections: bool = False
    view_delay: float = 0.0
    view_status: int | None = None
    reject_prompts: bool = False

    def __post_init__(self) -> None:
        for name in SECONDS_FIELDS:
            _check_seconds(name, getattr(self, name))
        # Speed settings given at start-up (e.g. on the command line) are the baseline that
        # clear() returns to, so clearing faults does not also make every node instant.
        self.__dict__["_speed_baseline"] = {name: getattr(self, name) for name in SPEED_FIELDS}

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        for listener in list(self.__dict__.get("_listeners", ())):
            listener(name, value)

    def add_listener(self, listener: Callable[[str, Any], None]) -> None:
        """Call ``listener(name, value)`` after every change of a field."""
        listeners = self.__dict__.setdefault("_listeners", [])
        listeners.append(listener)

    def remove_listener(self, listener: Callable[[str, Any], None]) -> None:
        """Stop calling ``listener``."""
        listeners = self.__dict__.get("_listeners", [])
        if listener in listeners:
            listeners.remove(listener)

    def update(self, **changes: Any) -> None:
        """Set several fields; unknown names raise ``TypeError``, bad seconds ``ValueError``."""
        names = {item.name for item in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        for name in SECONDS_FIELDS:
            if name in changes:
                _check_seconds(name, changes[name])
        with _LOCK:
            for name, value in changes.items():
                setattr(self, name, value)

    def clear(self) -> None:
        """Turn every fault off; speed settings go back to their start-up values."""
        values = {item.name: item.default for item in fields(self)}
        values.update(self.__dict__["_speed_baseline"])
        self.update(**values)

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


def _check_seconds(name: str, value: Any) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")


_LOCK = threading.RLock()
