"""The document is one contract for every deployment, with typed objects a client is made from.

In-process: the document each app serves, compared across settings and walked schema by schema.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any

from tests.conftest import REPO_ROOT

KEY = "contract-key-0123456789abcdef"
MOMENTS = ("createdAt", "startedAt", "finishedAt", "estimatedStartAt")


def own_app(make_app, tmp_path, **overrides):
    """An app with an instance folder of its own (several may be started side by side)."""
    instance = tmp_path / f"instance-{len(list(tmp_path.glob('instance-*')))}"
    instance.mkdir()
    return make_app(instance_path=instance, **overrides)


def served(app) -> dict[str, Any]:
    """The document /openapi.json answers, in-process."""
    with app.test_client() as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200
    return answer.get_json()


def schemas_in(node: Any, where: str = "#") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema-like mapping under ``node`` (one with a type), with where it is."""
    if isinstance(node, dict):
        if "type" in node:
            yield where, node
        for key, value in node.items():
            yield from schemas_in(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from schemas_in(value, f"{where}/{index}")


def test_the_document_is_the_same_for_every_deployment(make_app, tmp_path):
    """Keys on or off, callback URLs allowed or not, other styles and limits: one document."""
    one_style = tmp_path / "workflows"
    one_style.mkdir()
    for name in ("avatar.json", "avatar.presets.json"):
        shutil.copy(REPO_ROOT / "workflows" / name, one_style / name)
    plain = served(own_app(make_app, tmp_path))
    for overrides in (
        {"api_keys": KEY},
        {"webhook_allowed_urls": "https://hooks.example.com/cb/"},
        {"workflows_dir": one_style, "sync_wait": 3.0, "max_upload_bytes": 1_000_000},
    ):
        assert served(own_app(make_app, tmp_path, **overrides)) == plain, overrides


def test_what_varies_is_answered_by_service_info(make_app, tmp_path):
    """The styles and the callback URLs allowed are in /service-info, not in the document."""
    allowing = own_app(make_app, tmp_path, webhook_allowed_urls="https://hooks.example.com/cb/")
    client = allowing.test_client()
    facts = client.get("/service-info").get_json()
    assert facts["installedStyles"] == ["avatar", "cartoon"]
    assert facts["defaultStyle"] == "avatar"
    assert facts["callbackUrls"]["allowed"] == ["https://hooks.example.com/cb/"]
    assert re.match(facts["callbackUrls"]["pattern"], "https://hooks.example.com/cb/job-1")
    closed_app = own_app(make_app, tmp_path)
    closed = closed_app.test_client().get("/service-info").get_json()
    assert closed["callbackUrls"] == {"allowed": [], "pattern": None}
    body = served(closed_app)["paths"]["/generate-avatar-by-image"]["post"]["requestBody"]
    fields = body["content"]["application/json"]["schema"]["properties"]
    assert fields["callbackUrl"]["type"] == ["string", "null"]
    assert "pattern" not in fields["callbackUrl"]
    assert {"enum", "default"}.isdisjoint(fields["style"])
    assert "2**53" in fields["seed"]["description"]


def test_every_object_has_its_properties(make_app):
    """No schema is a bare object: a generated client gets fields, never an empty type."""
    document = served(make_app())
    bare = []
    for where, schema in schemas_in(document):
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if "object" in types and not {"properties", "additionalProperties"} & set(schema):
            bare.append(where)
    assert bare == []
    components = document["components"]["schemas"]
    assert set(components["Limits"]["properties"]) >= {"maxSide", "sideStep", "maxSeed"}
    assert set(components["JobProgress"]["properties"]) == {"node", "nodeType", "value", "max"}
    assert "jobId" in components["ErrorDetails"]["properties"]
    assert components["Styles"]["properties"]["styles"]["items"] == {
        "$ref": "#/components/schemas/Style"
    }
    job = components["Job"]["properties"]
    assert job["webhooks"]["items"] == {"$ref": "#/components/schemas/Delivery"}
    for name in MOMENTS:
        assert job[name]["format"] == "date-time", name


def test_the_document_names_its_server_and_security_always(make_app):
    """One server entry, the key scheme on every keyed route, whether keys are on or not."""
    document = served(make_app())
    assert document["servers"] == [
        {"url": "/", "description": "this service (where the document is served)"}
    ]
    assert document["security"] == [{"apiKey": []}, {}]
    assert set(document["components"]["securitySchemes"]) == {"apiKey", "jobToken"}
    operation = document["paths"]["/jobs/{job_id}/events"]["get"]
    assert operation["security"] == [{"apiKey": []}, {"jobToken": []}, {}]


def test_every_keyed_operation_refuses_a_request_without_a_key(make_app, tmp_path):
    """With keys on, each operation the document does not mark public answers 401 without one."""
    app = own_app(make_app, tmp_path, api_keys=KEY)
    client = app.test_client()
    checked = 0
    for path, item in served(app)["paths"].items():
        for method, operation in item.items():
            if operation.get("security") == []:
                continue
            concrete = re.sub(r"\{[a-z_]+\}", "0" * 32, path)
            answer = client.open(concrete, method=method.upper())
            assert answer.status_code == 401, (method, path)
            assert answer.get_json()["error"]["code"] == "unauthorized"
            checked += 1
    assert checked >= 11


def test_each_error_answer_names_each_code_once(make_app):
    """Every error answer's description lists each of its codes once."""
    document = served(make_app())
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, answer in operation["responses"].items():
                codes = re.findall(r"`([a-z_]+)`: ", answer["description"])
                assert len(codes) == len(set(codes)), (method, path, status, codes)
    upload = document["paths"]["/upload-image"]["post"]["responses"]["400"]["description"]
    assert upload.count("`bad_request`") == upload.count("`untrusted_host`") == 1


def test_images_are_binary_per_type(make_app):
    """An avatar and a preview are binary files of each image type (clients download them)."""
    document = served(make_app())
    binary = {"schema": {"type": "string", "format": "binary"}}
    for path in ("/avatars/{file_name}", "/jobs/{job_id}/preview"):
        content = document["paths"][path]["get"]["responses"]["200"]["content"]
        assert content == {"image/png": binary, "image/jpeg": binary, "image/webp": binary}


def test_cancel_is_a_post_and_delete_its_deprecated_alias(make_app):
    """POST /jobs/{id}/cancel is the way documented; DELETE is the same, marked deprecated."""
    paths = served(make_app())["paths"]
    post = paths["/jobs/{job_id}/cancel"]["post"]
    delete = paths["/jobs/{job_id}"]["delete"]
    assert post["operationId"] == "cancelJob" and "deprecated" not in post
    assert delete["deprecated"] is True
    assert delete["responses"] == post["responses"]


def test_the_event_stream_describes_each_event(make_app):
    """Each event type has its schema, its data JSON described by contentSchema."""
    document = served(make_app())
    answer = document["paths"]["/jobs/{job_id}/events"]["get"]["responses"]["200"]
    assert answer["content"] == {
        "text/event-stream": {"schema": {"$ref": "#/components/schemas/JobEvent"}}
    }
    events = {
        branch["properties"]["event"]["const"]: branch["properties"]["data"]
        for branch in document["components"]["schemas"]["JobEvent"]["oneOf"]
    }
    assert set(events) == {
        "state",
        "queued",
        "position",
        "running",
        "progress",
        "preview",
        "succeeded",
        "failed",
        "cancelled",
    }
    assert events["progress"]["contentSchema"] == {"$ref": "#/components/schemas/JobProgress"}
    assert all(data["contentMediaType"] == "application/json" for data in events.values())
