"""The OpenAPI 3.1 document: built from the request schemas, covering every route, and true.

schemathesis generates requests from the document against the live service (under waitress,
in front of the stand-in) and checks that none answers 500 and every answer conforms.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from jsonschema import Draft202012Validator

from avatar_service import create_app
from avatar_service.http.openapi import DOCS_ASSETS
from avatar_service.http.page import bp as page

KEY = "schema-key-0123456789abcdef"


@pytest.fixture
def document(service) -> dict:
    """The document served by a live service."""
    answer = service.http.get("/openapi.json")
    assert answer.status_code == 200
    return answer.json()


def test_document_is_valid_openapi_31(service, document):
    """The document declares OpenAPI 3.1 and its request schema is valid JSON Schema 2020-12."""
    assert document["openapi"] == "3.1.0"
    body = document["paths"]["/generate-avatar-by-image"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["imageName"]
    assert schema["properties"]["width"] == {
        "type": "integer",
        "minimum": 64,
        "maximum": 2048,
        "multipleOf": 8,
        "default": 512,
        "description": "width of the avatar in px",
    }
    styles = service.http.get("/styles").json()
    assert "enum" not in schema["properties"]["style"]  # the styles are the deployment's own
    facts = service.http.get("/service-info").json()
    assert facts["installedStyles"] == [style["name"] for style in styles["styles"]]
    assert facts["defaultStyle"] == styles["default"]


def test_every_route_is_in_the_document(service, document):
    """Each route of the app, with each of its methods, is an operation of the document; the
    worker agents' own protocol (docs/agents.md) is left out of it."""
    documented = {
        (path, method.upper()) for path, item in document["paths"].items() for method in item
    }
    assert not [path for path in document["paths"] if path.startswith("/agents")]
    for rule in service.app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("agents."):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            assert (path, method) in documented, f"{method} {path} is not documented"


def test_document_messages_come_from_the_validating_schema(service, document):
    """A request breaking the documented rule gets the 400 named by the same schema."""
    schema = document["paths"]["/generate-avatar-by-image"]["post"]["requestBody"]
    width = schema["content"]["application/json"]["schema"]["properties"]["width"]
    answer = service.http.post(
        "/generate-avatar-by-image",
        json={"imageName": "x.png", "width": width["maximum"] + width["multipleOf"]},
    )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "code": "invalid_fields",
            "message": "width: must be an integer from 64 to 2048 and a multiple of 8",
            "details": {
                "fields": {"width": "must be an integer from 64 to 2048 and a multiple of 8"}
            },
        }
    }


def test_docs_page_and_assets_are_served_locally(service):
    """/docs is Swagger UI whose scripts and styles come from this service, not a CDN."""
    page = service.http.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "http" not in page.text.split("<body>", 1)[1]  # no absolute URL: nothing external
    for asset in re.findall(r'(?:src|href)="(docs/[^"]+)"', page.text):
        answer = service.http.get("/" + asset)
        assert answer.status_code == 200, asset
        assert len(answer.content) > 100
    missing = service.http.get("/docs/..%2Fapi.py")
    assert missing.status_code == 404
    slash = service.http.get("/docs/")  # its relative links would miss from there
    assert slash.status_code == 308
    assert httpx.URL(service.url + "/docs/").join(slash.headers["location"]).path == "/docs"


def seeded_config(service, headers: dict, photo: bytes, tmp_path: Path) -> Path:
    """tests/schemathesis.toml with real resources of the live service as dictionaries: a
    photo, a job that succeeded, its avatar, and the page's and the docs' files. Each path or
    body parameter naming one takes a real value half of the time (the rest is generated), so
    the tests reach past 404 and the stateful phase has real answers to follow links from."""
    http = service.http
    upload = http.post(
        "/upload-image", files={"image": ("me.png", photo, "image/png")}, headers=headers
    )
    assert upload.status_code == 201, upload.text
    image_name = upload.json()["imageName"]
    done = http.post("/generate-avatar-by-image", json={"imageName": image_name}, headers=headers)
    assert done.status_code == 200, done.text
    done_job = done.json()
    web_files = sorted(p.name for p in Path(page.static_folder).iterdir())
    values = {
        "photos": [image_name],
        "jobs": [done_job["jobId"]],
        "avatars": [done_job["avatars"][0]["fileName"]],
        "web": web_files,
        "docs": sorted(DOCS_ASSETS),
    }
    bindings = {
        "body.imageName": "photos",
        "path.image_name": "photos",
        "path.job_id": "jobs",
        "path.file_name": "avatars",
        "path.filename": "web",
        "path.asset": "docs",
    }
    lines = []
    for name, entries in values.items():
        lines += [f"[dictionaries.{name}]", f"values = {json.dumps(entries)}", ""]
    lines.append("[parameters]")
    for key, name in bindings.items():
        lines.append(f'"{key}" = {{ dictionary = "{name}", probability = 0.5 }}')
    config = tmp_path / "schemathesis.toml"
    base = Path(__file__).with_name("schemathesis.toml").read_text()
    config.write_text("\n".join(lines) + "\n\n" + base)
    return config


@pytest.mark.parametrize("keys", [False, True], ids=["open", "with-keys"])
def test_service_conforms_to_its_document(make_service, tmp_path, photo, keys):
    """schemathesis against the live service, seeded with real photos, jobs and avatars: no
    500, every answer conforms to the document, and the stateful phase follows links.

    With keys on, schemathesis sends the key and also checks that requests without it are
    refused (its ignored_auth check).
    """
    service = make_service(sync_wait=2.0, **({"api_keys": KEY} if keys else {}))
    headers = {"Authorization": f"Bearer {KEY}"} if keys else {}
    config = seeded_config(service, headers, photo, tmp_path)
    auth = ["--header", f"Authorization: Bearer {KEY}"] if keys else []
    run = subprocess.run(
        [
            str(Path(sys.executable).with_name("schemathesis")),
            "--config-file",
            str(config),
            "run",
            service.url + "/openapi.json",
            "--max-examples",
            "6",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "10",
            "--workers",
            "1",
            "--no-color",
            *auth,
            "--report-dir",
            str(tmp_path / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    links = re.search(r"API Links:\s+(\d+) covered / (\d+) selected", run.stdout)
    assert links, run.stdout[-3000:]
    covered, selected = map(int, links.groups())
    print(f"schemathesis followed {covered} of {selected} links")
    assert covered > 0, run.stdout[-3000:]


def test_app_builds_without_a_server(tmp_path, fake_comfyui):
    """The document is built without a request to ComfyUI (CI can publish it)."""
    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance",
            "UPLOAD_DIR": tmp_path / "uploads",
            "OUTPUT_DIR": tmp_path / "out",
            "COMFYUI_CLIENT_FACTORY": fake_comfyui,
        }
    )
    for fake in fake_comfyui:
        fake.go_down()  # no ComfyUI answers
    try:
        with app.test_client() as client:
            answer = client.get("/openapi.json")
    finally:
        app.extensions["avatar_service"].close()
    assert answer.status_code == 200
    assert "/jobs/{job_id}/events" in answer.get_json()["paths"]


def test_document_describes_faces_and_the_crop(document):
    """The request's crop, the upload's faces, the record's crop and the 422 refusals are in it."""
    generate = document["paths"]["/generate-avatar-by-image"]["post"]
    crop = generate["requestBody"]["content"]["application/json"]["schema"]["properties"]["crop"]
    assert crop["type"] == ["object", "null"]
    assert crop["required"] == ["x", "y", "width", "height"]
    assert {name: spec["type"] for name, spec in crop["properties"].items()} == {
        "x": "integer",
        "y": "integer",
        "width": "integer",
        "height": "integer",
    }
    schemas = document["components"]["schemas"]
    assert schemas["Uploaded"]["properties"]["faces"]["items"] == {
        "$ref": "#/components/schemas/Face"
    }
    assert schemas["Job"]["properties"]["crop"]["properties"]["source"] == {
        "enum": ["face", "request", "center"]
    }
    upload = document["paths"]["/upload-image"]["post"]["responses"]["422"]["description"]
    refused = generate["responses"]["422"]["description"]
    for code in ("no_face_found", "several_faces"):
        assert f"`{code}`" in upload and f"`{code}`" in refused


def test_document_describes_the_framing_route(document):
    """The framing route: size parameters as in generate, its answer and its errors."""
    operation = document["paths"]["/photos/{image_name}/framing"]["get"]
    generate = document["paths"]["/generate-avatar-by-image"]["post"]
    body = generate["requestBody"]["content"]["application/json"]["schema"]["properties"]
    parameters = {parameter["name"]: parameter for parameter in operation["parameters"]}
    assert parameters["image_name"]["in"] == "path"
    for name in ("style", "width", "height"):
        assert parameters[name]["in"] == "query"
        assert parameters[name]["schema"] == body[name]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Framing"
    }
    framing = document["components"]["schemas"]["Framing"]
    assert framing["properties"]["crop"]["properties"]["source"] == {"enum": ["face", "center"]}
    assert "`image_not_found`" in operation["responses"]["404"]["description"]
    assert "`invalid_fields`" in operation["responses"]["400"]["description"]
    for code in ("no_face_found", "several_faces"):
        assert f"`{code}`" in operation["responses"]["422"]["description"]
