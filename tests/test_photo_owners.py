"""With API keys on, a photo is the key's that uploaded it: another key gets 404, an admin any.

In-process, in front of the fake ComfyUI. Without keys nothing changes, and a photo stored with
no owner recorded (before owners were, or without keys) stays reachable by every key.
"""

from __future__ import annotations

import pytest

from tests.helpers import upload

KEY_A = "key-a-0123456789abcdef"
KEY_B = "key-b-0123456789abcdef"
ADMIN = "admin-0123456789abcdef"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def not_found(image_name: str) -> dict:
    """The 404 of a photo the service does not have (or does not show this key)."""
    return {
        "error": {
            "code": "image_not_found",
            "message": "unknown imageName; upload the photo first with POST /upload-image",
            "details": {"imageName": image_name},
        }
    }


@pytest.fixture
def keyed_client(make_app):
    """A test client of an app with two user keys and an admin key."""
    return make_app(api_keys=f"{KEY_A},{KEY_B}", admin_api_keys=ADMIN).test_client()


def generate(client, name: str, key: str, **extra):
    return client.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "async": True, **extra},
        headers=bearer(key),
    )


def test_another_key_gets_404_for_a_photo(keyed_client, photo):
    """Key B can neither generate from key A's photo nor read its framing: 404, as if unknown."""
    name = upload(keyed_client, photo, headers=bearer(KEY_A))
    answer = generate(keyed_client, name, KEY_B)
    assert answer.status_code == 404
    assert answer.get_json() == not_found(name)
    framing = keyed_client.get(f"/photos/{name}/framing", headers=bearer(KEY_B))
    assert framing.status_code == 404
    assert framing.get_json() == not_found(name)


def test_the_owner_and_an_admin_use_the_photo(keyed_client, photo):
    """The key that uploaded the photo, and an admin key, generate from it and read its framing."""
    name = upload(keyed_client, photo, headers=bearer(KEY_A))
    for key in (KEY_A, ADMIN):
        assert generate(keyed_client, name, key).status_code == 202, key
        framing = keyed_client.get(f"/photos/{name}/framing", headers=bearer(key))
        assert framing.status_code == 200, key
        assert framing.get_json()["imageName"] == name


def test_a_crop_tells_nothing_of_another_keys_photo(keyed_client, photo):
    """A crop outside key A's photo is 400 naming its size for A, and only 404 for key B."""
    name = upload(keyed_client, photo, headers=bearer(KEY_A))
    crop = {"x": 0, "y": 0, "width": 2000, "height": 2000}
    own = generate(keyed_client, name, KEY_A, crop=crop)
    assert own.status_code == 400
    assert "96x96" in own.get_json()["error"]["details"]["fields"]["crop"]
    other = generate(keyed_client, name, KEY_B, crop=crop)
    assert other.status_code == 404
    assert other.get_json() == not_found(name)


def test_a_photo_without_a_recorded_owner_stays_reachable(make_app, app_config, photo):
    """A photo stored without keys (no owner recorded) is usable by every key once keys are on."""
    open_app = make_app()
    name = upload(open_app.test_client(), photo)
    open_app.extensions["avatar_service"].close()
    client = make_app(api_keys=f"{KEY_A},{KEY_B}").test_client()
    for key in (KEY_A, KEY_B):
        assert generate(client, name, key).status_code == 202, key
        framing = client.get(f"/photos/{name}/framing", headers=bearer(key))
        assert framing.status_code == 200, key


def test_without_keys_any_caller_uses_any_photo(app_client, photo):
    """With no keys configured, photos have no owner: anyone generates from any photo."""
    name = upload(app_client, photo)
    answer = app_client.post("/generate-avatar-by-image", json={"imageName": name, "async": True})
    assert answer.status_code == 202
    assert app_client.get(f"/photos/{name}/framing").status_code == 200
