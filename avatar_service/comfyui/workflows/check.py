"""What a given ComfyUI server (its ``/object_info``) would reject in a graph, each with a fix."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from .graph import is_link, node_class, node_inputs, sorted_ids

# object_info options that mark an input the service fills per request (LoadImage's file name)
_PER_REQUEST_INPUTS = frozenset({("LoadImage", "image")})

_CLASS_FIXES: Mapping[str, str] = MappingProxyType(
    {
        "ImpactConcatConditionings": (
            "it comes from the ComfyUI-Impact-Pack custom nodes: install that pack, or replace it "
            "by core ConditioningConcat (conditioning1 -> conditioning_to, conditioning2 -> "
            "conditioning_from; same maths)"
        ),
    }
)
_COMBO_FOLDERS: Mapping[str, str] = MappingProxyType(
    {
        "ckpt_name": "models/checkpoints",
        "vae_name": "models/vae",
        "lora_name": "models/loras",
        "control_net_name": "models/controlnet",
        "clip_name": "models/text_encoders",
        "unet_name": "models/diffusion_models",
    }
)


@dataclass(frozen=True)
class Problem:
    """One way a graph would be rejected by a given ComfyUI server, with a suggested fix."""

    node_id: str
    class_type: str
    input: str | None
    message: str
    fix: str
    code: str = "problem"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "node_id": self.node_id,
            "class_type": self.class_type,
            "input": self.input,
            "code": self.code,
            "message": self.message,
            "fix": self.fix,
        }


def check_against_object_info(
    graph: Mapping[str, Any], object_info: Mapping[str, Any]
) -> list[Problem]:
    """List what a server (its /object_info) would reject in a graph, each with a fix."""
    problems: list[Problem] = []
    for node_id in sorted_ids(graph):
        node = graph[node_id]
        class_type = node["class_type"]
        info = object_info.get(class_type)
        if not isinstance(info, Mapping):
            close = difflib.get_close_matches(class_type, list(object_info), n=3)
            fix = _CLASS_FIXES.get(class_type) or (
                f"install the custom node pack that provides {class_type} (e.g. with "
                "ComfyUI-Manager) or replace the node"
                + (f"; similar classes on this server: {', '.join(close)}" if close else "")
            )
            problems.append(
                Problem(
                    node_id,
                    class_type,
                    None,
                    f"node class {class_type} does not exist on this ComfyUI server",
                    fix,
                    "unknown_class",
                )
            )
            continue
        problems.extend(_check_node(graph, node_id, info, object_info))
    return problems


def _check_node(
    graph: Mapping[str, Any], node_id: str, info: Mapping[str, Any], object_info: Mapping[str, Any]
) -> list[Problem]:
    """Problems of one node whose class the server knows."""
    class_type = node_class(graph, node_id)
    inputs = node_inputs(graph, node_id)
    declared = info.get("input", {}) or {}
    required = declared.get("required", {}) or {}
    optional = declared.get("optional", {}) or {}
    problems: list[Problem] = []

    def add(name: str | None, message: str, fix: str, code: str) -> None:
        problems.append(Problem(node_id, class_type, name, message, fix, code))

    for name, spec in required.items():
        if name not in inputs:
            default = _spec_options(spec).get("default")
            hint = f" (the UI default is {default!r})" if default is not None else ""
            add(
                name,
                f"required input {name!r} is missing",
                f"add input {name!r}{hint}",
                "required_input_missing",
            )
    for name, value in inputs.items():
        spec = required.get(name, optional.get(name))
        if spec is None:
            continue  # undeclared inputs (e.g. the UI's "upload") are ignored by ComfyUI
        if is_link(value):
            problems.extend(_check_link(graph, node_id, name, value, spec, object_info))
            continue
        if (class_type, name) in _PER_REQUEST_INPUTS or _spec_options(spec).get("image_upload"):
            continue  # set per request to the uploaded file name
        options = _combo_options(spec)
        if options is not None:
            if value not in options:
                fix = _available(options, value)
                if not options and name in _COMBO_FOLDERS:
                    fix = f"the server has no files in {_COMBO_FOLDERS[name]}; add {value!r} there"
                elif name in _COMBO_FOLDERS:
                    fix += f" (or add {value!r} to the server's {_COMBO_FOLDERS[name]})"
                add(
                    name,
                    f"value {value!r} of {name!r} is not in the server's list",
                    fix,
                    "value_not_in_list",
                )
            continue
        kind = spec[0] if isinstance(spec, (list, tuple)) and spec else None
        if kind in ("INT", "FLOAT"):
            problems.extend(_check_number(node_id, class_type, name, value, kind, spec))
    return problems


def _check_number(
    node_id: str, class_type: str, name: str, value: Any, kind: str, spec: Any
) -> list[Problem]:
    """Type and min/max problems of a numeric literal, as ComfyUI checks them."""
    try:
        number = int(value) if kind == "INT" else float(value)
    except (TypeError, ValueError):
        return [
            Problem(
                node_id,
                class_type,
                name,
                f"value {value!r} of {name!r} is not a valid {kind}",
                f"use a number for {name!r}",
                "invalid_input_type",
            )
        ]
    opts = _spec_options(spec)
    low, high = opts.get("min"), opts.get("max")
    if low is not None and number < low:
        return [
            Problem(
                node_id,
                class_type,
                name,
                f"value {value!r} of {name!r} is smaller than the minimum {low}",
                f"use a value from {low} to {high}",
                "value_smaller_than_min",
            )
        ]
    if high is not None and number > high:
        return [
            Problem(
                node_id,
                class_type,
                name,
                f"value {value!r} of {name!r} is bigger than the maximum {high}",
                f"use a value from {low} to {high}",
                "value_bigger_than_max",
            )
        ]
    return []


def _check_link(
    graph: Mapping[str, Any],
    node_id: str,
    name: str,
    link: Any,
    spec: Any,
    object_info: Mapping[str, Any],
) -> list[Problem]:
    """Slot-range and socket-type problems of one link."""
    class_type = node_class(graph, node_id)
    source, slot = link
    source_info = object_info.get(node_class(graph, source))
    if not isinstance(source_info, Mapping):
        return []  # reported on the source node itself
    outputs = list(source_info.get("output", []) or [])
    if slot >= len(outputs):
        return [
            Problem(
                node_id,
                class_type,
                name,
                f"{name!r} links to output slot {slot} of node {source} "
                f"({node_class(graph, source)}), which has {len(outputs)} output(s)",
                f"link to a slot from 0 to {len(outputs) - 1}",
                "bad_linked_input",
            )
        ]
    input_type = spec[0] if isinstance(spec, (list, tuple)) and spec else None
    if _combo_options(spec) is None and not _types_match(outputs[slot], input_type):
        return [
            Problem(
                node_id,
                class_type,
                name,
                f"{name!r} expects {input_type} but node {source} "
                f"({node_class(graph, source)}) slot {slot} gives {outputs[slot]}",
                f"link {name!r} to a {input_type} output",
                "return_type_mismatch",
            )
        ]
    return []


def _combo_options(spec: Any) -> list[Any] | None:
    """The allowed values of a combo input spec (list or "COMBO" encoding), else None."""
    if not isinstance(spec, (list, tuple)) or not spec:
        return None
    kind = spec[0]
    if isinstance(kind, (list, tuple)):
        return list(kind)
    if kind == "COMBO":
        opts = spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
        options = opts.get("options", [])
        return list(options) if isinstance(options, (list, tuple)) else []
    return None


def _spec_options(spec: Any) -> Mapping[str, Any]:
    """The options dict of an input spec ({} when absent)."""
    if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], Mapping):
        return spec[1]
    return {}


def _available(values: list[Any], wanted: Any, limit: int = 10) -> str:
    """'close matches: a, b' or 'available: a, b, ... (42 in total)' for a fix text."""
    if not values:
        return "the server offers no values for this input"
    strings = [str(v) for v in values]
    close = difflib.get_close_matches(str(wanted), strings, n=5, cutoff=0.5)
    if close:
        return f"use one of the close matches: {', '.join(close)}"
    shown = ", ".join(strings[:limit])
    more = f", ... ({len(strings)} in total)" if len(strings) > limit else ""
    return f"available: {shown}{more}"


def _types_match(output_type: Any, input_type: Any) -> bool:
    """ComfyUI's socket check: equal, '*' wildcard, or overlapping comma-separated unions."""
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return True
    if "*" in (output_type, input_type) or output_type == input_type:
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))
