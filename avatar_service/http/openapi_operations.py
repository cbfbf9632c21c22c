"""What the OpenAPI document says of each operation beyond its route and its error codes.

Keyed by ``"METHOD /path"`` as the document writes it: the summary, the operationId, the
parameters that are not in the path, the request body and the answers that are not errors.
Path parameters come from the route, error answers from the codes the route declares.
"""

from __future__ import annotations

from typing import Any

from .openapi_answers import (
    RATE_HEADERS,
    RETRY_HEADERS,
    any_file,
    image,
    json_answer,
    object_answer,
)
from .openapi_answers import text as text_answer
from .openapi_events import event_stream
from .schemas import GenerateSchema

# Descriptions of the path parameters, by name.
PATH_PARAMETERS = {
    "job_id": "the jobId of a job record",
    "image_name": "the imageName answered by POST /upload-image",
}
# The operations that also take a job's token (?token=) when keys are on: routes.TOKEN_ENDPOINTS.
TOKEN_OPERATIONS = frozenset(
    {"GET /jobs/{job_id}/events", "GET /jobs/{job_id}/preview", "GET /avatars/{file_name}"}
)
_PUBLIC: dict[str, Any] = {"security": []}  # answered without a key, keys or not
_READINESS: dict[str, Any] = {
    "ready": {"type": "boolean"},
    "standin": {"type": "boolean", "description": "every server known is the stand-in"},
    "reason": {"type": "string", "description": "why it is not ready"},
    "servers": {
        "type": "object",
        "additionalProperties": {"type": "object", "additionalProperties": True},
        "description": "the state of each ComfyUI server, by URL",
    },
}
_READY: dict[str, Any] = {"required": ("ready", "servers")}


def operations(schema: GenerateSchema) -> dict[str, dict[str, Any]]:
    """Every operation's own part of the document (the same whatever the settings and styles)."""
    return {
        **_uploads(),
        "POST /generate-avatar-by-image": _generate(schema),
        "GET /photos/{image_name}/framing": _framing(schema),
        **_jobs(),
        **_avatars_and_styles(),
        **_public(),
    }


def _uploads() -> dict[str, dict[str, Any]]:
    upload = {
        "summary": "Upload a photo",
        "description": (
            "A JPEG, PNG or WebP photo of at most `maxUploadBytes`, both sides at least "
            "`minImageSide` px, at most `maxImagePixels` pixels (GET /service-info, `limits`). "
            "It is stored as a PNG under a name made by the service. With keys on, the photo "
            "belongs to the key that uploaded it: another key gets 404 `image_not_found` for "
            "it (an admin key reaches every photo)."
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
        "responses": {"201": json_answer("stored", "Uploaded", headers=RATE_HEADERS)},
    }
    return {
        "POST /upload-image": {**upload, "operationId": "uploadImage"},
        "POST /upload_image": {
            **upload,
            "operationId": "uploadImageAlias",
            "summary": "Alias of /upload-image",
        },
    }


def _generate(schema: GenerateSchema) -> dict[str, Any]:
    return {
        "operationId": "generateAvatar",
        "summary": "Generate an avatar from an uploaded photo",
        "description": (
            "Waits up to SYNC_WAIT (`syncWaitSeconds` of GET /service-info) for the avatar "
            "(200), else answers 202 with the record and Location. `async: true` or "
            "`Prefer: respond-async` answers 202 at once. With an `Idempotency-Key`, the "
            "same key and body answer the same job (never a second one) for IDEMPOTENCY_TTL "
            "(`idempotencyTtlSeconds`). The styles, and the callback URLs allowed, are this "
            "service's own: GET /service-info and GET /styles name them."
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
            "200": json_answer("the job succeeded within SYNC_WAIT", "Job", headers=RATE_HEADERS),
            "202": json_answer(
                "the job is still queued or running: follow Location (or the record's "
                "links.events)",
                "Job",
                headers={"Location": {"schema": {"type": "string"}}, **RETRY_HEADERS},
            ),
        },
    }


def _framing(schema: GenerateSchema) -> dict[str, Any]:
    return {
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
                "name": name,
                "in": "query",
                "required": False,
                "schema": schema.framing_schema()[name],
            }
            for name in ("style", "width", "height")
        ],
        "responses": {"200": json_answer("the faces and the crop", "Framing")},
    }


def _jobs() -> dict[str, dict[str, Any]]:
    cancelled = {
        "200": json_answer("cancelled", "Job"),
        "202": json_answer("cancel asked; the job is still ending", "Job"),
    }
    return {
        "GET /jobs/{job_id}": {
            "operationId": "getJob",
            "summary": "A job's record",
            "responses": {"200": json_answer("the record", "Job")},
        },
        "POST /jobs/{job_id}/cancel": {
            "operationId": "cancelJob",
            "summary": "Cancel a job",
            "description": "A job still in the queue never reaches ComfyUI; a running one is "
            "interrupted. The record stays, with status `cancelled`.",
            "responses": cancelled,
        },
        "DELETE /jobs/{job_id}": {
            "operationId": "cancelJobByDelete",
            "summary": "Alias of POST /jobs/{job_id}/cancel",
            "description": "Cancels the job (the record stays): the same behaviour and answers "
            "as POST /jobs/{job_id}/cancel, which is the documented way.",
            "deprecated": True,
            "responses": cancelled,
        },
        "GET /jobs/{job_id}/events": {
            "operationId": "jobEvents",
            "summary": "Server-Sent Events of a job, to its end",
            "parameters": [
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                    "description": "the id of the last event read, to resume after it",
                }
            ],
            "responses": {
                "200": event_stream(
                    "events: state, queued, position, running, progress, preview, then "
                    "succeeded, failed or cancelled (each described by JobEvent)"
                )
            },
        },
        "GET /jobs/{job_id}/preview": {
            "operationId": "jobPreview",
            "summary": "The latest live preview frame of a running job",
            "responses": {"200": image("the frame")},
        },
    }


def _avatars_and_styles() -> dict[str, dict[str, Any]]:
    return {
        "GET /avatars/{file_name}": {
            "operationId": "getAvatar",
            "summary": "A generated avatar",
            "responses": {
                "200": image("the avatar"),
                "307": {
                    "description": "with STORAGE_PUBLIC_READS (object storage): the avatar is "
                    "read from a presigned URL of its object, valid STORAGE_LINK_TTL seconds",
                    "headers": {
                        "Location": {
                            "description": "the presigned URL",
                            "schema": {"type": "string", "format": "uri"},
                        }
                    },
                },
            },
        },
        "GET /styles": {
            "operationId": "listStyles",
            "summary": "The styles (workflows) with their parameters",
            "responses": {"200": json_answer("the styles and the default one", "Styles")},
        },
    }


def _public() -> dict[str, dict[str, Any]]:
    def public(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
        return {**_PUBLIC, "operationId": operation_id, "summary": summary, "responses": responses}

    page = {"200": text_answer("the page", "text/html")}
    return {
        "GET /service-info": public(
            "serviceInfo",
            "Whether a key is needed, the limits, where the styles and docs are",
            {"200": json_answer("the facts", "ServiceInfo")},
        ),
        "GET /healthz": public(
            "healthz",
            "The process is up",
            {"200": object_answer("up", {"status": {"const": "ok"}}, required=("status",))},
        ),
        "GET /readyz": public(
            "readyz",
            "Whether a ComfyUI server can run the default style",
            {
                "200": object_answer("ready, with the state of each server", _READINESS, **_READY),
                "503": object_answer("not ready, with the reason", _READINESS, **_READY),
            },
        ),
        "GET /openapi.json": public(
            "openapi",
            "This document",
            {"200": object_answer("the OpenAPI 3.1 document", {"openapi": {"type": "string"}})},
        ),
        "GET /docs": public("docs", "Interactive documentation (Swagger UI)", page),
        "GET /docs/{asset}": public(
            "docsAsset", "A file of the interactive documentation", {"200": any_file("the file")}
        ),
        "GET /": public(
            "webPage", "The web page: upload a photo, follow the job, keep the avatar", page
        ),
        "GET /web/{filename}": public(
            "webPageAsset",
            "A file of the web page (its script, style and icon)",
            {"200": any_file("the file")},
        ),
        "GET /metrics": {
            **_PUBLIC,
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "description": "Needs `Authorization: Bearer <METRICS_KEY>` if METRICS_KEY is set",
            "responses": {"200": text_answer("the text exposition format", "text/plain")},
        },
    }
