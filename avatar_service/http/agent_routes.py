"""The routes worker agents call (``avatar-worker``): ``/agents/...``, admitted by WORKER_TOKENS.

Every request needs ``Authorization: Bearer <worker token>`` (compared in constant time, never
logged); API keys do not open these routes and worker tokens open no other. They are the
service's own protocol with its agents, described in docs/agents.md and left out of the public
OpenAPI document. Jobs travel as their record's columns (``jobs.records.to_row``).
"""

from __future__ import annotations

import hmac
import json
import time
from typing import Any

from flask import Blueprint, Response, current_app, request

from ..comfyui.workflows.templates import workflow_files
from ..errors import BadRequest, Unauthorized
from ..jobs.agents import HEARTBEAT_INTERVAL, AgentBeat, AgentDesk
from ..jobs.records import to_row
from ..services import Services

bp = Blueprint("agents", __name__, url_prefix="/agents")


def services() -> Services:
    """The one registry, built by create_app."""
    return current_app.extensions["avatar_service"]


def desk() -> AgentDesk:
    """The agents' desk (there is one whenever WORKER_TOKENS admits agents)."""
    found = services().agents
    assert found is not None  # admit() refused the request otherwise
    return found


@bp.before_request
def admit() -> None:
    """A known worker token, or 401."""
    tokens = services().settings.worker_tokens
    scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
    presented_bytes = presented.strip().encode()
    known = any(hmac.compare_digest(presented_bytes, token.encode()) for token in tokens)
    if not tokens or scheme.lower() != "bearer" or not known:
        raise Unauthorized(
            "worker agents need Authorization: Bearer <token>, a token in WORKER_TOKENS"
            + ("" if tokens else " (none is set: this service admits no agent)")
        )


def _body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="invalid_json")
    return body


def _field(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    """A field of the body, of type ``kind``; required unless it has a ``default``."""
    value = body.get(name, default)
    if value is None:
        raise BadRequest(f"{name}: required", code="invalid_agent")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BadRequest(f"{name}: must be a {kind.__name__}", code="invalid_agent")
    return value


@bp.post("")
def register() -> tuple[dict[str, Any], int]:
    """A new agent: its id, the lease and heartbeat it keeps, the styles and run settings."""
    body = _body()
    slots = _field(body, "slots", int, 2)
    if not 1 <= slots <= 64:
        raise BadRequest("slots: from 1 to 64", code="invalid_agent")
    agent_id = body.get("agentId")
    entry = desk().register(
        name=_field(body, "name", str),
        slots=slots,
        agent_id=agent_id if isinstance(agent_id, str) else None,
    )
    settings = services().settings
    return {
        "agentId": entry.id,
        "now": time.time(),
        "server": entry.server,
        "lease": settings.worker_lease,
        "heartbeatInterval": HEARTBEAT_INTERVAL,
        "jobTimeout": settings.job_timeout,
        "pollInterval": settings.comfyui_poll_interval,
        "stallTimeout": settings.comfyui_stall_timeout,
        "downGrace": settings.comfyui_down_grace,
        "styles": {name: workflow_files(w) for name, w in services().workflows.items()},
    }, 201


@bp.delete("/<agent_id>")
def leave(agent_id: str) -> dict[str, Any]:
    """The agent stops: its jobs go back to the queue (``withdrawn``: prompts it removed)."""
    body = request.get_json(silent=True) or {}
    withdrawn = body.get("withdrawn") if isinstance(body, dict) else None
    given_back = desk().leave(
        agent_id, withdrawn=[p for p in (withdrawn or []) if isinstance(p, str)]
    )
    return {"givenBack": given_back}


@bp.post("/<agent_id>/heartbeat")
def heartbeat(agent_id: str) -> dict[str, Any]:
    """Renew the agent and its jobs: held, cancelled, to adopt, prompts to remove."""
    body = _body()
    jobs = _field(body, "jobs", list, [])
    withheld = _field(body, "withheld", list, [])
    reason = body.get("reason")
    beat = AgentBeat(
        jobs=tuple(str(job) for job in jobs),
        usable=bool(body.get("usable")),
        reason=reason if isinstance(reason, str) else None,
        slots=_field(body, "slots", int, 1),
        withheld=tuple(str(style) for style in withheld),
    )
    return desk().heartbeat(agent_id, beat)


@bp.post("/<agent_id>/claim")
def claim(agent_id: str) -> Response | tuple[dict[str, Any], int]:
    """The oldest waiting job for the agent's server (waits up to ``wait`` seconds); 204: none."""
    body = _body()
    wait = body.get("wait", 0)
    if not isinstance(wait, int | float) or isinstance(wait, bool):
        raise BadRequest("wait: seconds", code="invalid_agent")
    exclude = _field(body, "excludeStyles", list, [])
    with services().long_requests:
        job = desk().claim(
            agent_id,
            _field(body, "owner", str),
            exclude_styles=[str(style) for style in exclude],
            wait=float(wait),
        )
    if job is None:
        return Response(status=204)
    return {"job": to_row(job)}, 200


@bp.get("/<agent_id>/jobs/<job_id>")
def job(agent_id: str, job_id: str) -> dict[str, Any]:
    """A job the agent holds."""
    return {"job": to_row(desk().job(agent_id, job_id))}


@bp.post("/<agent_id>/jobs/<job_id>/update")
def update(agent_id: str, job_id: str) -> dict[str, Any]:
    """Change the fields an agent may change (``changes``: columns of the record)."""
    changes = _field(_body(), "changes", dict)
    return {"job": to_row(desk().update(agent_id, job_id, changes))}


@bp.post("/<agent_id>/events")
def events(agent_id: str) -> dict[str, Any]:
    """Events of the agent's jobs, in order: ``[{jobId, kind, data}]``; ``lost``: jobs it no
    longer holds (their events were dropped)."""
    items = _field(_body(), "events", list)
    if not all(isinstance(item, dict) and isinstance(item.get("jobId"), str) for item in items):
        raise BadRequest("events: [{jobId, kind, data}]", code="invalid_agent")
    return {"lost": desk().events(agent_id, items)}


@bp.put("/<agent_id>/jobs/<job_id>/preview")
def preview(agent_id: str, job_id: str) -> Response:
    """The latest live preview of a held job (the body: a JPEG or PNG)."""
    content_type = request.mimetype
    if content_type not in {"image/jpeg", "image/png"}:
        raise BadRequest("a preview is image/jpeg or image/png", code="invalid_agent")
    desk().preview(agent_id, job_id, content_type, request.get_data())
    return Response(status=204)


@bp.post("/<agent_id>/photo")
def photo(agent_id: str) -> Response:
    """The photo of a held job as ComfyUI should get it (``imageName``, ``crop``: the job's)."""
    body = _body()
    crop = body.get("crop")
    image = desk().photo(
        agent_id, _field(body, "imageName", str), crop if isinstance(crop, dict) else None
    )
    return Response(image, mimetype="image/png")


@bp.post("/<agent_id>/jobs/<job_id>/requeue")
def requeue(agent_id: str, job_id: str) -> dict[str, Any]:
    """Give a held job back to the head of the queue."""
    abandon = bool(_body().get("abandonPrompt", True))
    return {"job": to_row(desk().give_back(agent_id, job_id, abandon_prompt=abandon))}


@bp.delete("/<agent_id>/abandoned/<prompt_id>")
def forget_abandoned(agent_id: str, prompt_id: str) -> Response:
    """The agent removed an abandoned prompt from its server."""
    desk().forget_abandoned(agent_id, prompt_id)
    return Response(status=204)


@bp.post("/<agent_id>/jobs/<job_id>/finish")
def finish(agent_id: str, job_id: str) -> dict[str, Any]:
    """End a held job: multipart ``result`` (JSON: status, error, timings, progress) and one
    file per avatar, named ``<jobId>_<index>.<ext>``."""
    try:
        result = json.loads(request.form.get("result", ""))
    except ValueError:
        raise BadRequest("result: a JSON object", code="invalid_json") from None
    if not isinstance(result, dict):
        raise BadRequest("result: a JSON object", code="invalid_json")
    files = {upload.filename or "": upload.read() for upload in request.files.getlist("avatar")}
    return {"job": to_row(desk().finish(agent_id, job_id, result, files))}
