"""HTTP to one ComfyUI server: a urllib3 connection pool, its timeouts, and its errors.

Each job makes four calls (upload, prompt, history, view); urllib3 spends less than half of
httpx's CPU on each, which the latency benchmark measures. Failures become the ``ComfyUIError``
tree: ``ComfyUIUnavailable`` (refused, reset; ``timed_out`` when no answer came in time) and,
for a 5xx, ``ComfyUIProtocolError`` with its status. Other statuses are the caller's to read.
"""

from __future__ import annotations

import json
from typing import Any, Protocol
from urllib.parse import urlsplit

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError
from urllib3.exceptions import TimeoutError as NoAnswerInTime

from .errors import ComfyUIProtocolError, ComfyUIUnavailable

# Connections kept open per server for the jobs' threads (more are opened when needed).
POOL_SIZE = 20

Response = urllib3.BaseHTTPResponse


class Timeouts(Protocol):
    """Seconds to connect and to wait for an answer (``httpx.Timeout`` is one)."""

    @property
    def connect(self) -> float | None: ...

    @property
    def read(self) -> float | None: ...


class Transport:
    """Requests to one server under its base URL (a path prefix is kept, as behind a proxy)."""

    def __init__(self, base_url: str, timeout: Timeouts) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self._prefix = urlsplit(base_url).path
        self._pool = urllib3.connection_from_url(
            base_url,
            maxsize=POOL_SIZE,
            timeout=urllib3.Timeout(connect=timeout.connect, read=timeout.read),
            retries=False,
        )

    def request(
        self, method: str, path: str, *, within: float | None = None, **options: Any
    ) -> Response:
        """One request (``json=``, ``fields=``: a query, or a multipart body for POST), within
        ``within`` seconds when given, if shorter than the client's own timeouts."""
        if within is not None:
            options["timeout"] = self._bounded(within)
        try:
            response = self._pool.request(method, self._prefix + path, **options)
        except NewConnectionError as exc:  # a kind of connect timeout to urllib3: refused first
            raise self._unreachable(exc) from exc
        except NoAnswerInTime as exc:
            raise ComfyUIUnavailable(
                f"ComfyUI at {self.base_url} did not answer {method} {path} in time ({exc})",
                server=self.base_url,
                timed_out=True,
            ) from exc
        except (HTTPError, OSError) as exc:
            raise self._unreachable(exc) from exc
        if response.status >= 500:
            raise ComfyUIProtocolError(
                f"{method} {path} answered {response.status}: {body_start(response)!r}",
                server=self.base_url,
                status=response.status,
            )
        return response

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.close()

    def _bounded(self, seconds: float) -> urllib3.Timeout:
        seconds = max(0.01, seconds)
        read, connect = self.timeout.read, self.timeout.connect
        return urllib3.Timeout(
            connect=seconds if connect is None else min(connect, seconds),
            read=seconds if read is None else min(read, seconds),
        )

    def _unreachable(self, exc: Exception) -> ComfyUIUnavailable:
        return ComfyUIUnavailable(
            f"cannot reach ComfyUI at {self.base_url} ({exc})", server=self.base_url
        )


def json_or_empty(response: Response) -> Any:
    """The JSON of an answer, or {} for an empty or unreadable body."""
    if not response.data:
        return {}
    try:
        return json.loads(response.data)
    except ValueError:
        return {}


def body_start(response: Response) -> str:
    """The start of an answer's body, for an error message."""
    return response.data[:300].decode("utf-8", "replace")
