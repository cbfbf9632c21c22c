"""The real service against replays of real ComfyUI 0.3.64 transcripts, byte for byte.

Each test serves one recorded scenario with ReplayServer (tests/replay_server.py) and drives the
service through its public HTTP API. Where a scenario did not record an exchange the service
needs, the answer comes from another recording of the same graph on the same server, named in the
test (e.g. /history in 11 comes from 01, since 11 recorded none), never from the stand-in.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import LiveService, make_photo, settings_for
from tests.replay_server import (
    CLIENT,
    PROMPT,
    Answer,
    ReplayServer,
    jpeg_of_size,
    png_of_size,
    socket_frames,
    step,
)

QUEUED, RUNNING, DONE = frozenset({"queued"}), frozenset({"running"}), frozenset({"done"})
NOT_DONE = QUEUED | RUNNING
# Not recorded (10_misc_endpoints summarises /object_info), so the on-connect check gets a 404.
EXPECTED_UNANSWERED = {"GET /object_info"}


@pytest.fixture
def service_config(tmp_path: Path) -> dict:
    """Settings for a service whose ComfyUI is a replay (COMFYUI_URL is set per test)."""
    return settings_for(tmp_path, "http://127.0.0.1:9")


@pytest.fixture
def replayed(make_service) -> Iterator:
    """Start a ReplayServer and a live service pointed at it; stop the service first."""
    started: list[tuple[ReplayServer, LiveService]] = []

    def start(replay: ReplayServer) -> LiveService:
        replay.start()
        service = make_service(comfyui_url=replay.url)
        started.append((replay, service))
        assert service.services.clients[0].wait_connected(5), "the service never connected"
        return service

    yield start
    for replay, service in reversed(started):
        service.stop()
        replay.stop()


@pytest.fixture(scope="module")
def recs(recordings_dir: Path) -> dict[str, dict]:
    """Every recording by its number ("01", "02", ...)."""
    return {
        path.name[:2]: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(recordings_dir.glob("[0-9][0-9]_*.json"))
    }


def ids_of(recording: dict, prompt_label: str) -> dict[str, str]:
    """The recorded prompt_id and client_id of one POST /prompt, mapped to their roles."""
    posted = step(recording, prompt_label)
    ids = {posted["response"]["json"]["prompt_id"]: PROMPT}
    client_id = posted["request"]["json"].get("client_id")
    if client_id:
        ids[client_id] = CLIENT
    return ids


def run_answers(recs: dict[str, dict]) -> list[Answer]:
    """/queue, /history-before-the-end, /queue delete and /interrupt answers from 06 and 07.

    In 07 prompt #2 waits behind #1 and later runs alone, so its /queue answers stand for "our
    prompt is pending" and "our prompt is running"; the never-run #3's /history is the recorded
    ``{}`` of a prompt that has not ended.
    """
    rec07 = recs["07"]
    second = ids_of(rec07, "POST /prompt #2")
    third = {step(rec07, "POST /prompt #3")["response"]["json"]["prompt_id"]: PROMPT}
    return [
        Answer(step(rec07, "queue after the delete"), second, QUEUED),
        Answer(step(rec07, "queue while #2 runs"), second, RUNNING),
        Answer(step(rec07, "queue when idle again"), {}, DONE),
        Answer(step(rec07, "final history of #3"), third, NOT_DONE),
        Answer(step(rec07, "delete the third"), any_query=True),
        Answer(step(recs["06"], "interrupt the running prompt"), any_query=True),
    ]


def replay_of(
    recording: dict,
    prompt_label: str,
    answers: list[Answer],
    *,
    recs: dict[str, dict],
    socket: str | None = None,
    speed: float = 0.2,
) -> ReplayServer:
    """A replay of ``recording`` anchored at one POST /prompt, plus the run answers above."""
    ids = ids_of(recording, prompt_label)
    posted = step(recording, prompt_label)
    return ReplayServer(
        frames=socket_frames(recording, socket),
        start_ms=posted["t_ms"],
        ids=ids,
        answers=[Answer(posted, ids), *answers, *run_answers(recs)],
        speed=speed,
    )


def success_answers(*, upload: dict, history: dict, view: dict, ids: dict[str, str]):
    """Upload, the finished prompt's /history and the /view of its image."""
    return [
        Answer(upload),
        Answer(history, ids, DONE),
        Answer(view),
    ]


def connect_only(frames: list[dict]) -> list[dict]:
    """The recorded frames up to the connect ``status`` (rejected prompts start no run)."""
    first_text = next(i for i, entry in enumerate(frames) if "text" in entry)
    return frames[: first_text + 1]


def end_of_01(recs: dict[str, dict]) -> list[Answer]:
    """/history and /view of 01, for scenarios of the same graph that recorded neither (11).

    11's own ``executed`` messages name its image (a later temp file of the same server): 01's
    /view of its image answers for it, whatever the name asked."""
    rec = recs["01"]
    return [
        Answer(step(rec, "history of the finished prompt"), ids_of(rec, "POST /prompt"), DONE),
        Answer(step(rec, "view output image of node 7"), any_query=True),
    ]


def submit(service: LiveService, **fields) -> dict:
    """Upload a photo and queue a generation (async); the 202 body."""
    name = service.upload(make_photo((90, 120, 200)))
    answer = service.http.post(
        "/generate-avatar-by-image", json={"imageName": name, "async": True, **fields}
    )
    assert answer.status_code == 202, answer.text
    return answer.json()


def events_of(service: LiveService, job_id: str) -> list[tuple[str, dict]]:
    """Every SSE event of a job from its first, read until the job ends."""
    events = []
    headers = {"Last-Event-ID": f"{service.services.events.epoch}.0"}
    with service.http.stream("GET", f"/jobs/{job_id}/events", headers=headers) as stream:
        kind = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: "):
                events.append((kind, json.loads(line[len("data: ") :])))
    return events


def posted_graph(replay: ReplayServer) -> dict:
    """The graph the service sent in its (only) POST /prompt."""
    [body] = replay.prompts
    return body["prompt"]


def preview_when_ready(service: LiveService, job_id: str, replay: ReplayServer):
    """Poll GET /jobs/<id>/preview until a preview is there (bounded)."""
    found = {}

    def ready() -> bool:
        answer = service.http.get(f"/jobs/{job_id}/preview")
        found["answer"] = answer
        return answer.status_code == 200

    replay.wait_for(ready)
    return found["answer"]


def is_ours(kind: str, *, node_null: bool = False):
    """A gate predicate: a frame of ``kind`` (``executing`` null when ``node_null``)."""

    def predicate(message: dict) -> bool:
        if message["type"] != kind:
            return False
        return not node_null or message["data"].get("node", "") is None

    return predicate


def assert_clean(replay: ReplayServer) -> None:
    """The replay saw nothing unexpected: no unrecorded request, no stuck frame."""
    assert set(replay.unanswered) <= EXPECTED_UNANSWERED, replay.unanswered
    assert replay.errors == []


# -- the replay itself -------------------------------------------------------------------------


def test_replay_serialisation_matches_recorded_lengths(recs):
    """json.dumps of a recorded body has the recorded content-length (bodies without redactions)."""
    checked = 0
    for recording in recs.values():
        for entry in recording["steps"]:
            response = entry.get("response") or {}
            if "json" not in response or "content-length" not in response["headers"]:
                continue
            text = json.dumps(response["json"])
            if "<base>" in text or "<comfyui>" in text or "<python>" in text or "<venv>" in text:
                continue  # machine paths were shortened by the recorder
            assert len(text.encode()) == int(response["headers"]["content-length"]), entry["label"]
            checked += 1
    assert checked > 100


def test_image_bodies_have_recorded_size():
    """Rebuilt PNG and JPEG bodies decode and have exactly the recorded byte size."""
    png = png_of_size(64, 64, 11723, text_keys=["prompt"])
    jpeg = jpeg_of_size(512, 512, 34676)
    assert (len(png), len(jpeg)) == (11723, 34676)
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.size, image.mode) == ("PNG", (64, 64), "RGB")
        assert list(image.text) == ["prompt"]
    with Image.open(io.BytesIO(jpeg)) as image:
        assert (image.format, image.size) == ("JPEG", (512, 512))


# -- scenarios ---------------------------------------------------------------------------------


def recorded_success_answers(rec: dict, label: str) -> list:
    """The upload, history and view answers of recording 01's successful run."""
    return success_answers(
        upload=step(rec, "upload the photo"),
        history=step(rec, "history of the finished prompt"),
        view=step(rec, "view output image of node 7"),
        ids=ids_of(rec, label),
    )


def test_success_saves_recorded_image_with_progress_and_preview(replayed, recs):
    """01: the job succeeds with the recorded 64x64 image, reports progress and a live preview."""
    rec = recs["01"]
    label = "POST /prompt with client_id"
    answers = recorded_success_answers(rec, label)
    answers.append(Answer(step(rec, "queue after completion"), {}, DONE))
    replay = replay_of(rec, label, answers, recs=recs)
    gate = replay.hold(is_ours("execution_success"))
    service = replayed(replay)

    job = submit(service)
    preview = preview_when_ready(service, job["jobId"], replay)
    assert preview.headers["content-type"] == "image/jpeg"
    assert len(preview.content) == 34676
    with Image.open(io.BytesIO(preview.content)) as image:
        assert image.size == (512, 512)
    gate.set()
    events = events_of(service, job["jobId"])

    final = service.http.get(f"/jobs/{job['jobId']}").json()
    assert final["status"] == "succeeded", final["error"]
    [avatar] = final["avatars"]
    assert (avatar["width"], avatar["height"]) == (64, 64)
    saved = service.http.get(avatar["url"])
    assert len(saved.content) == 11723
    kinds = [kind for kind, _ in events]
    assert kinds[-1] == "succeeded" and "running" in kinds and "preview" in kinds
    assert {"node": "4", "nodeType": "KSampler", "value": 1, "max": 1} in [
        data for kind, data in events if kind == "progress"
    ]
    assert posted_graph(replay)["25"]["inputs"]["image"] == "rec_astronaut_64.png"
    [sent] = replay.prompts
    assert sent["client_id"] == replay.client_id == service.services.clients[0].client_id
    assert json.loads(replay.client_messages[0])["type"] == "feature_flags"
    assert_clean(replay)


def test_fully_cached_rerun_completes_with_old_filenames(replayed, recs):
    """02: no per-node executing, only executed, success and executing null: the job succeeds."""
    rec = recs["02"]
    label = "POST /prompt: same graph"
    ids = ids_of(rec, label)
    answers = success_answers(
        upload=step(recs["01"], "upload the photo"),  # 02 re-used 01's upload
        history=step(rec, "history of the cached prompt"),
        view=step(rec, "view output image of node 7"),
        ids=ids,
    )
    replay = replay_of(rec, label, answers, recs=recs)
    service = replayed(replay)

    job = submit(service)
    events = events_of(service, job["jobId"])

    final = service.http.get(f"/jobs/{job['jobId']}").json()
    assert final["status"] == "succeeded", final["error"]
    assert [(a["width"], a["height"]) for a in final["avatars"]] == [(64, 64)]
    assert "progress" not in [kind for kind, _ in events]
    [view] = [r for r in replay.requests if r.path == "/view"]
    assert view.query["filename"] == "ComfyUI_temp_ytxjq_00001_.png"  # the first run's file
    executing = [m["data"]["node"] for _, kind, m in replay.sent if kind == "executing"]
    assert executing == [None]
    assert_clean(replay)


def test_execution_error_answers_502_with_node_and_exception(replayed, recs):
    """05: execution_error then executing null -> 502 comfyui_execution_error with its fields."""
    rec = recs["05"]
    label = "POST /prompt using the fake .png"
    ids = ids_of(rec, label)
    answers = [
        Answer(step(rec, "upload a text file")),
        Answer(step(rec, "history of the failed prompt"), ids, DONE),
    ]
    replay = replay_of(rec, label, answers, recs=recs)
    service = replayed(replay)

    name = service.upload(make_photo((10, 20, 30)))
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})

    assert answer.status_code == 502, answer.text
    body = answer.json()
    message = "cannot identify image file '<base>/input/rec_not_an_image_3dce23.png'"
    assert body == {
        "error": {
            "code": "comfyui_execution_error",
            "message": f"ComfyUI failed while running node 25 (LoadImage): {message}",
            "details": {
                "promptId": replay.prompt_id,
                "nodeId": "25",
                "nodeType": "LoadImage",
                "exceptionType": "PIL.UnidentifiedImageError",
                "exceptionMessage": message,
                "jobId": body["error"]["details"]["jobId"],
            },
        }
    }
    assert_clean(replay)


def test_interrupt_not_asked_for_fails_the_job(replayed, recs):
    """06: execution_interrupted the service did not ask for -> failed comfyui_interrupted."""
    rec = recs["06"]
    label = "POST /prompt steps=20"
    ids = ids_of(rec, label)
    answers = [
        Answer(step(recs["01"], "upload the photo")),
        Answer(step(rec, "history of the interrupted prompt"), ids, DONE),
    ]
    replay = replay_of(rec, label, answers, recs=recs, speed=0.1)
    service = replayed(replay)

    job = submit(service)
    final = service.wait_job(job["jobId"])

    assert final["status"] == "failed"
    assert final["error"] == {
        "status": 502,
        "code": "comfyui_interrupted",
        "message": "the prompt was interrupted on the ComfyUI server (not by this service)",
        "details": {"promptId": replay.prompt_id, "jobId": job["jobId"]},
    }
    assert not [r for r in replay.requests if r.path == "/interrupt"]
    assert_clean(replay)


def generate_against_answer(replayed, recs, prompt_step: dict):
    """One generate request against a replay answering POST /prompt with ``prompt_step``."""
    rec = recs["04"]
    replay = ReplayServer(
        frames=connect_only(socket_frames(rec)),
        start_ms=prompt_step["t_ms"],
        ids={},
        answers=[Answer(step(recs["01"], "upload the photo")), Answer(prompt_step)],
    )
    service = replayed(replay)
    name = service.upload(make_photo((10, 20, 30)))
    return replay, service.http.post("/generate-avatar-by-image", json={"imageName": name})


REJECTIONS = [
    "unknown class_type",
    "node without class_type",
    "LoadImage names a file that does not exist",
    "KSampler steps=0",
    "link to a missing node",
    "several errors at once",
    "prompt with no output node",
    "JSON body without 'prompt'",
]


@pytest.mark.parametrize("label", REJECTIONS)
def test_recorded_400_is_502_rejected_prompt_with_node_errors_verbatim(replayed, recs, label):
    """04: a recorded 400 answer -> 502 comfyui_rejected_prompt with ComfyUI's error verbatim."""
    rejected = step(recs["04"], label)
    replay, answer = generate_against_answer(replayed, recs, rejected)

    recorded = rejected["response"]["json"]
    assert answer.status_code == 502, answer.text
    body = answer.json()
    assert body == {
        "error": {
            "code": "comfyui_rejected_prompt",
            "message": f"ComfyUI rejected the workflow: {recorded['error']['message']}",
            "details": {
                "error": recorded["error"],
                "node_errors": recorded["node_errors"],
                "server": replay.url,
                "jobId": body["error"]["details"]["jobId"],
            },
        }
    }
    assert replay.sent_types() == ["status"]  # only the connect status: no run was played
    assert_clean(replay)


@pytest.mark.parametrize("label", ["prompt is a string", "body is not JSON"])
def test_recorded_500_is_502_bad_response(replayed, recs, label):
    """04: ComfyUI's text/plain 500 on POST /prompt -> 502 comfyui_bad_response with the status."""
    failed = step(recs["04"], label)
    _replay, answer = generate_against_answer(replayed, recs, failed)

    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["code"] == "comfyui_bad_response"
    assert error["details"]["status"] == 500
    assert "Server got itself in trouble" in error["message"]


def test_partial_acceptance_is_rejected_and_removed_from_comfyui(replayed, recs):
    """04: a 200 carrying node_errors -> 502 comfyui_rejected_prompt; the prompt is deleted."""
    rec = recs["04"]
    label = "two outputs, one broken"
    replay = replay_of(rec, label, [Answer(step(recs["01"], "upload the photo"))], recs=recs)
    service = replayed(replay)

    name = service.upload(make_photo((10, 20, 30)))
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})

    recorded = step(rec, label)["response"]["json"]
    assert answer.status_code == 502, answer.text
    error = answer.json()["error"]
    assert error["code"] == "comfyui_rejected_prompt"
    assert error["details"]["node_errors"] == recorded["node_errors"]
    removals = {(r.method, r.path) for r in replay.requests if r.method == "POST"}
    assert {("POST", "/queue"), ("POST", "/interrupt")} <= removals
    assert_clean(replay)


def test_queue_position_from_recorded_queue_answer(replayed, recs):
    """07: the prompt waiting behind a running one is next to start (1), then runs and succeeds."""
    rec = recs["07"]
    label = "POST /prompt #2"
    ids = ids_of(rec, label)
    answers = [
        Answer(step(rec, "queue right after submitting 3"), ids, QUEUED),
        Answer(step(recs["01"], "upload the photo")),
        Answer(step(rec, "final history of #2"), ids, DONE),
        # 07 fetched no image; the image of the same graph from 01 stands in for it.
        Answer(step(recs["01"], "view output image of node 7"), any_query=True),
    ]
    replay = replay_of(rec, label, answers, recs=recs, speed=0.4)
    service = replayed(replay)

    job = submit(service)
    events = events_of(service, job["jobId"])

    kinds = [kind for kind, _ in events]
    assert [data for kind, data in events if kind == "position"] == [{"queuePosition": 1}]
    assert kinds.index("position") < kinds.index("running")
    assert kinds[-1] == "succeeded", events[-1]
    queue_reads = [r for r in replay.requests if r.path == "/queue" and r.method == "GET"]
    assert queue_reads and queue_reads[0].phase == "queued"
    assert_clean(replay)


def test_feature_flags_answer_and_type4_preview_route_to_the_job(replayed, recs):
    """11(e): the feature_flags answer is harmless; a type-4 preview reaches /jobs/<id>/preview."""
    rec = recs["11"]
    label = "(e) POST /prompt client_id=ff"
    answers = [Answer(step(rec, "setup: upload the 64x64 photo")), *end_of_01(recs)]
    replay = replay_of(rec, label, answers, recs=recs, socket="flags")
    gate = replay.hold(is_ours("execution_success"))
    service = replayed(replay)

    job = submit(service)
    preview = preview_when_ready(service, job["jobId"], replay)
    gate.set()
    final = service.wait_job(job["jobId"])

    assert preview.headers["content-type"] == "image/jpeg"
    assert len(preview.content) == 38077
    assert final["status"] == "succeeded", final["error"]
    assert json.loads(replay.client_messages[0]) == {
        "type": "feature_flags",
        "data": {"supports_preview_metadata": True},
    }
    assert replay.sent_types()[:2] == ["status", "feature_flags"]
    assert "binary" in replay.sent_types()
    assert_clean(replay)


def test_bare_executing_without_prompt_id_is_ignored(replayed, recs):
    """11(c): status with sid and executing{node} without prompt_id mid-run crash nothing."""
    rec = recs["11"]
    label = "(c) POST /prompt client_id=late"
    answers = [Answer(step(rec, "setup: upload the 64x64 photo")), *end_of_01(recs)]
    replay = replay_of(rec, label, answers, recs=recs, socket="late")
    service = replayed(replay)

    job = submit(service)
    final = service.wait_job(job["jobId"])

    assert final["status"] == "succeeded", final["error"]
    bare = [m for _, kind, m in replay.sent if kind == "executing" and "prompt_id" not in m["data"]]
    assert bare == [{"type": "executing", "data": {"node": "4"}}]
    assert service.services.clients[0].connected
    assert_clean(replay)


def test_history_written_after_execution_success_is_still_read(replayed, recs):
    """01 + the recorded race: /history is {} after execution_success; the job waits it out.

    The ``executed`` message is left out of the replay (as if missed on a socket that stayed
    up): the messages alone do not tell the outputs, so the end is read from /history."""
    rec = recs["01"]
    label = "POST /prompt with client_id"
    answers = recorded_success_answers(rec, label)
    replay = replay_of(rec, label, answers, recs=recs, speed=0.05)
    replay.frames = [f for f in replay.frames if f.get("text", {}).get("type") != "executed"]
    gate = replay.hold(is_ours("executing", node_null=True))
    service = replayed(replay)

    job = submit(service)
    replay.wait_for(lambda: "execution_success" in replay.sent_types())
    success_at = replay.sent[replay.sent_types().index("execution_success")][0]

    def checks() -> int:
        return sum(
            r.path.startswith(("/history/", "/queue")) and r.at > success_at
            for r in replay.requests
        )

    # The service keeps checking (several poll intervals) and still does not call it done.
    replay.wait_for(lambda: checks() >= 4)
    assert service.http.get(f"/jobs/{job['jobId']}").json()["status"] == "running"
    gate.set()
    final = service.wait_job(job["jobId"])

    assert final["status"] == "succeeded", final["error"]
    reads = [r for r in replay.requests if r.path.startswith("/history/")]
    assert {r.body for r in reads if r.phase != "done"} <= {b"{}"}
    assert reads[-1].phase == "done" and reads[-1].body != b"{}"
    assert_clean(replay)


@pytest.mark.parametrize(
    ("upload_label", "load_image"),
    [
        ("same name, DIFFERENT content, overwrite unset", "rec_up_3dce23 (1).png"),
        ("with nested subfolder='rec_sub/deeper'", "rec_sub/deeper/rec_up_3dce23.png"),
    ],
)
def test_load_image_uses_the_name_comfyui_kept(replayed, recs, upload_label, load_image):
    """08: a renamed upload ('stem (1).png') or a subfolder answer becomes the LoadImage value."""
    rec = recs["01"]
    label = "POST /prompt with client_id"
    answers = success_answers(
        upload=step(recs["08"], upload_label),
        history=step(rec, "history of the finished prompt"),
        view=step(rec, "view output image of node 7"),
        ids=ids_of(rec, label),
    )
    replay = replay_of(rec, label, answers, recs=recs, speed=0.05)
    service = replayed(replay)

    job = submit(service)
    final = service.wait_job(job["jobId"])

    assert final["status"] == "succeeded", final["error"]
    assert posted_graph(replay)["25"]["inputs"]["image"] == load_image
    [upload] = replay.uploads
    assert upload["overwrite"] == "false" and upload["type"] == "input"
    assert_clean(replay)


def test_queue_position_sorts_heap_order_float_numbers_and_foreign_items(replayed, recs):
    """07 + 12: pending items in heap order, with float/negative numbers of other clients, sort."""
    rec = recs["07"]
    label = "POST /prompt #2"
    ids = ids_of(rec, label)
    recorded = step(rec, "queue right after submitting 3")
    [running] = recorded["response"]["json"]["queue_running"]
    ours, foreign = recorded["response"]["json"]["queue_pending"]
    # Derived from recorded values: the numbers ComfyUI gave for front=true and number=5 (12),
    # clientIds of other sockets (11), and a heap array as ComfyUI's PriorityQueue keeps it.
    front = step(recs["12"], "front=true")["response"]["json"]["number"]
    explicit = step(recs["12"], "explicit number=5")["response"]["json"]["number"]
    assert (front, explicit) == (-403, 5.0)
    first = [front, foreign[1], foreign[2], {"client_id": "observer-caeb6e"}, foreign[4]]
    third = [explicit, "3120d350-6b88-49b3-b0f1-2b3f351c5e70", foreign[2], {}, foreign[4]]
    heap = {"queue_running": [running], "queue_pending": [first, ours, third]}
    derived = {**recorded, "response": {**recorded["response"], "json": heap}}
    answers = [
        Answer(derived, ids, QUEUED),
        Answer(step(recs["01"], "upload the photo")),
        Answer(step(rec, "final history of #2"), ids, DONE),
        Answer(step(recs["01"], "view output image of node 7"), any_query=True),
    ]
    replay = replay_of(rec, label, answers, recs=recs, speed=0.4)
    service = replayed(replay)

    job = submit(service)
    events = events_of(service, job["jobId"])

    # sorted: -403 (front), 5.0, 391 (ours): two start before it -> 3rd
    assert [data for kind, data in events if kind == "position"] == [{"queuePosition": 3}]
    assert events[-1][0] == "succeeded", events[-1]
    assert_clean(replay)
