"""The OpenAPI 3.1 document, built from the app's routes, the request schemas and the error table.

Paths, methods and path parameters come from the app's URL map; request bodies from the same
``GenerateSchema`` that validates them (``schemas.py``); each route declares the error codes it
can answer with ``@error_codes(...)``, and its error answers (status, the codes with what each
means, headers) are made from ``errors.ERROR_CODES``. What is left to say of an operation
(summary, headers, success answers) is in ``openapi_operations.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from flask import Flask
from werkzeug.routing import Rule

from ..errors import ERROR_CODES, ErrorCode
from .openapi_answers import error_answer
from .openapi_components import SCHEMAS, SECURITY_SCHEMES
from .openapi_operations import PATH_PARAMETERS, TOKEN_OPERATIONS, operations
from .schemas import GenerateSchema

View = TypeVar("View", bound=Callable[..., Any])

# Swagger UI files served at /docs/<name> (from the swagger-ui-bundle package, no CDN).
DOCS_ASSETS = frozenset(
    {
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-ui-standalone-preset.js",
        "favicon-32x32.png",
    }
)
DOCS_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Avatar service API</title>
  <link rel="stylesheet" href="docs/swagger-ui.css">
  <link rel="icon" type="image/png" href="docs/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="docs/swagger-ui-bundle.js"></script>
  <script src="docs/swagger-ui-standalone-preset.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "openapi.json",
      dom_id: "#swagger-ui",
      presets: [SwaggerUIBundle.presets.apis, SwaggerUIStandalonePreset],
      layout: "StandaloneLayout"
    });
  </script>
</body>
</html>
"""

# Codes any route can answer: a malformed request or a Host not trusted (400), a method the
# route does not take (405), headers over the server's limit (431).
ANY_ROUTE = ("bad_request", "untrusted_host", "method_not_allowed", "request_headers_too_large")
# Routes Flask makes itself, with no view of ours to declare their codes on.
_FLASK_ROUTE_CODES = {"page.static": ("not_found",)}
# Flask's app-wide static route: the service keeps no files there.
_UNDOCUMENTED = frozenset({"static"})
# The worker agents' routes: the service's own protocol with avatar-worker (docs/agents.md).
_AGENTS = "agents."
# Security: the apiKey scheme, or none where the service has no keys (/service-info says which);
# routes answered to anyone say `[]` themselves.
KEYED: list[dict[str, list[str]]] = [{"apiKey": []}]
OPEN: list[dict[str, list[str]]] = [{}]
_ARGUMENT = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def error_codes(*codes: str) -> Callable[[View], View]:
    """Declare error codes a view can answer (each in ``errors.ERROR_CODES``); stacks add up."""
    unknown = [code for code in codes if code not in ERROR_CODES]
    if unknown:
        raise ValueError(f"error codes not in errors.ERROR_CODES: {unknown}")

    def declare(view: View) -> View:
        # Prepended: stacked declarations read top to bottom, and are applied bottom up.
        view.error_codes = (*codes, *getattr(view, "error_codes", ()))  # type: ignore[attr-defined]
        return view

    return declare


def declared_codes(app: Flask, endpoint: str) -> tuple[str, ...]:
    """The error codes the route of ``endpoint`` declares (through any wrapping decorator)."""
    if endpoint in _FLASK_ROUTE_CODES:
        return _FLASK_ROUTE_CODES[endpoint]
    view: Any = app.view_functions[endpoint]
    while not hasattr(view, "error_codes") and hasattr(view, "__wrapped__"):
        view = view.__wrapped__
    return tuple(getattr(view, "error_codes", ()))


def build_document(app: Flask, schema: GenerateSchema, *, version: str) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of the service: the same whatever its settings and styles.

    What a deployment chooses (keys or not, the styles, the callback URLs allowed, the limits)
    is said in words here and answered by GET /service-info, so that a client generated against
    one service fits another.
    """
    known = operations(schema)
    found: list[tuple[str, str, dict[str, Any]]] = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in _UNDOCUMENTED or rule.endpoint.startswith(_AGENTS):
            continue
        path = _ARGUMENT.sub(r"{\1}", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            key = f"{method} {path}"
            operation = _operation(app, rule, known.get(key))
            if key in TOKEN_OPERATIONS:
                operation["security"] = [*KEYED, {"jobToken": []}, *OPEN]
            found.append((path, method, operation))
    # In the order openapi_operations.py tells them (a reader's order), then any other route.
    order = {key: index for index, key in enumerate(known)}
    found.sort(key=lambda item: order.get(f"{item[1]} {item[0]}", len(order)))
    paths: dict[str, dict[str, Any]] = {}
    for path, method, operation in found:
        paths.setdefault(path, {})[method.lower()] = operation
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Avatar generation service",
            "version": version,
            "description": (
                "Upload a photo, then generate an avatar from it with a ComfyUI workflow. "
                'Every error is `{"error": {"code", "message", "details"}}`. '
                "Whether this service needs an API key (the apiKey scheme), its limits, its "
                "styles and the callback URLs it allows are answered by GET /service-info."
            ),
        },
        "servers": [{"url": "/", "description": "this service (where the document is served)"}],
        "security": [*KEYED, *OPEN],
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }
    return document


def _operation(app: Flask, rule: Rule, known: dict[str, Any] | None) -> dict[str, Any]:
    """One operation: its own part (or one made from the view), path parameters, error answers."""
    operation = dict(known or _from_view(app, rule.endpoint))
    parameters = [_path_parameter(name) for name in _ARGUMENT.findall(rule.rule)]
    if parameters or "parameters" in operation:
        operation["parameters"] = [*parameters, *operation.get("parameters", ())]
    responses = dict(operation.get("responses", {}))
    for status, answer in _error_answers(declared_codes(app, rule.endpoint)).items():
        if status in responses:
            raise ValueError(f"{rule.rule}: {status} is both a success and an error answer")
        responses[status] = answer
    operation["responses"] = responses
    return operation


def _from_view(app: Flask, endpoint: str) -> dict[str, Any]:
    """An operation of a route openapi_operations.py does not describe, from its view."""
    view = app.view_functions[endpoint]
    name = view.__name__
    summary = (view.__doc__ or name).strip().splitlines()[0]
    operation_id = re.sub(r"_([a-z])", lambda match: match[1].upper(), name)
    return {"operationId": operation_id, "summary": summary, "responses": {}}


def _path_parameter(name: str) -> dict[str, Any]:
    parameter: dict[str, Any] = {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
    }
    if name in PATH_PARAMETERS:
        parameter["description"] = PATH_PARAMETERS[name]
    return parameter


def _error_answers(codes: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The error answers, by status, of a route declaring ``codes`` (and those of any route)."""
    by_status: dict[int, list[ErrorCode]] = {}
    for code in dict.fromkeys([*codes, *ANY_ROUTE]):
        error = ERROR_CODES[code]
        by_status.setdefault(error.status, []).append(error)
    return {str(status): error_answer(by_status[status]) for status in sorted(by_status)}
