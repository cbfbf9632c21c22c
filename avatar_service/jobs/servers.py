"""What the dispatcher knows of each ComfyUI server: up or given up, and styles withheld."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from ..comfyui import ComfyUIClient, PromptRejected, catalogue_signature

logger = logging.getLogger(__name__)


class ServerState:
    """One server's health as the dispatcher sees it, and the styles it may not be given."""

    def __init__(self, client: ComfyUIClient) -> None:
        self.client = client
        self.url = client.base_url
        # Wall-clock time the server was given up (unreachable past the grace period), or None.
        self.down_since: float | None = None
        # Until when (wall clock) the server gets no jobs: a prompt stalled there, or None.
        self.stalled_until: float | None = None
        self._lock = threading.Lock()
        self._catalogue: str | None = None
        # style -> (catalogue signature when it was withheld, the rejection)
        self._withheld: dict[str, tuple[str | None, PromptRejected]] = {}

    @property
    def usable(self) -> bool:
        """Whether the server may be given jobs now (websocket up, not given up, not stalled)."""
        return self.client.connected and self.down_since is None and not self.stalled

    @property
    def stalled(self) -> bool:
        """Whether a prompt stalled here lately (the server gets no jobs for a while)."""
        return self.stalled_until is not None and time.time() < self.stalled_until

    def stall(self, *, cooldown: float) -> None:
        """A prompt made no progress here: no new jobs for ``cooldown`` seconds."""
        self.stalled_until = time.time() + cooldown

    def unreachable_for(self) -> float:
        """Seconds since the websocket was last up (0 while it is up)."""
        if self.client.connected:
            return 0.0
        return time.monotonic() - self.client.disconnected_since

    def reason(self) -> str | None:
        """Why the server cannot take jobs now (None when it can)."""
        if self.usable:
            return None
        if self.client.connected and self.down_since is None and self.stalled:
            return "a prompt made no progress there (stalled); no jobs for a while"
        return self.client.last_error or "not connected"

    def withhold(self, style: str, rejection: PromptRejected) -> None:
        """The server failed the style's validation: give it no more jobs of that style."""
        with self._lock:
            self._withheld[style] = (self._catalogue, rejection)
        logger.warning(
            "ComfyUI %s cannot run style %r (%s): not given that style until its "
            "/object_info changes",
            self.url,
            style,
            rejection.message,
        )

    def withheld(self) -> dict[str, PromptRejected]:
        """The styles withheld from this server, with the rejection that caused it."""
        with self._lock:
            return {style: rejection for style, (_, rejection) in self._withheld.items()}

    def catalogue_read(self, object_info: Mapping[str, Any]) -> None:
        """The server's /object_info was read: a changed catalogue lifts every withholding."""
        signature = catalogue_signature(object_info)
        with self._lock:
            self._catalogue = signature
            lifted = [style for style, (seen, _) in self._withheld.items() if seen != signature]
            for style in lifted:
                del self._withheld[style]
        for style in lifted:
            logger.info("ComfyUI %s: /object_info changed; style %r offered again", self.url, style)
