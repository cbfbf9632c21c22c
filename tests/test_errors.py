"""The error table: every code the service writes is in it, and the document lists each route's.

Codes are found by reading the source (``code="..."`` arguments and class-level ``code = "..."``),
so a new raise site with a new code fails here until the code is in ``errors.ERROR_CODES``.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Blueprint

import avatar_service
from avatar_service import create_app
from avatar_service.comfyui.workflows import WorkflowError
from avatar_service.errors import (
    ERROR_CODES,
    JOB_FAILURES,
    NotFound,
    ServiceError,
    ServiceUnavailable,
    Unauthorized,
    UnprocessableContent,
    error_from_record,
)
from avatar_service.http import server
from avatar_service.http.openapi import ANY_ROUTE, declared_codes, error_codes
from avatar_service.http.routes import PUBLIC_ENDPOINTS, TOKEN_ENDPOINTS

PACKAGE = Path(avatar_service.__file__).parent


def written_codes() -> Iterator[tuple[str, str, str | None]]:
    """(code, where, class name) of every code literal in the package's source."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, ast.keyword) and node.arg == "code":
                if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                    yield node.value.value, f"{path.name}:{node.value.lineno}", None
            elif isinstance(node, ast.ClassDef):
                for statement in node.body:
                    if (
                        isinstance(statement, ast.Assign)
                        and [getattr(t, "id", None) for t in statement.targets] == ["code"]
                        and isinstance(statement.value, ast.Constant)
                    ):
                        yield statement.value.value, module, node.name


def test_every_code_written_in_the_service_is_in_the_table():
    """Each code literal of a ServiceError (keyword or class default) is a row of ERROR_CODES."""
    found = list(written_codes())
    assert len(found) > 60  # the scan reads the source (a broken scan would find nothing)
    missing = []
    for code, where, class_name in found:
        if class_name is not None:
            cls = getattr(importlib.import_module(where), class_name)
            if issubclass(cls, WorkflowError):
                continue  # a workflow file's error: startup and the CLI, never an HTTP answer
            assert issubclass(cls, ServiceError), f"{where}.{class_name}"
        if code not in ERROR_CODES:
            missing.append(f"{code} ({where})")
    assert missing == []


def test_codes_of_the_server_and_of_jobs_are_in_the_table():
    """Waitress's own refusals and every code a job can end with are rows of ERROR_CODES."""
    assert set(server._CODES.values()) <= set(ERROR_CODES)
    for status, code in server._CODES.items():
        assert ERROR_CODES[code].status == status, code
    assert set(JOB_FAILURES) <= set(ERROR_CODES)


def test_table_rows_agree_with_their_classes():
    """A row's status is its class's; each class's default code is a row naming that class."""
    for error in ERROR_CODES.values():
        assert error.cls is ServiceError or error.status == error.cls.status, error.code
        assert error.description and "\n" not in error.description
    classes = [ServiceError]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        assert ERROR_CODES[cls.code].cls is cls, cls.__name__


def test_error_codes_refuses_a_code_not_in_the_table():
    """Declaring a code the table does not have fails when the route is defined."""
    with pytest.raises(ValueError, match="no_such_code"):
        error_codes("job_not_found", "no_such_code")


def test_error_from_record_rebuilds_the_answer():
    """A stored job error comes back with its status, code, message, details and headers."""
    error = error_from_record(
        {"status": 503, "code": "comfyui_unavailable", "message": "down", "details": {"a": 1}}
    )
    assert isinstance(error, ServiceUnavailable)
    assert (error.status, error.headers) == (503, {"Retry-After": "10"})
    assert error.to_dict() == {
        "code": "comfyui_unavailable",
        "message": "down",
        "details": {"a": 1},
    }
    refused = error_from_record({"status": 422, "code": "no_face_found", "message": "none"})
    assert type(refused) is UnprocessableContent
    assert refused.to_dict() == {"code": "no_face_found", "message": "none"}
    assert Unauthorized("no key").headers == {"WWW-Authenticate": "Bearer"}


@pytest.fixture
def app(tmp_path, fake_comfyui):
    """An app with keys on, in front of a FakeComfyUI; its services are closed after the test."""
    app = create_app(
        {
            "INSTANCE_PATH": tmp_path / "instance",
            "UPLOAD_DIR": tmp_path / "uploads",
            "OUTPUT_DIR": tmp_path / "out",
            "API_KEYS": "errors-key-0123456789abcdef",
            "COMFYUI_CLIENT_FACTORY": fake_comfyui,
        }
    )
    yield app
    app.extensions["avatar_service"].close()


def served_document(app) -> dict:
    """The document /openapi.json answers, in-process."""
    with app.test_client() as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200
    return answer.get_json()


def operations_of(app, document: dict) -> Iterator[tuple[str, str, dict]]:
    """(endpoint, method, operation in the document) of every documented route (all but static
    files and the worker agents' own protocol, which the document leaves out)."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("agents."):
            continue
        path = rule.rule.replace("<path:", "<").replace("<", "{").replace(">", "}")
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            yield rule.endpoint, method, document["paths"][path][method.lower()]


def test_each_route_documents_the_codes_it_declares(app):
    """Every code a route declares (and those of any route) is in its answer of that status."""
    document = served_document(app)
    checked = 0
    for endpoint, method, operation in operations_of(app, document):
        for code in (*declared_codes(app, endpoint), *ANY_ROUTE):
            answer = operation["responses"].get(str(ERROR_CODES[code].status))
            assert answer is not None, f"{method} {endpoint}: no {ERROR_CODES[code].status}"
            assert f"`{code}`" in answer["description"], f"{method} {endpoint}: {code}"
            checked += 1
    assert checked > 100
    generate = document["paths"]["/generate-avatar-by-image"]["post"]["responses"]
    assert "`style_not_found`" in generate["404"]["description"]
    unauthorized = generate["401"]
    assert set(unauthorized["headers"]) == {"WWW-Authenticate"}
    assert unauthorized["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }


def test_routes_behind_a_key_declare_unauthorized_and_the_document_says_who_is_public(app):
    """Keyed routes declare `unauthorized`; the public and token routes are the hook's own."""
    document = served_document(app)
    for endpoint, method, operation in operations_of(app, document):
        public = endpoint in PUBLIC_ENDPOINTS or not endpoint.startswith("api.")
        assert (operation.get("security") == []) == public, f"{method} {endpoint}"
        if not public:
            assert "unauthorized" in declared_codes(app, endpoint), endpoint
        token = [{"apiKey": []}, {"jobToken": []}, {}]  # {}: a service without keys
        assert (operation.get("security") == token) == (endpoint in TOKEN_ENDPOINTS), endpoint


def test_a_route_without_a_description_is_documented_from_its_view(app):
    """A new route appears with its path parameter, its view's summary and its declared codes."""
    extra = Blueprint("extra", __name__)

    @extra.get("/things/<thing_id>")
    @error_codes("unauthorized", "not_found")
    def show_thing(thing_id: str):
        """Show one thing."""
        raise NotFound("no such thing", details={"thingId": thing_id})

    app.register_blueprint(extra)
    operation = served_document(app)["paths"]["/things/{thing_id}"]["get"]
    assert operation["operationId"] == "showThing"
    assert operation["summary"] == "Show one thing."
    assert operation["parameters"] == [
        {"name": "thing_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ]
    assert "`not_found`" in operation["responses"]["404"]["description"]
    assert "`unauthorized`" in operation["responses"]["401"]["description"]
    assert "`bad_request`" in operation["responses"]["400"]["description"]
