"""StepRelay: a running prompt's steps, published from the ComfyUI client's reader thread.

A job hears about 80 messages while its prompt runs, nearly all of them sampler steps. Handing
each to the run's own thread costs a wake-up and a hand-over of the interpreter lock per batch,
more than publishing the step itself. So once the prompt runs and its record says so, the run
asks its watch to hand steps, node starts and queue changes to the relay, on the reader thread:
each is published there (``ledger.note_progress``), and the run's thread sleeps until something
it must act on comes (the end, a failure, a preview, a cancel, a dropped socket), or until the
record is due a write of the progress (``ProgressDue``, at most every
``ledger.PROGRESS_WRITE_INTERVAL``).

The watch switches only when the run has taken every queued event, and routes each event under
one lock, so no event is published before one heard earlier.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..comfyui import NodeStarted, Progress, PromptWatch, QueueChanged
from .job import JobProgress, JobStatus
from .prompt_state import Phase, ProgressDue, RunEvent

if TYPE_CHECKING:
    from .prompt import PromptRun

# The events of a running prompt that the reader thread handles itself.
RELAYED = (Progress, NodeStarted, QueueChanged)


class StepRelay:
    """Publishes a running prompt's steps from the reader thread, for one run."""

    def __init__(self, run: PromptRun) -> None:
        self.run = run
        self.watch: PromptWatch | None = None
        # Whether a record write was asked for (``ProgressDue``) and not made yet.
        self.write_due = False

    @property
    def active(self) -> bool:
        """Whether the reader thread publishes the steps now."""
        return self.watch is not None

    def start(self) -> bool:
        """Relay from now on if the prompt runs and its record says so, and the run has taken
        every queued event; True when it does (else nothing changed: asked again after the
        next event)."""
        run = self.run
        if run.state.phase is not Phase.RUNNING or run.job.status != JobStatus.RUNNING:
            return False
        assert run.watch is not None
        if run.watch.relay_on(self._on_event, RELAYED):
            self.watch = run.watch
        return self.watch is not None

    def stop(self) -> None:
        """Queue every event again; when this returns, no relayed event is being handled."""
        if self.watch is not None:
            self.watch.relay_off()
            self.watch = None

    def written(self) -> None:
        """The run wrote the progress to the record."""
        self.write_due = False

    def _on_event(self, event: RunEvent) -> None:
        run = self.run
        run.heard_at = time.monotonic()
        if type(event) is Progress:
            step = step_of(run, event.node, event.value, event.max)
        elif type(event) is NodeStarted:
            step = step_of(run, event.node, None, None)
        else:
            return  # a queue change: nothing to do for a running prompt
        if run.ledger.note_progress(run.job, step) and not self.write_due:
            self.write_due = True
            run.watch_post(ProgressDue())


def step_of(run: PromptRun, node: str, value: Any, maximum: Any) -> JobProgress:
    """A node start (``value`` None) or a step of the run's prompt, with the node's type."""
    node_type = (run.workflow.graph.get(node) or {}).get("class_type")
    return JobProgress(node, node_type, value, maximum)
