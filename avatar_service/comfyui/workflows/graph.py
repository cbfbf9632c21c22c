"""API-format graphs: nodes, links, traversal, freezing, and the shape check.

A graph maps node ids to ``{"class_type": ..., "inputs": {...}, "_meta": {...}}``; an input is a
literal or a link ``["<node id>", <output slot>]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, TypeGuard

from .errors import InvalidWorkflowError


def freeze(value: Any) -> Any:
    """Deep read-only copy: dicts become mapping proxies, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Deep mutable copy of a (possibly frozen) JSON-like value: dicts and lists again."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


def is_link(value: Any) -> bool:
    """True for an API-format link ``["<node id>", <slot>]`` (list or frozen tuple)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _node_sort_key(node_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others alphabetically."""
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def sorted_ids(ids: Iterable[str]) -> list[str]:
    """Node ids in a stable, human order."""
    return sorted(set(ids), key=_node_sort_key)


def node_class(graph: Mapping[str, Any], node_id: str) -> str:
    """The class_type of a node."""
    class_type: str = graph[node_id]["class_type"]
    return class_type


def node_inputs(graph: Mapping[str, Any], node_id: str) -> Mapping[str, Any]:
    """The inputs of a node."""
    inputs: Mapping[str, Any] = graph[node_id].get("inputs", {})
    return inputs


def node_links(node: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(input name, source node id) for every linked input of a node."""
    for name, value in node.get("inputs", {}).items():
        if is_link(value):
            yield name, value[0]


def linked_source(graph: Mapping[str, Any], node_id: str, name: str) -> str | None:
    """The source node id of a linked input, or None."""
    value: Any = node_inputs(graph, node_id).get(name)
    return value[0] if is_link(value) else None


def upstream(graph: Mapping[str, Any], starts: Iterable[str]) -> set[str]:
    """Every node the start nodes depend on, the start nodes included."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        todo.extend(source for _name, source in node_links(graph[node_id]))
    return seen


def int_literal(value: Any) -> TypeGuard[int]:
    """True for a JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def validate_graph(graph: Mapping[str, Any]) -> None:
    """Raise InvalidWorkflowError unless every node has a class_type and every link resolves."""
    if not graph:
        raise InvalidWorkflowError("the workflow graph is empty")
    for node_id, node in graph.items():
        class_type, inputs = _node_shape(node_id, node)
        for name, value in inputs.items():
            if isinstance(value, (list, tuple)):
                _check_link(graph, node_id, class_type, name, value)
    cycle = _find_cycle(graph)
    if cycle:
        raise InvalidWorkflowError(
            f"the graph has a cycle through nodes {', '.join(cycle)}", node_ids=cycle
        )


def _node_shape(node_id: str, node: Any) -> tuple[str, Mapping[str, Any]]:
    """A node's class_type and inputs, or InvalidWorkflowError when it has not both."""
    if not isinstance(node, Mapping):
        raise InvalidWorkflowError(
            f"node {node_id!r} is not an object: an API graph maps node ids to "
            "{'class_type': ..., 'inputs': {...}}",
            node_id=node_id,
        )
    class_type = node.get("class_type")
    if not isinstance(class_type, str) or not class_type:
        raise InvalidWorkflowError(
            f"node {node_id!r} has no class_type", node_id=node_id, keys=sorted(node)
        )
    inputs = node.get("inputs")
    if not isinstance(inputs, Mapping):
        raise InvalidWorkflowError(
            f"node {node_id!r} ({class_type}) has no 'inputs' object",
            node_id=node_id,
            class_type=class_type,
        )
    return class_type, inputs


def _check_link(
    graph: Mapping[str, Any], node_id: str, class_type: str, name: str, value: Any
) -> None:
    """Raise InvalidWorkflowError unless a list input is a link to an output of the graph."""
    base = {"node_id": node_id, "class_type": class_type, "input": name}
    if not is_link(value):
        raise InvalidWorkflowError(
            f"input {name!r} of node {node_id!r} ({class_type}) is not a link "
            f'["<node id>", <output slot>]: {json.dumps(thaw(value))}',
            **base,
            received_value=thaw(value),
        )
    source, slot = value
    if source not in graph:
        raise InvalidWorkflowError(
            f"input {name!r} of node {node_id!r} ({class_type}) links to node "
            f"{source!r}, which is not in the graph",
            **base,
            linked_node=source,
        )
    if slot < 0:
        raise InvalidWorkflowError(
            f"input {name!r} of node {node_id!r} ({class_type}) links to a negative "
            f"output slot {slot}",
            **base,
            linked_node=source,
        )


def _find_cycle(graph: Mapping[str, Any]) -> list[str]:
    """Node ids of one cycle, or an empty list for an acyclic graph."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in graph:
        if start in state:
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[tuple[str, str]]]] = [(start, node_links(graph[start]))]
        state[start] = 1
        path.append(start)
        while stack:
            node_id, it = stack[-1]
            for _name, source in it:
                if state.get(source) == 1:
                    return path[path.index(source) :]
                if source not in state:
                    state[source] = 1
                    path.append(source)
                    stack.append((source, node_links(graph[source])))
                    break
            else:
                state[node_id] = 2
                path.pop()
                stack.pop()
    return []
