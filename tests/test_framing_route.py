"""GET /photos/<imageName>/framing: the faces and the crop a generate would use, before it."""

from __future__ import annotations

import pytest

from avatar_service.photos.faces import Box
from tests import photos
from tests.helpers import upload
from tests.photos import ASTRONAUT_FACE

KEY = "framing-key-0123456789abcdef"
SIDE = "must be an integer from 64 to 2048 and a multiple of 8"


def framing(service, image_name: str, **params):
    """GET the framing of a stored photo with these query parameters."""
    return service.http.get(f"/photos/{image_name}/framing", params=params)


def test_astronaut_framing_is_the_crop_generate_uses(service):
    """For each size the route answers her face and exactly the crop the job then records."""
    uploaded = service.http.post(
        "/upload-image", files={"image": ("me.png", photos.png(photos.astronaut()), "image/png")}
    ).json()
    image_name = uploaded["imageName"]
    for width, height in [(1024, 512), (512, 768), (256, 256)]:
        answer = framing(service, image_name, width=width, height=height)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        job = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": image_name, "width": width, "height": height, "async": True},
        ).json()
        assert body == {
            "imageName": image_name,
            "width": 512,
            "height": 512,
            "faces": uploaded["faces"],
            "crop": job["crop"],
            "avatar": {"width": width, "height": height},
            "policy": "prefer",
        }
        assert body["crop"]["source"] == "face"
        crop = Box.from_dict(body["crop"])
        assert crop.contains(ASTRONAUT_FACE)
        assert crop.width * height == pytest.approx(crop.height * width, rel=0.02)


def test_faceless_photo_is_centre_cropped_and_sizes_default_to_the_style(service):
    """A gradient has no face: the centre crop; no width/height means the style's 512x512."""
    image_name = service.upload(photos.png(photos.gradient((640, 480))))
    answer = framing(service, image_name)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "imageName": image_name,
        "width": 640,
        "height": 480,
        "faces": [],
        "crop": {"x": 80, "y": 0, "width": 480, "height": 480, "source": "center"},
        "avatar": {"width": 512, "height": 512},
        "policy": "prefer",
    }


@pytest.mark.parametrize(
    ("params", "fields"),
    [
        pytest.param({"width": "100"}, {"width": SIDE}, id="off-grid"),
        pytest.param({"width": "512", "height": "4096"}, {"height": SIDE}, id="too-tall"),
        pytest.param({"width": "abc", "height": "-8"}, {"width": SIDE, "height": SIDE}, id="text"),
        pytest.param({"width": "512.0"}, {"width": SIDE}, id="decimal"),
        pytest.param(
            {"style": "nope"}, {"style": "unknown style; one of ['avatar', 'cartoon']"}, id="style"
        ),
    ],
)
def test_bad_parameters_are_400_invalid_fields(app_client, params, fields):
    """Width and height follow generate's rules; every bad one is named in one 400."""
    image_name = upload(app_client, photos.png(photos.gradient()))
    answer = app_client.get(f"/photos/{image_name}/framing", query_string=params)
    assert answer.status_code == 400
    [(name, message)] = fields.items() if len(fields) == 1 else [(None, None)]
    summary = f"{name}: {message}" if name else "several fields are invalid"
    assert answer.get_json() == {
        "error": {
            "code": "invalid_fields",
            "message": summary,
            "details": {"fields": fields},
        }
    }


@pytest.mark.parametrize("image_name", ["0" * 32 + ".png", "secrets.txt", "nope"])
def test_unknown_photo_is_404(app_client, image_name):
    """A name the service did not make is 404 image_not_found, like generate."""
    answer = app_client.get(
        f"/photos/{image_name}/framing", query_string={"width": 512, "height": 512}
    )
    assert answer.status_code == 404
    assert answer.get_json() == {
        "error": {
            "code": "image_not_found",
            "message": "unknown imageName; upload the photo first with POST /upload-image",
            "details": {"imageName": image_name},
        }
    }


def test_require_answers_generates_refusal(make_service):
    """Under FACE_POLICY=require a faceless photo stored before answers generate's own 422."""
    before = make_service(face_policy="off")
    image_name = before.upload(photos.png(photos.gradient()))
    assert framing(before, image_name).json()["crop"]["source"] == "center"
    before.stop()

    after = make_service(face_policy="require")
    answer = framing(after, image_name, width=512, height=512)
    refused = after.http.post("/generate-avatar-by-image", json={"imageName": image_name})
    assert (answer.status_code, refused.status_code) == (422, 422)
    assert (
        answer.json()
        == refused.json()
        == {
            "error": {
                "code": "no_face_found",
                "message": "no face was found in the photo; send a photo where one face looks at "
                "the camera (FACE_POLICY=require)",
                "details": {"policy": "require", "checkedAt": "generate"},
            }
        }
    )


def test_face_policy_off_answers_no_faces_and_the_centre(make_service):
    """With FACE_POLICY=off nothing is detected: no faces, ComfyUI's centre crop."""
    service = make_service(face_policy="off")
    image_name = service.upload(photos.png(photos.astronaut()))
    body = framing(service, image_name, width=1024, height=512).json()
    assert (body["policy"], body["faces"], body["crop"]) == (
        "off",
        [],
        {"x": 0, "y": 128, "width": 512, "height": 256, "source": "center"},
    )


def test_needs_the_key_when_keys_are_on(make_app):
    """With API keys on the route is 401 without a key and answers with one (any key's photo)."""
    client = make_app(api_keys=KEY).test_client()
    headers = {"Authorization": f"Bearer {KEY}"}
    image_name = upload(client, photos.png(photos.astronaut()), headers=headers)
    refused = client.get(f"/photos/{image_name}/framing")
    assert refused.status_code == 401
    assert refused.get_json() == {
        "error": {
            "code": "unauthorized",
            "message": "this service needs an API key: send Authorization: Bearer <key>",
        }
    }
    answer = client.get(f"/photos/{image_name}/framing", headers=headers)
    assert answer.status_code == 200
    assert answer.get_json()["crop"]["source"] == "face"
