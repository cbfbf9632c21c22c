"""Shared fixtures: the stand-in ComfyUI on a free port, and the recorded ComfyUI transcripts.

Also the two tiers: a test that starts a server or a process (or uses a fixture that does) is
marked ``live`` at collection; every other one is fast and may not open a socket or start a
process (``make test-fast`` runs those alone).
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path

import httpx
import pytest
from waitress import wasyncore

from avatar_service.config import Settings
from comfyui_standin import StandIn
from tests.helpers import RECORDINGS_DIR
from tests.tiers import InProcessGuard, mark_live

REPO_ROOT = Path(__file__).resolve().parents[1]


# What a developer's shell may export that would change how the service or the CLI behaves.
ISOLATED_VARIABLES = (
    *(field.name.upper() for field in fields(Settings)),
    "AVATAR_SERVER",
    "AVATAR_KEY",
)


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's environment: every setting of the service and the
    CLI's variables are cleared, and no process a test starts loads a ``.env`` file."""
    for name in ISOLATED_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTHON_DOTENV_DISABLED", "1")


# -- the fast tier and the live one (tests/tiers.py) -------------------------------------------


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `live` every test that starts a server or a process, or uses a fixture that does."""
    mark_live(items)


@pytest.fixture(autouse=True)
def _fast_tests_stay_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test not marked `live` fails if it (or a thread it starts) opens a socket, looks up a
    host, connects to PostgreSQL or starts a process: the fast tier stays in-process."""
    if request.node.get_closest_marker("live") is not None:
        yield
        return
    with InProcessGuard(request.node.nodeid) as guard:
        yield
    if guard.attempts:
        pytest.fail("not in-process: " + "; ".join(guard.attempts), pytrace=False)


@pytest.fixture(scope="session")
def recordings_dir() -> Path:
    """The directory of real ComfyUI transcripts (tests/recordings, or COMFYUI_RECORDINGS)."""
    if not RECORDINGS_DIR.is_dir():
        pytest.fail(f"ComfyUI recordings not found at {RECORDINGS_DIR} (set COMFYUI_RECORDINGS)")
    return RECORDINGS_DIR


@pytest.fixture(scope="session")
def recording(recordings_dir: Path):
    """Load one recording by file name, e.g. recording("01_success.json")."""

    def load(name: str) -> dict:
        return json.loads((recordings_dir / name).read_text(encoding="utf-8"))

    return load


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> Iterator[str]:
    """A PostgreSQL server's URL (see tests/postgres.py); skipped, or failed in CI, if none."""
    from tests.postgres import find_server

    url, process = find_server(tmp_path_factory.mktemp("postgres"))
    yield url
    if process is not None:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A DATABASE_URL to a fresh schema of its own on the test server, dropped after the test."""
    from tests.postgres import Schema

    schema = Schema(postgres_server)
    try:
        yield schema.url
    finally:
        schema.drop()


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (see tests/s3.py); skipped, or failed in CI, without moto."""
    from tests.s3 import S3Server

    server = S3Server().start()
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """The S3 server, with the test's AWS credentials in the environment (and no profile or
    config file of the developer's): what boto3's standard chain finds in the service."""
    from tests.s3 import CREDENTIALS

    for name, value in CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return s3_server


@pytest.fixture
def standins(tmp_path: Path):
    """Start stand-in ComfyUI servers on free ports; all are stopped after the test."""
    started: list[StandIn] = []

    def start(name: str, **options) -> StandIn:
        server = StandIn(root=tmp_path / name, **options).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[StandIn]:
    """A fresh stand-in ComfyUI on 127.0.0.1:<free port>, stopped after the test."""
    server = StandIn(root=tmp_path / "comfyui").start()
    try:
        yield server
    finally:
        server.stop()


# -- the service, served by waitress on a real socket ------------------------------------------


class LiveService:
    """The avatar service running under waitress on 127.0.0.1:<free port>, in a thread."""

    def __init__(self, app) -> None:
        from avatar_service.http.server import create_server

        self.app = app
        self.services = app.extensions["avatar_service"]
        self._server = create_server(app, host="127.0.0.1", port=0, threads=24)
        self.url = f"http://127.0.0.1:{self._server.effective_port}"
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self.http = httpx.Client(base_url=self.url, timeout=httpx.Timeout(60, connect=5))
        self._stopped = False

    def start(self) -> LiveService:
        self.services.start()
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.http.close()
        # Close the listening socket and every open connection from inside the serving loop;
        # with nothing left to serve the loop ends (and shuts its worker threads down).
        with contextlib.suppress(OSError):  # no trigger: the loop has already ended
            self._server.trigger.pull_trigger(lambda: wasyncore.close_all(self._server._map))
        self._thread.join(timeout=5)
        if self._thread.is_alive() or self._server._map:
            wasyncore.close_all(self._server._map)
            self._thread.join(timeout=5)
        self.services.close()

    def upload(self, photo: bytes, *, field: str = "image", filename: str = "me.png") -> str:
        """Upload a photo through the API and return its imageName."""
        answer = self.http.post("/upload-image", files={field: (filename, photo, "image/png")})
        assert answer.status_code == 201, answer.text
        return answer.json()["imageName"]

    def wait_job(self, job_id: str, *, timeout: float = 30.0, until=None) -> dict:
        """Poll GET /jobs/<id> until it ends (or ``until(record)`` holds), with a hard bound."""
        deadline = time.monotonic() + timeout
        while True:
            record = self.http.get(f"/jobs/{job_id}").json()
            if until(record) if until else record["status"] in TERMINAL:
                return record
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {record['status']} after {timeout}s")
            time.sleep(0.02)


TERMINAL = {"succeeded", "failed", "cancelled"}


def settings_for(tmp_path: Path, comfyui_url: str) -> dict:
    """Settings for a test service: every folder under tmp_path, short timeouts, and avatars
    that keep the prompt ComfyUI embeds (tests read the graph back from it; the tests of the
    default, stripping, ask for it)."""
    return {
        "STRIP_AVATAR_METADATA": False,
        "INSTANCE_PATH": tmp_path / "instance",
        "COMFYUI_URL": comfyui_url,
        "UPLOAD_DIR": tmp_path / "uploads",
        "OUTPUT_DIR": tmp_path / "generated_avatar",
        "COMFYUI_CONNECT_TIMEOUT": 2.0,
        "COMFYUI_READ_TIMEOUT": 5.0,
        "COMFYUI_POLL_INTERVAL": 0.5,
        "COMFYUI_RECONNECT_MAX": 0.5,
        "JOB_TIMEOUT": 30.0,
        "SYNC_WAIT": 20.0,
    }


@pytest.fixture
def service_config(tmp_path: Path, standin: StandIn) -> dict:
    """Settings for a service pointed at the stand-in, with every folder under tmp_path."""
    return settings_for(tmp_path, standin.url)


@pytest.fixture
def make_service(service_config: dict):
    """Start a live service with settings overridden by keyword; all are stopped after the test."""
    from avatar_service import create_app

    started: list[LiveService] = []

    def make(**overrides) -> LiveService:
        config = {**service_config, **{key.upper(): value for key, value in overrides.items()}}
        live = LiveService(create_app(config)).start()
        started.append(live)
        return live

    yield make
    for live in reversed(started):
        live.stop()


@pytest.fixture
def service(make_service) -> LiveService:
    """A live service with the default test settings."""
    return make_service()


# -- the service in-process, in front of FakeComfyUI ---------------------------------------------

FAKE_COMFYUI_URL = "http://comfyui.test:8188"


@pytest.fixture
def fake_comfyui():
    """The client factory of an in-process app: a FakeComfyUI per server URL (``fake_comfyui[
    FAKE_COMFYUI_URL]``), whose prompts succeed as soon as they are queued."""
    from tests.fake_comfyui import FakeComfyUIs

    return FakeComfyUIs(autorun=True)


@pytest.fixture
def app_config(tmp_path: Path, fake_comfyui) -> dict:
    """Settings for an in-process app in front of the fake, with every folder under tmp_path."""
    return {**settings_for(tmp_path, FAKE_COMFYUI_URL), "COMFYUI_CLIENT_FACTORY": fake_comfyui}


@pytest.fixture
def make_app(app_config: dict):
    """Build in-process apps with settings overridden by keyword; closed after the test."""
    from avatar_service import create_app

    made = []

    def make(**overrides):
        app = create_app({**app_config, **{key.upper(): value for key, value in overrides.items()}})
        made.append(app)
        return app

    yield make
    for app in reversed(made):
        app.extensions["avatar_service"].close()


@pytest.fixture
def app_client(make_app):
    """A test client of an in-process app with the default test settings (no socket)."""
    return make_app().test_client()


@pytest.fixture
def fake_server(app_client, fake_comfyui):
    """The FakeComfyUI behind ``app_client``."""
    return fake_comfyui[FAKE_COMFYUI_URL]


def make_photo(
    color: tuple[int, int, int], size: tuple[int, int] = (96, 96), fmt: str = "PNG"
) -> bytes:
    """A small recognisable photo: a plain colour with a lighter square in the middle."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", size, color)
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle(
        (w // 4, h // 4, 3 * w // 4, 3 * h // 4), fill=tuple(min(255, c + 60) for c in color)
    )
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def photo() -> bytes:
    """A valid 96x96 PNG photo."""
    return make_photo((200, 80, 40))
