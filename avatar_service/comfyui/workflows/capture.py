"""Workflows captured from ComfyUI: unwrap a /prompt body, check its shape, prepare an import."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import InvalidWorkflowError, MissingRoleError, UIFormatError
from .graph import is_link, node_links, sorted_ids, validate_graph
from .parameters import MAX_SIZE, MIN_SIZE, check_int
from .roles import find_roles

_API_FORMAT_HINT = (
    "export the API format instead: in ComfyUI use the menu 'Export (API)' (older versions: enable "
    "dev mode options in the settings, then 'Save (API Format)'), or copy the request body of "
    "POST /prompt from the browser devtools Network tab after pressing 'Queue'"
)


@dataclass(frozen=True)
class ImportResult:
    """A normalised bare API graph ready to store, and the changes made to it."""

    graph: dict[str, Any]
    changes: tuple[str, ...]


def _is_ui_format(data: Mapping[str, Any]) -> bool:
    """True for the UI 'Save' format: a list of nodes plus links / last_node_id."""
    return isinstance(data.get("nodes"), list) and ("links" in data or "last_node_id" in data)


def parse_captured(data: object) -> dict[str, Any]:
    """The bare API graph of a captured /prompt body or a bare graph, its shape validated."""
    if not isinstance(data, Mapping):
        raise InvalidWorkflowError(
            f"a workflow must be a JSON object, got {type(data).__name__}",
            received_type=type(data).__name__,
        )
    if _is_ui_format(data):
        raise UIFormatError(
            "this is a UI-format workflow (it has 'nodes' and 'links'), which ComfyUI's /prompt "
            f"does not accept; {_API_FORMAT_HINT}",
            hint=_API_FORMAT_HINT,
        )
    graph: Any = data
    prompt = data.get("prompt")
    if isinstance(prompt, Mapping) and "class_type" not in prompt:
        graph = prompt
    elif "prompt" not in data and ("client_id" in data or "extra_data" in data):
        raise InvalidWorkflowError(
            "this looks like a captured /prompt request body but it has no 'prompt' key",
            keys=sorted(data),
        )
    elif prompt is not None and not isinstance(prompt, Mapping):
        raise InvalidWorkflowError(
            f"'prompt' must be an object (the API graph), got {type(prompt).__name__}",
            received_type=type(prompt).__name__,
        )
    if isinstance(graph, Mapping) and _is_ui_format(graph):
        raise UIFormatError(
            f"'prompt' holds a UI-format workflow (it has 'nodes' and 'links'); {_API_FORMAT_HINT}",
            hint=_API_FORMAT_HINT,
        )
    bare: dict[str, Any] = copy.deepcopy(dict(graph))
    validate_graph(bare)
    return bare


def prepare_import(
    data: object,
    *,
    insert_image_scale: bool = False,
    replace_impact_concat: bool = False,
    width: int = 512,
    height: int = 512,
    bindings: Mapping[str, Any] | None = None,
) -> ImportResult:
    """Unwrap and validate a captured workflow for storage; optionally apply the documented fixes.

    insert_image_scale: if the photo LoadImage feeds the latent path with no size node, insert an
    ImageScale (lanczos, crop center, width x height) right after it, and drop EmptyLatentImage
    nodes that feed nothing. replace_impact_concat: swap ImpactConcatConditionings for core
    ConditioningConcat (conditioning1 -> conditioning_to, conditioning2 -> conditioning_from).
    bindings: the style's explicit bindings; a bound 'size' means no ImageScale is needed.
    """
    graph = parse_captured(data)
    changes: list[str] = []
    if replace_impact_concat:
        changes.extend(_replace_impact_concat(graph))
    if insert_image_scale:
        check_int("width", width, MIN_SIZE, MAX_SIZE)
        check_int("height", height, MIN_SIZE, MAX_SIZE)
        try:
            find_roles(graph, bindings)
        except MissingRoleError as exc:
            if exc.details.get("role") != "size" or not exc.details.get("consumers"):
                raise
            changes.extend(_insert_image_scale(graph, exc.details, width, height))
        validate_graph(graph)
    return ImportResult(graph=graph, changes=tuple(changes))


def _replace_impact_concat(graph: dict[str, Any]) -> list[str]:
    """Swap every ImpactConcatConditionings for core ConditioningConcat (same maths)."""
    changes = []
    for node_id in sorted_ids(graph):
        node = graph[node_id]
        if node["class_type"] != "ImpactConcatConditionings":
            continue
        extra = sorted(set(node["inputs"]) - {"conditioning1", "conditioning2"})
        if extra or "conditioning2" not in node["inputs"]:
            raise InvalidWorkflowError(
                f"node {node_id} (ImpactConcatConditionings) does not have exactly "
                "conditioning1 and conditioning2; replace it by hand",
                node_id=node_id,
            )
        node["class_type"] = "ConditioningConcat"
        node["inputs"] = {
            "conditioning_to": node["inputs"]["conditioning1"],
            "conditioning_from": node["inputs"]["conditioning2"],
        }
        node.setdefault("_meta", {})["title"] = "Conditioning (Concat)"
        changes.append(f"node {node_id}: ImpactConcatConditionings -> ConditioningConcat")
    return changes


def _insert_image_scale(
    graph: dict[str, Any], details: Mapping[str, Any], width: int, height: int
) -> list[str]:
    """Insert an ImageScale after the photo for every consumer; drop unconnected size nodes."""
    image = details["image"]
    scale_id = _new_node_id(graph)
    graph[scale_id] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": [image, 0],
            "upscale_method": "lanczos",
            "width": width,
            "height": height,
            "crop": "center",
        },
        "_meta": {"title": "Output size"},
    }
    changes = [f"node {scale_id}: ImageScale inserted after LoadImage {image}"]
    for consumer in details["consumers"]:
        for name, value in graph[consumer]["inputs"].items():
            if is_link(value) and value[0] == image and value[1] == 0:
                graph[consumer]["inputs"][name] = [scale_id, 0]
                changes.append(f"node {consumer}: {name} now comes from ImageScale {scale_id}")
    used = {source for n in graph for _name, source in node_links(graph[n])}
    for node_id in details.get("unconnected", []):
        if graph[node_id]["class_type"] == "EmptyLatentImage" and node_id not in used:
            del graph[node_id]
            changes.append(f"node {node_id}: unconnected EmptyLatentImage removed")
    return changes


def _new_node_id(graph: Mapping[str, Any]) -> str:
    """The next free numeric node id."""
    numbers = [int(i) for i in graph if i.isdigit()]
    return str(max(numbers, default=0) + 1)
