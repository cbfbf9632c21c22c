"""``avatar-worker``: a worker agent next to a ComfyUI, anywhere the service's URL reaches.

``avatar-worker --api https://avatars.example.com --token TOKEN --comfyui http://127.0.0.1:8188``
registers with the service (its token one of the service's WORKER_TOKENS), loads the styles the
service sends, and runs the service's own engine in front of its ComfyUI: it claims jobs while
its server has a free slot, fetches each photo, runs the prompt, sends progress and previews
back, and ends the job with its avatars, which the service stores. It needs no database, no
shared disk and no storage credentials. SIGTERM (or Ctrl-C) withdraws its prompts and gives its
jobs back to the queue at once.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click
import httpx

from ..comfyui import ComfyUIClient
from ..comfyui.workflows import Workflow, WorkflowError, load_workflows
from ..jobs.dispatcher import Dispatcher
from ..jobs.prompt import RunSettings
from ..persistence.database import DatabaseUnavailable
from .api import AgentRefused, ServiceApi
from .link import AgentLink
from .remote import AvatarUploads, EventSender, RemoteLedger, RemotePhotos, RemoteRecords

logger = logging.getLogger(__name__)

# While the service does not answer at start, the agent asks again this often (seconds).
REGISTER_RETRY = 2.0
COMFYUI_CONNECT_TIMEOUT = 5.0
COMFYUI_READ_TIMEOUT = 30.0


def default_name(comfyui: str) -> str:
    """This machine's name and the ComfyUI's port: ``gpu-box:8188``."""
    return f"{socket.gethostname()}:{urlsplit(comfyui).port or 80}"


def run_agent(
    *, api_url: str, token: str, comfyui: str, slots: int, name: str, stopping: threading.Event
) -> int:
    """Run until ``stopping`` is set; the process's exit status."""
    api = ServiceApi(api_url, token)
    try:
        answer = _register(api, name=name, slots=slots, stopping=stopping)
        if answer is None:
            return 0 if stopping.is_set() else 2
        with tempfile.TemporaryDirectory(prefix="avatar-worker-") as folder:
            workflows = _styles(answer["styles"], Path(folder))
        return _serve(
            api,
            answer,
            comfyui=comfyui,
            slots=slots,
            name=name,
            workflows=workflows,
            stopping=stopping,
        )
    finally:
        api.close()


def _register(
    api: ServiceApi, *, name: str, slots: int, stopping: threading.Event
) -> dict[str, Any] | None:
    """Register, asking again while the service does not answer; None if refused or stopped."""
    while not stopping.is_set():
        try:
            answer = api.register(name=name, slots=slots)
        except DatabaseUnavailable as exc:
            logger.warning("%s; asking again in %.0f s", exc, REGISTER_RETRY)
            stopping.wait(REGISTER_RETRY)
            continue
        except AgentRefused as exc:
            logger.error("cannot join: %s", exc)
            return None
        logger.info(
            "joined %s as %s (%s), %d slot(s)", api.base_url, api.agent_id, answer["server"], slots
        )
        return answer
    return None


def _styles(files: dict[str, dict[str, str | None]], folder: Path) -> dict[str, Workflow]:
    """The service's styles, loaded here as the service loads them."""
    for style, texts in files.items():
        for kind, text in texts.items():
            if text is not None:
                suffix = ".json" if kind == "graph" else f".{kind}.json"
                (folder / f"{style}{suffix}").write_text(text, encoding="utf-8")
    try:
        return load_workflows(folder)
    except WorkflowError as exc:
        raise SystemExit(f"the service's styles do not load here: {exc}") from exc


def _serve(
    api: ServiceApi,
    answer: dict[str, Any],
    *,
    comfyui: str,
    slots: int,
    name: str,
    workflows: dict[str, Workflow],
    stopping: threading.Event,
) -> int:
    """The engine in front of the ComfyUI, until ``stopping``."""
    # The service's clock: job deadlines are its moments (machines' clocks may differ a little).
    offset = float(answer.get("now", time.time())) - time.time()
    sender = EventSender(api, on_lost=_lost)
    records = RemoteRecords(api, sender)
    uploads = AvatarUploads()
    client = ComfyUIClient(
        comfyui,
        timeout=httpx.Timeout(COMFYUI_READ_TIMEOUT, connect=COMFYUI_CONNECT_TIMEOUT),
        client_id=uuid.uuid4().hex,
    )
    ledger = RemoteLedger(records, uploads)
    link = AgentLink(api, ledger, sender, name=name, lease=float(answer["lease"]))
    dispatcher = Dispatcher(
        records=records,
        ledger=ledger,
        clients=[client],
        workflows=workflows,
        photos=RemotePhotos(api),
        avatars=uploads,
        settings=RunSettings(
            job_timeout=float(answer["jobTimeout"]),
            poll_interval=float(answer["pollInterval"]),
            stall_timeout=float(answer["stallTimeout"]),
        ),
        coordination=link,
        slots=slots,
        down_grace=float(answer["downGrace"]),
        lease=float(answer["lease"]),
        clock=lambda: time.time() + offset,
        owner=api.agent_id,
    )
    client.on_connect = lambda _client: dispatcher.notify()
    client.start()
    dispatcher.start()
    logger.info("driving ComfyUI %s for %s", comfyui, api.base_url)
    try:
        stopping.wait()
    finally:
        logger.info("stopping: withdrawing prompts and giving jobs back")
        dispatcher.stop(timeout=10)
        client.close()
    logger.info("left %s", api.base_url)
    return 0


def _lost(job_ids: list[str]) -> None:
    for job_id in job_ids:
        logger.warning("job %s is no longer this agent's (its events were dropped)", job_id)


@click.command("avatar-worker")
@click.option(
    "--api",
    "api_url",
    envvar="AVATAR_API_URL",
    required=True,
    help="The service's base URL (env AVATAR_API_URL).",
)
@click.option(
    "--token",
    envvar="WORKER_TOKEN",
    required=True,
    help="One of the service's WORKER_TOKENS (env WORKER_TOKEN).",
)
@click.option(
    "--comfyui",
    envvar="COMFYUI_URL",
    default="http://127.0.0.1:8188",
    show_default=True,
    help="The ComfyUI this agent drives (env COMFYUI_URL).",
)
@click.option(
    "--slots",
    envvar="COMFYUI_SLOTS",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Prompts at once on that ComfyUI (env COMFYUI_SLOTS).",
)
@click.option(
    "--name",
    envvar="WORKER_NAME",
    default=None,
    help="The agent's server name (env WORKER_NAME; default <host>:<ComfyUI port>).",
)
def agent_command(api_url: str, token: str, comfyui: str, slots: int, name: str | None) -> None:
    """Run a worker agent: a ComfyUI next to this machine, serving the avatar service at --api."""
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=os.environ.get("LOG_LEVEL", "INFO").upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        logging.getLogger("httpx").setLevel(logging.WARNING)
    stopping = threading.Event()

    def stop(signum: int, _frame: object) -> None:
        logger.info("signal %d: stopping", signum)
        stopping.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.exit(
        run_agent(
            api_url=api_url,
            token=token,
            comfyui=comfyui,
            slots=slots,
            name=name or default_name(comfyui),
            stopping=stopping,
        )
    )


def main() -> None:
    """``avatar-worker`` (also ``python -m avatar_service.agent``)."""
    agent_command()
