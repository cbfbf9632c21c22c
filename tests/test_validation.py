"""Every bad input gets a clear JSON error with an honest status, and leaves nothing behind."""

from __future__ import annotations

import contextlib
import io
import json
import threading
from urllib.parse import urljoin

import pytest
from PIL import Image

from tests.conftest import make_photo
from tests.helpers import upload


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def test_upload_without_file_field(app_client):
    """A multipart body without ``image`` or ``file`` is a 400 naming the fields received."""
    answer = app_client.post("/upload-image", data={"photo": "x"})
    assert answer.status_code == 400
    assert answer.get_json() == {
        "error": {
            "code": "missing_file",
            "message": "send the photo as multipart/form-data in the field 'image' (or 'file')",
            "details": {"receivedFields": ["photo"]},
        }
    }


UPLOAD_CASES = [
    pytest.param(
        b"just some text, not a picture", 415, "unsupported_image_type", id="text-named-png"
    ),
    pytest.param(
        encoded(Image.new("RGB", (100, 100), "red"), "GIF"), 415, "unsupported_image_type", id="gif"
    ),
    pytest.param(
        encoded(Image.new("RGB", (100, 100), "red"), "BMP"), 415, "unsupported_image_type", id="bmp"
    ),
    pytest.param(make_photo((1, 2, 3), size=(63, 200)), 400, "image_too_small", id="63px-wide"),
    pytest.param(make_photo((1, 2, 3))[:200], 400, "invalid_image", id="truncated-png"),
    pytest.param(b"", 400, "empty_file", id="empty"),
    pytest.param(
        encoded(Image.new("L", (3000, 2000)), "PNG"), 400, "image_too_many_pixels", id="bomb"
    ),
]


@pytest.mark.parametrize(("data", "status", "code"), UPLOAD_CASES)
def test_bad_uploads(make_app, tmp_path, data, status, code):
    """Bad photos are refused by content (not name) and nothing is stored."""
    client = make_app(max_image_pixels=5_000_000).test_client()
    answer = client.post(
        "/upload-image", data={"image": (io.BytesIO(data), "photo.png", "image/png")}
    )
    assert answer.status_code == status, answer.get_data(as_text=True)
    error = answer.get_json()["error"]
    assert error["code"] == code
    assert error["message"]
    assert list((tmp_path / "uploads").iterdir()) == []


def test_upload_over_size_limit_is_413(make_app, tmp_path):
    """A photo over MAX_UPLOAD_MB answers 413 with the limit."""
    client = make_app(max_upload_mb=0.01).test_client()
    noisy = Image.effect_noise((200, 200), 100).convert("RGB")
    answer = client.post(
        "/upload-image",
        data={"image": (io.BytesIO(encoded(noisy, "PNG")), "big.png", "image/png")},
    )
    assert answer.status_code == 413
    assert answer.get_json()["error"]["code"] in {"photo_too_large", "payload_too_large"}
    assert list((tmp_path / "uploads").iterdir()) == []


def test_upload_applies_exif_orientation_and_hides_client_name(app_client, tmp_path):
    """EXIF orientation 6 is applied; the stored name is made by the server, not the client."""
    image = Image.new("RGB", (160, 80), "blue")
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encoded(image, "JPEG", exif=exif.tobytes())
    answer = app_client.post("/upload-image", data={"image": (io.BytesIO(data), "../../etc/x.jpg")})
    assert answer.status_code == 201
    body = answer.get_json()
    assert (body["width"], body["height"]) == (80, 160)
    assert "etc" not in body["imageName"] and "x.jpg" not in body["imageName"]
    stored = sorted(p.name for p in (tmp_path / "uploads").iterdir())
    assert stored == [body["imageName"], f"{body['imageName']}.json"]  # the photo, its faces


def test_webp_is_accepted(app_client):
    """WebP photos are accepted."""
    data = encoded(Image.new("RGB", (80, 80), "green"), "WEBP")
    answer = app_client.post("/upload-image", data={"image": (io.BytesIO(data), "a.webp")})
    assert answer.status_code == 201


RULE = "must be an integer from 64 to 2048 and a multiple of 8"
GENERATE_CASES = [
    pytest.param({"width": 100}, {"width": RULE}, id="width-not-multiple-of-8"),
    pytest.param({"height": 32}, {"height": RULE}, id="height-too-small"),
    pytest.param({"width": 4096}, {"width": RULE}, id="width-too-big"),
    pytest.param({"width": "512"}, {"width": RULE}, id="width-string"),
    pytest.param({"width": 512.5}, {"width": RULE}, id="width-float"),
    pytest.param({"height": True}, {"height": RULE}, id="height-bool"),
    pytest.param(
        {"gender": "robot"}, {"gender": "must be one of ['female', 'male', 'neutral']"}, id="gender"
    ),
    pytest.param(
        {"seed": -1}, {"seed": "must be an integer from 0 to 18446744073709551615"}, id="seed-neg"
    ),
    pytest.param(
        {"seed": 2**64},
        {"seed": "must be an integer from 0 to 18446744073709551615"},
        id="seed-big",
    ),
    pytest.param({"async": "yes"}, {"async": "must be true or false"}, id="async-not-bool"),
    pytest.param(
        {"style": "nope"}, {"style": "unknown style; one of ['avatar', 'cartoon']"}, id="style"
    ),
    pytest.param(
        {"callbackUrl": "http://evil.example/"},
        {"callbackUrl": "not accepted: WEBHOOK_ALLOWED_URLS allows no callback URL"},
        id="callback-not-allowed",
    ),
]


@pytest.mark.parametrize(("change", "fields"), GENERATE_CASES)
def test_bad_generate_fields(app_client, fake_server, photo, change, fields):
    """Each bad field is a 400 that states the rule; nothing reaches ComfyUI."""
    name = upload(app_client, photo)
    answer = app_client.post("/generate-avatar-by-image", json={"imageName": name, **change})
    assert answer.status_code == 400
    [(field, message)] = fields.items()
    assert answer.get_json() == {
        "error": {
            "code": "invalid_fields",
            "message": f"{field}: {message}",
            "details": {"fields": fields},
        }
    }
    assert fake_server.calls_named("queue_prompt") == []


def test_several_bad_fields_are_reported_together(app_client, photo):
    """All bad fields are named in one answer."""
    name = upload(app_client, photo)
    answer = app_client.post(
        "/generate-avatar-by-image", json={"imageName": name, "width": 1, "gender": "x"}
    )
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["message"] == "several fields are invalid"
    assert set(error["details"]["fields"]) == {"width", "gender"}


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"",
        b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"imageName": "a.png", "width": NaN}',
        b'{"imageName": "a.png", "seed": -Infinity}',
    ],
    ids=["garbage", "array", "empty", "deeply-nested", "nan", "infinity"],
)
def test_generate_body_must_be_a_json_object(app_client, body):
    """A body that is not a JSON object is a 400 invalid_json."""
    answer = app_client.post(
        "/generate-avatar-by-image", data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize(
    ("body", "content_type", "message"),
    [
        (b'{"imageName": "x",', "application/json", "the body is not valid JSON: Expecting"),
        (b"[1, 2]", "application/json", "the body must be a JSON object, not an array"),
        (b'"x"', "application/json", "the body must be a JSON object, not a string"),
        (b'{"imageName": "x"}', "text/plain", "sent with Content-Type: application/json"),
        (b"\xff", "application/json", "the body is not valid JSON"),
    ],
    ids=["truncated", "array", "string", "wrong-content-type", "not-utf8"],
)
def test_an_unreadable_body_is_told_apart(app_client, body, content_type, message):
    """The invalid_json message says what is wrong: where the JSON breaks, what came instead
    of an object, or the Content-Type."""
    answer = app_client.post(
        "/generate-avatar-by-image", data=body, headers={"Content-Type": content_type}
    )
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_json"
    assert message in error["message"]
    if content_type == "application/json" and body.startswith(b"{"):
        assert error["details"] == {"line": 1, "column": 19}


@pytest.mark.parametrize("field", ["width", "height", "seed"])
def test_out_of_range_json_numbers_are_invalid_fields(app_client, photo, field):
    """1e400 (read as infinity) in a number field is a 400 naming the field, never a 500."""
    name = upload(app_client, photo)
    body = b'{"imageName": "%s", "%s": 1e400}' % (name.encode(), field.encode())
    answer = app_client.post(
        "/generate-avatar-by-image", data=body, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_fields"
    assert list(error["details"]["fields"]) == [field]


def test_missing_image_name(app_client):
    """imageName is required."""
    answer = app_client.post("/generate-avatar-by-image", json={"gender": "male"})
    assert answer.status_code == 400
    assert answer.get_json()["error"]["details"]["fields"] == {
        "imageName": "required: the imageName returned by POST /upload-image"
    }


@pytest.mark.parametrize("name", ["AAAAAAAAAAAAAAAAAAAAAA.png", "../uploads/x.png", "me.jpg"])
def test_unknown_image_name_is_404(app_client, fake_server, name):
    """An imageName this service did not make is 404 image_not_found, and no job is created."""
    answer = app_client.post("/generate-avatar-by-image", json={"imageName": name})
    assert answer.status_code == 404
    assert answer.get_json() == {
        "error": {
            "code": "image_not_found",
            "message": "unknown imageName; upload the photo first with POST /upload-image",
            "details": {"imageName": name},
        }
    }
    assert fake_server.calls_named("queue_prompt") == []


def test_unknown_route_and_method_are_json(app_client):
    """Unknown routes and wrong methods answer the same JSON error shape."""
    missing = app_client.get("/nope")
    assert missing.status_code == 404
    assert missing.get_json()["error"]["code"] == "not_found"
    wrong = app_client.get("/generate-avatar-by-image")
    assert wrong.status_code == 405
    assert wrong.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_sixteen_bit_greyscale_png_keeps_its_tones(app_client, tmp_path):
    """A 16-bit greyscale PNG is scaled to 8 bits, not clipped to white."""
    wide = Image.linear_gradient("L").resize((128, 128)).convert("I").point(lambda v: v * 257)
    sixteen = wide.convert("I;16")
    answer = app_client.post(
        "/upload-image", data={"image": (io.BytesIO(encoded(sixteen, "PNG")), "g.png")}
    )
    assert answer.status_code == 201
    with Image.open(tmp_path / "uploads" / answer.get_json()["imageName"]) as stored:
        low, high = stored.convert("L").getextrema()
    assert low < 10 and high > 245


def test_huge_photo_is_stored_scaled_down(app_client, tmp_path):
    """A photo above 2048 px on its short side is stored scaled down (ComfyUI upload limits)."""
    big = Image.new("RGB", (5000, 3000), (10, 120, 200))
    answer = app_client.post(
        "/upload-image", data={"image": (io.BytesIO(encoded(big, "JPEG")), "b.jpg")}
    )
    assert answer.status_code == 201
    body = answer.get_json()
    assert (body["width"], body["height"]) == (3413, 2048)
    with Image.open(tmp_path / "uploads" / body["imageName"]) as stored:
        assert stored.size == (3413, 2048)


def test_forged_host_is_refused_with_trusted_hosts(make_app, photo):
    """With TRUSTED_HOSTS, a forged Host header is a 400 before any URL is built from it."""
    client = make_app(trusted_hosts="127.0.0.1,localhost").test_client()
    answer = client.post(
        "/upload-image",
        data={"image": (io.BytesIO(photo), "p.png")},
        headers={"Host": "evil.example"},
    )
    assert answer.status_code == 400
    assert answer.get_json() == {
        "error": {
            "code": "untrusted_host",
            "message": "the request's Host header is not a host this service answers to "
            "(TRUSTED_HOSTS)",
        }
    }
    name = upload(client, photo)
    forged = client.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "async": True},
        headers={"Host": "evil.example:80"},
    )
    assert forged.status_code == 400
    assert forged.get_json()["error"]["code"] == "untrusted_host"
    trusted = client.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "async": True},
        headers={"Host": "localhost:5000"},
    )
    assert trusted.status_code == 202
    assert trusted.get_json()["links"]["self"].startswith("http://localhost:5000/jobs/")


@pytest.mark.parametrize("value", ["http://example.com", "example.com/path", "a b", "x:80"])
def test_trusted_hosts_must_be_host_names(app_config, value):
    """TRUSTED_HOSTS entries with a scheme, path, port or space stop the start, named."""
    from avatar_service import create_app
    from avatar_service.config import ConfigError

    with pytest.raises(ConfigError, match="TRUSTED_HOSTS"):
        create_app({**app_config, "TRUSTED_HOSTS": value})


def raw_exchange(service, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes to the service and read the whole answer (the server closes after it)."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(service.url)
    chunks: list[bytes] = []
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        # Send from a thread while reading here: the server answers (and closes) before it has
        # read all of an oversized request, and the answer must be read before the reset.
        sender = threading.Thread(target=_send_quietly, args=(sock, request))
        sender.start()
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        sender.join(timeout=10)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in header_lines)
    }
    return int(status_line.split()[1]), headers, body


def _send_quietly(sock, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server may close before everything was sent
        sock.sendall(data)


SERVER_REFUSALS = [
    pytest.param(
        b"GET /healthz?" + b"a" * 300_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        431,
        "request_headers_too_large",
        id="huge-url",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 300_000 + b"\r\n\r\n",
        431,
        "request_headers_too_large",
        id="huge-header",
    ),
    pytest.param(
        b"POST /upload-image HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n",
        413,
        "payload_too_large",
        id="huge-content-length",
    ),
    pytest.param(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n",
        400,
        "bad_request",
        id="bad-content-length",
    ),
]


@pytest.mark.parametrize(("request_bytes", "status", "code"), SERVER_REFUSALS)
def test_requests_refused_by_the_server_answer_json(service, request_bytes, status, code):
    """What waitress refuses before the app (431, 413, 400) still answers the JSON error shape."""
    answered, headers, body = raw_exchange(service, request_bytes)
    assert answered == status
    assert headers["content-type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == code
    assert error["message"]
    if status == 413:
        assert error["details"] == {"maxBytes": service.app.config["MAX_CONTENT_LENGTH"]}


def test_huge_values_are_not_echoed_back_whole(app_client):
    """An absurdly long imageName is named in the 404, cut short, not repeated in full."""
    name = "x" * 2_000_000
    answer = app_client.post("/generate-avatar-by-image", json={"imageName": name})
    assert answer.status_code == 404
    echoed = answer.get_json()["error"]["details"]["imageName"]
    assert echoed == "x" * 1024 + "... (2000000 characters)"
    assert len(answer.data) < 4096


def test_docs_answer_with_a_trailing_slash(app_client):
    """/docs/ leads to the docs page, not a 404, and not a copy of the page whose relative
    links would miss (docs/swagger-ui.css from /docs/ is /docs/docs/swagger-ui.css)."""
    redirect = app_client.get("/docs/")
    assert redirect.status_code == 308
    # Relative (a prefix in front of the service stays), as a browser resolves it.
    target = urljoin("http://localhost/docs/", redirect.headers["Location"])
    assert target == "http://localhost/docs"
    answer = app_client.get(target)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")


@pytest.mark.parametrize("host", ['a"b<c>', "exa mple.com", "x/y"])
def test_malformed_host_cannot_shape_job_urls(app_client, photo, host):
    """Without PUBLIC_BASE_URL, a Host header that is no host name is a 400, not a broken URL."""
    name = upload(app_client, photo)
    answer = app_client.post(
        "/generate-avatar-by-image",
        json={"imageName": name, "async": True},
        headers={"Host": host},
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "untrusted_host"
