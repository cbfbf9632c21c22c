"""Request schemas, declared once: they validate requests and are the OpenAPI document's source.

Each field of the generate request is a JSON Schema (2020-12) fragment and the message a client
gets when its value breaks it. ``GenerateSchema.parse`` checks a body field by field with
jsonschema (and that a ``crop`` lies inside the stored photo) and answers one 400
``invalid_fields`` naming every bad field;
``GenerateSchema.request_schema`` is the same fragments put together for ``/openapi.json``,
with what depends on the deployment (the styles, the callback URLs allowed) left to words and
``/service-info``, so that the document is the same for every deployment.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from jsonschema import Draft202012Validator

from ..comfyui.workflows import GENDERS, MAX_SEED, Workflow
from ..delivery.webhooks import allowed_url_pattern
from ..errors import BadRequest
from ..jobs import GenerateRequest
from ..photos.framing import CROP_FIELDS, CROP_SHAPE_MESSAGE, MIN_CROP_SIDE, crop_problem
from ..photos.geometry import Box, Crop

MIN_SIDE, MAX_SIDE, SIDE_STEP = 64, 2048, 8
# The query parameters of GET /photos/<imageName>/framing, checked like generate's fields.
FRAMING_FIELDS = ("style", "width", "height")
_DIGITS = re.compile(r"[0-9]{1,9}")
# How the document states the fields whose rule is the deployment's (GET /service-info).
DOCUMENTED_STYLE = {
    "type": "string",
    "minLength": 1,
    "description": "one of this service's styles (GET /styles, or `installedStyles` of GET "
    "/service-info); omitted: its default style. A style's presets may set other defaults for "
    "gender, width and height",
}
DOCUMENTED_CALLBACK = {
    "type": ["string", "null"],
    "format": "uri",
    "description": "a webhook URL for this job; it must lie under one of WEBHOOK_ALLOWED_URLS "
    "(same scheme, host and port; a path below the allowed one): GET /service-info answers "
    "them as `callbackUrls` (none allowed: only null is accepted)",
}


@dataclass(frozen=True)
class Field:
    """One request field: its JSON Schema, the message for a bad value, and whether required."""

    schema: dict[str, Any]
    message: str
    required: bool = False

    def accepts(self, value: Any) -> bool:
        """Whether a value satisfies the schema."""
        return self._validator.is_valid(value)

    @cached_property
    def _validator(self) -> Draft202012Validator:
        return Draft202012Validator(self.schema)


_Fields = dict[str, Field]


class GenerateSchema:
    """The body of POST /generate-avatar-by-image, for the styles and settings of one app."""

    def __init__(
        self,
        *,
        workflows: Mapping[str, Workflow],
        default_style: str,
        callback_allowed: Callable[[str], bool],
        callback_prefixes: Sequence[str],
        callback_message: str,
        photo_size: Callable[[str], tuple[int, int] | None] = lambda image_name: None,
    ) -> None:
        self.workflows = workflows
        self.default_style = default_style
        self.callback_allowed = callback_allowed
        self.callback_prefixes = tuple(callback_prefixes)
        self.callback_message = callback_message
        self.photo_size = photo_size
        # Per style name: the workflow and styles they were made for, and the fields.
        self._fields: dict[str | None, tuple[Workflow | None, tuple[str, ...], _Fields]] = {}

    def fields(self, workflow: Workflow | None) -> dict[str, Field]:
        """Every field, with the defaults and genders of ``workflow`` (the request's style).

        Made once per style (and again when the styles change: an import adds one).
        """
        styles = tuple(sorted(self.workflows))
        name = workflow.name if workflow is not None else None
        made = self._fields.get(name)
        if made is not None and made[0] is workflow and made[1] == styles:
            return made[2]
        fields = self._make_fields(workflow)
        self._fields[name] = (workflow, styles, fields)
        return fields

    def _make_fields(self, workflow: Workflow | None) -> dict[str, Field]:
        defaults: Mapping[str, Any] = workflow.presets.defaults if workflow else {}
        genders = sorted(workflow.presets.gender_text if workflow else GENDERS)
        side = f"must be an integer from {MIN_SIDE} to {MAX_SIDE} and a multiple of {SIDE_STEP}"
        return {
            "imageName": Field(
                {
                    "type": "string",
                    "minLength": 1,
                    "description": "the imageName answered by POST /upload-image",
                },
                "required: the imageName returned by POST /upload-image",
                required=True,
            ),
            "style": Field(
                {
                    "type": "string",
                    "enum": sorted(self.workflows),
                    "default": self.default_style,
                    "description": "a style from GET /styles",
                },
                f"unknown style; one of {sorted(self.workflows)}",
            ),
            "gender": Field(
                {
                    "type": "string",
                    "enum": genders,
                    "default": defaults.get("gender", "neutral"),
                    "description": "case-insensitive; surrounding spaces are ignored",
                },
                f"must be one of {genders}",
            ),
            **{
                name: Field(
                    {
                        "type": "integer",
                        "minimum": MIN_SIDE,
                        "maximum": MAX_SIDE,
                        "multipleOf": SIDE_STEP,
                        "default": defaults.get(name, 512),
                        "description": f"{name} of the avatar in px",
                    },
                    side,
                )
                for name in ("width", "height")
            },
            **self._run_fields(),
        }

    def _run_fields(self) -> dict[str, Field]:
        """The fields that do not depend on the style: seed, async, callbackUrl, crop."""
        return {
            "seed": Field(
                {
                    "type": ["integer", "null"],
                    "minimum": 0,
                    "maximum": MAX_SEED,
                    "description": "omitted or null: random (below 2**53); echoed in the "
                    "record. Above 2**53 a JavaScript number is not exact: JSON.stringify "
                    "sends a neighbour of the seed meant",
                },
                f"must be an integer from 0 to {MAX_SEED}",
            ),
            "async": Field(
                {
                    "type": "boolean",
                    "default": False,
                    "description": "true: answer 202 at once (as does Prefer: respond-async)",
                },
                "must be true or false",
            ),
            "callbackUrl": Field(self._callback_schema(), self.callback_message),
            "crop": Field(
                {
                    "type": ["object", "null"],
                    "required": list(CROP_FIELDS),
                    "properties": {
                        name: {"type": "integer", "minimum": 0 if name in "xy" else MIN_CROP_SIDE}
                        for name in CROP_FIELDS
                    },
                    "additionalProperties": False,
                    "description": "the part of the photo to make the avatar from, in the "
                    "stored photo's pixels (the upload's width and height); it must lie inside "
                    "the photo. Omitted or null: around the largest face (FACE_POLICY), else "
                    "the centre",
                },
                CROP_SHAPE_MESSAGE,
            ),
        }

    def callback_pattern(self) -> str | None:
        """The ECMA-262 pattern of the callback URLs allowed (None: none is)."""
        if not self.callback_prefixes:
            return None
        return "^(?:" + "|".join(map(allowed_url_pattern, self.callback_prefixes)) + ")"

    def _callback_schema(self) -> dict[str, Any]:
        pattern = self.callback_pattern()
        if pattern is None:
            return {"type": "null", "description": "WEBHOOK_ALLOWED_URLS allows no callback URL"}
        return {
            "type": ["string", "null"],
            "format": "uri",
            "pattern": pattern,
            "description": "a webhook URL for this job, under one of WEBHOOK_ALLOWED_URLS "
            "(same scheme, host and port; a path below the allowed one)",
        }

    def documented_fields(self) -> dict[str, dict[str, Any]]:
        """Each field's JSON Schema as the document states it, the same for every deployment:
        the genders every style has, the defaults of a style that sets none, and the styles
        and callback URLs in words."""
        fields = self.fields(None)
        # Copies: the fields are kept for the next requests.
        schemas = {name: copy.deepcopy(field.schema) for name, field in fields.items()}
        schemas["style"] = dict(DOCUMENTED_STYLE)
        schemas["callbackUrl"] = dict(DOCUMENTED_CALLBACK)
        return schemas

    def request_schema(self) -> dict[str, Any]:
        """The JSON Schema of the whole body, as the document states it."""
        fields = self.fields(None)
        return {
            "type": "object",
            "required": [name for name, field in fields.items() if field.required],
            "properties": self.documented_fields(),
        }

    def framing_schema(self) -> dict[str, dict[str, Any]]:
        """The JSON Schemas of the framing query's parameters, as the document states them."""
        documented = self.documented_fields()
        return {name: documented[name] for name in FRAMING_FIELDS}

    def parse(
        self, body: Any, *, may_use_photo: Callable[[object], bool] = lambda name: True
    ) -> tuple[GenerateRequest, bool]:
        """Validate a body; one 400 ``invalid_fields`` naming every bad field.

        ``may_use_photo``: whether the caller may see the photo, whose size bounds a crop (a
        photo it may not see is checked as an unknown one: nothing of it is told).
        """
        if body is None:
            raise BadRequest(
                "the body must be a JSON object sent with Content-Type: application/json",
                code="invalid_json",
            )
        if not isinstance(body, dict):
            raise BadRequest(
                f"the body must be a JSON object, not {_json_kind(body)}", code="invalid_json"
            )
        style = body.get("style", self.default_style)
        workflow = self.workflows.get(style) if isinstance(style, str) else None
        fields = self.fields(workflow)
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name, field in fields.items():
            if name not in body and field.required:
                problems[name] = field.message
                continue
            value = body.get(name, field.schema.get("default"))
            if name == "gender" and isinstance(value, str):
                value = value.strip().lower()
            ok = field.accepts(value)
            if ok and name == "callbackUrl" and value is not None:
                ok = self.callback_allowed(value)
            if ok and isinstance(value, float):  # JSON Schema's integers include 512.0: 512
                value = int(value)
            problem = None
            if name == "crop" and value is not None:
                image_name = body.get("imageName")
                visible = image_name if may_use_photo(image_name) else None
                value, problem = self._crop(value, visible)
                ok = problem is None
            if not ok:
                problems[name] = problem or field.message
            values[name] = value
        if problems:
            raise invalid_fields(problems)
        return (
            GenerateRequest(
                image_name=values["imageName"],
                gender=values["gender"],
                width=values["width"],
                height=values["height"],
                style=values["style"],
                seed=values["seed"],
                callback_url=values["callbackUrl"],
                crop=values["crop"],
            ),
            values["async"],
        )

    def parse_framing(self, args: Mapping[str, str]) -> tuple[int, int]:
        """The avatar size of a framing query: ``width`` and ``height`` as generate takes them.

        Omitted, each is the default of ``style`` (itself defaulting as in generate); one 400
        ``invalid_fields`` naming every bad parameter.
        """
        style = args.get("style", self.default_style)
        fields = self.fields(self.workflows.get(style))
        values: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for name in FRAMING_FIELDS:
            field = fields[name]
            value = _query_value(args[name]) if name in args else field.schema.get("default")
            if field.accepts(value):
                values[name] = value
            else:
                problems[name] = field.message
        if problems:
            raise invalid_fields(problems)
        return values["width"], values["height"]

    def _crop(self, value: Any, image_name: Any) -> tuple[Any, str | None]:
        """A request's crop (``source: request``), or the value and what is wrong with it.

        Beyond its schema, a crop must lie inside the stored photo (when the photo is known).
        """
        if isinstance(value, dict):  # 12.0 is 12, as for the other integers
            value = {
                key: int(number) if isinstance(number, float) and number.is_integer() else number
                for key, number in value.items()
            }
        size = self.photo_size(image_name) if isinstance(image_name, str) else None
        problem = crop_problem(value, size)
        return (value, problem) if problem else (Crop(Box.from_dict(value), "request"), None)


def invalid_fields(problems: Mapping[str, str]) -> BadRequest:
    """One 400 ``invalid_fields`` naming every bad field (the message names a lone one)."""
    field_name, message = next(iter(problems.items()))
    summary = f"{field_name}: {message}" if len(problems) == 1 else "several fields are invalid"
    return BadRequest(summary, code="invalid_fields", details={"fields": dict(problems)})


def _query_value(text: str) -> Any:
    """A query parameter as its JSON value: plain ASCII digits are an integer, else the text."""
    return int(text) if _DIGITS.fullmatch(text) else text


def _json_kind(value: Any) -> str:
    """What a JSON value is, in JSON's words (an array, a string...)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "a string" if isinstance(value, str) else "null"
