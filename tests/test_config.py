"""Settings: every bad value stops the service with a message naming the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from avatar_service.config import ConfigError, Settings


@pytest.mark.parametrize(
    ("environ", "variable"),
    [
        ({"PORT": "abc"}, "PORT"),
        ({"PORT": "99999"}, "PORT"),
        ({"PORT": "0"}, "PORT"),
        ({"HOST": " "}, "HOST"),
        ({"JOB_TIMEOUT": "nan"}, "JOB_TIMEOUT"),
        ({"JOB_TIMEOUT": "inf"}, "JOB_TIMEOUT"),
        ({"JOB_TIMEOUT": "0"}, "JOB_TIMEOUT"),
        ({"SYNC_WAIT": "-1"}, "SYNC_WAIT"),
        ({"MAX_IMAGE_PIXELS": "0"}, "MAX_IMAGE_PIXELS"),
        ({"MIN_IMAGE_SIDE": "-5"}, "MIN_IMAGE_SIDE"),
        ({"THREADS": "2"}, "THREADS"),
        ({"LOG_LEVEL": "verbose"}, "LOG_LEVEL"),
        ({"DEBUG": "maybe"}, "DEBUG"),
        ({"COMFYUI_URL": "ftp://x"}, "COMFYUI_URL"),
        ({"COMFYUI_URL": "http://"}, "COMFYUI_URL"),
        ({"COMFYUI_URL": " , "}, "COMFYUI_URL"),
        ({"UPLOAD_URL": "localhost:9000/upload"}, "UPLOAD_URL"),
        ({"WEBHOOK_MAX_ATTEMPTS": "0"}, "WEBHOOK_MAX_ATTEMPTS"),
        ({"FACE_POLICY": "always"}, "FACE_POLICY"),
        ({"FACE_MULTIPLE": "all"}, "FACE_MULTIPLE"),
        ({"FACE_MARGIN": "-0.1"}, "FACE_MARGIN"),
        ({"FACE_MARGIN": "nan"}, "FACE_MARGIN"),
        ({"FACE_MARGIN": "11"}, "FACE_MARGIN"),
        ({"CORS_ORIGINS": "app.example.com"}, "CORS_ORIGINS"),
        ({"API_KEYS": "short"}, "API_KEYS"),
        ({"API_KEYS_FILE": "/no/such/keys.txt"}, "API_KEYS_FILE"),
        ({"ADMIN_API_KEYS": "admin-0123456789abcdef"}, "ADMIN_API_KEYS"),
        ({"RATE_LIMIT_GENERATE": "lots"}, "RATE_LIMIT_GENERATE"),
        ({"RATE_LIMIT_UPLOAD": "10 per fortnight"}, "RATE_LIMIT_UPLOAD"),
        ({"RATE_LIMIT_STORAGE": "memcached://x"}, "RATE_LIMIT_STORAGE"),
        ({"TOKEN_TTL": "0"}, "TOKEN_TTL"),
        ({"DATABASE_URL": "mysql://db/avatars"}, "DATABASE_URL"),
        ({"DATABASE_POOL_SIZE": "0"}, "DATABASE_POOL_SIZE"),
        ({"LOCAL_WORKERS": "false"}, "LOCAL_WORKERS"),
        ({"WORKER_LEASE": "0"}, "WORKER_LEASE"),
        ({"IDEMPOTENCY_TTL": "-1"}, "IDEMPOTENCY_TTL"),
        ({"RETENTION_HOURS": "-1"}, "RETENTION_HOURS"),
        ({"RETENTION_INTERVAL": "0"}, "RETENTION_INTERVAL"),
        ({"LOG_FORMAT": "xml"}, "LOG_FORMAT"),
        ({"MAX_CONCURRENT_DECODES": "0"}, "MAX_CONCURRENT_DECODES"),
        ({"MAX_CONCURRENT_DECODES": "1.5"}, "MAX_CONCURRENT_DECODES"),
        ({"DECODE_WAIT": "-1"}, "DECODE_WAIT"),
    ],
)
def test_bad_settings_are_refused_by_name(environ, variable):
    """Each bad value raises ConfigError whose message names its variable."""
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env(environ)


def test_defaults_and_parsing():
    """Unset variables take their defaults; lists, booleans, paths and numbers are parsed."""
    settings = Settings.from_env(
        {
            "COMFYUI_URL": "http://gpu1:8188, http://gpu2:8188",
            "DEBUG": "yes",
            "UPLOAD_DIR": "/data/up",
            "JOB_TIMEOUT": "90",
        }
    )
    assert settings.comfyui_url == ("http://gpu1:8188", "http://gpu2:8188")
    assert settings.debug is True
    assert settings.upload_dir == Path("/data/up")
    assert settings.job_timeout == 90.0
    assert settings.sync_wait == Settings().sync_wait
    assert settings.max_upload_bytes == 10 * 1024 * 1024


def test_unknown_override_is_refused():
    """An override naming no setting is a mistake, not silently ignored."""
    with pytest.raises(ConfigError, match="NOPE"):
        Settings.from_env({}, overrides={"NOPE": 1})


def test_secrets_stay_out_of_the_settings_repr():
    """API keys, the token secret and the metrics key never show in a printed Settings."""
    settings = Settings.from_env(
        {
            "API_KEYS": "user-key-0123456789ab",
            "ADMIN_API_KEYS": "admin-key-0123456789ab",
            "TOKEN_SECRET": "token-secret-value",
            "METRICS_KEY": "metrics-key-value",
            "CORS_ORIGINS": "https://app.example.com, http://localhost:3000",
            "RATE_LIMIT_GENERATE": "10/minute; 100/hour",
        }
    )
    text = repr(settings)
    for secret in ("user-key", "admin-key", "token-secret", "metrics-key"):
        assert secret not in text
    assert settings.cors_origins == ("https://app.example.com", "http://localhost:3000")
    assert settings.rate_limit_generate == "10/minute; 100/hour"


def test_every_setting_is_documented():
    """Each setting is in .env.example and in the settings table of docs/settings.md."""
    from dataclasses import fields

    root = Path(__file__).resolve().parents[1]
    example = (root / ".env.example").read_text(encoding="utf-8")
    table = (root / "docs" / "settings.md").read_text(encoding="utf-8")
    for field in fields(Settings):
        name = field.name.upper()
        assert f"{name}=" in example, f"{name} is missing from .env.example"
        assert f"| `{name}` |" in table, f"{name} is missing from the table in docs/settings.md"
