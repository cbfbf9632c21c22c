"""Avatar generation service: a REST layer in front of ComfyUI."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from flask import Flask

from .config import Settings
from .errors import register_error_handlers
from .services import Services

PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SETTING_KEYS = frozenset(field.name.upper() for field in fields(Settings))


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings from env (overridden by ``config``), services, routes, errors."""
    config = dict(config or {})
    overrides = {key: config.pop(key) for key in list(config) if key.upper() in _SETTING_KEYS}
    settings = Settings.from_env(overrides=overrides)
    instance_path = settings.instance_path
    if not instance_path.is_absolute():
        instance_path = PROJECT_ROOT / instance_path
    app = Flask(__name__, instance_path=str(instance_path))
    app.config.update(config)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1024 * 1024
    # Job and avatar URLs are built from the Host header when PUBLIC_BASE_URL is unset: with
    # TRUSTED_HOSTS, a forged Host is a 400 (untrusted_host) before any view runs.
    app.config["TRUSTED_HOSTS"] = list(settings.trusted_hosts) or None
    app.json.sort_keys = False
    services = Services.build(settings, root=PROJECT_ROOT, instance_path=Path(app.instance_path))
    app.extensions["avatar_service"] = services
    register_error_handlers(app)

    from . import api, cli, webpage

    app.register_blueprint(api.bp)
    app.register_blueprint(webpage.bp)
    cli.init_app(app)
    # Background work (websockets, resuming jobs, webhooks) starts with the server (app.py) or
    # at the first request; CLI commands that never serve do not start it.
    app.before_request(services.start)
    return app
