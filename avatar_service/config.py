"""Settings: read once from the environment (and `.env`), typed, validated at start."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A setting has a value the service cannot run with."""


def _as_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _as_list(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Every setting of the service; the env variable of each field is its upper-case name."""

    comfyui_url: tuple[str, ...] = ("http://127.0.0.1:8188",)
    comfyui_connect_timeout: float = 5.0
    comfyui_read_timeout: float = 30.0
    comfyui_poll_interval: float = 5.0
    comfyui_reconnect_max: float = 10.0
    job_timeout: float = 600.0
    max_active_jobs: int = 256
    sync_wait: float = 60.0
    max_upload_mb: float = 10.0
    max_image_pixels: int = 40_000_000
    min_image_side: int = 64
    upload_dir: Path = Path("uploads")
    output_dir: Path = Path("generated_avatar")
    workflows_dir: Path = Path("workflows")
    default_style: str = "avatar"
    public_base_url: str = ""
    upload_url: str = ""
    upload_field_name: str = "file"
    upload_timeout: float = 30.0
    upload_max_attempts: int = 3
    upload_backoff: float = 0.5
    webhook_url: str = ""
    webhook_secret: str = ""
    webhook_allowed_urls: tuple[str, ...] = ()
    webhook_timeout: float = 10.0
    webhook_max_attempts: int = 6
    webhook_backoff: float = 1.0
    host: str = "127.0.0.1"
    port: int = 5000
    threads: int = 32
    debug: bool = False
    log_level: str = "INFO"

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Build settings from env variables, then apply explicit overrides (for tests)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in fields(cls):
            raw = environ.get(field.name.upper())
            if raw is None:
                continue
            try:
                values[field.name] = _PARSERS[field.type](raw)
            except ValueError as exc:
                raise ConfigError(f"{field.name.upper()}={raw!r}: {exc}") from None
        for key, value in (overrides or {}).items():
            name = key.lower()
            kind = _FIELD_TYPES.get(name)
            if kind is None:
                raise ConfigError(f"unknown setting {key!r}")
            if isinstance(value, str):
                value = _PARSERS[kind](value)
            elif kind == "tuple[str, ...]":
                value = tuple(value)
            elif kind == "Path":
                value = Path(value)
            values[name] = value
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse settings the service cannot run with, naming the variable."""
        if not self.comfyui_url:
            raise ConfigError("COMFYUI_URL must name at least one ComfyUI server")
        for url in self.comfyui_url:
            if not url.startswith(("http://", "https://")):
                raise ConfigError(f"COMFYUI_URL entry {url!r} must start with http:// or https://")
        for name in (
            "comfyui_connect_timeout",
            "comfyui_read_timeout",
            "comfyui_poll_interval",
            "job_timeout",
            "max_upload_mb",
            "upload_timeout",
            "webhook_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.upper()} must be greater than 0")
        if self.sync_wait < 0 or self.upload_backoff < 0 or self.webhook_backoff < 0:
            raise ConfigError("SYNC_WAIT, UPLOAD_BACKOFF and WEBHOOK_BACKOFF must be 0 or more")
        if self.max_active_jobs < 1:
            raise ConfigError("MAX_ACTIVE_JOBS must be at least 1")
        if self.threads < 4:
            raise ConfigError("THREADS must be at least 4")
        if self.upload_max_attempts < 1 or self.webhook_max_attempts < 1:
            raise ConfigError("UPLOAD_MAX_ATTEMPTS and WEBHOOK_MAX_ATTEMPTS must be at least 1")
        for name in ("upload_url", "webhook_url", "public_base_url"):
            value = getattr(self, name)
            if value and not value.startswith(("http://", "https://")):
                raise ConfigError(f"{name.upper()} must start with http:// or https://")

    @property
    def max_upload_bytes(self) -> int:
        """The largest photo accepted, in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "float": float,
    "int": int,
    "bool": _as_bool,
    "Path": Path,
    "tuple[str, ...]": _as_list,
}
_FIELD_TYPES: dict[str, str] = {field.name: str(field.type) for field in fields(Settings)}
