"""A worker process: drives one ComfyUI server for the fleet that shares ``DATABASE_URL``.

``flask --app app worker --comfyui http://127.0.0.1:8188`` (or ``python -m
avatar_service.worker --comfyui ...``) starts it, typically on the GPU machine next to its
server. It joins the worker registry with a heartbeat, claims jobs from the shared queue while
its server has a free slot, writes their states, events and results through the database, and
on SIGTERM (or Ctrl-C) gives its unfinished jobs back to the queue at once and leaves. It
serves no HTTP: API replicas answer for every job, whichever process runs it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import Any

import click

from .config import ConfigError, Settings

logger = logging.getLogger(__name__)


def run_worker(
    comfyui: str, *, slots: int | None = None, config: dict[str, Any] | None = None
) -> int:
    """Run a worker for one ComfyUI server until SIGTERM/SIGINT; the process's exit status."""
    from . import create_app

    overrides: dict[str, Any] = {
        **Settings.env_values(),
        **(config or {}),
        "COMFYUI_URL": comfyui,
        "LOCAL_WORKERS": True,
    }
    if slots is not None:
        overrides["COMFYUI_SLOTS"] = slots
    try:
        settings = Settings.from_env(environ={}, overrides=overrides)
        if not settings.database_url.startswith(("postgresql://", "postgres://")):
            raise ConfigError(
                "a worker process needs a shared DATABASE_URL (postgresql://...); with the "
                "SQLite default, python app.py runs the workers for COMFYUI_URL itself"
            )
        app = create_app(overrides)
    except ConfigError as exc:
        logger.error("cannot start the worker: %s", exc)
        return 2
    services = app.extensions["avatar_service"]
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        logger.info("worker for %s stopping on signal %d: giving its jobs back", comfyui, signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        services.start()
        logger.info(
            "worker for ComfyUI %s joined the fleet on %s (%d slots)",
            comfyui,
            services.database.where,
            services.settings.comfyui_slots,
        )
        while not stopping.wait(1.0):
            pass
    finally:
        services.close()
    logger.info("worker for %s left the fleet", comfyui)
    return 0


@click.command("worker")
@click.option("--comfyui", required=True, help="URL of the ComfyUI server this worker drives.")
@click.option(
    "--slots", type=click.IntRange(min=1), help="Prompts at once (default COMFYUI_SLOTS)."
)
def worker_command(comfyui: str, slots: int | None) -> None:
    """Run a worker for one ComfyUI server, sharing the queue in DATABASE_URL (PostgreSQL)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)
    sys.exit(run_worker(comfyui, slots=slots))


def main() -> None:
    """``python -m avatar_service.worker --comfyui URL``."""
    from dotenv import load_dotenv

    load_dotenv()
    worker_command()  # click parses sys.argv


if __name__ == "__main__":
    main()
