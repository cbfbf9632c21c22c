"""What the OpenAPI document says of each operation beyond its route and its error codes.

Keyed by ``"METHOD /path"`` as the document writes it: the summary, the operationId, the
parameters that are not in the path, the request body and the answers that are not errors.
Path parameters come from the route, error answers from the codes the route declares.
"""

from __future__ import annotations

from typing import Any

from ..config import Settings
from .openapi_components import RATE_HEADERS, RETRY_HEADERS, any_file, any_json, image, json_answer
from .openapi_components import text as text_answer
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


def operations(schema: GenerateSchema, settings: Settings) -> dict[str, dict[str, Any]]:
    """Every operation's own part of the document, for these settings and styles."""
    return {
        **_uploads(settings),
        "POST /generate-avatar-by-image": _generate(schema, settings),
        "GET /photos/{image_name}/framing": _framing(schema),
        **_jobs(),
        **_avatars_and_styles(),
        **_public(),
    }


def _uploads(settings: Settings) -> dict[str, dict[str, Any]]:
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


def _generate(schema: GenerateSchema, settings: Settings) -> dict[str, Any]:
    return {
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
        "DELETE /jobs/{job_id}": {
            "operationId": "cancelJob",
            "summary": "Cancel a job",
            "responses": cancelled,
        },
        "POST /jobs/{job_id}/cancel": {
            "operationId": "cancelJobPost",
            "summary": "Cancel a job (same as DELETE /jobs/{job_id})",
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
                }
            ],
            "responses": {
                "200": text_answer(
                    "events: state, queued, position, running, progress, preview, then "
                    "succeeded, failed or cancelled",
                    "text/event-stream",
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
    styles = {
        "type": "object",
        "required": ["styles", "default"],
        "properties": {
            "styles": {"type": "array", "items": {"type": "object"}},
            "default": {"type": "string"},
        },
    }
    return {
        "GET /avatars/{file_name}": {
            "operationId": "getAvatar",
            "summary": "A generated avatar",
            "responses": {"200": image("the avatar")},
        },
        "GET /styles": {
            "operationId": "listStyles",
            "summary": "The styles (workflows) with their parameters",
            "responses": {
                "200": {
                    "description": "the styles and the default one",
                    "content": {"application/json": {"schema": styles}},
                }
            },
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
            "healthz", "The process is up", {"200": any_json('`{"status": "ok"}`')}
        ),
        "GET /readyz": public(
            "readyz",
            "Whether a ComfyUI server can run the default style",
            {
                "200": any_json("ready, with the state of each server"),
                "503": any_json("not ready, with the reason and each server's state"),
            },
        ),
        "GET /openapi.json": public(
            "openapi", "This document", {"200": any_json("the OpenAPI 3.1 document")}
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
