"""One request's graph: a copy of the template with photo, gender text, seeds and size set."""

from __future__ import annotations

import re
from typing import Any

from .errors import InvalidParameterError
from .parameters import MAX_SEED, MAX_SIZE, MIN_SIZE, check_int
from .templates import Workflow

_PLACEHOLDER_RE = re.compile(r"\{(gender|text)\}")


def render_positive_text(template: str, gender_text: str, text: str) -> str:
    """Fill {gender} and {text} in the template (other braces are left alone)."""
    values = {"gender": gender_text, "text": text}
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template).strip()


def patch_workflow(
    workflow: Workflow, *, image: str, gender: str, seed: int, width: int, height: int
) -> dict[str, Any]:
    """A new graph for one request: photo, gender text, seeds and size set; template untouched."""
    if not isinstance(image, str) or not image.strip() or "\n" in image:
        raise InvalidParameterError(
            "image must be the non-empty file name returned by ComfyUI's /upload/image",
            parameter="image",
        )
    gender_text = workflow.presets.gender_text
    if gender not in gender_text:
        raise InvalidParameterError(
            f"gender must be one of {', '.join(sorted(gender_text))}, got {gender!r}",
            parameter="gender",
            value=gender if isinstance(gender, str) else repr(gender),
            allowed=sorted(gender_text),
        )
    check_int("seed", seed, 0, MAX_SEED)
    check_int("width", width, MIN_SIZE, MAX_SIZE)
    check_int("height", height, MIN_SIZE, MAX_SIZE)

    graph = workflow.graph_copy()
    roles = workflow.roles
    graph[roles.image]["inputs"]["image"] = image
    text_node, text_input = roles.positive_text
    inputs = graph[text_node]["inputs"]
    inputs[text_input] = render_positive_text(
        workflow.presets.positive_template, gender_text[gender], inputs[text_input]
    )
    for node_id, name in roles.seeds:
        graph[node_id]["inputs"][name] = seed
    for node_id, width_input, height_input in roles.size:
        graph[node_id]["inputs"][width_input] = width
        graph[node_id]["inputs"][height_input] = height
    return graph
