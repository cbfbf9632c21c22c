"""Worker agents as real processes: each in an empty folder of its own, with no database and no
service settings, reaching the API over HTTP only, in front of stand-ins."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from PIL import Image

from comfyui_standin import StandIn
from tests.fleet import Fleet, Replica
from tests.helpers import read_sse, start_job, wait_for
from tests.test_fleet import upload

TOKEN = "worker-token-0123456789"


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
def solo(tmp_path: Path):
    """One API process on the SQLite default, served only by agents; stopped afterwards."""
    made = Fleet(tmp_path, "", WORKER_TOKENS=TOKEN, WORKER_LEASE="3")
    try:
        yield made
    finally:
        made.stop()


def wait_agents(replica: Replica, servers: set[str], timeout: float = 30.0) -> dict:
    """Wait (bounded) until /readyz lists a usable agent for each of ``servers``."""
    deadline = time.monotonic() + timeout
    while True:
        report = replica.http.get("/readyz").json()
        usable = {
            a["server"] for a in report.get("agents", report.get("workers", [])) if a["usable"]
        }
        if servers <= usable:
            return report
        if time.monotonic() > deadline:
            raise AssertionError(f"agents for {servers - usable} never joined: {report}")
        time.sleep(0.1)


def avatars_saved(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "generated_avatar").iterdir() if p.suffix == ".png")


def test_an_agent_with_nothing_but_the_api_url_runs_jobs(solo, standins, tmp_path):
    """The API drives no ComfyUI; an agent in an empty folder, with no database, runs the job:
    progress reaches the event stream, the avatar is stored and served by the API, the crop is
    what ComfyUI got, and the agent's folder stays empty."""
    server = standins("gpu1")
    api = solo.replica("api", LOCAL_WORKERS="false").wait_up()
    agent = solo.agent("agent1", api.url, server.url, TOKEN)
    report = wait_agents(api, {"agent:agent1"})
    assert report["ready"] is True
    name = upload(api, (30, 160, 90))
    job_id = start_job(api, name, width=64, height=64)
    events = read_sse(api, job_id)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "state" and "running" in kinds and "progress" in kinds
    assert kinds[-1] == "succeeded"
    record = api.http.get(f"/jobs/{job_id}").json()
    assert record["status"] == "succeeded" and len(record["avatars"]) == 1
    served = api.http.get(
        record["avatars"][0]["url"].replace("http://localhost", "http://127.0.0.1")
    )
    assert served.status_code == 200
    assert (
        served.content
        == (tmp_path / "generated_avatar" / record["avatars"][0]["fileName"]).read_bytes()
    )
    assert len(server.prompts) == 1
    [load] = [n for n in server.prompts[0]["prompt"].values() if n["class_type"] == "LoadImage"]
    crop = record["crop"]
    center = crop is None or crop["source"] == "center"
    with Image.open(server.dirs.input / load["inputs"]["image"]) as sent:
        # The photo reached ComfyUI through the agent, cut to the job's crop.
        assert sent.size == ((96, 96) if center else (crop["width"], crop["height"]))
    assert list((tmp_path / "agent1").iterdir()) == []
    assert agent.alive


def test_a_cancel_reaches_the_agents_comfyui(solo, standins):
    """A cancel asked at the API interrupts the prompt on the agent's ComfyUI."""
    server = standins("gpu1")
    server.set_faults(step_delay=0.5)
    api = solo.replica("api", LOCAL_WORKERS="false").wait_up()
    solo.agent("agent1", api.url, server.url, TOKEN)
    wait_agents(api, {"agent:agent1"})
    job_id = start_job(api, upload(api, (90, 40, 160)))
    api.wait_job(job_id, until=lambda record: record["status"] == "running")
    assert api.http.post(f"/jobs/{job_id}/cancel").status_code in {200, 202}
    record = api.wait_job(job_id, timeout=20)
    assert record["status"] == "cancelled"
    wait_for(lambda: server.interrupts, timeout=10, message="the interrupt on the agent's ComfyUI")


def test_sigterm_gives_the_agents_jobs_back_at_once(solo, standins, tmp_path):
    """SIGTERM: the agent withdraws its prompts and the API requeues its jobs long before its
    lease would pass; another agent finishes them, one avatar each."""
    leaving, staying = standins("gpu1"), standins("gpu2")
    leaving.set_faults(step_delay=0.5)
    api = solo.replica("api", LOCAL_WORKERS="false", WORKER_LEASE="300").wait_up()
    agent = solo.agent("agent1", api.url, leaving.url, TOKEN)
    wait_agents(api, {"agent:agent1"})
    name = upload(api, (10, 90, 200))
    jobs = [start_job(api, name) for _ in range(2)]
    wait_for(lambda: len(leaving.prompts) == 2, timeout=20)  # one running, one waiting there
    assert agent.terminate() == 0
    assert "given back to the queue" in api.process.output()
    wait_for(lambda: leaving.interrupts, timeout=10)
    solo.agent("agent2", api.url, staying.url, TOKEN)
    records = [api.wait_job(job_id, timeout=30) for job_id in jobs]
    assert [record["status"] for record in records] == ["succeeded", "succeeded"]
    assert all(len(record["avatars"]) == 1 for record in records)
    assert len(avatars_saved(tmp_path)) == 2


def test_kill_9_of_an_agent_mid_job_hands_its_job_to_another_after_the_lease(
    solo, standins, tmp_path
):
    """kill -9 of an agent mid-prompt: once its lease passes the job goes back to the queue
    and another agent runs it; one avatar."""
    doomed_server, other = standins("gpu1"), standins("gpu2")
    doomed_server.set_faults(step_delay=0.3)
    api = solo.replica("api", LOCAL_WORKERS="false").wait_up()
    doomed = solo.agent("agent1", api.url, doomed_server.url, TOKEN)
    wait_agents(api, {"agent:agent1"})
    job_id = start_job(api, upload(api, (200, 60, 60)))
    api.wait_job(job_id, until=lambda record: record["status"] == "running")
    doomed.kill()
    solo.agent("agent2", api.url, other.url, TOKEN)
    record = api.wait_job(job_id, timeout=40)
    assert record["status"] == "succeeded" and len(record["avatars"]) == 1
    assert len(other.prompts) == 1
    assert avatars_saved(tmp_path) == [f"{job_id}_0.png"]
    assert "back to the head of the queue" in api.process.output()


def test_an_agent_restarted_beside_its_server_follows_the_killed_agents_prompt(
    solo, standins, tmp_path
):
    """kill -9 of an agent, a new one for the same server: past the lease the job is handed to
    it and it follows the same prompt by its id, so the server ran one prompt."""
    server = standins("gpu1")
    server.set_faults(step_delay=0.1)
    api = solo.replica("api", LOCAL_WORKERS="false").wait_up()
    doomed = solo.agent("agent1", api.url, server.url, TOKEN, server="gpu-box")
    wait_agents(api, {"agent:gpu-box"})
    job_id = start_job(api, upload(api, (60, 200, 200)))
    api.wait_job(job_id, until=lambda record: record["status"] == "running")
    doomed.kill()
    heir = solo.agent("agent2", api.url, server.url, TOKEN, server="gpu-box")
    record = api.wait_job(job_id, timeout=40)
    assert record["status"] == "succeeded" and len(record["avatars"]) == 1
    assert len(server.prompts) == 1
    assert "follows its prompt" in api.process.output()
    assert "following job" in heir.output()


def test_an_agent_serves_replicas_on_postgresql(standins, tmp_path, postgres_url):
    """Two API replicas on one PostgreSQL, one agent talking to one of them: a job made on the
    other runs on the agent, and both replicas answer for it."""
    fleet = Fleet(tmp_path, postgres_url, WORKER_TOKENS=TOKEN)
    try:
        server = standins("gpu1")
        a = fleet.replica("a").wait_up()
        b = fleet.replica("b").wait_up()
        fleet.agent("agent1", a.url, server.url, TOKEN)
        b.wait_workers({"agent:agent1"})
        job_id = start_job(b, upload(b, (120, 120, 20)))
        record = b.wait_job(job_id, timeout=30)
        assert record["status"] == "succeeded" and len(record["avatars"]) == 1
        assert a.http.get(f"/jobs/{job_id}").json()["status"] == "succeeded"
        assert len(server.prompts) == 1
    finally:
        fleet.stop()
