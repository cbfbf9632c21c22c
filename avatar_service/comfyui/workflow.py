"""ComfyUI workflows: load API-format graphs and presets, find their roles, patch copies.

Pure module: no Flask, no network, no module state. A workflow is an API-format graph
(``{"<node id>": {"class_type", "inputs", "_meta"}}``) stored as ``workflows/<name>.json`` next to
``<name>.presets.json`` (required) and ``<name>.bindings.json`` (optional).

Exceptions (catch at the level you need)::

    WorkflowError              code, message, details
    +-- InvalidWorkflowError   invalid_workflow: not a graph, bad link, unreadable file
    |   +-- UIFormatError      ui_format_workflow: the UI "Save" format, not the API format
    +-- InvalidPresetsError    invalid_presets: <name>.presets.json missing or malformed
    +-- InvalidBindingError    workflow_invalid_binding: a binding names a bad node or input
    +-- MissingRoleError       workflow_missing_role: no node plays a role (photo, size, ...)
    +-- AmbiguousRoleError     workflow_ambiguous_role: several nodes could play a role
    +-- InvalidParameterError  invalid_parameter: bad gender/seed/size/image for patch_workflow
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

__all__ = [
    "GENDERS",
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
    "check_against_object_info",
    "describe",
    "find_roles",
    "load_workflow",
    "load_workflows",
    "parse_captured",
    "patch_workflow",
    "prepare_import",
    "sampler_steps",
    "thaw",
]

GENDERS = ("male", "female", "neutral")
DEFAULT_POSITIVE_TEMPLATE = "{gender}, {text}"
MAX_SEED = 2**64 - 1
MIN_SIZE = 16
MAX_SIZE = 16384

OUTPUT_CLASSES = frozenset({"SaveImage", "PreviewImage"})
IMAGE_LOADERS = frozenset({"LoadImage"})
# sampler class -> input holding its seed (None: the seed lives on the node linked to "noise")
SAMPLER_SEED_INPUT: Mapping[str, str | None] = MappingProxyType(
    {
        "KSampler": "seed",
        "KSamplerAdvanced": "noise_seed",
        "SamplerCustom": "noise_seed",
        "SamplerCustomAdvanced": None,
    }
)
NOISE_SEED_INPUT: Mapping[str, str] = MappingProxyType({"RandomNoise": "noise_seed"})
# guider class -> its positive conditioning input (SamplerCustomAdvanced takes a guider)
GUIDER_POSITIVE_INPUT: Mapping[str, str] = MappingProxyType(
    {"CFGGuider": "positive", "BasicGuider": "conditioning", "DualCFGGuider": "cond1"}
)
# combinators whose result is "primary side + extra": the primary side holds the subject text
PRIMARY_CONDITIONING_INPUT: Mapping[str, str] = MappingProxyType(
    {"ConditioningConcat": "conditioning_to", "ImpactConcatConditionings": "conditioning1"}
)
# object_info options that mark an input the service fills per request (LoadImage's file name)
_PER_REQUEST_INPUTS = frozenset({("LoadImage", "image")})
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_PLACEHOLDER_RE = re.compile(r"\{(gender|text)\}")
_PRESET_KEYS = frozenset({"description", "defaults", "gender_text", "positive_template"})
_BINDING_KEYS = ("image", "positive_text", "seeds", "size", "outputs")
_API_FORMAT_HINT = (
    "export the API format instead: in ComfyUI use the menu 'Export (API)' (older versions: enable "
    "dev mode options in the settings, then 'Save (API Format)'), or copy the request body of "
    "POST /prompt from the browser devtools Network tab after pressing 'Queue'"
)


# --------------------------------------------------------------------------------------------
# Errors


class WorkflowError(Exception):
    """Base of every workflow error: a snake_case code, a message and JSON-ready details."""

    code = "workflow_error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details

    def __str__(self) -> str:
        return self.message

    def in_file(self, path: Path) -> WorkflowError:
        """Name the file the error comes from, in the message and the details; returns self."""
        if "file" not in self.details:
            self.details = {"file": path.name, **self.details}
            self.message = f"{path.name}: {self.message}"
            self.args = (self.message,)
        return self


class InvalidWorkflowError(WorkflowError):
    """The data is not a valid API-format ComfyUI graph."""

    code = "invalid_workflow"


class UIFormatError(InvalidWorkflowError):
    """The data is a UI-format workflow (nodes/links), which ComfyUI's /prompt does not accept."""

    code = "ui_format_workflow"


class InvalidPresetsError(WorkflowError):
    """The presets file of a workflow is missing or malformed."""

    code = "invalid_presets"


class InvalidBindingError(WorkflowError):
    """An explicit role binding names a missing node or input, or a node of the wrong kind."""

    code = "workflow_invalid_binding"


class MissingRoleError(WorkflowError):
    """No node in the graph plays a role the service needs."""

    code = "workflow_missing_role"


class AmbiguousRoleError(WorkflowError):
    """Several nodes could play one role; the details name the candidates."""

    code = "workflow_ambiguous_role"


class InvalidParameterError(WorkflowError):
    """A per-request parameter for patch_workflow is out of range or unknown."""

    code = "invalid_parameter"


# --------------------------------------------------------------------------------------------
# Data types


@dataclass(frozen=True)
class Roles:
    """Where the per-request values go in a graph (node ids and input names)."""

    image: str
    positive_text: tuple[str, str]
    seeds: tuple[tuple[str, str], ...]
    size: tuple[tuple[str, str, str], ...]
    outputs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """The roles in the bindings-file shape (lists, JSON-ready)."""
        return {
            "image": self.image,
            "positive_text": list(self.positive_text),
            "seeds": [list(s) for s in self.seeds],
            "size": [list(s) for s in self.size],
            "outputs": list(self.outputs),
        }


@dataclass(frozen=True)
class Presets:
    """Data next to a workflow: description, default parameters, gender -> prompt text."""

    description: str
    defaults: Mapping[str, Any]
    gender_text: Mapping[str, str]
    positive_template: str = DEFAULT_POSITIVE_TEMPLATE


@dataclass(frozen=True)
class Workflow:
    """A loaded style: the read-only template graph, its roles and presets."""

    name: str
    graph: Mapping[str, Any]  # deep-frozen: mappings are read-only proxies, lists are tuples
    roles: Roles
    presets: Presets
    path: Path

    def graph_copy(self) -> dict[str, Any]:
        """A fresh, mutable deep copy of the template graph."""
        return thaw(self.graph)


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


@dataclass(frozen=True)
class ImportResult:
    """A normalised bare API graph ready to store, and the changes made to it."""

    graph: dict[str, Any]
    changes: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Freezing


def _freeze(value: Any) -> Any:
    """Deep read-only copy: dicts become mapping proxies, lists become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _freeze(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """Deep mutable copy of a (possibly frozen) JSON-like value: dicts and lists again."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [thaw(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Parsing


def _is_link(value: Any) -> bool:
    """True for an API-format link ``["<node id>", <slot>]`` (list or frozen tuple)."""
    return (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def _is_ui_format(data: Mapping[str, Any]) -> bool:
    """True for the UI 'Save' format: a list of nodes plus links / last_node_id."""
    return isinstance(data.get("nodes"), list) and ("links" in data or "last_node_id" in data)


def _node_sort_key(node_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order, then the others alphabetically."""
    return (0, int(node_id)) if node_id.isdigit() else (1, node_id)


def _sorted_ids(ids: Iterable[str]) -> list[str]:
    """Node ids in a stable, human order."""
    return sorted(set(ids), key=_node_sort_key)


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
    graph = copy.deepcopy(dict(graph))
    _validate_graph(graph)
    return graph


def _validate_graph(graph: Mapping[str, Any]) -> None:
    """Raise InvalidWorkflowError unless every node has a class_type and every link resolves."""
    if not graph:
        raise InvalidWorkflowError("the workflow graph is empty")
    for node_id, node in graph.items():
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
        for name, value in inputs.items():
            if not isinstance(value, (list, tuple)):
                continue
            base = {"node_id": node_id, "class_type": class_type, "input": name}
            if not _is_link(value):
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
    cycle = _find_cycle(graph)
    if cycle:
        raise InvalidWorkflowError(
            f"the graph has a cycle through nodes {', '.join(cycle)}", node_ids=cycle
        )


def _links(node: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(input name, source node id) for every linked input of a node."""
    for name, value in node.get("inputs", {}).items():
        if _is_link(value):
            yield name, value[0]


def _find_cycle(graph: Mapping[str, Any]) -> list[str]:
    """Node ids of one cycle, or an empty list for an acyclic graph."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    for start in graph:
        if start in state:
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterator[tuple[str, str]]]] = [(start, _links(graph[start]))]
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
                    stack.append((source, _links(graph[source])))
                    break
            else:
                state[node_id] = 2
                path.pop()
                stack.pop()
    return []


# --------------------------------------------------------------------------------------------
# Role discovery


def _class(graph: Mapping[str, Any], node_id: str) -> str:
    """The class_type of a node."""
    return graph[node_id]["class_type"]


def _inputs(graph: Mapping[str, Any], node_id: str) -> Mapping[str, Any]:
    """The inputs of a node."""
    return graph[node_id].get("inputs", {})


def _upstream(graph: Mapping[str, Any], starts: Iterable[str]) -> set[str]:
    """Every node the start nodes depend on, the start nodes included."""
    seen: set[str] = set()
    todo = list(starts)
    while todo:
        node_id = todo.pop()
        if node_id in seen or node_id not in graph:
            continue
        seen.add(node_id)
        todo.extend(source for _name, source in _links(graph[node_id]))
    return seen


def _linked(graph: Mapping[str, Any], node_id: str, name: str) -> str | None:
    """The source node id of a linked input, or None."""
    value = _inputs(graph, node_id).get(name)
    return value[0] if _is_link(value) else None


def _is_sampler(graph: Mapping[str, Any], node_id: str) -> bool:
    """True for the sampler classes the service knows how to seed."""
    return _class(graph, node_id) in SAMPLER_SEED_INPUT


def _latent_upstream(graph: Mapping[str, Any], sampler_id: str) -> set[str]:
    """Nodes on a sampler's latent path; behind another sampler only its latent input counts."""
    seen: set[str] = set()
    todo = [s for s in [_linked(graph, sampler_id, "latent_image")] if s]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        if _is_sampler(graph, node_id):
            todo.extend(s for s in [_linked(graph, node_id, "latent_image")] if s)
        else:
            todo.extend(source for _name, source in _links(graph[node_id]))
    return seen


def _int_literal(value: Any) -> bool:
    """True for a JSON integer (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _text_input(graph: Mapping[str, Any], node_id: str) -> str | None:
    """The prompt-text input name of a CLIPTextEncode-like node, or None for other nodes."""
    inputs = _inputs(graph, node_id)
    if "text" in inputs and (
        _class(graph, node_id).startswith("CLIPTextEncode") or "clip" in inputs
    ):
        return "text"
    return None


def _positive_sources(graph: Mapping[str, Any], sampler_id: str) -> list[str]:
    """Node ids feeding a sampler's positive conditioning (through a guider if it has one)."""
    source = _linked(graph, sampler_id, "positive")
    if source is not None:
        return [source]
    guider = _linked(graph, sampler_id, "guider")
    if guider is not None:
        name = GUIDER_POSITIVE_INPUT.get(_class(graph, guider))
        found = _linked(graph, guider, name) if name else None
        return [found] if found else []
    return []


def _positive_texts(graph: Mapping[str, Any], start: str) -> tuple[set[str], set[str]]:
    """(text nodes, nodes whose text input is a link) reached from a positive conditioning."""
    texts: set[str] = set()
    linked_text: set[str] = set()
    seen: set[str] = set()
    todo = [start]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        class_type = _class(graph, node_id)
        text_input = _text_input(graph, node_id)
        if text_input is not None:
            if isinstance(_inputs(graph, node_id)[text_input], str):
                texts.add(node_id)
            else:
                linked_text.add(node_id)
            continue
        primary = PRIMARY_CONDITIONING_INPUT.get(class_type)
        if primary is not None:
            todo.extend(s for s in [_linked(graph, node_id, primary)] if s)
            continue
        links = dict(_links(graph[node_id]))
        if "positive" in links:  # e.g. ControlNetApplyAdvanced(positive, negative)
            todo.append(links["positive"])
        else:
            todo.extend(s for name, s in links.items() if name.startswith("cond"))
    return texts, linked_text


def _describe_nodes(graph: Mapping[str, Any], ids: Iterable[str]) -> str:
    """'4 (KSampler), 7 (PreviewImage)'."""
    return ", ".join(f"{i} ({_class(graph, i)})" for i in _sorted_ids(ids))


def _candidates(graph: Mapping[str, Any], ids: Iterable[str]) -> list[dict[str, str]]:
    """JSON-ready candidate list for error details."""
    return [{"node_id": i, "class_type": _class(graph, i)} for i in _sorted_ids(ids)]


def find_roles(graph: Mapping[str, Any], bindings: Mapping[str, Any] | None = None) -> Roles:
    """Find where photo, gender text, seeds, size and outputs live, by following the graph."""
    bound = _validate_bindings(graph, bindings or {})
    all_outputs = [i for i in graph if _class(graph, i) in OUTPUT_CLASSES]
    samplers_of = {
        o: [i for i in _upstream(graph, [o]) if _is_sampler(graph, i)]
        for o in {*all_outputs, *bound.get("outputs", ())}
    }

    if "outputs" in bound:
        outputs = tuple(bound["outputs"])
    else:
        if not all_outputs:
            raise MissingRoleError(
                "no output node: add a SaveImage or PreviewImage node fed by the decoded image, "
                "or bind 'outputs' explicitly",
                role="outputs",
            )
        with_sampler = [o for o in all_outputs if samplers_of[o]]
        # output nodes that show something else (e.g. the scaled photo) are not avatars
        outputs = tuple(_sorted_ids(with_sampler or all_outputs))
    samplers = _sorted_ids(s for o in outputs for s in samplers_of[o])
    _check_bound_nodes_used(graph, bound, outputs)

    if "seeds" in bound:
        seeds = tuple(bound["seeds"])
    else:
        if not samplers:
            raise MissingRoleError(
                f"no sampler (KSampler, KSamplerAdvanced, SamplerCustom, ...) feeds the output "
                f"node(s) {_describe_nodes(graph, outputs)}; bind 'seeds' explicitly "
                "(an empty list is allowed)",
                role="seeds",
                outputs=list(outputs),
            )
        seeds = tuple(_sampler_seeds(graph, samplers))

    positive_text = (
        tuple(bound["positive_text"])
        if "positive_text" in bound
        else _find_positive_text(graph, samplers)
    )
    image = bound["image"] if "image" in bound else _find_image(graph, samplers, outputs)
    size = tuple(bound["size"]) if "size" in bound else _find_size(graph, samplers, image)
    return Roles(
        image=image,
        positive_text=positive_text,  # type: ignore[arg-type]
        seeds=seeds,
        size=size,
        outputs=outputs,
    )


def _sampler_seeds(graph: Mapping[str, Any], samplers: list[str]) -> list[tuple[str, str]]:
    """Every seed input of the samplers (a RandomNoise node's seed for SamplerCustomAdvanced)."""
    seeds: list[tuple[str, str]] = []
    for sampler in samplers:
        name = SAMPLER_SEED_INPUT[_class(graph, sampler)]
        if name is not None:
            if _int_literal(_inputs(graph, sampler).get(name)):
                seeds.append((sampler, name))
            continue
        noise = _linked(graph, sampler, "noise")
        noise_input = NOISE_SEED_INPUT.get(_class(graph, noise)) if noise else None
        if noise and noise_input and _int_literal(_inputs(graph, noise).get(noise_input)):
            seeds.append((noise, noise_input))
    return list(dict.fromkeys(seeds))


def _find_positive_text(graph: Mapping[str, Any], samplers: list[str]) -> tuple[str, str]:
    """The one text node on the primary side of the samplers' positive conditioning."""
    texts: set[str] = set()
    linked_text: set[str] = set()
    for sampler in samplers:
        for start in _positive_sources(graph, sampler):
            found, linked = _positive_texts(graph, start)
            texts |= found
            linked_text |= linked
    if len(texts) > 1:
        raise AmbiguousRoleError(
            f"the positive prompt reaches several text nodes: {_describe_nodes(graph, texts)}; "
            "combine them with ConditioningConcat (the conditioning_to side gets the gender "
            "text) or bind 'positive_text' explicitly",
            role="positive_text",
            candidates=_candidates(graph, texts),
        )
    if texts:
        node_id = texts.pop()
        return (node_id, _text_input(graph, node_id) or "text")
    if linked_text:
        raise MissingRoleError(
            f"the positive text of {_describe_nodes(graph, linked_text)} comes from a link; "
            "bind 'positive_text' to the node input that holds the literal text",
            role="positive_text",
            candidates=_candidates(graph, linked_text),
        )
    raise MissingRoleError(
        "no CLIPTextEncode node feeds the sampler's positive input; connect one (directly or "
        "as conditioning_to of a ConditioningConcat) or bind 'positive_text' explicitly",
        role="positive_text",
        samplers=samplers,
    )


def _loaders(graph: Mapping[str, Any], ids: Iterable[str]) -> set[str]:
    """The image-loading nodes among ids."""
    return {i for i in ids if _class(graph, i) in IMAGE_LOADERS}


def _find_image(graph: Mapping[str, Any], samplers: list[str], outputs: tuple[str, ...]) -> str:
    """The LoadImage feeding the samplers' latent path, else the only one feeding the outputs."""
    on_latent = _loaders(graph, (n for s in samplers for n in _latent_upstream(graph, s)))
    candidates = on_latent or _loaders(graph, _upstream(graph, outputs))
    if len(candidates) > 1:
        where = "the sampler's latent input" if on_latent else "the output"
        raise AmbiguousRoleError(
            f"several LoadImage nodes feed {where}: {_describe_nodes(graph, candidates)}; "
            "remove the extra ones or bind 'image' explicitly",
            role="image",
            candidates=_candidates(graph, candidates),
        )
    if not candidates:
        raise MissingRoleError(
            "no LoadImage node feeds the output: add LoadImage -> ImageScale -> VAEEncode -> "
            "the sampler's latent_image, or bind 'image' explicitly",
            role="image",
        )
    return candidates.pop()


def _size_inputs(graph: Mapping[str, Any], node_id: str) -> tuple[str, str] | None:
    """('width', 'height') if the node sets a size with two integer literals."""
    inputs = _inputs(graph, node_id)
    if _int_literal(inputs.get("width")) and _int_literal(inputs.get("height")):
        return ("width", "height")
    return None


def _find_size(
    graph: Mapping[str, Any], samplers: list[str], image: str
) -> tuple[tuple[str, str, str], ...]:
    """Every width/height node on the samplers' latent path (ImageScale, EmptyLatentImage, ...)."""
    latent_path = {n for s in samplers for n in _latent_upstream(graph, s)}
    found = [
        (n, *inputs)
        for n in _sorted_ids(latent_path)
        if not _is_sampler(graph, n) and (inputs := _size_inputs(graph, n))
    ]
    if found:
        return tuple(found)  # type: ignore[arg-type]
    consumers = [
        n for n in _sorted_ids(latent_path) if image in {s for _name, s in _links(graph[n])}
    ]
    used = _upstream(graph, samplers)
    dangling = [n for n in _sorted_ids(graph) if _size_inputs(graph, n) and n not in used]
    if consumers:
        message = (
            f"LoadImage {image} feeds {_describe_nodes(graph, consumers)} directly, so "
            "width/height would have no effect; add an ImageScale node between them so "
            "width/height take effect, or bind 'size' explicitly"
        )
    else:
        message = (
            "no node on the sampler's latent path sets width/height (ImageScale, "
            "EmptyLatentImage, ...); add one or bind 'size' explicitly"
        )
    if dangling:
        message += (
            f" ({_describe_nodes(graph, dangling)} has width/height but feeds no sampler, "
            "so it is not used)"
        )
    raise MissingRoleError(
        message, role="size", image=image, consumers=consumers, unconnected=dangling
    )


# --------------------------------------------------------------------------------------------
# Bindings


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
    inputs = _inputs(graph, node_id)
    class_type = _class(graph, node_id)
    if not isinstance(name, str) or name not in inputs:
        raise _binding_error(
            role,
            f"node {node_id} ({class_type}) has no input {name!r}",
            node_id=node_id,
            class_type=class_type,
            input=name,
        )
    value = inputs[name]
    ok = isinstance(value, str) if kind == "str" else _int_literal(value)
    if not ok:
        what = "a link" if _is_link(value) else f"{type(value).__name__} {value!r}"
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


def _check_bound_nodes_used(
    graph: Mapping[str, Any], bound: Mapping[str, Any], outputs: tuple[str, ...]
) -> None:
    """Reject bound nodes that feed no output: values set there would be silently ignored."""
    used = _upstream(graph, outputs)
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
                    f"node {node_id} ({_class(graph, node_id)}) feeds no output node, so the "
                    "values set there would be ignored",
                    node_id=node_id,
                    class_type=_class(graph, node_id),
                )


def _validate_bindings(graph: Mapping[str, Any], bindings: Mapping[str, Any]) -> dict[str, Any]:
    """Validate explicit role bindings; return them as tuples ready for Roles."""
    if not isinstance(bindings, Mapping):
        raise InvalidBindingError("bindings must be a JSON object")
    unknown = sorted(set(bindings) - set(_BINDING_KEYS))
    if unknown:
        raise InvalidBindingError(
            f"unknown binding key(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(_BINDING_KEYS)}",
            unknown=unknown,
        )
    out: dict[str, Any] = {}
    if "image" in bindings:
        node_id = _bound_node(graph, "image", bindings["image"])
        if _class(graph, node_id) not in IMAGE_LOADERS:
            _bound_input(graph, "image", node_id, "image", "str")
        out["image"] = node_id
    if "positive_text" in bindings:
        item = _bound_list("positive_text", bindings["positive_text"], None)
        if len(item) != 2:
            raise _binding_error("positive_text", f'must be ["<node id>", "<input>"], got {item!r}')
        node_id = _bound_node(graph, "positive_text", item[0])
        out["positive_text"] = (node_id, _bound_input(graph, "positive_text", *item, "str"))
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
            if _class(graph, node_id) not in OUTPUT_CLASSES and not _is_link(
                _inputs(graph, node_id).get("images")
            ):
                raise _binding_error(
                    "outputs",
                    f"node {node_id} ({_class(graph, node_id)}) is not an image output node "
                    "(SaveImage, PreviewImage or a node with a linked 'images' input)",
                    node_id=node_id,
                    class_type=_class(graph, node_id),
                )
        out["outputs"] = tuple(_sorted_ids(items))
    return out


# --------------------------------------------------------------------------------------------
# Loading


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


def _parse_presets(data: Any) -> Presets:
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
        if key in defaults and not (_int_literal(defaults[key]) and defaults[key] > 0):
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
        defaults=_freeze(defaults),
        gender_text=MappingProxyType({str(g): t.strip() for g, t in gender_text.items()}),
        positive_template=template,
    )


def sampler_steps(graph: Mapping[str, Any], roles: Roles) -> list[int]:
    """The literal `steps` values of the samplers that own the seeds."""
    return [
        steps
        for node_id, _name in roles.seeds
        if _int_literal(steps := _inputs(graph, node_id).get("steps"))
    ]


def load_workflow(path: Path, *, name: str | None = None) -> Workflow:
    """Load <name>.json (captured body or bare graph), <name>.presets.json and optional bindings."""
    path = Path(path)
    name = path.stem if name is None else name
    try:
        if not _NAME_RE.fullmatch(name):
            raise InvalidWorkflowError(
                f"workflow name {name!r} must be 1-64 letters, digits, '_' or '-' "
                "(it is used in URLs)",
                name=name,
            )
        graph = parse_captured(_read_json(path, InvalidWorkflowError))
        presets_path = path.with_name(f"{path.stem}.presets.json")
        if not presets_path.is_file():
            raise InvalidPresetsError(
                f"{presets_path.name} is missing: every workflow needs a presets file with "
                "description, defaults and gender_text (male/female/neutral)",
                presets_file=presets_path.name,
            )
        try:
            presets = _parse_presets(_read_json(presets_path, InvalidPresetsError))
        except WorkflowError as exc:
            raise exc.in_file(presets_path) from None
        bindings_path = path.with_name(f"{path.stem}.bindings.json")
        bindings = None
        if bindings_path.is_file():
            bindings = _read_json(bindings_path, InvalidBindingError)
        roles = find_roles(graph, bindings)
        steps = presets.defaults.get("steps")
        actual = sampler_steps(graph, roles)
        if steps is not None and actual and steps not in actual:
            raise InvalidPresetsError(
                f"{presets_path.name}: defaults.steps is {steps} but the sampler runs "
                f"{', '.join(map(str, actual))} steps; update one of them",
                key="defaults.steps",
                graph_steps=actual,
            )
    except WorkflowError as exc:
        raise exc.in_file(path) from None
    return Workflow(name=name, graph=_freeze(graph), roles=roles, presets=presets, path=path)


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


# --------------------------------------------------------------------------------------------
# Patching


def _check_int(name: str, value: Any, low: int, high: int) -> int:
    """Return value if it is an int in [low, high], else raise InvalidParameterError."""
    if not _int_literal(value) or not low <= value <= high:
        raise InvalidParameterError(
            f"{name} must be an integer from {low} to {high}, got {value!r}",
            parameter=name,
            value=value if isinstance(value, (int, float, str)) else repr(value),
            min=low,
            max=high,
        )
    return value


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
    _check_int("seed", seed, 0, MAX_SEED)
    _check_int("width", width, MIN_SIZE, MAX_SIZE)
    _check_int("height", height, MIN_SIZE, MAX_SIZE)

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


# --------------------------------------------------------------------------------------------
# Checking against a server's /object_info


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


def _types_match(output_type: Any, input_type: Any) -> bool:
    """ComfyUI's socket check: equal, '*' wildcard, or overlapping comma-separated unions."""
    if not isinstance(output_type, str) or not isinstance(input_type, str):
        return True
    if "*" in (output_type, input_type) or output_type == input_type:
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


def check_against_object_info(
    graph: Mapping[str, Any], object_info: Mapping[str, Any]
) -> list[Problem]:
    """List what a server (its /object_info) would reject in a graph, each with a fix."""
    problems: list[Problem] = []
    for node_id in _sorted_ids(graph):
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
    class_type = _class(graph, node_id)
    inputs = _inputs(graph, node_id)
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
        if _is_link(value):
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
    class_type = _class(graph, node_id)
    source, slot = link
    source_info = object_info.get(_class(graph, source))
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
                f"({_class(graph, source)}), which has {len(outputs)} output(s)",
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
                f"({_class(graph, source)}) slot {slot} gives {outputs[slot]}",
                f"link {name!r} to a {input_type} output",
                "return_type_mismatch",
            )
        ]
    return []


# --------------------------------------------------------------------------------------------
# Describing and importing


def describe(workflow: Workflow) -> dict[str, Any]:
    """A JSON-ready summary of a style for GET /styles and the CLI."""
    graph = workflow.graph
    roles = workflow.roles

    def node(node_id: str, **extra: Any) -> dict[str, Any]:
        return {"node_id": node_id, "class_type": _class(graph, node_id), **extra}

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
        "node_classes": sorted({_class(graph, n) for n in graph}),
        "checkpoints": sorted(
            {v for n in graph if isinstance(v := _inputs(graph, n).get("ckpt_name"), str)}
        ),
        "steps": sampler_steps(graph, roles),
        "file": workflow.path.name,
    }


def _gender_order(gender: str) -> tuple[int, str]:
    """male, female, neutral first, then any extra keys alphabetically."""
    return (GENDERS.index(gender), "") if gender in GENDERS else (len(GENDERS), gender)


def _new_node_id(graph: Mapping[str, Any]) -> str:
    """The next free numeric node id."""
    numbers = [int(i) for i in graph if i.isdigit()]
    return str(max(numbers, default=0) + 1)


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
        for node_id in _sorted_ids(graph):
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
    if insert_image_scale:
        _check_int("width", width, MIN_SIZE, MAX_SIZE)
        _check_int("height", height, MIN_SIZE, MAX_SIZE)
        try:
            find_roles(graph, bindings)
        except MissingRoleError as exc:
            if exc.details.get("role") != "size" or not exc.details.get("consumers"):
                raise
            changes.extend(_insert_image_scale(graph, exc.details, width, height))
        _validate_graph(graph)
    return ImportResult(graph=graph, changes=tuple(changes))


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
            if _is_link(value) and value[0] == image and value[1] == 0:
                graph[consumer]["inputs"][name] = [scale_id, 0]
                changes.append(f"node {consumer}: {name} now comes from ImageScale {scale_id}")
    used = {source for n in graph for _name, source in _links(graph[n])}
    for node_id in details.get("unconnected", []):
        if graph[node_id]["class_type"] == "EmptyLatentImage" and node_id not in used:
            del graph[node_id]
            changes.append(f"node {node_id}: unconnected EmptyLatentImage removed")
    return changes
