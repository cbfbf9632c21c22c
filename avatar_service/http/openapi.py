"""The OpenAPI 3.1 document, built from the request schemas in ``schemas.py``, and the docs page.

Request bodies come from the same ``GenerateSchema`` that validates them; responses are declared
here once, with every status and error code a route answers.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .schemas import GenerateSchema

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

_NULLABLE_STRING = {"type": ["string", "null"]}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}
_JOB_ERROR = {
    "type": ["object", "null"],
    "required": ["code", "message"],
    "properties": {
        "status": {"type": "integer"},
        "code": {"type": "string"},
        "message": {"type": "string"},
        "details": {"type": "object"},
    },
}
_AVATAR = {
    "type": "object",
    "required": ["fileName", "width", "height", "url"],
    "properties": {
        "fileName": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "url": {"type": "string", "description": "with ?token= when API keys are on"},
        "upload": {
            "type": ["object", "null"],
            "description": "the forwarding to UPLOAD_URL, if on: state (pending, delivered, "
            "failed), ok, attempts, status, error, the receiver's response",
        },
        "deletedAt": {"type": "string", "description": "when retention deleted the file"},
    },
}
_BOX = {
    "x": {"type": "integer"},
    "y": {"type": "integer"},
    "width": {"type": "integer"},
    "height": {"type": "integer"},
}
_FACE = {
    "type": "object",
    "required": ["x", "y", "width", "height", "confidence"],
    "properties": {**_BOX, "confidence": {"type": ["number", "null"]}},
    "description": "a face's box in the stored photo's pixels, and how sure the detector is",
}
_CROP = {
    "type": ["object", "null"],
    "required": ["x", "y", "width", "height", "source"],
    "properties": {**_BOX, "source": {"enum": ["face", "request", "center"]}},
    "description": "the part of the stored photo the avatar is made from: around the largest "
    "face, the request's own crop, or ComfyUI's centre crop",
}
_JOB = {
    "type": "object",
    "required": [
        "jobId",
        "status",
        "style",
        "imageName",
        "gender",
        "width",
        "height",
        "seed",
        "createdAt",
        "avatars",
        "links",
    ],
    "properties": {
        "jobId": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "status": {"enum": ["queued", "running", "succeeded", "failed", "cancelled"]},
        "style": {"type": "string"},
        "imageName": {"type": "string"},
        "gender": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "seed": {"type": "integer"},
        "createdAt": {"type": "string"},
        "startedAt": _NULLABLE_STRING,
        "finishedAt": _NULLABLE_STRING,
        "queuePosition": {"type": ["integer", "null"]},
        "estimatedStartAt": _NULLABLE_STRING,
        "progress": {"type": ["object", "null"]},
        "error": _JOB_ERROR,
        "avatars": {"type": "array", "items": {"$ref": "#/components/schemas/Avatar"}},
        "timings": {"type": "object", "additionalProperties": {"type": "integer"}},
        "crop": _CROP,
        "links": {
            "type": "object",
            "required": ["self", "events", "preview"],
            "properties": {
                "self": {"type": "string"},
                "events": {"type": "string", "description": "with ?token= when keys are on"},
                "preview": {"type": "string", "description": "with ?token= when keys are on"},
            },
        },
        "webhooks": {"type": "array", "items": {"type": "object"}},
    },
}
_UPLOADED = {
    "type": "object",
    "required": ["imageName", "width", "height"],
    "properties": {
        "imageName": {"type": "string"},
        "width": {"type": "integer"},
        "height": {"type": "integer"},
        "faces": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Face"},
            "description": "the faces found, largest first (absent with FACE_POLICY=off)",
        },
    },
}
_FRAMING = {
    "type": "object",
    "required": ["imageName", "width", "height", "faces", "crop", "avatar", "policy"],
    "properties": {
        "imageName": {"type": "string"},
        "width": {"type": "integer", "description": "the stored photo's width"},
        "height": {"type": "integer", "description": "the stored photo's height"},
        "faces": {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Face"},
            "description": "the faces found, largest first (empty with FACE_POLICY=off)",
        },
        "crop": {
            **_CROP,
            "type": "object",
            "properties": {**_BOX, "source": {"enum": ["face", "center"]}},
        },
        "avatar": {
            "type": "object",
            "required": ["width", "height"],
            "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}},
            "description": "the avatar size the crop is for",
        },
        "policy": {
            "enum": ["off", "prefer", "require"],
            "description": "FACE_POLICY (with `off` no face is looked for)",
        },
    },
}
_SERVICE_INFO = {
    "type": "object",
    "required": ["authRequired", "version", "limits", "styles"],
    "properties": {
        "authRequired": {"type": "boolean"},
        "version": {"type": "string"},
        "limits": {"type": "object"},
        "styles": {"type": "string"},
        "openapi": {"type": "string"},
        "docs": {"type": "string"},
    },
}
_JOB_ID = {
    "name": "job_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "the jobId of a job record",
}
_RATE_HEADERS = {
    "X-RateLimit-Limit": {"schema": {"type": "integer"}},
    "X-RateLimit-Remaining": {"schema": {"type": "integer"}},
    "X-RateLimit-Reset": {"schema": {"type": "integer"}},
}


def _error(description: str, *codes: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    text = f"{description}: `{'`, `'.join(codes)}`" if codes else description
    answer: dict[str, Any] = {
        "description": text,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _json(description: str, ref: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }
    if headers:
        answer["headers"] = headers
    return answer


def _any_json(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {}}}}


def _image(description: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "description": description,
        "content": {"image/png": binary, "image/jpeg": binary, "image/webp": binary},
    }


def build_document(
    schema: GenerateSchema, *, version: str, auth: bool, settings: Settings
) -> dict[str, Any]:
    """The whole OpenAPI 3.1 document of the service, for these settings and styles."""
    retry = {"Retry-After": {"schema": {"type": "integer"}}}
    unauthorized = _error(
        "missing or unknown API key or token (only with API keys on)",
        "unauthorized",
        headers={"WWW-Authenticate": {"schema": {"type": "string"}}},
    )
    forbidden = _error("the job was created with another API key", "forbidden")
    limited = _error("a rate limit was reached", "rate_limited", headers={**retry, **_RATE_HEADERS})
    busy = _error(
        "ComfyUI unreachable, too many jobs, or the service is stopping",
        "comfyui_unavailable",
        "service_busy",
        headers=retry,
    )
    job_errors = {
        "401": unauthorized,
        "403": forbidden,
        "404": _error("unknown job", "job_not_found"),
    }
    failures = {
        "500": _error("the job failed in the service", "internal_error", "avatar_save_failed"),
        "502": _error(
            "ComfyUI refused or failed the job",
            "comfyui_rejected_prompt",
            "comfyui_execution_error",
            "comfyui_interrupted",
            "comfyui_lost_prompt",
            "comfyui_no_output",
            "comfyui_no_history",
            "comfyui_bad_response",
            "comfyui_server_removed",
            "comfyui_error",
            "avatar_fetch_failed",
        ),
        "504": _error("the job's deadline passed", "job_timeout"),
    }
    accepted = _json(
        "the job is still queued or running: follow Location (or the record's links.events)",
        "Job",
        headers={"Location": {"schema": {"type": "string"}}, **retry},
    )
    upload = {
        "summary": "Upload a photo",
        "description": (
            f"A JPEG, PNG or WebP photo of at most {settings.max_upload_bytes} bytes, both sides "
            f"at least {settings.min_image_side} px, at most {settings.max_image_pixels} pixels. "
            "It is stored as a PNG under a name made by the service."
        ),
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "image": {"type": "string", "format": "binary"},
                            "file": {"type": "string", "format": "binary"},
                        },
                        "description": "the photo in `image` (or `file`)",
                    }
                }
            },
        },
        "responses": {
            "201": _json("stored", "Uploaded", headers=_RATE_HEADERS),
            "400": _error(
                "no photo, or not a usable one",
                "missing_file",
                "empty_file",
                "invalid_image",
                "image_too_small",
                "image_too_many_pixels",
                "image_aspect_ratio",
            ),
            "401": unauthorized,
            "413": _error("too large", "photo_too_large", "payload_too_large"),
            "415": _error("not a JPEG, PNG or WebP photo", "unsupported_image_type"),
            "422": _error(
                "the photo is refused by FACE_POLICY / FACE_MULTIPLE (nothing is stored)",
                "no_face_found",
                "several_faces",
            ),
            "429": limited,
            "503": _error(
                "too many photos are being decoded at once (MAX_CONCURRENT_DECODES)",
                "service_busy",
                headers=retry,
            ),
        },
    }
    paths: dict[str, Any] = {
        "/upload-image": {"post": {**upload, "operationId": "uploadImage"}},
        "/upload_image": {
            "post": {
                **upload,
                "operationId": "uploadImageAlias",
                "summary": "Alias of /upload-image",
            }
        },
        "/generate-avatar-by-image": {
            "post": {
                "operationId": "generateAvatar",
                "summary": "Generate an avatar from an uploaded photo",
                "description": (
                    f"Waits up to SYNC_WAIT ({settings.sync_wait:g} s) for the avatar (200), else "
                    "answers 202 with the record and Location. `async: true` or "
                    "`Prefer: respond-async` answers 202 at once. With an `Idempotency-Key`, the "
                    "same key and body answer the same job (never a second one) for "
                    f"IDEMPOTENCY_TTL ({settings.idempotency_ttl:g} s)."
                ),
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "pattern": "^[\\x21-\\x7e]{1,255}$"},
                    },
                    {
                        "name": "Prefer",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                        "description": "`respond-async`: answer 202 at once",
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": schema.request_schema()}},
                },
                "responses": {
                    "200": _json(
                        "the job succeeded within SYNC_WAIT", "Job", headers=_RATE_HEADERS
                    ),
                    "202": accepted,
                    "400": _error(
                        "the body is not a JSON object, a field is invalid, or the "
                        "Idempotency-Key is malformed",
                        "invalid_json",
                        "invalid_fields",
                        "invalid_idempotency_key",
                    ),
                    "401": unauthorized,
                    "404": _error("the photo is unknown", "image_not_found"),
                    "409": _error(
                        "the job was cancelled, or a request with this Idempotency-Key is "
                        "still being made",
                        "job_cancelled",
                        "idempotency_key_in_use",
                    ),
                    "413": _error("the body is too large", "payload_too_large"),
                    "422": _error(
                        "the Idempotency-Key was used with another body, or the photo is "
                        "refused by FACE_POLICY / FACE_MULTIPLE",
                        "idempotency_key_reused",
                        "no_face_found",
                        "several_faces",
                    ),
                    "429": limited,
                    "503": busy,
                    **failures,
                },
            }
        },
        "/photos/{image_name}/framing": {
            "get": {
                "operationId": "photoFraming",
                "summary": "A photo's faces and the crop a generate would use",
                "description": (
                    "Read-only: the crop generate would choose for this photo and avatar size "
                    "under FACE_POLICY (around the largest face, else the centre), so a client "
                    "can show it before generating. Under FACE_POLICY=require a photo without a "
                    "face answers generate's 422."
                ),
                "parameters": [
                    {
                        "name": "image_name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                        "description": "the imageName answered by POST /upload-image",
                    },
                    *(
                        {
                            "name": name,
                            "in": "query",
                            "required": False,
                            "schema": schema.framing_schema()[name],
                        }
                        for name in ("style", "width", "height")
                    ),
                ],
                "responses": {
                    "200": _json("the faces and the crop", "Framing"),
                    "400": _error("a parameter is invalid", "invalid_fields"),
                    "401": unauthorized,
                    "404": _error("the photo is unknown", "image_not_found"),
                    "422": _error(
                        "the photo is refused by FACE_POLICY / FACE_MULTIPLE",
                        "no_face_found",
                        "several_faces",
                    ),
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "operationId": "getJob",
                "summary": "A job's record",
                "parameters": [_JOB_ID],
                "responses": {"200": _json("the record", "Job"), **job_errors},
            },
            "delete": {
                "operationId": "cancelJob",
                "summary": "Cancel a job",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json("cancelled", "Job"),
                    "202": _json("cancel asked; the job is still ending", "Job"),
                    **job_errors,
                    "409": _error("the job has already ended", "job_already_ended"),
                },
            },
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "operationId": "cancelJobPost",
                "summary": "Cancel a job (same as DELETE /jobs/{job_id})",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _json("cancelled", "Job"),
                    "202": _json("cancel asked; the job is still ending", "Job"),
                    **job_errors,
                    "409": _error("the job has already ended", "job_already_ended"),
                },
            }
        },
        "/jobs/{job_id}/events": {
            "get": {
                "operationId": "jobEvents",
                "summary": "Server-Sent Events of a job, to its end",
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "events: state, queued, position, running, progress, "
                        "preview, then succeeded, failed or cancelled",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **job_errors,
                    "503": _error("too many open streams", "service_busy", headers=retry),
                },
            }
        },
        "/jobs/{job_id}/preview": {
            "get": {
                "operationId": "jobPreview",
                "summary": "The latest live preview frame of a running job",
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _image("the frame"),
                    **job_errors,
                    "404": _error(
                        "unknown job, or no preview", "job_not_found", "preview_not_found"
                    ),
                },
            }
        },
        "/avatars/{file_name}": {
            "get": {
                "operationId": "getAvatar",
                "summary": "A generated avatar",
                "parameters": [
                    {
                        "name": "file_name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": _image("the avatar"),
                    "401": unauthorized,
                    "403": forbidden,
                    "404": _error("no such avatar", "avatar_not_found"),
                    "410": _error("deleted by retention (RETENTION_HOURS)", "avatar_expired"),
                },
            }
        },
        "/styles": {
            "get": {
                "operationId": "listStyles",
                "summary": "The styles (workflows) with their parameters",
                "responses": {
                    "200": {
                        "description": "the styles and the default one",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["styles", "default"],
                                    "properties": {
                                        "styles": {"type": "array", "items": {"type": "object"}},
                                        "default": {"type": "string"},
                                    },
                                }
                            }
                        },
                    },
                    "401": unauthorized,
                },
            }
        },
        "/service-info": {
            "get": {
                "operationId": "serviceInfo",
                "summary": "Whether a key is needed, the limits, where the styles and docs are",
                "security": [],
                "responses": {"200": _json("the facts", "ServiceInfo")},
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up",
                "security": [],
                "responses": {"200": _any_json('`{"status": "ok"}`')},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "Whether a ComfyUI server can run the default style",
                "security": [],
                "responses": {
                    "200": _any_json("ready, with the state of each server"),
                    "503": _any_json("not ready, with the reason and each server's state"),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": _any_json("the OpenAPI 3.1 document")},
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "Interactive documentation (Swagger UI)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/docs/{asset}": {
            "get": {
                "operationId": "docsAsset",
                "summary": "A file of the interactive documentation",
                "security": [],
                "parameters": [
                    {"name": "asset", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                    "404": _error("no such file", "not_found"),
                },
            }
        },
        "/": {
            "get": {
                "operationId": "webPage",
                "summary": "The web page: upload a photo, follow the job, keep the avatar",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the page",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/web/{filename}": {
            "get": {
                "operationId": "webPageAsset",
                "summary": "A file of the web page (its script, style and icon)",
                "security": [],
                "parameters": [
                    {
                        "name": "filename",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "the file", "content": {"*/*": {"schema": {}}}},
                    "404": _error("no such file", "not_found"),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics",
                "description": "Needs `Authorization: Bearer <METRICS_KEY>` if METRICS_KEY is set",
                "security": [],
                "responses": {
                    "200": {
                        "description": "the text exposition format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": unauthorized,
                },
            }
        },
    }
    malformed = ("bad_request", "untrusted_host")  # any route: bad HTTP, a Host not trusted
    for item in paths.values():
        for operation in item.values():
            responses = operation["responses"]
            if "400" in responses:
                responses["400"]["description"] += ", " + ", ".join(f"`{c}`" for c in malformed)
            else:
                responses["400"] = _error(
                    "a malformed request, or a Host not in TRUSTED_HOSTS", *malformed
                )
            responses.setdefault("405", _error("method not allowed", "method_not_allowed"))
            responses.setdefault(
                "431", _error("the request's headers are too large", "request_headers_too_large")
            )
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Avatar generation service",
            "version": version,
            "description": (
                "Upload a photo, then generate an avatar from it with a ComfyUI workflow. "
                'Every error is `{"error": {"code", "message", "details"}}`.'
            ),
        },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": _ERROR,
                "Job": _JOB,
                "Avatar": _AVATAR,
                "Uploaded": _UPLOADED,
                "Face": _FACE,
                "Framing": _FRAMING,
                "ServiceInfo": _SERVICE_INFO,
            },
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API key from API_KEYS (only when keys are configured)",
                },
                "jobToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "a job's signed token, from the links of its record",
                },
            },
        },
    }
    if auth:
        document["security"] = [{"apiKey": []}]
        for path in ("/jobs/{job_id}/events", "/jobs/{job_id}/preview", "/avatars/{file_name}"):
            paths[path]["get"]["security"] = [{"apiKey": []}, {"jobToken": []}]
    return document
