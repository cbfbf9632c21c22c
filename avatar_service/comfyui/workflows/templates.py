"""Workflow templates: a style's graph, roles and presets loaded once, read-only.

A style is ``workflows/<name>.json`` (a captured /prompt body or a bare API graph) next to
``<name>.presets.json`` (required) and ``<name>.bindings.json`` (optional).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from .capture import parse_captured
from .errors import InvalidBindingError, InvalidPresetsError, InvalidWorkflowError, WorkflowError
from .graph import freeze, thaw
from .presets import Presets, parse_presets
from .roles import Roles, find_roles, sampler_steps

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


@dataclass(frozen=True)
class Workflow:
    """A loaded style: the read-only template graph, its roles and presets."""

    name: str
    graph: Mapping[str, Any]  # deep-frozen: mappings are read-only proxies, lists are tuples
    roles: Roles
    presets: Presets
    path: Path

    def graph_copy(self) -> dict[str, Any]:
        """A fresh, mutable deep copy of the template graph (every job patches one)."""
        graph: dict[str, Any] = json.loads(self._graph_json)
        return graph

    @cached_property
    def _graph_json(self) -> str:
        # Parsing this text is a deep copy made in C: a few times faster than thawing the
        # frozen graph node by node (the graph came from JSON, so nothing is lost).
        return json.dumps(thaw(self.graph))


def is_style_name(name: str) -> bool:
    """Whether ``name`` can name a style: 1-64 letters, digits, '_' or '-' (used in URLs)."""
    return _NAME_RE.fullmatch(name) is not None


def style_path(directory: Path, name: str) -> Path:
    """Where the graph of style ``name`` is stored in a workflow directory."""
    return directory / f"{name}.json"


def presets_path(path: Path) -> Path:
    """The presets file next to a workflow graph file."""
    return path.with_name(f"{path.stem}.presets.json")


def bindings_path(path: Path) -> Path:
    """The (optional) bindings file next to a workflow graph file."""
    return path.with_name(f"{path.stem}.bindings.json")


def workflow_files(workflow: Workflow) -> dict[str, str | None]:
    """A loaded style's files as stored (``graph``, ``presets``, ``bindings`` or None), for a
    process that loads them elsewhere (a worker agent)."""
    bindings = bindings_path(workflow.path)
    return {
        "graph": workflow.path.read_text(encoding="utf-8"),
        "presets": presets_path(workflow.path).read_text(encoding="utf-8"),
        "bindings": bindings.read_text(encoding="utf-8") if bindings.is_file() else None,
    }


def _read_json(path: Path, error: type[WorkflowError]) -> Any:
    """Parse a JSON file, raising `error` that names the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {path.name}: {exc.strerror or exc}", file=path.name) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(
            f"{path.name} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})",
            file=path.name,
            line=exc.lineno,
            column=exc.colno,
        ) from exc


def load_workflow(path: Path, *, name: str | None = None) -> Workflow:
    """Load <name>.json (captured body or bare graph), <name>.presets.json and optional bindings."""
    path = Path(path)
    name = path.stem if name is None else name
    try:
        if not is_style_name(name):
            raise InvalidWorkflowError(
                f"workflow name {name!r} must be 1-64 letters, digits, '_' or '-' "
                "(it is used in URLs)",
                name=name,
            )
        graph = parse_captured(_read_json(path, InvalidWorkflowError))
        presets_file = presets_path(path)
        if not presets_file.is_file():
            raise InvalidPresetsError(
                f"{presets_file.name} is missing: every workflow needs a presets file with "
                "description, defaults and gender_text (male/female/neutral)",
                presets_file=presets_file.name,
            )
        try:
            presets = parse_presets(_read_json(presets_file, InvalidPresetsError))
        except WorkflowError as exc:
            raise exc.in_file(presets_file) from None
        bindings_file = bindings_path(path)
        bindings = None
        if bindings_file.is_file():
            bindings = _read_json(bindings_file, InvalidBindingError)
        roles = find_roles(graph, bindings)
        steps = presets.defaults.get("steps")
        actual = sampler_steps(graph, roles)
        if steps is not None and actual and steps not in actual:
            raise InvalidPresetsError(
                f"{presets_file.name}: defaults.steps is {steps} but the sampler runs "
                f"{', '.join(map(str, actual))} steps; update one of them",
                key="defaults.steps",
                graph_steps=actual,
            )
    except WorkflowError as exc:
        raise exc.in_file(path) from None
    return Workflow(name=name, graph=freeze(graph), roles=roles, presets=presets, path=path)


def _is_side_file(path: Path) -> bool:
    """True for presets and bindings files."""
    return path.name.endswith((".presets.json", ".bindings.json"))


def load_workflows(directory: Path) -> dict[str, Workflow]:
    """Load every top-level <name>.json of a directory (examples/ and side files are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidWorkflowError(
            f"workflow directory {str(directory)!r} does not exist", directory=str(directory)
        )
    files = sorted(p for p in directory.glob("*.json") if p.is_file())
    graphs = [p for p in files if not _is_side_file(p)]
    stems = {p.stem for p in graphs}
    for side in files:
        if _is_side_file(side) and side.name.split(".", 1)[0] not in stems:
            raise InvalidPresetsError(
                f"{side.name} has no workflow {side.name.split('.', 1)[0]}.json next to it",
                file=side.name,
            )
    return {p.stem: load_workflow(p) for p in graphs}
