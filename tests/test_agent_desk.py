"""The service's side of worker agents, through the /agents routes of an in-process app."""

from __future__ import annotations

import io
import json
import time

import pytest
from PIL import Image

from tests.conftest import make_photo

TOKEN = "worker-token-0123456789"
OTHER_TOKEN = "worker-token-abcdefghij"
API_KEY = "api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def app(make_app):
    """An app that only agents serve (no ComfyUI of its own), on the SQLite default."""
    return make_app(worker_tokens=(TOKEN, OTHER_TOKEN), local_workers=False, worker_lease=30.0)


@pytest.fixture
def http(app):
    """A test client of that app."""
    return app.test_client()


def register(http, name: str = "gpu-1", *, usable: bool = True) -> str:
    """Register an agent (and say its server can take jobs); its id."""
    answer = http.post("/agents", json={"name": name, "slots": 2}, headers=AUTH)
    assert answer.status_code == 201, answer.json
    agent_id = answer.json["agentId"]
    beat(http, agent_id, usable=usable)
    return agent_id


def beat(http, agent_id: str, jobs: list[str] = (), *, usable: bool = True) -> dict:
    """One heartbeat; the service's answer."""
    answer = http.post(
        f"/agents/{agent_id}/heartbeat",
        json={"jobs": list(jobs), "usable": usable, "slots": 2},
        headers=AUTH,
    )
    assert answer.status_code == 200, answer.json
    return answer.json


def submit(http) -> str:
    """Upload a photo and start an async job; its id."""
    photo = http.post(
        "/upload-image", data={"image": (io.BytesIO(make_photo((20, 90, 160))), "me.png")}
    )
    assert photo.status_code == 201, photo.json
    answer = http.post(
        "/generate-avatar-by-image",
        json={"imageName": photo.json["imageName"], "async": True, "width": 64, "height": 64},
    )
    assert answer.status_code == 202, answer.json
    return answer.json["jobId"]


def claim(http, agent_id: str, wait: float = 0) -> dict | None:
    """Claim the next job for the agent; its record's columns, or None."""
    answer = http.post(
        f"/agents/{agent_id}/claim",
        json={"owner": f"{agent_id}/http://127.0.0.1:8188", "wait": wait},
        headers=AUTH,
    )
    if answer.status_code == 204:
        return None
    assert answer.status_code == 200, answer.json
    return answer.json["job"]


def png(size: tuple[int, int] = (64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def finish(http, agent_id: str, job_id: str, result: dict, files: dict[str, bytes]):
    data = {"result": json.dumps(result)}
    data["avatar"] = [(io.BytesIO(content), name) for name, content in files.items()]
    return http.post(f"/agents/{agent_id}/jobs/{job_id}/finish", data=data, headers=AUTH)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": f"Basic {TOKEN}"},
    ],
)
def test_a_missing_or_wrong_token_is_401(http, headers):
    """Only a token in WORKER_TOKENS opens /agents; the answer is the one error shape."""
    answer = http.post("/agents", json={"name": "gpu-1"}, headers=headers)
    assert answer.status_code == 401
    assert answer.json["error"]["code"] == "unauthorized"
    assert "WORKER_TOKENS" in answer.json["error"]["message"]


def test_without_worker_tokens_no_agent_is_admitted(make_app):
    """The default admits no agent, whatever it sends."""
    http = make_app().test_client()
    answer = http.post("/agents", json={"name": "gpu-1"}, headers=AUTH)
    assert answer.status_code == 401
    assert "none is set" in answer.json["error"]["message"]


def test_api_keys_and_worker_tokens_open_only_their_own_routes(make_app):
    """An API key is refused at /agents; a worker token is refused at the API."""
    http = make_app(api_keys=(API_KEY,), worker_tokens=(TOKEN,)).test_client()
    assert (
        http.post(
            "/agents", json={"name": "gpu-1"}, headers={"Authorization": f"Bearer {API_KEY}"}
        ).status_code
        == 401
    )
    assert http.get("/jobs/" + "0" * 32, headers=AUTH).status_code == 401
    assert http.post("/agents", json={"name": "gpu-1"}, headers=AUTH).status_code == 201


def test_a_job_claimed_run_and_finished_by_an_agent(app, http):
    """Register, claim, report running and progress, end with an avatar: the service stores it
    and the record, events and avatar are the service's as for its own workers."""
    agent_id = register(http)
    job_id = submit(http)
    row = claim(http, agent_id)
    assert row is not None and row["id"] == job_id
    assert row["server"] == "agent:gpu-1" and row["owner"].startswith(f"{agent_id}/")
    photo = http.post(
        f"/agents/{agent_id}/photo",
        json={"imageName": row["image_name"], "crop": json.loads(row["crop"] or "null")},
        headers=AUTH,
    )
    assert photo.status_code == 200 and photo.data.startswith(b"\x89PNG")
    changed = http.post(
        f"/agents/{agent_id}/jobs/{job_id}/update",
        json={"changes": {"prompt_id": "p-1", "attempts": 1}},
        headers=AUTH,
    )
    assert changed.status_code == 200 and changed.json["job"]["prompt_id"] == "p-1"
    events = [
        {"jobId": job_id, "kind": "running", "data": {"timings": {"prepareMs": 12}}},
        {
            "jobId": job_id,
            "kind": "progress",
            "data": {"node": "3", "nodeType": "KSampler", "value": 1, "max": 4},
        },
    ]
    assert http.post(f"/agents/{agent_id}/events", json={"events": events}, headers=AUTH).json == {
        "lost": []
    }
    record = http.get(f"/jobs/{job_id}").json
    assert record["status"] == "running" and record["timings"]["prepareMs"] == 12
    assert beat(http, agent_id, [job_id])["held"] == [job_id]
    ended = finish(
        http,
        agent_id,
        job_id,
        {"status": "succeeded", "timings": {"executionMs": 40}},
        {f"{job_id}_0.png": png()},
    )
    assert ended.status_code == 200, ended.json
    record = http.get(f"/jobs/{job_id}").json
    assert record["status"] == "succeeded"
    assert record["avatars"][0]["fileName"] == f"{job_id}_0.png"
    assert (record["avatars"][0]["width"], record["avatars"][0]["height"]) == (64, 64)
    assert record["timings"]["executionMs"] == 40 and record["progress"]["value"] == 1
    served = http.get(f"/avatars/{job_id}_0.png")
    assert served.data == png()
    served.close()
    kinds = [event.event for event in app.extensions["avatar_service"].events.read(job_id, 0, 0)[0]]
    assert kinds[0] == "queued" and "running" in kinds and "progress" in kinds
    assert kinds[-1] == "succeeded"


def test_an_agent_sees_and_changes_only_the_jobs_it_holds(http):
    """Another agent's job is 404 to read and 409 to change; fields an agent may not change are
    refused; an agent that never registered is 404."""
    mine, theirs = register(http, "gpu-1"), register(http, "gpu-2")
    job_id = submit(http)
    assert claim(http, mine)["id"] == job_id
    assert http.get(f"/agents/{theirs}/jobs/{job_id}", headers=AUTH).status_code == 404
    held = http.get(f"/agents/{mine}/jobs/{job_id}", headers=AUTH).json["job"]
    asked = {"imageName": held["image_name"], "crop": json.loads(held["crop"] or "null")}
    assert http.post(f"/agents/{mine}/photo", json=asked, headers=AUTH).status_code == 200
    other = http.post(f"/agents/{theirs}/photo", json=asked, headers=AUTH)
    assert other.status_code == 409 and other.json["error"]["code"] == "lease_lost"
    wider = {**asked, "crop": {"x": 0, "y": 0, "width": 4096, "height": 4096, "source": "request"}}
    assert http.post(f"/agents/{mine}/photo", json=wider, headers=AUTH).status_code == 409
    stolen = http.post(
        f"/agents/{theirs}/jobs/{job_id}/update", json={"changes": {"attempts": 3}}, headers=AUTH
    )
    assert stolen.status_code == 409 and stolen.json["error"]["code"] == "lease_lost"
    forbidden = http.post(
        f"/agents/{mine}/jobs/{job_id}/update",
        json={"changes": {"style": "cartoon", "owner": None}},
        headers=AUTH,
    )
    assert forbidden.status_code == 400
    assert forbidden.json["error"] == {
        "code": "invalid_agent",
        "message": "an agent may not change owner, style",
        "details": {"fields": ["owner", "style"]},
    }
    ending = http.post(
        f"/agents/{mine}/jobs/{job_id}/update",
        json={"changes": {"status": "succeeded"}},
        headers=AUTH,
    )
    assert ending.status_code == 400 and ending.json["error"]["code"] == "invalid_agent"
    unknown = http.post("/agents/agent-" + "0" * 32 + "/heartbeat", json={"jobs": []}, headers=AUTH)
    assert unknown.status_code == 404 and unknown.json["error"]["code"] == "agent_not_found"


def test_a_finish_with_bad_avatars_writes_nothing_and_keeps_the_job(app, http, tmp_path):
    """Avatars misnamed or not images: 400, no file written, the job still held and running."""
    agent_id = register(http)
    job_id = submit(http)
    claim(http, agent_id)
    for files in ({"evil.png": png()}, {f"{job_id}_0.png": b"not an image"}, {}):
        answer = finish(http, agent_id, job_id, {"status": "succeeded"}, files)
        assert answer.status_code == 400, answer.json
        assert answer.json["error"]["code"] == "invalid_agent"
    assert not any((tmp_path / "generated_avatar").iterdir())
    assert beat(http, agent_id, [job_id])["held"] == [job_id]


def test_a_failure_reported_by_an_agent_is_the_jobs_error(http):
    """An agent's error (code, message, details) becomes the job's, naming the job."""
    agent_id = register(http)
    job_id = submit(http)
    claim(http, agent_id)
    error = {
        "status": 502,
        "code": "comfyui_execution_error",
        "message": "node 3 failed",
        "details": {"nodeId": "3"},
    }
    answer = finish(http, agent_id, job_id, {"status": "failed", "error": error}, {})
    assert answer.status_code == 200, answer.json
    record = http.get(f"/jobs/{job_id}").json
    assert record["status"] == "failed"
    assert record["error"] == {**error, "details": {"nodeId": "3", "jobId": job_id}}


def test_a_cancel_reaches_the_agent_at_its_next_heartbeat(http):
    """A cancel asked at the API is in the holding agent's next heartbeat answer."""
    agent_id = register(http)
    job_id = submit(http)
    claim(http, agent_id)
    assert beat(http, agent_id, [job_id])["cancel"] == []
    assert http.post(f"/jobs/{job_id}/cancel").status_code == 202
    assert beat(http, agent_id, [job_id])["cancel"] == [job_id]


def test_leaving_gives_the_jobs_back_and_marks_prompts_not_withdrawn(app, http):
    """An agent that leaves: its jobs go back to the head of the queue at once; a prompt it did
    not withdraw is left for its server's next agent to remove."""
    agent_id = register(http)
    first, second = submit(http), submit(http)
    for job_id, prompt in (
        (claim(http, agent_id)["id"], "p-1"),
        (claim(http, agent_id)["id"], "p-2"),
    ):
        http.post(
            f"/agents/{agent_id}/jobs/{job_id}/update",
            json={"changes": {"prompt_id": prompt}},
            headers=AUTH,
        )
    answer = http.delete(f"/agents/{agent_id}", json={"withdrawn": ["p-1"]}, headers=AUTH)
    assert answer.status_code == 200 and answer.json == {"givenBack": 2}
    for job_id in (first, second):
        record = http.get(f"/jobs/{job_id}").json
        assert record["status"] == "queued"
    comeback = register(http, "gpu-1")
    assert beat(http, comeback)["abandoned"] == [{"promptId": "p-2", "jobId": second}]
    assert claim(http, comeback)["id"] == first  # back at the head, in its order


def test_the_jobs_of_a_silent_agent_go_to_another_agent_of_its_server(app, http):
    """Past its lease, a silent agent's job is handed to a live agent of the same server (it
    follows the prompt by its id); with none, it goes back to the head of the queue."""
    desk = app.extensions["avatar_service"].agents
    silent = register(http, "gpu-1")
    job_id = submit(http)
    claim(http, silent)
    http.post(
        f"/agents/{silent}/jobs/{job_id}/update",
        json={"changes": {"prompt_id": "p-9"}},
        headers=AUTH,
    )
    heir = register(http, "gpu-1")
    desk.clock = lambda: time.time() + 60  # the leases pass (the heir's own is renewed below)
    beat(http, heir)
    desk.sweep()
    adopted = [beat(http, heir)["adopt"], beat(http, heir)["adopt"]]
    assert [row["id"] for row in adopted[-1]] == [job_id]
    assert adopted[-1][0]["prompt_id"] == "p-9"
