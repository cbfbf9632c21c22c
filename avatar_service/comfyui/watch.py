"""PromptWatch: the events of one prompt, as the client's reader thread routes them.

Each is queued for the prompt's owner, or, once it asks, handed to its callable on the reader
thread; and what the ``executed`` and ``execution_success`` messages said is kept, for the
prompt's history entry when every message was heard.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .events import Disconnected, Message, Preview, PromptEvent, Reconnected, typed_event
from .history import HistoryEntry


@dataclass
class PromptWatch:
    """Events of one prompt as the reader thread routes them (plus synthetic ``reconnected``...).

    A watch registered before its prompt was queued, on a socket that was up, hears every
    message about the prompt until the socket drops (``hears_all``). Such a watch keeps what
    the ``executed`` messages said each output node made, and whether ``execution_success``
    came: together, what the prompt's ``/history`` entry would say (``heard_entry``).

    Events go to the ``events`` queue, for the prompt's owner to take in its own thread; once
    the owner asks (``relay_on``), events of the kinds it names are handed to its callable on
    the reader thread instead (its thread is not woken for each sampler step).
    """

    prompt_id: str
    # SimpleQueue: put and get in C (every event a job hears before its prompt runs, and what
    # is not relayed after).
    events: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    preview: Preview | None = None
    hears_all: bool = False
    outputs: dict[str, Any] = field(default_factory=dict)
    succeeded: bool = False
    _relay: Callable[[PromptEvent], None] | None = field(default=None, init=False, repr=False)
    _relayed: tuple[type, ...] = field(default=(), init=False, repr=False)
    # Held while an event is routed, and while the relay is switched: an event is either queued
    # before the switch or relayed after it, never overtaken by one relayed before it is taken.
    _routing: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def deliver(self, message: Message) -> None:
        """Route one message about the prompt: its typed event to the run; what ``executed``
        and ``execution_success`` say, to ``heard_entry``."""
        if message.kind == "executed":
            output = message.data.get("output")
            if isinstance(output, dict):
                self.outputs[str(message.data.get("node"))] = output
        elif message.kind == "execution_success":
            self.succeeded = True
        else:
            event = typed_event(message)
            if event is not None:
                self._route(event)

    def put(self, event: PromptEvent) -> None:
        """Route an event that is not one message (the socket dropped or is back, the queue
        changed, a preview came): after a drop, messages may have been missed."""
        if isinstance(event, Disconnected | Reconnected):
            self.hears_all = False
        self._route(event)

    def relay_on(self, relay: Callable[[PromptEvent], None], kinds: tuple[type, ...]) -> bool:
        """Hand events of ``kinds`` to ``relay``, on the reader thread, from now on; only when
        the owner has taken every queued event (False: not yet, nothing changed)."""
        with self._routing:
            if not self.events.empty():
                return False
            self._relay, self._relayed = relay, kinds
            return True

    def relay_off(self) -> None:
        """Queue every event again; once this returns no relayed event is being handled."""
        with self._routing:
            self._relay, self._relayed = None, ()

    def _route(self, event: PromptEvent) -> None:
        with self._routing:
            if self._relay is not None and type(event) in self._relayed:
                self._relay(event)
            else:
                self.events.put(event)

    def heard_entry(self, output_nodes: Sequence[str]) -> HistoryEntry | None:
        """The prompt's success entry as its messages told it, when every one was heard,
        ``execution_success`` among them, and an ``executed`` message from each of
        ``output_nodes`` (``/history`` would answer the same); else None."""
        if not (self.hears_all and self.succeeded):
            return None
        if not all(node in self.outputs for node in output_nodes):
            return None
        return HistoryEntry.heard(self.outputs)
