"""Avatar generation service: a REST layer in front of ComfyUI."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any, cast

from flask import Flask, Response
from flask.json.provider import DefaultJSONProvider
from flask.typing import ResponseReturnValue
from flask_cors import CORS
from flask_limiter import Limiter

from .config import Settings
from .http.errors import register_error_handlers
from .services import build_services

__version__ = "0.1.0"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
_SETTING_KEYS = frozenset(field.name.upper() for field in fields(Settings))
# A test may give the factory its own ComfyUI client class (same constructor as ComfyUIClient).
_FACTORY = "COMFYUI_CLIENT_FACTORY"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app: settings, services, routes, errors.

    Without ``config`` the settings come from the environment (``python app.py``, the worker
    command); with it, from the mapping alone (its setting names, upper case, and Flask's own
    keys): a test's app never reads the environment it runs in.
    """
    from_env = config is None
    config = dict(config or {})
    overrides = {key: config.pop(key) for key in list(config) if key.upper() in _SETTING_KEYS}
    settings = Settings.from_env(environ=None if from_env else {}, overrides=overrides)
    instance_path = settings.instance_path
    if not instance_path.is_absolute():
        instance_path = PROJECT_ROOT / instance_path
    app = Flask(__name__, instance_path=str(instance_path))
    app.config.update(config)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_bytes + 1024 * 1024
    # Job and avatar URLs are built from the Host header when PUBLIC_BASE_URL is unset: with
    # TRUSTED_HOSTS, a forged Host is a 400 (untrusted_host) before any view runs.
    app.config["TRUSTED_HOSTS"] = list(settings.trusted_hosts) or None
    assert isinstance(app.json, DefaultJSONProvider)  # Flask's own: records keep their order
    app.json.sort_keys = False
    services = build_services(
        settings,
        root=PROJECT_ROOT,
        instance_path=Path(app.instance_path),
        **({"client_factory": config[_FACTORY]} if _FACTORY in config else {}),
    )
    app.extensions["avatar_service"] = services
    register_error_handlers(app)

    from . import commands as cli
    from .http import agent_routes as agents
    from .http import page as webpage
    from .http import routes as api

    app.register_blueprint(api.bp)
    app.register_blueprint(webpage.bp)
    app.register_blueprint(agents.bp)
    _add_cors(app, settings)
    _add_rate_limits(app, settings, key_func=api.rate_limit_key, generate_cost=api.generate_cost)
    cli.init_app(app)
    # Background work (websockets, resuming jobs, webhooks) starts with the server (app.py) or
    # at the first request; CLI commands that never serve do not start it.
    app.before_request(services.start)
    return app


# Headers a browser may send, and response headers its scripts may read, across origins.
CORS_ALLOW_HEADERS = (
    "Authorization",
    "Content-Type",
    "Idempotency-Key",
    "Last-Event-ID",
    "Prefer",
    "X-Request-ID",
)
CORS_EXPOSE_HEADERS = (
    "Idempotent-Replayed",
    "Location",
    "Retry-After",
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "WWW-Authenticate",
)


def _add_cors(app: Flask, settings: Settings) -> None:
    """Answer browsers on the CORS_ORIGINS (none by default: same-origin only)."""
    if not settings.cors_origins:
        return
    CORS(
        app,
        origins=list(settings.cors_origins),
        allow_headers=list(CORS_ALLOW_HEADERS),
        expose_headers=list(CORS_EXPOSE_HEADERS),
        methods=["GET", "POST", "DELETE", "OPTIONS"],
        max_age=600,
        vary_header=True,
    )

    @app.after_request
    def _vary_on_origin(response: Response) -> Response:
        # flask-cors leaves Vary out with a single allowed origin, yet the answer still differs
        # by Origin (no CORS headers without it): caches must key on it.
        response.vary.add("Origin")
        return response


def _add_rate_limits(app: Flask, settings: Settings, *, key_func, generate_cost) -> None:
    """Limit generate and upload per API key (or client address), as RATE_LIMIT_* say.

    The rate-limit headers are written here rather than by Flask-Limiter, which would also put
    its own Retry-After on every answer of a limited route (a 202, or a 503 whose Retry-After
    says when ComfyUI may be back). An idempotent replay does not use up the budget, and is
    answered with its job even once the budget is spent (``generate_cost`` is 0 for it: a
    request of cost 0 passes a limit that is exactly spent).

    With neither limit set there is no limiter at all: its hooks would cost every request.
    """
    if not (settings.rate_limit_generate or settings.rate_limit_upload):
        return

    # Registered before the limiter's own hook, so it runs after it (Flask runs them in
    # reverse): the counts then include this request.
    @app.after_request
    def _rate_limit_headers(response: Response) -> Response:
        current = limiter.current_limit
        if current is None:
            return response
        response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
        response.headers["X-RateLimit-Remaining"] = str(current.remaining)
        response.headers["X-RateLimit-Reset"] = str(current.reset_at)
        if response.status_code == 429:
            response.headers["Retry-After"] = str(max(1, math.ceil(current.reset_at - time.time())))
        return response

    limiter = Limiter(
        key_func=key_func,
        app=app,
        storage_uri=settings.rate_limit_storage,
        storage_options={"socket_connect_timeout": 2, "socket_timeout": 2}
        if settings.rate_limit_storage.startswith("redis")
        else {},
        strategy="fixed-window",
        headers_enabled=False,
        swallow_errors=True,
        in_memory_fallback_enabled=True,
    )
    for endpoint, rate, cost in (
        ("api.generate_avatar", settings.rate_limit_generate, generate_cost),
        ("api.upload_image", settings.rate_limit_upload, 1),
    ):
        if rate:
            # Every view of the service is synchronous (Flask's type allows async ones too).
            view = cast(Callable[..., ResponseReturnValue], app.view_functions[endpoint])
            app.view_functions[endpoint] = limiter.limit(
                rate, methods=["POST"], deduct_when=_not_a_replay, cost=cost
            )(view)


def _not_a_replay(response: Response) -> bool:
    """Whether a request counts against its rate limit: all but idempotent replays."""
    return response.headers.get("Idempotent-Replayed") != "true"
