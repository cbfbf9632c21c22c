"""Settings: read once from the environment (and `.env`), typed, validated at start."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from dataclasses import field as setting
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from limits import parse_many

# FACE_POLICY: detect no face, prefer a face crop, or require a face; FACE_MULTIPLE: with
# several faces, frame the largest or refuse the photo (``photos.framing`` applies both).
FACE_POLICIES = ("off", "prefer", "require")
MULTIPLE_FACE_RULES = ("largest", "refuse")


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
    comfyui_slots: int = 2
    comfyui_down_grace: float = 10.0
    comfyui_stall_timeout: float = 300.0
    job_timeout: float = 600.0
    max_active_jobs: int = 1024
    max_queued_jobs: int = 1024
    sync_wait: float = 120.0
    max_upload_mb: float = 10.0
    max_image_pixels: int = 40_000_000
    min_image_side: int = 64
    face_policy: str = "prefer"
    face_multiple: str = "largest"
    face_margin: float = 0.8
    max_concurrent_decodes: int = 2
    decode_wait: float = 60.0
    upload_dir: Path = Path("uploads")
    output_dir: Path = Path("generated_avatar")
    storage_url: str = ""
    s3_endpoint_url: str = ""
    storage_public_reads: bool = False
    storage_link_ttl: float = 300.0
    storage_connect_timeout: float = 5.0
    storage_read_timeout: float = 30.0
    storage_max_attempts: int = 3
    strip_avatar_metadata: bool = True
    workflows_dir: Path = Path("workflows")
    instance_path: Path = Path("instance")
    database_url: str = setting(default="", repr=False)
    database_pool_size: int = 10
    local_workers: bool = True
    worker_lease: float = 15.0
    default_style: str = "avatar"
    public_base_url: str = ""
    trusted_hosts: tuple[str, ...] = ()
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
    delivery_deadline: float = 3600.0
    host: str = "127.0.0.1"
    port: int = 5000
    threads: int = 288
    debug: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    cors_origins: tuple[str, ...] = ()
    api_keys: tuple[str, ...] = setting(default=(), repr=False)
    api_keys_file: str = ""
    admin_api_keys: tuple[str, ...] = setting(default=(), repr=False)
    worker_tokens: tuple[str, ...] = setting(default=(), repr=False)
    token_secret: str = setting(default="", repr=False)
    token_ttl: float = 3600.0
    rate_limit_generate: str = ""
    rate_limit_upload: str = ""
    rate_limit_storage: str = "memory://"
    idempotency_ttl: float = 86400.0
    metrics_key: str = setting(default="", repr=False)
    retention_hours: float = 0.0
    retention_interval: float = 600.0

    @classmethod
    def env_values(cls, environ: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment variables that name a setting, as they are (unparsed)."""
        environ = os.environ if environ is None else environ
        names = (field.name.upper() for field in fields(cls))
        return {name: environ[name] for name in names if name in environ}

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
                values[field.name] = _PARSERS[_FIELD_TYPES[field.name]](raw)
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
        self._validate_servers()
        self._validate_serving()
        self._validate_access()

    def _validate_servers(self) -> None:
        """URLs, numbers, the database and the workers."""
        if not self.comfyui_url and self.local_workers:
            raise ConfigError(
                "COMFYUI_URL must name at least one ComfyUI server (or LOCAL_WORKERS=false: "
                "the servers are other processes')"
            )
        for name in (
            "comfyui_url",
            "upload_url",
            "webhook_url",
            "public_base_url",
            "s3_endpoint_url",
        ):
            value = getattr(self, name)
            for url in value if isinstance(value, tuple) else (value,) if value else ():
                parts = urlsplit(url)
                if parts.scheme not in {"http", "https"} or not parts.hostname:
                    raise ConfigError(
                        f"{name.upper()}: {url!r} is not an http:// or https:// URL with a host"
                    )
        for name, low in _NUMBER_MINIMUMS.items():
            value = getattr(self, name)
            too_small = value <= low if name in _POSITIVE else value < low
            if not math.isfinite(value) or too_small:
                rule = "greater than 0" if name in _POSITIVE else f"at least {low}"
                raise ConfigError(f"{name.upper()}={value!r}: must be a finite number, {rule}")
        self._validate_storage()
        if self.database_url and not self.database_url.startswith(_DATABASE_SCHEMES):
            raise ConfigError(
                "DATABASE_URL: empty (the SQLite file in INSTANCE_PATH), postgresql://user@host/"
                "db or sqlite:///path"
            )
        shared = self.database_url.startswith(_DATABASE_SCHEMES[:2])
        if not self.local_workers and not shared and not self.worker_tokens:
            raise ConfigError(
                "LOCAL_WORKERS=false needs a shared DATABASE_URL (postgresql://...) or "
                "WORKER_TOKENS: without workers of its own a process only serves jobs that "
                "workers elsewhere (database workers, or worker agents) run"
            )

    def _validate_storage(self) -> None:
        """STORAGE_URL and the settings that only a bucket uses."""
        if self.storage_url:
            parts = urlsplit(self.storage_url)
            if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
                raise ConfigError(
                    f"STORAGE_URL={self.storage_url!r}: empty (the local folders UPLOAD_DIR and "
                    "OUTPUT_DIR) or s3://BUCKET/PREFIX"
                )
        elif self.storage_public_reads:
            raise ConfigError(
                "STORAGE_PUBLIC_READS=true needs a bucket (STORAGE_URL=s3://...): local files "
                "are always streamed by the service"
            )

    def _validate_serving(self) -> None:
        """Where the service listens, faces, logging."""
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"PORT={self.port}: must be from 1 to 65535")
        if not self.host.strip():
            raise ConfigError("HOST must not be empty (0.0.0.0 listens on every address)")
        if self.face_policy not in FACE_POLICIES:
            raise ConfigError(
                f"FACE_POLICY={self.face_policy!r}: one of {', '.join(FACE_POLICIES)}"
            )
        if self.face_multiple not in MULTIPLE_FACE_RULES:
            raise ConfigError(
                f"FACE_MULTIPLE={self.face_multiple!r}: one of {', '.join(MULTIPLE_FACE_RULES)}"
            )
        if not 0 <= self.face_margin <= _FACE_MARGIN_MAX:
            raise ConfigError(
                f"FACE_MARGIN={self.face_margin!r}: must be a number from 0 to {_FACE_MARGIN_MAX}"
            )
        for host in self.trusted_hosts:
            if not _TRUSTED_HOST.fullmatch(host):
                raise ConfigError(
                    f"TRUSTED_HOSTS: {host!r} is not a host name (no scheme, port or path; "
                    "a leading dot allows every subdomain)"
                )
        if self.log_level.upper() not in _LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL={self.log_level!r}: one of {', '.join(_LOG_LEVELS)}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"LOG_FORMAT={self.log_format!r}: text or json")

    def _validate_access(self) -> None:
        """Browsers on other origins, rate limits, API keys."""
        for origin in self.cors_origins:
            parts = urlsplit(origin)
            if origin != "*" and (parts.scheme not in {"http", "https"} or not parts.hostname):
                raise ConfigError(
                    f"CORS_ORIGINS: {origin!r} is not an origin like https://app.example.com (or *)"
                )
        for name in ("rate_limit_generate", "rate_limit_upload"):
            value = getattr(self, name)
            if value:
                try:
                    parse_many(value)
                except ValueError:
                    raise ConfigError(
                        f"{name.upper()}={value!r}: a rate like '10/minute' or "
                        "'5 per second; 100 per hour'"
                    ) from None
        if urlsplit(self.rate_limit_storage).scheme not in {"memory", "redis", "rediss"}:
            raise ConfigError(
                f"RATE_LIMIT_STORAGE={self.rate_limit_storage!r}: memory:// or redis://host:port"
            )
        if self.api_keys_file and not Path(self.api_keys_file).is_file():
            raise ConfigError(f"API_KEYS_FILE={self.api_keys_file!r}: no such file")
        if self.admin_api_keys and not (self.api_keys or self.api_keys_file):
            raise ConfigError("ADMIN_API_KEYS needs API_KEYS or API_KEYS_FILE (keys are off)")
        for key in (*self.api_keys, *self.admin_api_keys, *self.worker_tokens):
            if len(key) < 16 or not key.isprintable() or " " in key:
                raise ConfigError(
                    "API_KEYS, ADMIN_API_KEYS, WORKER_TOKENS: each key must be at least 16 "
                    "printable characters without spaces"
                )
        if set(self.worker_tokens) & {*self.api_keys, *self.admin_api_keys}:
            raise ConfigError("WORKER_TOKENS: a worker token must not also be an API key")

    @property
    def max_upload_bytes(self) -> int:
        """The largest photo accepted, in bytes."""
        return int(self.max_upload_mb * 1024 * 1024)


_DATABASE_SCHEMES = ("postgresql://", "postgres://", "sqlite:///")
_TRUSTED_HOST = re.compile(r"\.?[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FACE_MARGIN_MAX = 10.0
# Numeric settings and their smallest allowed value (those in _POSITIVE must exceed 0).
_NUMBER_MINIMUMS: dict[str, float] = {
    "comfyui_connect_timeout": 0,
    "comfyui_read_timeout": 0,
    "comfyui_poll_interval": 0,
    "comfyui_reconnect_max": 0,
    "job_timeout": 0,
    "sync_wait": 0,
    "max_active_jobs": 1,
    "max_queued_jobs": 1,
    "comfyui_slots": 1,
    "comfyui_down_grace": 0,
    "comfyui_stall_timeout": 0,
    "max_upload_mb": 0,
    "max_image_pixels": 4096,
    "min_image_side": 1,
    "max_concurrent_decodes": 1,
    "decode_wait": 0,
    "upload_timeout": 0,
    "upload_max_attempts": 1,
    "upload_backoff": 0,
    "webhook_timeout": 0,
    "webhook_max_attempts": 1,
    "webhook_backoff": 0,
    "delivery_deadline": 0,
    "threads": 4,
    "database_pool_size": 1,
    "worker_lease": 0,
    "token_ttl": 0,
    "idempotency_ttl": 0,
    "retention_hours": 0,
    "retention_interval": 0,
    "storage_link_ttl": 1,
    "storage_connect_timeout": 0,
    "storage_read_timeout": 0,
    "storage_max_attempts": 1,
}
_POSITIVE = frozenset(
    {
        "comfyui_connect_timeout",
        "comfyui_read_timeout",
        "comfyui_poll_interval",
        "comfyui_reconnect_max",
        "comfyui_down_grace",
        "job_timeout",
        "max_upload_mb",
        "upload_timeout",
        "webhook_timeout",
        "delivery_deadline",
        "worker_lease",
        "token_ttl",
        "idempotency_ttl",
        "retention_interval",
        "storage_connect_timeout",
        "storage_read_timeout",
    }
)

_PARSERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "float": float,
    "int": int,
    "bool": _as_bool,
    "Path": Path,
    "tuple[str, ...]": _as_list,
}
_FIELD_TYPES: dict[str, str] = {field.name: str(field.type) for field in fields(Settings)}
