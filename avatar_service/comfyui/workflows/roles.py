"""Roles: where a graph takes the photo, the gender text, the seeds, the size and its outputs.

Found by following the graph from its output nodes back through the samplers, unless a binding
names them (see ``bindings``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .bindings import check_bound_nodes_used, validate_bindings
from .errors import AmbiguousRoleError, MissingRoleError
from .graph import (
    int_literal,
    linked_source,
    node_class,
    node_inputs,
    node_links,
    sorted_ids,
    upstream,
)
from .nodes import (
    GUIDER_POSITIVE_INPUT,
    IMAGE_LOADERS,
    NOISE_SEED_INPUT,
    OUTPUT_CLASSES,
    PRIMARY_CONDITIONING_INPUT,
    SAMPLER_SEED_INPUT,
)


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


def find_roles(graph: Mapping[str, Any], bindings: Mapping[str, Any] | None = None) -> Roles:
    """Find where photo, gender text, seeds, size and outputs live, by following the graph."""
    bound = validate_bindings(graph, bindings or {})
    all_outputs = [i for i in graph if node_class(graph, i) in OUTPUT_CLASSES]
    samplers_of = {
        o: [i for i in upstream(graph, [o]) if _is_sampler(graph, i)]
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
        outputs = tuple(sorted_ids(with_sampler or all_outputs))
    samplers = sorted_ids(s for o in outputs for s in samplers_of[o])
    check_bound_nodes_used(graph, bound, outputs)

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
        positive_text=positive_text,
        seeds=seeds,
        size=size,
        outputs=outputs,
    )


def sampler_steps(graph: Mapping[str, Any], roles: Roles) -> list[int]:
    """The literal `steps` values of the samplers that own the seeds."""
    return [
        steps
        for node_id, _name in roles.seeds
        if int_literal(steps := node_inputs(graph, node_id).get("steps"))
    ]


def _is_sampler(graph: Mapping[str, Any], node_id: str) -> bool:
    """True for the sampler classes the service knows how to seed."""
    return node_class(graph, node_id) in SAMPLER_SEED_INPUT


def _latent_upstream(graph: Mapping[str, Any], sampler_id: str) -> set[str]:
    """Nodes on a sampler's latent path; behind another sampler only its latent input counts."""
    seen: set[str] = set()
    todo = [s for s in [linked_source(graph, sampler_id, "latent_image")] if s]
    while todo:
        node_id = todo.pop()
        if node_id in seen:
            continue
        seen.add(node_id)
        if _is_sampler(graph, node_id):
            todo.extend(s for s in [linked_source(graph, node_id, "latent_image")] if s)
        else:
            todo.extend(source for _name, source in node_links(graph[node_id]))
    return seen


def _text_input(graph: Mapping[str, Any], node_id: str) -> str | None:
    """The prompt-text input name of a CLIPTextEncode-like node, or None for other nodes."""
    inputs = node_inputs(graph, node_id)
    if "text" in inputs and (
        node_class(graph, node_id).startswith("CLIPTextEncode") or "clip" in inputs
    ):
        return "text"
    return None


def _positive_sources(graph: Mapping[str, Any], sampler_id: str) -> list[str]:
    """Node ids feeding a sampler's positive conditioning (through a guider if it has one)."""
    source = linked_source(graph, sampler_id, "positive")
    if source is not None:
        return [source]
    guider = linked_source(graph, sampler_id, "guider")
    if guider is not None:
        name = GUIDER_POSITIVE_INPUT.get(node_class(graph, guider))
        found = linked_source(graph, guider, name) if name else None
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
        class_type = node_class(graph, node_id)
        text_input = _text_input(graph, node_id)
        if text_input is not None:
            if isinstance(node_inputs(graph, node_id)[text_input], str):
                texts.add(node_id)
            else:
                linked_text.add(node_id)
            continue
        primary = PRIMARY_CONDITIONING_INPUT.get(class_type)
        if primary is not None:
            todo.extend(s for s in [linked_source(graph, node_id, primary)] if s)
            continue
        links = dict(node_links(graph[node_id]))
        if "positive" in links:  # e.g. ControlNetApplyAdvanced(positive, negative)
            todo.append(links["positive"])
        else:
            todo.extend(s for name, s in links.items() if name.startswith("cond"))
    return texts, linked_text


def _describe_nodes(graph: Mapping[str, Any], ids: Iterable[str]) -> str:
    """'4 (KSampler), 7 (PreviewImage)'."""
    return ", ".join(f"{i} ({node_class(graph, i)})" for i in sorted_ids(ids))


def _candidates(graph: Mapping[str, Any], ids: Iterable[str]) -> list[dict[str, str]]:
    """JSON-ready candidate list for error details."""
    return [{"node_id": i, "class_type": node_class(graph, i)} for i in sorted_ids(ids)]


def _sampler_seeds(graph: Mapping[str, Any], samplers: list[str]) -> list[tuple[str, str]]:
    """Every seed input of the samplers (a RandomNoise node's seed for SamplerCustomAdvanced)."""
    seeds: list[tuple[str, str]] = []
    for sampler in samplers:
        name = SAMPLER_SEED_INPUT[node_class(graph, sampler)]
        if name is not None:
            if int_literal(node_inputs(graph, sampler).get(name)):
                seeds.append((sampler, name))
            continue
        noise = linked_source(graph, sampler, "noise")
        noise_input = NOISE_SEED_INPUT.get(node_class(graph, noise)) if noise else None
        if noise and noise_input and int_literal(node_inputs(graph, noise).get(noise_input)):
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
    return {i for i in ids if node_class(graph, i) in IMAGE_LOADERS}


def _find_image(graph: Mapping[str, Any], samplers: list[str], outputs: tuple[str, ...]) -> str:
    """The LoadImage feeding the samplers' latent path, else the only one feeding the outputs."""
    on_latent = _loaders(graph, (n for s in samplers for n in _latent_upstream(graph, s)))
    candidates = on_latent or _loaders(graph, upstream(graph, outputs))
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
    inputs = node_inputs(graph, node_id)
    if int_literal(inputs.get("width")) and int_literal(inputs.get("height")):
        return ("width", "height")
    return None


def _find_size(
    graph: Mapping[str, Any], samplers: list[str], image: str
) -> tuple[tuple[str, str, str], ...]:
    """Every width/height node on the samplers' latent path (ImageScale, EmptyLatentImage, ...)."""
    latent_path = {n for s in samplers for n in _latent_upstream(graph, s)}
    found = [
        (n, *inputs)
        for n in sorted_ids(latent_path)
        if not _is_sampler(graph, n) and (inputs := _size_inputs(graph, n))
    ]
    if found:
        return tuple(found)
    consumers = [
        n for n in sorted_ids(latent_path) if image in {s for _name, s in node_links(graph[n])}
    ]
    used = upstream(graph, samplers)
    dangling = [n for n in sorted_ids(graph) if _size_inputs(graph, n) and n not in used]
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
