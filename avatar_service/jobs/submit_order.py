"""First come, first served on each server: prompts are queued in the order jobs were claimed.

A worker claims jobs in queue order, but each runs in a slot thread of its own, and uploading a
photo takes a moment: without an order, a job claimed second could reach ComfyUI's queue first
and run first. Each claim takes a ticket; a run queues its prompt only when every earlier ticket
is done (queued, failed or given up), or after ``WAIT_LIMIT`` seconds: an earlier job stuck on
its upload never holds the later ones for long.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# The longest a prompt waits for the prompts of earlier claims (seconds).
WAIT_LIMIT = 5.0


class SubmitOrder:
    """Tickets for one server's prompts, served in order."""

    def __init__(self, *, wait_limit: float = WAIT_LIMIT) -> None:
        self.wait_limit = wait_limit
        self._changed = threading.Condition()
        self._issued = 0
        self._next = 0
        self._done: set[int] = set()

    def ticket(self) -> int:
        """The next ticket (taken when a job is claimed)."""
        with self._changed:
            ticket = self._issued
            self._issued += 1
            return ticket

    @contextmanager
    def turn(self, ticket: int) -> Iterator[None]:
        """Wait for the earlier tickets (at most ``wait_limit``), then hold this one's turn
        while the block queues the prompt; the ticket is done when the block ends."""
        with self._changed:
            self._changed.wait_for(lambda: self._next >= ticket, self.wait_limit)
        try:
            yield
        finally:
            self.done(ticket)

    def done(self, ticket: int) -> None:
        """A ticket's prompt is queued, or will never be (done twice is harmless)."""
        with self._changed:
            if ticket < self._next:
                return
            self._done.add(ticket)
            while self._next in self._done:
                self._done.remove(self._next)
                self._next += 1
            self._changed.notify_all()
