"""Entry point: ``python app.py`` serves the avatar service with a production WSGI server."""

from __future__ import annotations

import logging
import signal
import sys

from dotenv import load_dotenv

load_dotenv()

from avatar_service import create_app  # noqa: E402  (settings are read after .env is loaded)
from avatar_service.config import ConfigError, Settings  # noqa: E402
from avatar_service.photos.memory import limit_malloc_arenas  # noqa: E402

logger = logging.getLogger("avatar_service")
SHUTDOWN_GRACE_SECONDS = 1.0
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def main() -> int:
    """Start the service; debug mode (Flask's reloader and debugger) only when DEBUG=true."""
    limit_malloc_arenas()  # before any thread starts
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings)
    # One line per outbound request is noise at INFO; failures are logged by the service itself.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        app = create_app()
    except ConfigError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    services = app.extensions["avatar_service"]

    def stop(signum: int, _frame: object) -> None:
        # Answer the requests still waiting (202 + Location) and end event streams, give the
        # answers a moment to go out, then leave the serving loop; unfinished jobs are taken up
        # again by the next start.
        logger.info("stopping on signal %d", signum)
        services.begin_shutdown()
        signal.signal(signal.SIGALRM, lambda *_: sys.exit(0))
        signal.setitimer(signal.ITIMER_REAL, SHUTDOWN_GRACE_SECONDS)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        if settings.debug:
            logger.warning("DEBUG=true: Flask's development server with the debugger is on")
            _start(services, settings)
            app.run(host=settings.host, port=settings.port, debug=True, use_reloader=False)
        else:
            from avatar_service.http.server import create_server, serve

            try:  # bind first: a second process on a busy port stops before touching any job
                server = create_server(
                    app,
                    host=settings.host,
                    port=settings.port,
                    threads=settings.threads,
                    channel_timeout=max(120, int(settings.sync_wait) + 30),
                )
            except OSError as exc:
                logger.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc)
                return 2
            _start(services, settings)
            return serve(server)
    except ConfigError as exc:
        logger.error("cannot start: %s", exc)
        return 2
    finally:
        services.close()
    return 0


def configure_logging(settings: Settings) -> None:
    """One line per record: text, or JSON objects (with the request's fields) if LOG_FORMAT=json."""
    handler = logging.StreamHandler()
    if settings.log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        handler.setFormatter(
            JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            )
        )
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=settings.log_level.upper(), handlers=[handler], force=True)


def _start(services, settings: Settings) -> None:
    services.start()
    if not (settings.public_base_url or settings.trusted_hosts) and settings.host not in _LOOPBACK:
        logger.warning(
            "listening on %s with neither PUBLIC_BASE_URL nor TRUSTED_HOSTS set: job and avatar "
            "URLs are built from each request's Host header; set one of them",
            settings.host,
        )
    servers = (
        f"ComfyUI at {', '.join(settings.comfyui_url)}"
        if settings.local_workers
        else "no ComfyUI of its own (LOCAL_WORKERS=false)"
    )
    if settings.worker_tokens:
        servers += "; worker agents admitted (WORKER_TOKENS)"
    logger.info(
        "avatar service on http://%s:%d, %s, styles %s",
        settings.host,
        settings.port,
        servers,
        ", ".join(sorted(services.workflows)),
    )
    # 0.0.0.0 / :: listen everywhere but cannot be opened in a browser; this machine can.
    host = "127.0.0.1" if settings.host in {"0.0.0.0", "::", ""} else settings.host
    logger.info("open the web page: http://%s:%d/", host, settings.port)


if __name__ == "__main__":
    sys.exit(main())
