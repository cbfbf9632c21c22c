"""ComfyUI workflows: load API-format graphs and presets, find their roles, patch copies.

Pure package: no Flask, no network, no module state. A workflow is an API-format graph
(``{"<node id>": {"class_type", "inputs", "_meta"}}``) stored as ``workflows/<name>.json`` next to
``<name>.presets.json`` (required) and ``<name>.bindings.json`` (optional). This module is the
face callers import from; each concept has its own module:

- ``errors``     the WorkflowError tree (each with a snake_case code and JSON-ready details)
- ``graph``      nodes, links, traversal, freezing, and the shape check of a graph
- ``nodes``      the node classes the service knows by name (samplers, loaders, outputs...)
- ``roles``      where photo, gender text, seeds, size and outputs live (``bindings``: explicit)
- ``presets``    <name>.presets.json: description, defaults, gender -> prompt text
- ``templates``  Workflow, load_workflow(s): a style loaded once, read-only
- ``parameters`` ranges of the per-request seed, width and height
- ``patch``      patch_workflow: one request's copy of the graph
- ``check``      check_against_object_info: what a server would reject, with a fix
- ``describe``   a style as GET /styles shows it
- ``capture``    parse_captured, prepare_import: workflows captured from ComfyUI
"""

from __future__ import annotations

from .capture import ImportResult, parse_captured, prepare_import
from .check import Problem, check_against_object_info
from .describe import describe
from .errors import (
    AmbiguousRoleError,
    InvalidBindingError,
    InvalidParameterError,
    InvalidPresetsError,
    InvalidWorkflowError,
    MissingRoleError,
    UIFormatError,
    WorkflowError,
)
from .graph import node_class, thaw
from .parameters import MAX_SEED, MAX_SIZE, MIN_SIZE
from .patch import patch_workflow, render_positive_text
from .presets import GENDERS, Presets, fit_presets
from .roles import Roles, find_roles, sampler_steps
from .templates import (
    Workflow,
    bindings_path,
    is_style_name,
    load_workflow,
    load_workflows,
    presets_path,
    style_path,
)

__all__ = [
    "GENDERS",
    "MAX_SEED",
    "MAX_SIZE",
    "MIN_SIZE",
    "AmbiguousRoleError",
    "ImportResult",
    "InvalidBindingError",
    "InvalidParameterError",
    "InvalidPresetsError",
    "InvalidWorkflowError",
    "MissingRoleError",
    "Presets",
    "Problem",
    "Roles",
    "UIFormatError",
    "Workflow",
    "WorkflowError",
    "bindings_path",
    "check_against_object_info",
    "describe",
    "find_roles",
    "fit_presets",
    "is_style_name",
    "load_workflow",
    "load_workflows",
    "node_class",
    "parse_captured",
    "patch_workflow",
    "prepare_import",
    "presets_path",
    "render_positive_text",
    "sampler_steps",
    "style_path",
    "thaw",
]
