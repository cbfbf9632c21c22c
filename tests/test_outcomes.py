"""outcomes: every ending in the module docstring's table, to its result or its one error."""

from __future__ import annotations

from typing import Any

import pytest

from avatar_service.comfyui import (
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    ExecutionFailed,
    HistoryEntry,
    OutputImage,
    PromptRejected,
)
from avatar_service.errors import ServiceError
from avatar_service.jobs import outcomes
from avatar_service.jobs.prompt_state import Phase, PromptState
from avatar_service.jobs.records import Job
from tests.fake_comfyui import recorded_rejection

PROMPT = "a4bf37d0-7c16-4b9d-bbf9-d9bc0b664787"
SERVER = "http://gpu-1:8188"
ERROR_PAYLOAD = {
    "prompt_id": PROMPT,
    "node_id": "25",
    "node_type": "LoadImage",
    "exception_message": "cannot identify image file\n",
    "exception_type": "PIL.UnidentifiedImageError",
}
FAILURE = ExecutionFailed.from_message(ERROR_PAYLOAD)
ENDED = PromptState(phase=Phase.ENDED)


def history(status: str, *messages: list[Any], outputs: dict | None = None) -> HistoryEntry:
    """A history entry read from an answer shaped like the recordings'."""
    return HistoryEntry.from_answer(
        {
            "prompt": [1, PROMPT, {}, {}, ["7"]],
            "outputs": outputs or {},
            "status": {
                "status_str": status,
                "completed": status == "success",
                "messages": [["execution_start", {"prompt_id": PROMPT}], *messages],
            },
        }
    )


SUCCESS = history(
    "success",
    ["execution_success", {"prompt_id": PROMPT}],
    outputs={"7": {"images": [{"filename": "a.png", "subfolder": "", "type": "temp"}]}},
)
ERROR = history("error", ["execution_error", ERROR_PAYLOAD])
INTERRUPTED = history("error", ["execution_interrupted", {"prompt_id": PROMPT, "node_id": "4"}])
BARE_ERROR = history("error")


def job(**changes: Any) -> Job:
    """A job record as the engine holds it."""
    values: dict[str, Any] = {
        "id": "0123456789abcdef0123456789abcdef",
        "status": "running",
        "style": "avatar",
        "image_name": "photo.png",
        "gender": "male",
        "width": 64,
        "height": 64,
        "seed": 1,
        "base_url": "http://service",
        "deadline": 1_000.0,
        "prompt_id": PROMPT,
        "server": SERVER,
    }
    return Job(**{**values, **changes})


def body(error: ServiceError) -> dict[str, Any]:
    """Status and the JSON error body."""
    return {"status": error.status, **error.to_dict()}


EXECUTION_ERROR = {
    "status": 502,
    "code": "comfyui_execution_error",
    "message": "ComfyUI failed while running node 25 (LoadImage): cannot identify image file",
    "details": {
        "promptId": PROMPT,
        "nodeId": "25",
        "nodeType": "LoadImage",
        "exceptionType": "PIL.UnidentifiedImageError",
        "exceptionMessage": "cannot identify image file",
    },
}
INTERRUPTED_ERROR = {
    "status": 502,
    "code": "comfyui_interrupted",
    "message": "the prompt was interrupted on the ComfyUI server (not by this service)",
    "details": {"promptId": PROMPT},
}


def no_history(status: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "status": 502,
        "code": "comfyui_no_history",
        "message": "ComfyUI ended the prompt without a successful history entry",
        "details": {"promptId": PROMPT, "status": status},
    }


# (history entry, what was said while it ran, cancel asked, the job's error or None)
JUDGED_FAILURES = [
    pytest.param(ERROR, ENDED, False, EXECUTION_ERROR, id="execution-error-in-history"),
    pytest.param(None, ENDED.after(FAILURE), False, EXECUTION_ERROR, id="execution-error-event"),
    pytest.param(ERROR, ENDED, True, EXECUTION_ERROR, id="execution-error-despite-a-cancel"),
    pytest.param(INTERRUPTED, ENDED, False, INTERRUPTED_ERROR, id="interrupted-in-history"),
    pytest.param(
        BARE_ERROR, PromptState(interrupted=True), False, INTERRUPTED_ERROR, id="interrupt-event"
    ),
    pytest.param(None, ENDED, False, no_history(None), id="no-history-entry"),
    pytest.param(
        BARE_ERROR, ENDED, False, no_history(dict(BARE_ERROR.status)), id="no-success-entry"
    ),
]


@pytest.mark.parametrize(("entry", "state", "cancelled", "expected"), JUDGED_FAILURES)
def test_judge_fails_the_job_with_one_error(entry, state, cancelled, expected):
    """Each ending without success raises the job's one error, with its details."""
    with pytest.raises(ServiceError) as failed:
        outcomes.judge(entry, state=state, cancel_requested=cancelled, prompt_id=PROMPT)
    assert body(failed.value) == expected


@pytest.mark.parametrize(
    ("entry", "state"),
    [
        pytest.param(INTERRUPTED, ENDED, id="interrupted-after-cancel"),
        pytest.param(None, PromptState(interrupted=True), id="interrupt-event-after-cancel"),
        pytest.param(None, ENDED, id="removed-after-cancel"),
        pytest.param(BARE_ERROR, ENDED, id="ended-without-success-after-cancel"),
    ],
)
def test_judge_ends_a_cancelled_job_cancelled(entry, state):
    """Interrupted or removed after a cancel: Cancelled, not an error."""
    with pytest.raises(outcomes.Cancelled):
        outcomes.judge(entry, state=state, cancel_requested=True, prompt_id=PROMPT)


@pytest.mark.parametrize("cancelled", [False, True], ids=["plain", "finished-despite-a-cancel"])
def test_judge_answers_the_success_entry(cancelled):
    """A success entry in /history is the result (a cancel that came too late changes nothing)."""
    entry = outcomes.judge(SUCCESS, state=ENDED, cancel_requested=cancelled, prompt_id=PROMPT)
    assert entry is SUCCESS
    assert entry.images(["7"]) == [OutputImage("a.png", "", "temp")]


REJECTED = recorded_rejection("KSampler sampler_name not in list")
ERROR_FOR = [
    pytest.param(
        PromptRejected(
            "Prompt outputs failed validation",
            server=SERVER,
            error=REJECTED["error"],
            node_errors=REJECTED["node_errors"],
        ),
        {
            "status": 502,
            "code": "comfyui_rejected_prompt",
            "message": "ComfyUI rejected the workflow: Prompt outputs failed validation",
            "details": {
                "error": REJECTED["error"],
                "node_errors": REJECTED["node_errors"],
                "server": SERVER,
            },
        },
        id="rejected-prompt",
    ),
    pytest.param(
        outcomes.PromptLost(PROMPT),
        {
            "status": 502,
            "code": "comfyui_lost_prompt",
            "message": "ComfyUI lost the prompt (did the server restart?) and it was lost again "
            "after being queued once more",
            "details": {"promptId": PROMPT, "server": SERVER},
        },
        id="lost-twice",
    ),
    pytest.param(
        ComfyUIUnavailable("cannot reach ComfyUI at x (refused)", server=SERVER),
        {
            "status": 503,
            "code": "comfyui_unavailable",
            "message": "ComfyUI is not reachable; try again shortly",
            "details": {"server": SERVER, "reason": "cannot reach ComfyUI at x (refused)"},
        },
        id="unreachable",
    ),
    pytest.param(
        ComfyUIUnavailable("did not answer in time", server=SERVER, timed_out=True),
        {
            "status": 503,
            "code": "comfyui_unavailable",
            "message": "ComfyUI is not reachable; try again shortly",
            "details": {"server": SERVER, "reason": "did not answer in time"},
        },
        id="timed-out",
    ),
    pytest.param(
        ComfyUIProtocolError("/queue answered 500", server=SERVER, status=500),
        {
            "status": 502,
            "code": "comfyui_bad_response",
            "message": "ComfyUI answered unexpectedly: /queue answered 500",
            "details": {"server": SERVER, "status": 500},
        },
        id="unexpected-answer",
    ),
    pytest.param(
        ComfyUIError("something else", server=SERVER),
        {
            "status": 502,
            "code": "comfyui_error",
            "message": "something else",
            "details": {"server": SERVER},
        },
        id="other-comfyui-error",
    ),
    pytest.param(
        RuntimeError("a bug"),
        {
            "status": 500,
            "code": "internal_error",
            "message": "internal error while running the job; see the service log",
        },
        id="a-bug",
    ),
]


@pytest.mark.parametrize(("exc", "expected"), ERROR_FOR)
def test_error_for_maps_each_exception_to_one_code(exc, expected):
    """error_for turns what ended a job into its stored error: status, code, details."""
    assert body(outcomes.error_for(exc, job())) == expected


def test_error_for_keeps_a_service_error_as_it_is():
    """An error already decided (deadline, no output...) is the job's error unchanged."""
    error = outcomes.no_output(["7"], {})
    assert outcomes.error_for(error, job()) is error


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (outcomes.PromptLost(PROMPT), True),
        (ComfyUIUnavailable("x"), True),
        (outcomes.no_output(["7"], {}), True),
        (RuntimeError("a bug"), False),
        (KeyError("a bug"), False),
    ],
    ids=["lost", "comfyui", "service-error", "runtime-error", "key-error"],
)
def test_only_unknown_exceptions_are_bugs(exc, expected):
    """Known endings are expected failures; anything else is logged as a bug."""
    assert outcomes.is_expected(exc) is expected


@pytest.mark.parametrize(
    ("unreachable", "expected"),
    [
        (
            False,
            {
                "status": 504,
                "code": "job_timeout",
                "message": "the job did not finish within 30 s; its prompt was removed from "
                "ComfyUI",
                "details": {"jobId": job().id, "promptId": PROMPT, "status": "running"},
            },
        ),
        (
            True,
            {
                "status": 503,
                "code": "comfyui_unavailable",
                "message": "ComfyUI became unreachable during the job and did not come back "
                "before its deadline",
                "details": {"jobId": job().id, "promptId": PROMPT},
            },
        ),
    ],
    ids=["timed-out", "unreachable"],
)
def test_deadline_passed_on_a_server(unreachable, expected):
    """A prompt not ended by the deadline: 504 job_timeout, or 503 when ComfyUI was away."""
    error = outcomes.deadline_passed(job(), PROMPT, unreachable=unreachable, timeout=30.0)
    assert body(error) == expected


@pytest.mark.parametrize(
    ("servers", "expected"),
    [
        (
            {SERVER: None},
            {
                "status": 504,
                "code": "job_timeout",
                "message": "the job did not start within 30 s: every ComfyUI server was busy",
                "details": {"jobId": job().id, "status": "queued"},
            },
        ),
        (
            {SERVER: None, "http://gpu-2:8188": "websocket connect failed"},
            {
                "status": 504,
                "code": "job_timeout",
                "message": "the job did not start within 30 s: every ComfyUI server was busy",
                "details": {"jobId": job().id, "status": "queued"},
            },
        ),
        (
            {SERVER: "websocket connect failed", "http://gpu-2:8188": "given up"},
            {
                "status": 503,
                "code": "comfyui_unavailable",
                "message": "ComfyUI is not reachable; try again shortly",
                "details": {
                    "servers": {
                        SERVER: "websocket connect failed",
                        "http://gpu-2:8188": "given up",
                    }
                },
            },
        ),
    ],
    ids=["busy", "one-up", "none-up"],
)
def test_deadline_passed_while_waiting(servers, expected):
    """A job still in the service's queue at its deadline: 504 busy, or 503 when none is up."""
    waiting = job(status="queued", prompt_id=None, server=None)
    error = outcomes.deadline_passed_waiting(waiting, timeout=30.0, servers=servers)
    assert body(error) == expected


def test_no_server_names_each_server_and_why():
    """No reachable server: 503 comfyui_unavailable naming each one (or "not connected")."""
    error = outcomes.no_server({SERVER: None, "http://gpu-2:8188": "refused"})
    assert body(error) == {
        "status": 503,
        "code": "comfyui_unavailable",
        "message": "ComfyUI is not reachable; try again shortly",
        "details": {"servers": {SERVER: "not connected", "http://gpu-2:8188": "refused"}},
    }
    assert error.headers == {"Retry-After": "10"}


def test_no_image_is_502_comfyui_no_output():
    """ComfyUI ended well but listed no image of the output nodes: comfyui_no_output."""
    assert body(outcomes.no_output(["7"], {"9": {"images": []}})) == {
        "status": 502,
        "code": "comfyui_no_output",
        "message": "ComfyUI finished but reported no image from the workflow's output nodes",
        "details": {"outputNodes": ["7"], "outputs": {"9": {"images": []}}},
    }


def test_a_failing_view_is_502_avatar_fetch_failed():
    """/view failing (or an undecodable image) is avatar_fetch_failed naming the image."""
    image = OutputImage("ComfyUI_temp_00001_.png", "", "temp")
    assert body(outcomes.fetch_failed(PROMPT, image, "/view answered 500")) == {
        "status": 502,
        "code": "avatar_fetch_failed",
        "message": "could not fetch the generated image 'ComfyUI_temp_00001_.png' from ComfyUI: "
        "/view answered 500",
        "details": {"promptId": PROMPT, "image": image.to_dict()},
    }


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (
            outcomes.save_failed(job().id),
            {
                "status": 500,
                "code": "avatar_save_failed",
                "message": "the avatar could not be saved on the service",
                "details": {"jobId": job().id},
            },
        ),
        (
            outcomes.style_removed("old"),
            {
                "status": 404,
                "code": "style_not_found",
                "message": "style 'old' is no longer configured",
                "details": {"style": "old"},
            },
        ),
        (
            outcomes.server_removed(SERVER),
            {
                "status": 502,
                "code": "comfyui_server_removed",
                "message": f"the job ran on {SERVER}, which is no longer configured",
                "details": {"server": SERVER},
            },
        ),
        (
            outcomes.already_ended(job(status="succeeded")),
            {
                "status": 409,
                "code": "job_already_ended",
                "message": "the job has already ended (succeeded)",
                "details": {"jobId": job().id, "status": "succeeded"},
            },
        ),
    ],
    ids=["save-failed", "style-removed", "server-removed", "already-ended"],
)
def test_the_service_s_own_endings(error, expected):
    """The endings the service decides itself have their one code too."""
    assert body(error) == expected
