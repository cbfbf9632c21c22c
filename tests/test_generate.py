"""The seed's API end to end: the real service under waitress against the stand-in ComfyUI."""

from __future__ import annotations

import io
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

from tests.conftest import make_photo
from tests.helpers import wait_for


def prompt_of(png: bytes) -> dict:
    """The graph ComfyUI wrote into the PNG's ``prompt`` text chunk."""
    with Image.open(io.BytesIO(png)) as image:
        return json.loads(image.text["prompt"])


@pytest.fixture
def default_service(make_service):
    """A live service that strips ComfyUI's prompt from avatars, as the default does."""
    return make_service(strip_avatar_metadata=True)


def nodes_of(graph: dict, class_type: str) -> list[dict]:
    return [node for node in graph.values() if node["class_type"] == class_type]


def mean_colour(png: bytes) -> tuple[float, float, float]:
    with Image.open(io.BytesIO(png)) as image:
        small = image.convert("RGB").resize((1, 1), Image.Resampling.BOX)
        return small.getpixel((0, 0))


def test_seed_curl_flow_returns_avatar_of_requested_size(service, photo):
    """Upload then generate as in the seed's curl examples: 200 with an avatar of 1024x1024."""
    upload = service.http.post("/upload-image", files={"image": ("me.jpg", photo, "image/jpeg")})
    assert upload.status_code == 201
    body = upload.json()
    assert set(body) == {"imageName", "width", "height", "faces"}
    assert (body["width"], body["height"], body["faces"]) == (96, 96, [])

    answer = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": body["imageName"], "gender": "female", "width": 1024, "height": 1024},
    )
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "succeeded"
    assert (job["width"], job["height"], job["gender"]) == (1024, 1024, "female")
    assert isinstance(job["seed"], int)
    assert job["timings"]["totalMs"] >= 0
    [avatar] = job["avatars"]
    assert (avatar["width"], avatar["height"]) == (1024, 1024)

    image = service.http.get(avatar["url"])
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(image.content)) as decoded:
        assert decoded.size == (1024, 1024)
    graph = prompt_of(image.content)
    [sampler] = nodes_of(graph, "KSampler")
    assert sampler["inputs"]["seed"] == job["seed"]
    texts = [node["inputs"]["text"] for node in nodes_of(graph, "CLIPTextEncode")]
    assert any(text.startswith("portrait of a woman") for text in texts)
    [load] = nodes_of(graph, "LoadImage")
    assert load["inputs"]["image"].endswith(body["imageName"])


def test_upload_alias_and_file_field(service, photo):
    """POST /upload_image with the field ``file`` (both named by the seed's text) works too."""
    answer = service.http.post("/upload_image", files={"file": ("x.png", photo, "image/png")})
    assert answer.status_code == 201
    assert answer.json()["imageName"].endswith(".png")


def test_given_seed_is_used_and_echoed(service, photo):
    """A seed in the request reaches the sampler and comes back; a missing one is random."""
    name = service.upload(photo)
    first = service.http.post(
        "/generate-avatar-by-image", json={"imageName": name, "seed": 2**64 - 1}
    ).json()
    assert first["seed"] == 2**64 - 1
    png = service.http.get(first["avatars"][0]["url"]).content
    assert nodes_of(prompt_of(png), "KSampler")[0]["inputs"]["seed"] == 2**64 - 1
    seeds = {
        service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()["seed"]
        for _ in range(3)
    }
    assert len(seeds) == 3
    assert all(0 <= seed < 2**53 for seed in seeds)


def test_gender_changes_the_positive_prompt(service, photo):
    """Each gender puts its own text into the positive prompt that the sampler uses."""
    name = service.upload(photo)
    texts = {}
    for gender in ("male", "female", "neutral"):
        job = service.http.post(
            "/generate-avatar-by-image", json={"imageName": name, "gender": gender, "seed": 1}
        ).json()
        graph = prompt_of(service.http.get(job["avatars"][0]["url"]).content)
        sampler = nodes_of(graph, "KSampler")[0]
        concat = graph[sampler["inputs"]["positive"][0]]
        texts[gender] = graph[concat["inputs"]["conditioning_to"][0]]["inputs"]["text"]
    assert texts["male"].startswith("portrait of a man")
    assert texts["female"].startswith("portrait of a woman")
    assert len(set(texts.values())) == 3


def test_eight_concurrent_generations_each_from_its_own_photo(service):
    """8 parallel requests with 8 photos: each avatar is made from its own photo, at its size."""
    colours = [
        (220, 30, 30), (30, 220, 30), (30, 30, 220), (220, 220, 30),
        (30, 220, 220), (220, 30, 220), (240, 240, 240), (20, 20, 20),
    ]  # fmt: skip
    sizes = [(64 + 8 * i, 128 - 8 * i) for i in range(8)]
    names = [service.upload(make_photo(colour)) for colour in colours]

    def generate(index: int) -> dict:
        width, height = sizes[index]
        answer = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": names[index], "width": width, "height": height},
        )
        assert answer.status_code == 200, answer.text
        return answer.json()

    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(pool.map(generate, range(8)))

    assert len({job["jobId"] for job in jobs}) == 8
    for index, job in enumerate(jobs):
        [avatar] = job["avatars"]
        png = service.http.get(avatar["url"]).content
        [load] = nodes_of(prompt_of(png), "LoadImage")
        assert load["inputs"]["image"].endswith(names[index])
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == sizes[index]
        mean = mean_colour(png)
        distances = [sum((a - b) ** 2 for a, b in zip(mean, c, strict=True)) for c in colours]
        assert distances.index(min(distances)) == index


def test_async_request_answers_202_with_location(service, photo):
    """``"async": true`` answers 202 at once with Location; the job then succeeds."""
    name = service.upload(photo)
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name, "async": True})
    assert answer.status_code == 202
    location = answer.headers["location"]
    assert location.endswith(f"/jobs/{answer.json()['jobId']}")
    record = service.wait_job(answer.json()["jobId"])
    assert record["status"] == "succeeded"
    assert len(record["avatars"]) == 1


def test_prefer_respond_async_header(service, photo):
    """``Prefer: respond-async`` gets the 202 at once too."""
    name = service.upload(photo)
    answer = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": name},
        headers={"Prefer": "respond-async"},
    )
    assert answer.status_code == 202
    assert service.wait_job(answer.json()["jobId"])["status"] == "succeeded"


def test_request_outlasting_sync_wait_gets_202(make_service, standin, photo):
    """A generation longer than SYNC_WAIT answers 202 with Location instead of holding on."""
    service = make_service(sync_wait=0.2)
    standin.set_faults(step_delay=0.1)
    name = service.upload(photo)
    answer = service.http.post("/generate-avatar-by-image", json={"imageName": name})
    assert answer.status_code == 202
    assert answer.json()["status"] in {"queued", "running"}
    standin.set_faults(step_delay=0.0)
    assert service.wait_job(answer.json()["jobId"])["status"] == "succeeded"


def test_avatar_file_is_saved_in_output_dir(service, photo, tmp_path):
    """The avatar is written to OUTPUT_DIR and served by GET /avatars/<fileName>."""
    name = service.upload(photo)
    job = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    file_name = job["avatars"][0]["fileName"]
    saved = tmp_path / "generated_avatar" / file_name
    assert saved.is_file()
    assert service.http.get(f"/avatars/{file_name}").content == saved.read_bytes()


@pytest.mark.parametrize("path", ["/avatars/nope.png", "/avatars/..%2Fetc%2Fpasswd"])
def test_unknown_avatar_is_404(app_client, path):
    """Unknown or crafted avatar names answer a JSON 404."""
    answer = app_client.get(path)
    assert answer.status_code == 404
    assert answer.get_json()["error"]["code"] in {"avatar_not_found", "not_found"}


def test_unknown_job_is_404(app_client):
    """An unknown job id answers 404 job_not_found."""
    answer = app_client.get("/jobs/" + "0" * 32)
    assert answer.status_code == 404
    assert answer.get_json() == {
        "error": {
            "code": "job_not_found",
            "message": "unknown job",
            "details": {"jobId": "0" * 32},
        }
    }


def test_health_and_readiness(service, standin):
    """/healthz is up; /readyz reports the stand-in reachable and able to run every style."""
    assert service.http.get("/healthz").json() == {"status": "ok"}
    ready = wait_for(
        lambda: (answer := service.http.get("/readyz")).status_code == 200 and answer,
        timeout=10,
        message="/readyz 200",
    )
    body = ready.json()
    assert body["ready"] is True
    server = body["servers"][standin.url]
    assert server["websocket"] is True and server["http"] is True


def test_styles_lists_workflows(service):
    """GET /styles lists the configured styles and the default one."""
    body = service.http.get("/styles").json()
    names = {style["name"] for style in body["styles"]}
    assert {"avatar", "cartoon"} <= names
    assert body["default"] == "avatar"


def test_avatars_carry_no_comfyui_prompt(default_service, photo):
    """The prompt ComfyUI embeds (graph, stored photo name) is dropped; the pixels are kept."""
    import io

    from PIL import Image

    service = default_service
    name = service.upload(photo)
    record = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    data = service.http.get(f"/avatars/{record['avatars'][0]['fileName']}").content
    assert name not in data.decode("latin-1")
    with Image.open(io.BytesIO(data)) as image:
        assert "prompt" not in image.info and "workflow" not in image.info
        image.load()
        assert image.size == (record["width"], record["height"])


def test_avatar_metadata_kept_when_asked(make_service, photo):
    """STRIP_AVATAR_METADATA=false keeps ComfyUI's prompt chunk (to trace an avatar back)."""
    import io
    import json

    from PIL import Image

    service = make_service(strip_avatar_metadata=False)
    name = service.upload(photo)
    record = service.http.post("/generate-avatar-by-image", json={"imageName": name}).json()
    data = service.http.get(f"/avatars/{record['avatars'][0]['fileName']}").content
    with Image.open(io.BytesIO(data)) as image:
        prompt = json.loads(image.info["prompt"])
    seeds = [node["inputs"]["seed"] for node in prompt.values() if "seed" in node["inputs"]]
    assert seeds == [record["seed"]]
