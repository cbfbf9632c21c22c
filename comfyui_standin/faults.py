"""Switchable faults: what the stand-in should get wrong, set per test."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any


@dataclass
class Faults:
    """Mutable fault switches; safe to set from the test thread while the server runs.

    step_delay: seconds per sampler step. fail_at_node: node id or class_type that raises
    (execution_error). hang: the running prompt blocks at its next check point until
    interrupted or cleared. drop_websockets: one-shot, cut every websocket at the next node
    start. refuse_connections: stop listening (ECONNREFUSED), cut websockets, close keep-alive
    connections. view_delay / view_status: slow or failing GET /view. reject_prompts: every
    POST /prompt gets a 400 validation error.
    """

    step_delay: float = 0.0
    fail_at_node: str | None = None
    hang: bool = False
    drop_websockets: bool = False
    refuse_connections: bool = False
    view_delay: float = 0.0
    view_status: int | None = None
    reject_prompts: bool = False

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
        """Set several fields; unknown names raise ``TypeError``."""
        names = {item.name for item in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise TypeError(f"unknown fault(s): {', '.join(sorted(unknown))}")
        with _LOCK:
            for name, value in changes.items():
                setattr(self, name, value)

    def clear(self) -> None:
        """Reset every field to its default."""
        self.update(**{item.name: item.default for item in fields(self)})

    def as_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return {item.name: getattr(self, item.name) for item in fields(self)}


_LOCK = threading.RLock()
