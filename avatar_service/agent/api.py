"""The agent's client of the service's ``/agents`` routes: one call per route, with timeouts.

What can go wrong, as the engine already understands it::

    DatabaseUnavailable   the service does not answer (refused, timed out, 5xx): for an agent,
                          the service is its database; it waits within the lease, as a
                          database worker waits for PostgreSQL
    LeaseLost             409 lease_lost: the agent no longer holds the job
    AgentUnknown          404 agent_not_found: the service forgot the agent; it registers again
    AgentRefused          401 or any other 4xx: a wrong token, or a bug; never retried
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from ..jobs.job import Job
from ..jobs.records import LeaseLost, from_row, to_row
from ..persistence.database import DatabaseUnavailable

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
# A claim waits at the service at most this long for a job (then asks again).
CLAIM_WAIT = 2.0


class AgentUnknown(RuntimeError):
    """The service does not know the agent (anymore): register again."""


class AgentRefused(RuntimeError):
    """The service refused a request for good (a wrong token, a malformed request)."""


class ServiceApi:
    """The ``/agents`` routes of one service, with one worker token."""

    def __init__(self, base_url: str, token: str, *, timeout: float = READ_TIMEOUT) -> None:
        self.base_url = base_url.rstrip("/")
        self.agent_id = ""
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT),
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    # -- the agent -------------------------------------------------------------------------

    def register(self, *, name: str, slots: int) -> dict[str, Any]:
        """Register (again, under the same id once it has one); the service's answer."""
        body: dict[str, Any] = {"name": name, "slots": slots}
        if self.agent_id:
            body["agentId"] = self.agent_id
        answer = self._call("POST", "", json=body)
        self.agent_id = answer["agentId"]
        return answer

    def heartbeat(self, beat: Mapping[str, Any]) -> dict[str, Any]:
        """Renew the agent and its leases; held, cancel, adopt (records), abandoned."""
        return self._call("POST", f"/{self.agent_id}/heartbeat", json=beat)

    def leave(self, withdrawn: Sequence[str]) -> None:
        """The agent stops: the service gives its jobs back to the queue."""
        self._call("DELETE", f"/{self.agent_id}", json={"withdrawn": list(withdrawn)})

    # -- jobs ------------------------------------------------------------------------------

    def claim(self, owner: str, exclude_styles: Sequence[str]) -> Job | None:
        """The oldest waiting job for this agent's server, waiting up to CLAIM_WAIT; or None."""
        answer = self._call(
            "POST",
            f"/{self.agent_id}/claim",
            json={"owner": owner, "excludeStyles": list(exclude_styles), "wait": CLAIM_WAIT},
            timeout=httpx.Timeout(CLAIM_WAIT + READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )
        return None if answer is None else from_row(answer["job"])

    def job(self, job_id: str) -> Job | None:
        """A job the agent holds; None when it holds it no more."""
        try:
            answer = self._call("GET", f"/{self.agent_id}/jobs/{job_id}", job_id=job_id)
        except LookupError:
            return None
        return from_row(answer["job"])

    def update(self, job: Job, changes: Mapping[str, Any]) -> Job:
        """Change fields of a held job's record (as the service keeps it)."""
        row = to_row(job)
        answer = self._call(
            "POST",
            f"/{self.agent_id}/jobs/{job.id}/update",
            json={"changes": {name: row[name] for name in changes}},
            job_id=job.id,
        )
        return from_row(answer["job"])

    def events(self, events: Sequence[Mapping[str, Any]]) -> list[str]:
        """Send events in order; the jobs the agent no longer holds."""
        answer = self._call("POST", f"/{self.agent_id}/events", json={"events": list(events)})
        return list(answer["lost"])

    def preview(self, job_id: str, content_type: str, data: bytes) -> None:
        """The latest live preview of a held job."""
        self._call(
            "PUT",
            f"/{self.agent_id}/jobs/{job_id}/preview",
            content=data,
            headers={"Content-Type": content_type},
            job_id=job_id,
        )

    def photo(self, image_name: str, crop: Mapping[str, Any] | None) -> bytes:
        """The photo of a held job, as ComfyUI should get it (cut to the job's crop)."""
        body = {"imageName": image_name, "crop": None if crop is None else dict(crop)}
        return self._send("POST", f"/{self.agent_id}/photo", json=body).content

    def requeue(self, job_id: str, *, abandon_prompt: bool) -> Job:
        """Give a held job back to the head of the queue."""
        answer = self._call(
            "POST",
            f"/{self.agent_id}/jobs/{job_id}/requeue",
            json={"abandonPrompt": abandon_prompt},
            job_id=job_id,
        )
        return from_row(answer["job"])

    def forget_abandoned(self, prompt_id: str) -> None:
        """An abandoned prompt was removed from this agent's server."""
        self._call("DELETE", f"/{self.agent_id}/abandoned/{prompt_id}")

    def finish(self, job_id: str, result: Mapping[str, Any], files: Mapping[str, bytes]) -> Job:
        """End a held job with its result and its avatars."""
        answer = self._call(
            "POST",
            f"/{self.agent_id}/jobs/{job_id}/finish",
            data={"result": json.dumps(result)},
            files=[
                ("avatar", (name, data, "application/octet-stream")) for name, data in files.items()
            ],
            job_id=job_id,
        )
        return from_row(answer["job"])

    # -- one call --------------------------------------------------------------------------

    def _call(self, method: str, path: str, *, job_id: str | None = None, **kwargs: Any) -> Any:
        response = self._send(method, path, job_id=job_id, **kwargs)
        if response.status_code == 204:
            return None
        return response.json()

    def _send(
        self, method: str, path: str, *, job_id: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        try:
            response = self._http.request(method, f"/agents{path}", **kwargs)
        except httpx.HTTPError as exc:
            raise DatabaseUnavailable(
                f"the service at {self.base_url} does not answer: {exc}"
            ) from exc
        if response.status_code < 400:
            return response
        code = _error_code(response)
        if response.status_code >= 500:
            raise DatabaseUnavailable(
                f"the service at {self.base_url} answered {response.status_code} ({code})"
            )
        if code == "lease_lost":
            raise LeaseLost(job_id or "", self.agent_id)
        if code == "agent_not_found":
            raise AgentUnknown(
                f"the service at {self.base_url} does not know agent {self.agent_id}"
            )
        if code == "job_not_found" and job_id is not None:
            raise LookupError(job_id)
        raise AgentRefused(
            f"the service at {self.base_url} refused {method} /agents{path}: "
            f"{response.status_code} {code}: {_error_message(response)}"
        )


def _error_code(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


def _error_message(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
