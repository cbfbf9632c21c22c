"""The component schemas of the OpenAPI document, and its security schemes.

Every object has its properties, so that generated clients get real types; none depends on the
deployment's settings (what varies, such as the installed styles or the callback URLs allowed,
is answered by ``GET /service-info`` and ``GET /styles``).
"""

from __future__ import annotations

from typing import Any

from ..jobs import JobStatus
from .openapi_events import JOB_EVENT, PREVIEW_READY, QUEUE_POSITION

_STRING = {"type": "string"}
_INTEGER = {"type": "integer"}
_MOMENT = {"type": "string", "format": "date-time"}
_NULLABLE_MOMENT = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_INTEGER = {"type": ["integer", "null"]}
_STRINGS = {"type": "array", "items": _STRING}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


_ERROR_DETAILS = {
    "type": "object",
    "description": "what the error is about; which fields depends on the code (the documented "
    "ones are typed here, others may appear)",
    "properties": {
        "fields": {
            "type": "object",
            "additionalProperties": _STRING,
            "description": "invalid_fields: each bad field and what is wrong with it",
        },
        "jobId": {**_STRING, "description": "the job the error is about"},
        "fileName": _STRING,
        "idempotencyKey": _STRING,
        "maxBytes": _INTEGER,
        "maxPixels": _INTEGER,
        "minSide": _INTEGER,
        "promptId": _STRING,
        "server": _STRING,
        "deletedAt": _MOMENT,
        "receivedFields": _STRINGS,
        "accepted": _STRINGS,
    },
    "additionalProperties": True,
}
_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {**_STRING, "description": "one of the codes the answer's status lists"},
                "message": _STRING,
                "details": _ref("ErrorDetails"),
            },
        }
    },
}
_JOB_ERROR = {
    "type": "object",
    "required": ["code", "message"],
    "properties": {
        "status": {**_INTEGER, "description": "the HTTP status a generate answered with"},
        "code": _STRING,
        "message": _STRING,
        "details": _ref("ErrorDetails"),
    },
}
_JOB_PROGRESS = {
    "type": "object",
    "required": ["node"],
    "properties": {
        "node": {**_STRING, "description": "the id of the node ComfyUI runs now"},
        "nodeType": {**_NULLABLE_STRING, "description": "its class_type"},
        "value": {"type": ["number", "null"], "description": "a sampler's step"},
        "max": {"type": ["number", "null"], "description": "a sampler's steps"},
    },
}
_ATTEMPT = {
    "type": "object",
    "required": ["at", "status", "error", "durationMs"],
    "properties": {
        "at": _MOMENT,
        "status": {**_NULLABLE_INTEGER, "description": "the receiver's HTTP status"},
        "error": _NULLABLE_STRING,
        "durationMs": _INTEGER,
        "response": {"description": "the receiver's answer (JSON, or the start of its text)"},
    },
}
_DELIVERY = {
    "type": "object",
    "required": ["id", "url", "eventType", "state", "attempts", "nextAttemptAt"],
    "properties": {
        "id": _STRING,
        "url": {**_STRING, "description": "the callback URL, its credentials hidden"},
        "eventType": _STRING,
        "state": {"enum": ["pending", "delivered", "failed"]},
        "attempts": {"type": "array", "items": _ref("DeliveryAttempt")},
        "nextAttemptAt": _NULLABLE_MOMENT,
    },
    "description": "a webhook delivery of the job and each of its attempts",
}
_AVATAR_UPLOAD = {
    "type": "object",
    "required": ["state", "ok", "url", "attempts", "status", "error", "nextAttemptAt"],
    "properties": {
        "state": {"enum": ["pending", "delivered", "failed"]},
        "ok": {"type": "boolean"},
        "url": _STRING,
        "attempts": _INTEGER,
        "status": _NULLABLE_INTEGER,
        "error": _NULLABLE_STRING,
        "response": {"description": "the receiver's answer (JSON, or the start of its text)"},
        "nextAttemptAt": _NULLABLE_MOMENT,
    },
    "description": "the forwarding of the avatar to UPLOAD_URL",
}
_AVATAR = {
    "type": "object",
    "required": ["fileName", "width", "height", "url"],
    "properties": {
        "fileName": _STRING,
        "width": _INTEGER,
        "height": _INTEGER,
        "url": {**_STRING, "description": "with ?token= when API keys are on"},
        "upload": {
            "oneOf": [_ref("AvatarUpload"), {"type": "null"}],
            "description": "with UPLOAD_URL set: the forwarding (null until it is enqueued)",
        },
        "deletedAt": {**_MOMENT, "description": "when retention deleted the file"},
    },
}
_BOX = {"x": _INTEGER, "y": _INTEGER, "width": _INTEGER, "height": _INTEGER}
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
        "status": {"enum": [status.value for status in JobStatus]},
        "style": _STRING,
        "imageName": _STRING,
        "gender": _STRING,
        "width": _INTEGER,
        "height": _INTEGER,
        "seed": {
            **_INTEGER,
            "description": "may exceed 2**53: a JavaScript number then holds a neighbour of it "
            "(read the raw JSON text to keep it exact)",
        },
        "createdAt": _MOMENT,
        "startedAt": _NULLABLE_MOMENT,
        "finishedAt": _NULLABLE_MOMENT,
        "queuePosition": _NULLABLE_INTEGER,
        "estimatedStartAt": _NULLABLE_MOMENT,
        "progress": {"oneOf": [_ref("JobProgress"), {"type": "null"}]},
        "error": {"oneOf": [_ref("JobError"), {"type": "null"}]},
        "avatars": {"type": "array", "items": _ref("Avatar")},
        "timings": {
            "type": "object",
            "additionalProperties": _INTEGER,
            "description": "durations in milliseconds, by name (prepareMs, waitMs, ...)",
        },
        "crop": _CROP,
        "links": {
            "type": "object",
            "required": ["self", "events", "preview"],
            "properties": {
                "self": _STRING,
                "events": {**_STRING, "description": "with ?token= when keys are on"},
                "preview": {**_STRING, "description": "with ?token= when keys are on"},
            },
        },
        "webhooks": {
            "type": "array",
            "items": _ref("Delivery"),
            "description": "with a callbackUrl or WEBHOOK_URL: the deliveries",
        },
    },
}
_UPLOADED = {
    "type": "object",
    "required": ["imageName", "width", "height"],
    "properties": {
        "imageName": _STRING,
        "width": _INTEGER,
        "height": _INTEGER,
        "faces": {
            "type": "array",
            "items": _ref("Face"),
            "description": "the faces found, largest first (absent with FACE_POLICY=off)",
        },
    },
}
_FRAMING = {
    "type": "object",
    "required": ["imageName", "width", "height", "faces", "crop", "avatar", "policy"],
    "properties": {
        "imageName": _STRING,
        "width": {**_INTEGER, "description": "the stored photo's width"},
        "height": {**_INTEGER, "description": "the stored photo's height"},
        "faces": {
            "type": "array",
            "items": _ref("Face"),
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
            "properties": {"width": _INTEGER, "height": _INTEGER},
            "description": "the avatar size the crop is for",
        },
        "policy": {
            "enum": ["off", "prefer", "require"],
            "description": "FACE_POLICY (with `off` no face is looked for)",
        },
    },
}
_LIMITS = {
    "type": "object",
    "required": [
        "maxUploadBytes",
        "minImageSide",
        "maxImagePixels",
        "minSide",
        "maxSide",
        "sideStep",
        "maxSeed",
        "syncWaitSeconds",
        "idempotencyTtlSeconds",
        "rateLimitGenerate",
        "rateLimitUpload",
        "tokenTtlSeconds",
    ],
    "properties": {
        "maxUploadBytes": {**_INTEGER, "description": "MAX_UPLOAD_BYTES: the largest photo"},
        "minImageSide": {**_INTEGER, "description": "MIN_IMAGE_SIDE: a photo's shortest side"},
        "maxImagePixels": {**_INTEGER, "description": "MAX_IMAGE_PIXELS: a photo's pixels"},
        "minSide": {**_INTEGER, "description": "an avatar's smallest width or height"},
        "maxSide": {**_INTEGER, "description": "an avatar's largest width or height"},
        "sideStep": {**_INTEGER, "description": "an avatar's sides are multiples of it"},
        "maxSeed": {
            **_INTEGER,
            "description": "the largest seed; above 2**53 a JavaScript number is not exact",
        },
        "syncWaitSeconds": {"type": "number", "description": "SYNC_WAIT"},
        "idempotencyTtlSeconds": {"type": "number", "description": "IDEMPOTENCY_TTL"},
        "rateLimitGenerate": {**_NULLABLE_STRING, "description": "RATE_LIMIT_GENERATE"},
        "rateLimitUpload": {**_NULLABLE_STRING, "description": "RATE_LIMIT_UPLOAD"},
        "tokenTtlSeconds": {
            "type": ["number", "null"],
            "description": "TOKEN_TTL, how long a job's links work (null without keys)",
        },
    },
}
_SERVICE_INFO = {
    "type": "object",
    "required": [
        "authRequired",
        "version",
        "limits",
        "styles",
        "installedStyles",
        "defaultStyle",
        "callbackUrls",
    ],
    "properties": {
        "authRequired": {
            "type": "boolean",
            "description": "whether the routes behind the apiKey scheme need a key here",
        },
        "version": _STRING,
        "limits": _ref("Limits"),
        "styles": {**_STRING, "description": "the URL of GET /styles"},
        "installedStyles": {**_STRINGS, "description": "the styles this service offers"},
        "defaultStyle": {**_STRING, "description": "the style of a request that names none"},
        "callbackUrls": {
            "type": "object",
            "required": ["allowed", "pattern"],
            "properties": {
                "allowed": {
                    **_STRINGS,
                    "description": "WEBHOOK_ALLOWED_URLS: a callbackUrl must lie under one "
                    "(same scheme, host and port; a path below); empty: none is accepted",
                },
                "pattern": {
                    **_NULLABLE_STRING,
                    "description": "an ECMA-262 pattern a callbackUrl must match (null: none "
                    "does); the scheme and host are matched in any case",
                },
            },
        },
        "openapi": _STRING,
        "docs": _STRING,
    },
}
_NODE = {
    "type": "object",
    "required": ["node_id", "class_type"],
    "properties": {
        "node_id": _STRING,
        "class_type": _NULLABLE_STRING,
        "input": _STRING,
        "width_input": _STRING,
        "height_input": _STRING,
    },
    "description": "a node of the workflow and the input the service sets",
}
_NODES = {"type": "array", "items": _ref("WorkflowNode")}
_STYLE = {
    "type": "object",
    "required": ["name", "description", "defaults", "genders", "roles", "file"],
    "properties": {
        "name": {**_STRING, "description": "the `style` of a generate request"},
        "description": _STRING,
        "defaults": {
            "type": "object",
            "properties": {
                "width": _INTEGER,
                "height": _INTEGER,
                "gender": _STRING,
                "steps": _INTEGER,
            },
            "additionalProperties": True,
            "description": "the values a request that omits them gets with this style",
        },
        "genders": {**_STRINGS, "description": "the genders this style accepts"},
        "roles": {
            "type": "object",
            "required": ["image", "positive_text", "seeds", "size", "outputs"],
            "properties": {
                "image": _ref("WorkflowNode"),
                "positive_text": _ref("WorkflowNode"),
                "seeds": _NODES,
                "size": _NODES,
                "outputs": _NODES,
            },
        },
        "node_classes": _STRINGS,
        "checkpoints": _STRINGS,
        "steps": {"type": "array", "items": _INTEGER},
        "file": _STRING,
        "liveServers": {
            **_STRINGS,
            "description": "in a fleet: the servers that can run the style now",
        },
    },
}
_STYLES = {
    "type": "object",
    "required": ["styles", "default"],
    "properties": {
        "styles": {"type": "array", "items": _ref("Style")},
        "default": {**_STRING, "description": "the style of a request that names none"},
    },
}
SCHEMAS: dict[str, Any] = {
    "Error": _ERROR,
    "ErrorDetails": _ERROR_DETAILS,
    "Job": _JOB,
    "JobError": _JOB_ERROR,
    "JobProgress": _JOB_PROGRESS,
    "JobEvent": JOB_EVENT,
    "QueuePosition": QUEUE_POSITION,
    "PreviewReady": PREVIEW_READY,
    "Avatar": _AVATAR,
    "AvatarUpload": _AVATAR_UPLOAD,
    "Delivery": _DELIVERY,
    "DeliveryAttempt": _ATTEMPT,
    "Uploaded": _UPLOADED,
    "Face": _FACE,
    "Framing": _FRAMING,
    "ServiceInfo": _SERVICE_INFO,
    "Limits": _LIMITS,
    "Styles": _STYLES,
    "Style": _STYLE,
    "WorkflowNode": _NODE,
}
SECURITY_SCHEMES: dict[str, Any] = {
    "apiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "an API key from API_KEYS. Needed only where the service has keys "
        "(GET /service-info answers authRequired); without keys it is ignored",
    },
    "jobToken": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "a job's signed token, from the links of its record (with keys on)",
    },
}
