"""PromptState: the one table of a prompt's transitions, row by row."""

from __future__ import annotations

from dataclasses import replace

import pytest

from avatar_service.comfyui import (
    Disconnected,
    ExecutionEnded,
    ExecutionFailed,
    ExecutionInterrupted,
    ExecutionStarted,
    NodeStarted,
    PreviewReady,
    Progress,
    QueueChanged,
    Reconnected,
)
from avatar_service.jobs.prompt_state import (
    ABSENT,
    ENDED,
    RUNNING,
    CancelAsked,
    Check,
    FailoverAsked,
    Phase,
    PromptState,
    ShutdownAsked,
)

WAITING, STARTED, DONE = Phase.WAITING, Phase.RUNNING, Phase.ENDED
FAILURE = ExecutionFailed(
    node_id="25",
    node_type="LoadImage",
    exception_type="PIL.UnidentifiedImageError",
    exception_message="cannot identify image file",
)


def name_of(value: object) -> str:
    """A readable test id: the phase, the event's class, or ComfyUI's answer."""
    if isinstance(value, Phase):
        return value.name
    if isinstance(value, int | str):
        return str(value)
    return type(value).__name__


# (phase before, event, phase after): every message of ComfyUI and every event of the run's
# owner, in every phase.
PHASE_TABLE = [
    (WAITING, ExecutionStarted(), STARTED),
    (WAITING, NodeStarted("4"), STARTED),
    (STARTED, ExecutionStarted(), STARTED),
    (STARTED, NodeStarted("15"), STARTED),
    (DONE, ExecutionStarted(), DONE),
    (DONE, NodeStarted("4"), DONE),
    (WAITING, ExecutionEnded(), DONE),
    (STARTED, ExecutionEnded(), DONE),
    (DONE, ExecutionEnded(), DONE),
    *[
        (phase, event, phase)
        for phase in (WAITING, STARTED, DONE)
        for event in (
            Progress("4", 1, 20),
            PreviewReady(),
            QueueChanged(),
            Disconnected(),
            Reconnected(),
            FAILURE,
            ExecutionInterrupted(),
            Check(),
            CancelAsked(),
            ShutdownAsked(),
            FailoverAsked(),
        )
    ],
]


@pytest.mark.parametrize(("before", "event", "after"), PHASE_TABLE, ids=name_of)
def test_after_moves_the_phase_as_the_table_says(before, event, after):
    """Started or a node moves WAITING to RUNNING, executing null ends it, nothing else moves."""
    state = PromptState(phase=before).after(event)
    assert state.phase is after
    assert state.ended == (after is DONE)


@pytest.mark.parametrize("phase", [WAITING, STARTED, DONE])
def test_execution_error_is_kept_and_the_phase_kept(phase):
    """execution_error is remembered (for the outcome) without ending the prompt."""
    state = PromptState(phase=phase).after(FAILURE)
    assert (state.phase, state.failure, state.interrupted) == (phase, FAILURE, False)


@pytest.mark.parametrize("phase", [WAITING, STARTED, DONE])
def test_execution_interrupted_is_kept_and_the_phase_kept(phase):
    """execution_interrupted is remembered without ending the prompt (executing null does)."""
    state = PromptState(phase=phase).after(ExecutionInterrupted())
    assert (state.phase, state.failure, state.interrupted) == (phase, None, True)


def test_what_was_said_survives_the_end():
    """A failure and an interrupt said before executing null are still there after it."""
    state = PromptState().after(ExecutionStarted()).after(FAILURE).after(ExecutionInterrupted())
    ended = state.after(ExecutionEnded())
    assert (ended.phase, ended.failure, ended.interrupted) == (DONE, FAILURE, True)


# (phase before, what asking ComfyUI answered, phase after)
WHERE_TABLE = [
    (WAITING, ENDED, DONE),
    (STARTED, ENDED, DONE),
    (DONE, ENDED, DONE),
    (WAITING, RUNNING, STARTED),
    (STARTED, RUNNING, STARTED),
    (DONE, RUNNING, DONE),
    (WAITING, 1, WAITING),
    (WAITING, 3, WAITING),
    (STARTED, 1, STARTED),
    (DONE, 2, DONE),
    (WAITING, ABSENT, WAITING),
    (STARTED, ABSENT, STARTED),
    (DONE, ABSENT, DONE),
]


@pytest.mark.parametrize(("before", "answer", "after"), WHERE_TABLE, ids=name_of)
def test_where_applies_what_comfyui_answered(before, answer, after):
    """Ended ends, running starts a waiting prompt, a position or absent leave the phase."""
    state = PromptState(phase=before).where(answer)
    assert state.phase is after


@pytest.mark.parametrize("answer", [ENDED, RUNNING, 1, ABSENT])
def test_any_answer_makes_the_server_reachable_again(answer):
    """An answer, whatever it says, clears the time since which ComfyUI was unreachable."""
    state = PromptState().unreachable(100.0).where(answer)
    assert state.unreachable_since is None


def test_unreachable_keeps_the_first_moment():
    """Unreachable again later keeps the first moment (the deadline's 503 counts from it)."""
    state = PromptState().unreachable(100.0).unreachable(250.0)
    assert state.unreachable_since == 100.0
    assert state.phase is WAITING


@pytest.mark.parametrize("phase", [WAITING, STARTED, DONE])
def test_queued_again_waits_once_more(phase):
    """A prompt queued again after the server forgot it waits, whatever it was."""
    state = replace(PromptState(phase=phase), unreachable_since=5.0).queued_again()
    assert state.phase is WAITING
    assert state.unreachable_since == 5.0
