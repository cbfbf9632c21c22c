"""Photos a ComfyUI server already has: each photo is sent to a server once, not once per job.

A user makes several avatars from one photo (styles, seeds, genders); each job used to send the
same bytes with ``POST /upload/image`` again. ``SentPhotos`` remembers, per server, the LoadImage
value ComfyUI answered for a photo (its key: what the bytes are made from, a stored photo and
its crop), so a later job queues its prompt at once.

What a server has can be lost behind the service's back: a server started afresh with an empty
input folder. So the memory is cleared whenever the websocket connects (a restart drops it), and
a prompt ComfyUI refuses because the LoadImage file is missing (``PromptRejected.refuses_input``)
makes the run forget the photo, send it again and queue once more. The memory is bounded
(``KEPT``, least recently used out first): nothing grows with the number of jobs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable

# Photos remembered per server; a photo forgotten is only sent again.
KEPT = 4096


class SentPhotos:
    """The LoadImage value of each photo already sent to one server (thread-safe)."""

    def __init__(self, kept: int = KEPT) -> None:
        self.kept = kept
        self._names: OrderedDict[Hashable, str] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._names)

    def get(self, key: Hashable) -> str | None:
        """The LoadImage value the server gave this photo, if it was sent since it connected."""
        with self._lock:
            name = self._names.get(key)
            if name is not None:
                self._names.move_to_end(key)
            return name

    def add(self, key: Hashable, name: str) -> None:
        """The photo was sent; ComfyUI keeps it as ``name``."""
        with self._lock:
            self._names[key] = name
            self._names.move_to_end(key)
            while len(self._names) > self.kept:
                self._names.popitem(last=False)

    def forget(self, key: Hashable) -> None:
        """The server no longer has the photo."""
        with self._lock:
            self._names.pop(key, None)

    def clear(self) -> None:
        """The server may have started afresh: it may have none of them."""
        with self._lock:
            self._names.clear()
