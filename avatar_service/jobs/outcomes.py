"""The one place where a ComfyUI outcome becomes a job's result or a service error code.

A prompt's life ends in one of these ways; each maps to exactly one code::

    success entry in /history             -> succeeded
    execution_error (event or history)    -> 502 comfyui_execution_error
    execution_interrupted, not ours       -> 502 comfyui_interrupted
    interrupted or removed after cancel   -> cancelled
    ended without a success entry         -> 502 comfyui_no_history
    POST /prompt 400 / partly accepted    -> 502 comfyui_rejected_prompt
    lost twice (server restarts)          -> 502 comfyui_lost_prompt
    unreachable / timed out (HTTP)        -> 503 comfyui_unavailable
    unexpected answer                     -> 502 comfyui_bad_response
    deadline passed                       -> 504 job_timeout (503 when ComfyUI was unreachable)
    no image / /view failing              -> 502 comfyui_no_output / avatar_fetch_failed
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..comfyui import (
    ComfyUIError,
    ComfyUIProtocolError,
    ComfyUIUnavailable,
    HistoryEntry,
    OutputImage,
    PromptRejected,
)
from ..errors import (
    BadGateway,
    Conflict,
    GatewayTimeout,
    NotFound,
    ServiceError,
    ServiceUnavailable,
)
from .job import Job
from .prompt_state import PromptState


class Cancelled(Exception):
    """The job was cancelled by its owner."""


class Shutdown(Exception):
    """The service is stopping: leave the job as it is for the next start to take up."""


class FailedOver(Exception):
    """The job's server was given up: the job goes back to the head of the service's queue."""


class Stalled(Exception):
    """ComfyUI said nothing about the prompt (no message, no queue change) for too long."""

    def __init__(self, server: str, seconds: float, *, withdrawn: bool = False) -> None:
        super().__init__(f"no progress on {server} for {seconds:.0f} s")
        self.server = server
        self.seconds = seconds
        # Whether ComfyUI received the withdrawal (else it is sent again when the server answers).
        self.withdrawn = withdrawn


class PromptLost(Exception):
    """ComfyUI no longer knows the prompt (it restarted, or someone removed it)."""


def judge(
    entry: HistoryEntry | None,
    *,
    state: PromptState,
    cancel_requested: bool,
    prompt_id: str,
) -> HistoryEntry:
    """The success entry of an ended prompt; raises Cancelled or the job's error otherwise.

    What ComfyUI said while the prompt ran (``state``) and its history entry both count.
    """
    failure = state.failure or (entry.failure if entry else None)
    interrupted = state.interrupted or bool(entry and entry.interrupted)
    succeeded = bool(entry and entry.succeeded)
    if cancel_requested and (interrupted or (failure is None and not succeeded)):
        raise Cancelled
    if failure is not None:
        raise BadGateway(
            f"ComfyUI failed while running node {failure.node_id} ({failure.node_type}): "
            f"{failure.exception_message}",
            code="comfyui_execution_error",
            details={
                "promptId": prompt_id,
                "nodeId": failure.node_id,
                "nodeType": failure.node_type,
                "exceptionType": failure.exception_type,
                "exceptionMessage": failure.exception_message,
            },
        )
    if interrupted:
        raise BadGateway(
            "the prompt was interrupted on the ComfyUI server (not by this service)",
            code="comfyui_interrupted",
            details={"promptId": prompt_id},
        )
    if entry is None or not succeeded:
        raise BadGateway(
            "ComfyUI ended the prompt without a successful history entry",
            code="comfyui_no_history",
            details={"promptId": prompt_id, "status": dict(entry.status) if entry else None},
        )
    return entry


def deadline_passed(
    job: Job, prompt_id: str | None, *, unreachable: bool, timeout: float
) -> ServiceError:
    """The error of a job whose prompt had not ended at its deadline (the prompt is removed)."""
    if unreachable:
        return ServiceUnavailable(
            "ComfyUI became unreachable during the job and did not come back before its deadline",
            details={"jobId": job.id, "promptId": prompt_id},
        )
    return GatewayTimeout(
        f"the job did not finish within {timeout:g} s; its prompt was removed from ComfyUI",
        details={"jobId": job.id, "promptId": prompt_id, "status": job.status},
    )


def stalled(job: Job, stall: Stalled, *, stalls: int, elsewhere: bool) -> ServiceError:
    """A job whose prompt stalled and that cannot run elsewhere (no other server, or it
    stalled too often)."""
    why = (
        f"it stalled on {stalls} servers"
        if elsewhere
        else "no other ComfyUI server can take it now"
    )
    return BadGateway(
        f"ComfyUI at {stall.server} made no progress on the job's prompt for {stall.seconds:.0f} s "
        f"(no message, no queue change); the prompt was interrupted there, and {why}",
        code="comfyui_stalled",
        details={
            "jobId": job.id,
            "promptId": job.prompt_id,
            "server": stall.server,
            "silentSeconds": round(stall.seconds),
            "stalls": stalls,
        },
    )


def deadline_passed_waiting(
    job: Job, *, timeout: float, servers: Mapping[str, str | None]
) -> ServiceError:
    """The error of a job still in the service's queue at its deadline.

    ``servers`` maps each server to why it could not take the job (None: it was up).
    """
    if servers and all(reason is not None for reason in servers.values()):
        return no_server(servers)
    return GatewayTimeout(
        f"the job did not start within {timeout:g} s: every ComfyUI server was busy",
        details={"jobId": job.id, "status": job.status},
    )


def no_server(servers: Mapping[str, str | None]) -> ServiceError:
    """No ComfyUI server is reachable."""
    return ServiceUnavailable(
        "ComfyUI is not reachable; try again shortly",
        details={"servers": {url: reason or "not connected" for url, reason in servers.items()}},
    )


def no_output(output_nodes: Sequence[str], outputs: Mapping[str, Any]) -> ServiceError:
    """ComfyUI ended well but listed no image of the workflow's output nodes."""
    return BadGateway(
        "ComfyUI finished but reported no image from the workflow's output nodes",
        code="comfyui_no_output",
        details={"outputNodes": list(output_nodes), "outputs": dict(outputs)},
    )


def fetch_failed(prompt_id: str | None, image: OutputImage, reason: str) -> ServiceError:
    """An output image could not be fetched with /view, or not decoded."""
    return BadGateway(
        f"could not fetch the generated image {image.filename!r} from ComfyUI: {reason}",
        code="avatar_fetch_failed",
        details={"promptId": prompt_id, "image": image.to_dict()},
    )


def save_failed(job_id: str) -> ServiceError:
    """The avatar could not be written to OUTPUT_DIR (a storage outage is storage_unavailable)."""
    return ServiceError(
        "the avatar could not be saved on the service",
        code="avatar_save_failed",
        details={"jobId": job_id},
    )


def style_removed(style: str) -> ServiceError:
    """A resumed job's style is no longer configured."""
    return NotFound(
        f"style {style!r} is no longer configured",
        code="style_not_found",
        details={"style": style},
    )


def server_removed(server: str) -> ServiceError:
    """A resumed job's server is no longer configured."""
    return BadGateway(
        f"the job ran on {server}, which is no longer configured",
        code="comfyui_server_removed",
        details={"server": server},
    )


def already_ended(job: Job) -> Conflict:
    """Cancelling a job that has ended."""
    return Conflict(
        f"the job has already ended ({job.status})",
        code="job_already_ended",
        details={"jobId": job.id, "status": job.status},
    )


def error_for(exc: BaseException, job: Job) -> ServiceError:
    """The job's error record for an exception that ended it."""
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, PromptRejected):
        return BadGateway(
            f"ComfyUI rejected the workflow: {exc.message}",
            code="comfyui_rejected_prompt",
            details={"error": exc.error, "node_errors": exc.node_errors, "server": exc.server},
        )
    if isinstance(exc, ComfyUIUnavailable):
        return ServiceUnavailable(
            "ComfyUI is not reachable; try again shortly",
            details={"server": exc.server, "reason": exc.message},
        )
    if isinstance(exc, ComfyUIProtocolError):
        return BadGateway(
            f"ComfyUI answered unexpectedly: {exc.message}",
            code="comfyui_bad_response",
            details={"server": exc.server, "status": exc.status},
        )
    if isinstance(exc, PromptLost):
        return BadGateway(
            "ComfyUI lost the prompt (did the server restart?) and it was lost again after "
            "being queued once more",
            code="comfyui_lost_prompt",
            details={"promptId": job.prompt_id, "server": job.server},
        )
    if isinstance(exc, ComfyUIError):
        return BadGateway(exc.message, code="comfyui_error", details={"server": exc.server})
    return ServiceError("internal error while running the job; see the service log")


def is_expected(exc: BaseException) -> bool:
    """Whether an exception is a known way for a job to fail (else it is logged as a bug)."""
    return isinstance(exc, ServiceError | ComfyUIError | PromptLost)
