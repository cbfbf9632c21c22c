"""Explicit role bindings (``<name>.bindings.json``): checked against the graph they name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import InvalidBindingError
from .graph import int_literal, is_link, node_class, node_inputs, sorted_ids, upstream
from .nodes import IMAGE_LOADERS, OUTPUT_CLASSES

BINDING_KEYS = ("image", "positive_text", "seeds", "size", "outputs")


def _binding_error(role: str, message: str, **details: Any) -> InvalidBindingError:
    """An InvalidBindingError for one role."""
    return InvalidBindingError(f"binding {role!r}: {message}", role=role, **details)


def _bound_node(graph: Mapping[str, Any], role: str, node_id: Any) -> str:
    """Check that a bound node id is a string naming a node of the graph."""
    if not isinstance(node_id, str) or node_id not in graph:
        raise _binding_error(role, f"node {node_id!r} is not in the graph", node_id=node_id)
    return node_id


def _bound_input(graph: Mapping[str, Any], role: str, node_id: str, name: Any, kind: str) -> str:
    """Check that a bound input exists and holds a literal of the expected kind ('str'/'int')."""
    inputs = node_inputs(graph, node_id)
    class_type = node_class(graph, node_id)
    if not isinstance(name, str) or name not in inputs:
        raise _binding_error(
            role,
            f"node {node_id} ({class_type}) has no input {name!r}",
            node_id=node_id,
            class_type=class_type,
            input=name,
        )
    value = inputs[name]
    ok = isinstance(value, str) if kind == "str" else int_literal(value)
    if not ok:
        what = "a link" if is_link(value) else f"{type(value).__name__} {value!r}"
        raise _binding_error(
            role,
            f"input {name!r} of node {node_id} ({class_type}) must hold a literal {kind}, "
            f"it holds {what}",
            node_id=node_id,
            class_type=class_type,
            input=name,
        )
    return name


def _bound_list(role: str, value: Any, width: int | None) -> list[Any]:
    """Check a list binding (of ids, or of lists of `width` items)."""
    if not isinstance(value, list):
        raise _binding_error(role, f"must be a list, got {type(value).__name__}")
    if width is not None:
        for item in value:
            if not isinstance(item, list) or len(item) != width:
                raise _binding_error(role, f"each item must be a list of {width}, got {item!r}")
    return value


def check_bound_nodes_used(
    graph: Mapping[str, Any], bound: Mapping[str, Any], outputs: tuple[str, ...]
) -> None:
    """Reject bound nodes that feed no output: values set there would be silently ignored."""
    used = upstream(graph, outputs)
    bound_ids = {
        "image": [bound["image"]] if "image" in bound else [],
        "positive_text": [bound["positive_text"][0]] if "positive_text" in bound else [],
        "seeds": [n for n, _name in bound.get("seeds", ())],
        "size": [n for n, _w, _h in bound.get("size", ())],
    }
    for role, ids in bound_ids.items():
        for node_id in ids:
            if node_id not in used:
                raise _binding_error(
                    role,
                    f"node {node_id} ({node_class(graph, node_id)}) feeds no output node, so the "
                    "values set there would be ignored",
                    node_id=node_id,
                    class_type=node_class(graph, node_id),
                )


def validate_bindings(graph: Mapping[str, Any], bindings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate explicit role bindings; return them as tuples ready for Roles."""
    if not isinstance(bindings, Mapping):
        raise InvalidBindingError("bindings must be a JSON object")
    unknown = sorted(set(bindings) - set(BINDING_KEYS))
    if unknown:
        raise InvalidBindingError(
            f"unknown binding key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(BINDING_KEYS)}",
            unknown=unknown,
        )
    out: dict[str, Any] = {}
    if "image" in bindings:
        node_id = _bound_node(graph, "image", bindings["image"])
        if node_class(graph, node_id) not in IMAGE_LOADERS:
            _bound_input(graph, "image", node_id, "image", "str")
        out["image"] = node_id
    if "positive_text" in bindings:
        item = _bound_list("positive_text", bindings["positive_text"], None)
        if len(item) != 2:
            raise _binding_error("positive_text", f'must be ["<node id>", "<input>"], got {item!r}')
        node_id = _bound_node(graph, "positive_text", item[0])
        text_input = _bound_input(graph, "positive_text", node_id, item[1], "str")
        out["positive_text"] = (node_id, text_input)
    if "seeds" in bindings:
        items = _bound_list("seeds", bindings["seeds"], 2)
        out["seeds"] = tuple(
            (_bound_node(graph, "seeds", n), _bound_input(graph, "seeds", n, name, "int"))
            for n, name in items
        )
    if "size" in bindings:
        items = _bound_list("size", bindings["size"], 3)
        if not items:
            raise _binding_error("size", "must name at least one node, or width/height are ignored")
        out["size"] = tuple(
            (
                _bound_node(graph, "size", n),
                _bound_input(graph, "size", n, w, "int"),
                _bound_input(graph, "size", n, h, "int"),
            )
            for n, w, h in items
        )
    if "outputs" in bindings:
        items = _bound_list("outputs", bindings["outputs"], None)
        if not items:
            raise _binding_error("outputs", "must name at least one output node")
        for node_id in items:
            _bound_node(graph, "outputs", node_id)
            if node_class(graph, node_id) not in OUTPUT_CLASSES and not is_link(
                node_inputs(graph, node_id).get("images")
            ):
                raise _binding_error(
                    "outputs",
                    f"node {node_id} ({node_class(graph, node_id)}) is not an image output node "
                    "(SaveImage, PreviewImage or a node with a linked 'images' input)",
                    node_id=node_id,
                    class_type=node_class(graph, node_id),
                )
        out["outputs"] = tuple(sorted_ids(items))
    return out
