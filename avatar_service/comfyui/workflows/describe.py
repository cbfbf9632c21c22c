"""A style described for GET /styles and the ``flask workflows`` commands."""

from __future__ import annotations

from typing import Any

from .graph import node_class, node_inputs, thaw
from .presets import GENDERS
from .roles import sampler_steps
from .templates import Workflow


def describe(workflow: Workflow) -> dict[str, Any]:
    """A JSON-ready summary of a style for GET /styles and the CLI."""
    graph = workflow.graph
    roles = workflow.roles

    def node(node_id: str, **extra: Any) -> dict[str, Any]:
        return {"node_id": node_id, "class_type": node_class(graph, node_id), **extra}

    text_node, text_input = roles.positive_text
    return {
        "name": workflow.name,
        "description": workflow.presets.description,
        "defaults": thaw(workflow.presets.defaults),
        "genders": sorted(workflow.presets.gender_text, key=_gender_order),
        "roles": {
            "image": node(roles.image),
            "positive_text": node(text_node, input=text_input),
            "seeds": [node(n, input=i) for n, i in roles.seeds],
            "size": [node(n, width_input=w, height_input=h) for n, w, h in roles.size],
            "outputs": [node(n) for n in roles.outputs],
        },
        "node_classes": sorted({node_class(graph, n) for n in graph}),
        "checkpoints": sorted(
            {v for n in graph if isinstance(v := node_inputs(graph, n).get("ckpt_name"), str)}
        ),
        "steps": sampler_steps(graph, roles),
        "file": workflow.path.name,
    }


def _gender_order(gender: str) -> tuple[int, str]:
    """male, female, neutral first, then any extra keys alphabetically."""
    return (GENDERS.index(gender), "") if gender in GENDERS else (len(GENDERS), gender)
