"""What a server's ``/system_stats`` and ``/object_info`` answers mean to the service."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# What the stand-in ComfyUI (comfyui_standin) reports as its pytorch_version in /system_stats; a
# real ComfyUI reports the torch it runs (e.g. "2.14.1+cu130").
STANDIN_MARKER = "comfyui_standin"


def runs_standin(system_stats: Mapping[str, Any]) -> bool:
    """Whether a /system_stats answer comes from the stand-in ComfyUI rather than a real one."""
    system = system_stats.get("system")
    version = system.get("pytorch_version") if isinstance(system, Mapping) else None
    return isinstance(version, str) and STANDIN_MARKER in version


@dataclass(frozen=True)
class SystemStats:
    """What the service reads of a /system_stats answer."""

    comfyui_version: str | None
    standin: bool

    @classmethod
    def from_answer(cls, answer: Mapping[str, Any]) -> SystemStats:
        """Read GET /system_stats."""
        system = answer.get("system")
        version = system.get("comfyui_version") if isinstance(system, Mapping) else None
        return cls(
            comfyui_version=version if isinstance(version, str) else None,
            standin=runs_standin(answer),
        )


def catalogue_signature(object_info: Mapping[str, Any]) -> str:
    """A digest of a /object_info answer: it changes when the server's node classes, their
    inputs or their choices (checkpoints, samplers...) change."""
    return hashlib.sha256(json.dumps(object_info, sort_keys=True, default=str).encode()).hexdigest()


def catalogue_size(object_info: Mapping[str, Any]) -> int:
    """How many node classes a /object_info answer offers."""
    return len(object_info)
