"""FACE_POLICY end to end: faces at upload, refusals, and the crop ComfyUI receives."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageOps
from prometheus_client.parser import text_string_to_metric_families

from avatar_service.photos.faces import Box
from avatar_service.photos.framing import center_crop
from tests import photos
from tests.photos import ASTRONAUT_FACE

NO_FACE_BODY = {
    "error": {
        "code": "no_face_found",
        "message": "no face was found in the photo; send a photo where one face looks at the "
        "camera (FACE_POLICY=require)",
        "details": {"policy": "require", "checkedAt": "upload"},
    }
}


def upload(service, image: Image.Image):
    """POST the image to /upload-image as PNG."""
    return service.http.post(
        "/upload-image", files={"image": ("me.png", photos.png(image), "image/png")}
    )


def generate(service, image_name: str, **fields):
    """POST a generate request and return the answer."""
    return service.http.post(
        "/generate-avatar-by-image", json={"imageName": image_name, "seed": 7, **fields}
    )


def sent_to_comfyui(standin, avatar_png: bytes) -> Image.Image:
    """The photo the stand-in loaded for this avatar (named in the graph it wrote into the PNG)."""
    with Image.open(io.BytesIO(avatar_png)) as avatar:
        graph = json.loads(avatar.text["prompt"])
    [load] = [node for node in graph.values() if node["class_type"] == "LoadImage"]
    with Image.open(Path(standin.input_dir) / load["inputs"]["image"]) as image:
        return image.convert("RGB")


def likeness(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two pictures at 32x32 in grey (0: same; lower is closer)."""
    small_a = ImageOps.grayscale(a).resize((32, 32), Image.Resampling.BOX)
    small_b = ImageOps.grayscale(b).resize((32, 32), Image.Resampling.BOX)
    diff = ImageChops.difference(ImageOps.autocontrast(small_a), ImageOps.autocontrast(small_b))
    return sum(diff.getdata()) / (32 * 32)


def test_upload_answers_the_faces_and_keeps_them_beside_the_photo(service, tmp_path):
    """The astronaut's upload answer has her face box; a sidecar JSON keeps it for generate."""
    answer = upload(service, photos.astronaut())
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["width"], body["height"]) == (512, 512)
    [face] = body["faces"]
    box = Box(face["x"], face["y"], face["width"], face["height"])
    assert box.contains(Box(ASTRONAUT_FACE.x + 30, ASTRONAUT_FACE.y + 30, 30, 50))
    assert face["confidence"] > 0
    sidecar = json.loads((tmp_path / "uploads" / f"{body['imageName']}.json").read_text())
    assert sidecar == {"width": 512, "height": 512, "faces": body["faces"]}


def test_wide_avatar_of_the_astronaut_is_cropped_around_her_face(service, standin):
    """1024x512 from the square portrait: the job's crop holds the face, ComfyUI gets that crop,
    and the stand-in's rendering looks like the face crop, not like today's centre crop."""
    image_name = service.upload(photos.png(photos.astronaut()))
    answer = generate(service, image_name, width=1024, height=512)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    crop = job["crop"]
    assert crop["source"] == "face"
    box = Box(crop["x"], crop["y"], crop["width"], crop["height"])
    assert box.contains(ASTRONAUT_FACE)
    assert box.width == 2 * box.height
    assert service.http.get(f"/jobs/{job['jobId']}").json()["crop"] == crop

    avatar = service.http.get(job["avatars"][0]["url"]).content
    sent = sent_to_comfyui(standin, avatar)
    expected = photos.astronaut().crop((box.x, box.y, box.right, box.bottom))
    assert sent.size == (box.width, box.height)
    assert ImageChops.difference(sent, expected).getbbox() is None

    centre = center_crop(photo_width=512, photo_height=512, target_width=1024, target_height=512)
    centre_image = photos.astronaut().crop((centre.x, centre.y, centre.right, centre.bottom))
    with Image.open(io.BytesIO(avatar)) as rendering:
        rendering = rendering.convert("RGB")
        assert rendering.size == (1024, 512)
        assert likeness(rendering, expected) < likeness(rendering, centre_image)


def test_request_crop_overrides_the_face(service, standin):
    """A request's own crop is validated, recorded with source "request", and sent to ComfyUI."""
    image_name = service.upload(photos.png(photos.astronaut()))
    mine = {"x": 300, "y": 200, "width": 200, "height": 200}
    answer = generate(service, image_name, width=512, height=512, crop=mine)
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["crop"] == {**mine, "source": "request"}
    sent = sent_to_comfyui(standin, service.http.get(job["avatars"][0]["url"]).content)
    expected = photos.astronaut().crop((300, 200, 500, 400))
    assert ImageChops.difference(sent, expected).getbbox() is None


@pytest.mark.parametrize(
    ("crop", "message"),
    [
        (
            {"x": 400, "y": 0, "width": 200, "height": 100},
            "must lie inside the stored photo (512x512): x + width <= photo width and "
            "y + height <= photo height",
        ),
        (
            {"x": 0, "y": 0, "width": "all"},
            'must be an object {"x", "y", "width", "height"} of integers',
        ),
        (
            {"x": 0, "y": 0, "width": 0, "height": 5},
            "x and y must be at least 0, width and height at least 64",
        ),
        (
            {"x": 0, "y": 0, "width": 1, "height": 1},
            "x and y must be at least 0, width and height at least 64",
        ),
    ],
)
def test_bad_request_crop_is_400_naming_crop(service, crop, message):
    """A crop that is malformed or leaves the photo is refused with the other fields' errors."""
    image_name = service.upload(photos.png(photos.astronaut()))
    answer = generate(service, image_name, crop=crop)
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "invalid_fields",
            "message": f"crop: {message}",
            "details": {"fields": {"crop": message}},
        }
    }


def test_faceless_photo_under_prefer_keeps_todays_centre_crop(service, standin, tmp_path):
    """No face under prefer: ComfyUI gets the photo as stored; the record names the centre crop."""
    answer = upload(service, photos.chelsea())
    assert answer.status_code == 201
    body = answer.json()
    assert body["faces"] == []
    job = generate(service, body["imageName"], width=512, height=512).json()
    # ImageScale's centre crop of 451x300: 76 px off each side (ComfyUI slices x:451-x).
    assert job["crop"] == {"x": 76, "y": 0, "width": 299, "height": 300, "source": "center"}
    sent = sent_to_comfyui(standin, service.http.get(job["avatars"][0]["url"]).content)
    with Image.open(tmp_path / "uploads" / body["imageName"]) as stored:
        assert ImageChops.difference(sent, stored.convert("RGB")).getbbox() is None


@pytest.mark.parametrize(
    "make", [photos.gradient, photos.drawn_text, photos.chelsea], ids=["gradient", "text", "cat"]
)
def test_require_refuses_a_faceless_upload_and_stores_nothing(make_service, tmp_path, make):
    """FACE_POLICY=require: a photo without a face is 422 no_face_found; nothing is stored."""
    service = make_service(face_policy="require")
    answer = upload(service, make())
    assert answer.status_code == 422
    assert answer.json() == NO_FACE_BODY
    assert list((tmp_path / "uploads").iterdir()) == []


def test_require_accepts_the_portrait(make_service):
    """FACE_POLICY=require: a photo with a face is stored as usual."""
    service = make_service(face_policy="require")
    answer = upload(service, photos.astronaut())
    assert answer.status_code == 201
    assert len(answer.json()["faces"]) == 1


def test_require_refuses_at_generate_a_photo_stored_before(make_service, tmp_path):
    """A faceless photo stored under FACE_POLICY=off is refused at generate under require."""
    before = make_service(face_policy="off")
    answer = upload(before, photos.gradient())
    assert answer.status_code == 201
    assert "faces" not in answer.json()
    image_name = answer.json()["imageName"]
    assert list((tmp_path / "uploads").iterdir()) == [tmp_path / "uploads" / image_name]
    before.stop()

    after = make_service(face_policy="require")
    refused = generate(after, image_name)
    assert refused.status_code == 422
    assert refused.json() == {
        "error": {
            **NO_FACE_BODY["error"],
            "details": {"policy": "require", "checkedAt": "generate"},
        }
    }


def test_photo_stored_before_detection_is_cropped_around_its_face(make_service, tmp_path):
    """A portrait stored without a face record gets its face detected (and kept) at generate."""
    before = make_service(face_policy="off")
    image_name = before.upload(photos.png(photos.astronaut()))
    off_job = generate(before, image_name, width=1024, height=512).json()
    assert off_job["crop"] == {"x": 0, "y": 128, "width": 512, "height": 256, "source": "center"}
    before.stop()

    after = make_service()
    job = generate(after, image_name, width=1024, height=512).json()
    assert job["crop"]["source"] == "face"
    box = Box(job["crop"]["x"], job["crop"]["y"], job["crop"]["width"], job["crop"]["height"])
    assert box.contains(ASTRONAUT_FACE)
    assert (tmp_path / "uploads" / f"{image_name}.json").is_file()


def test_several_faces_refused_when_asked(make_service):
    """FACE_MULTIPLE=refuse: two people are 422 several_faces with both boxes."""
    service = make_service(face_multiple="refuse")
    answer = upload(service, photos.two_people())
    assert answer.status_code == 422
    body = answer.json()
    faces = body["error"]["details"]["faces"]
    assert len(faces) == 2
    assert body == {
        "error": {
            "code": "several_faces",
            "message": "2 faces were found in the photo; send a photo of one person "
            "(FACE_MULTIPLE=refuse)",
            "details": {"faces": faces, "checkedAt": "upload"},
        }
    }


def test_several_faces_crop_around_the_largest_by_default(service):
    """By default two people are accepted and the crop goes around the larger face."""
    answer = upload(service, photos.two_people())
    assert answer.status_code == 201
    big, small = answer.json()["faces"]
    job = generate(service, answer.json()["imageName"], width=512, height=512).json()
    box = Box(job["crop"]["x"], job["crop"]["y"], job["crop"]["width"], job["crop"]["height"])
    assert box.contains(Box(big["x"], big["y"], big["width"], big["height"]))
    assert not box.contains(Box(small["x"], small["y"], small["width"], small["height"]))


def test_no_face_refusal_is_quick_for_a_large_photo(make_service):
    """A 2048x1536 faceless photo under require is answered 422 without storing (bounded wait)."""
    service = make_service(face_policy="require")
    started = time.monotonic()
    answer = upload(service, photos.gradient((2048, 1536)))
    assert answer.status_code == 422
    assert answer.json() == NO_FACE_BODY
    assert time.monotonic() - started < 30  # a hang guard only; the timing is in bench/


def test_face_refusal_is_counted_as_a_refused_upload(make_service):
    """/metrics counts a FACE_POLICY refusal under its error code, like other refused uploads."""
    service = make_service(face_policy="require")
    assert upload(service, photos.gradient()).status_code == 422
    assert upload(service, photos.astronaut()).status_code == 201
    text = service.http.get("/metrics").text
    uploads = {
        sample.labels["outcome"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "avatar_uploads_total"
    }
    assert uploads == {"no_face_found": 1, "stored": 1}


def test_integral_float_crop_is_read_as_integers(service):
    """As for width and height, a crop of 100.0 is the integer 100 (JSON Schema's integers)."""
    image_name = service.upload(photos.png(photos.astronaut()))
    crop = {"x": 10.0, "y": 0, "width": 100.0, "height": 100}
    answer = generate(service, image_name, crop=crop)
    assert answer.status_code in {200, 202}, answer.text
    assert answer.json()["crop"] == {
        "x": 10,
        "y": 0,
        "width": 100,
        "height": 100,
        "source": "request",
    }
