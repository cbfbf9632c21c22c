"""Presets (``<name>.presets.json``): description, default parameters, gender -> prompt text."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .errors import InvalidPresetsError
from .graph import freeze, int_literal
from .roles import Roles, sampler_steps

GENDERS = ("male", "female", "neutral")
DEFAULT_POSITIVE_TEMPLATE = "{gender}, {text}"
_PRESET_KEYS = frozenset({"description", "defaults", "gender_text", "positive_template"})


@dataclass(frozen=True)
class Presets:
    """Data next to a workflow: description, default parameters, gender -> prompt text."""

    description: str
    defaults: Mapping[str, Any]
    gender_text: Mapping[str, str]
    positive_template: str = DEFAULT_POSITIVE_TEMPLATE


def parse_presets(data: Any) -> Presets:
    """Validate presets data and return a read-only Presets."""
    if not isinstance(data, Mapping):
        raise InvalidPresetsError("presets must be a JSON object")
    unknown = sorted(set(data) - _PRESET_KEYS)
    if unknown:
        raise InvalidPresetsError(
            f"unknown presets key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(_PRESET_KEYS))}",
            unknown=unknown,
        )
    description = data.get("description")
    if not isinstance(description, str) or not description.strip():
        raise InvalidPresetsError("'description' must be a non-empty string", key="description")
    gender_text = data.get("gender_text")
    if not isinstance(gender_text, Mapping):
        raise InvalidPresetsError(
            "'gender_text' must map male/female/neutral to prompt text", key="gender_text"
        )
    missing = [g for g in GENDERS if g not in gender_text]
    if missing:
        raise InvalidPresetsError(
            f"'gender_text' lacks {', '.join(missing)}", key="gender_text", missing=missing
        )
    for gender, text in gender_text.items():
        if not isinstance(text, str) or not text.strip():
            raise InvalidPresetsError(
                f"'gender_text.{gender}' must be a non-empty string", key=f"gender_text.{gender}"
            )
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        raise InvalidPresetsError("'defaults' must be an object", key="defaults")
    for key in ("width", "height", "steps"):
        if key in defaults and not (int_literal(defaults[key]) and defaults[key] > 0):
            raise InvalidPresetsError(
                f"'defaults.{key}' must be a positive integer", key=f"defaults.{key}"
            )
    if "gender" in defaults and defaults["gender"] not in gender_text:
        raise InvalidPresetsError(
            f"'defaults.gender' {defaults['gender']!r} is not a key of 'gender_text'",
            key="defaults.gender",
        )
    template = data.get("positive_template", DEFAULT_POSITIVE_TEMPLATE)
    if not isinstance(template, str) or "{gender}" not in template:
        raise InvalidPresetsError(
            "'positive_template' must be a string containing {gender} (and usually {text})",
            key="positive_template",
        )
    return Presets(
        description=description.strip(),
        defaults=freeze(defaults),
        gender_text=MappingProxyType({str(g): t.strip() for g, t in gender_text.items()}),
        positive_template=template,
    )


def fit_presets(data: Mapping[str, Any], graph: Mapping[str, Any], roles: Roles) -> dict[str, Any]:
    """Presets data copied for another graph: ``defaults.steps`` set to the steps its sampler
    runs (dropped when it runs none that a literal states)."""
    presets = copy.deepcopy(dict(data))
    defaults = presets.setdefault("defaults", {})
    steps = sampler_steps(graph, roles)
    if steps:
        defaults["steps"] = steps[0]
    else:
        defaults.pop("steps", None)
    return presets
