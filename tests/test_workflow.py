"""Unit tests for workflow templates: parsing, role discovery, patching, object_info checks."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from avatar_service.comfyui.workflows import (
    AmbiguousRoleError,
    InvalidBindingError,
    InvalidParameterError,
    InvalidPresetsError,
    InvalidWorkflowError,
    MissingRoleError,
    Problem,
    Roles,
    UIFormatError,
    Workflow,
    WorkflowError,
    bindings_path,
    check_against_object_info,
    describe,
    find_roles,
    fit_presets,
    is_style_name,
    load_workflow,
    load_workflows,
    node_class,
    parse_captured,
    patch_workflow,
    prepare_import,
    presets_path,
    render_positive_text,
    style_path,
    thaw,
)

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "workflows"
SEED_FILE = WORKFLOWS_DIR / "examples" / "seed_impact_pack.json"
AVATAR_ROLES = Roles(
    image="25",
    positive_text=("22", "text"),
    seeds=(("4", "seed"),),
    size=(("27", "width", "height"),),
    outputs=("7",),
)


def read_json(path: Path) -> Any:
    """Parse a JSON file."""
    return json.loads(path.read_text(encoding="utf-8"))


def avatar_graph() -> dict[str, Any]:
    """A fresh mutable copy of the shipped avatar graph."""
    return read_json(WORKFLOWS_DIR / "avatar.json")


def seed_graph() -> dict[str, Any]:
    """A fresh mutable copy of the original (Impact Pack) seed graph."""
    return read_json(SEED_FILE)


def body(exc: WorkflowError) -> dict[str, Any]:
    """The error fields as the service would serialise them."""
    return {"code": exc.code, "message": exc.message, "details": exc.details}


@pytest.fixture(scope="module")
def styles() -> dict[str, Workflow]:
    """The shipped styles, loaded once."""
    return load_workflows(WORKFLOWS_DIR)


# --------------------------------------------------------------------------------------------
# parse_captured


@pytest.mark.parametrize(
    "wrap",
    [
        pytest.param(lambda g: g, id="bare-graph"),
        pytest.param(
            lambda g: {"client_id": "abc", "prompt": g, "extra_data": {"extra_pnginfo": {}}},
            id="captured-body",
        ),
        pytest.param(
            lambda g: {"prompt": g, "prompt_id": "p1", "number": 3, "front": False},
            id="body-with-extra-fields",
        ),
    ],
)
def test_parse_captured_unwraps_to_the_bare_graph(wrap: Callable[[dict], Any]) -> None:
    """A bare graph and a whole captured /prompt body both give the bare API graph."""
    assert parse_captured(wrap(avatar_graph())) == avatar_graph()


def test_parse_captured_returns_an_independent_copy() -> None:
    """Changing the parsed graph does not change the data it came from."""
    source = {"prompt": avatar_graph()}
    parsed = parse_captured(source)
    parsed["4"]["inputs"]["seed"] = 99
    assert source["prompt"]["4"]["inputs"]["seed"] == 0


UI_WORKFLOW = {
    "last_node_id": 27,
    "last_link_id": 30,
    "nodes": [{"id": 4, "type": "KSampler", "widgets_values": [0, "fixed", 70]}],
    "links": [[1, 1, 0, 4, 0, "MODEL"]],
    "version": 0.4,
}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(UI_WORKFLOW, id="ui-file"),
        pytest.param({"client_id": "x", "prompt": UI_WORKFLOW}, id="ui-inside-prompt"),
    ],
)
def test_ui_format_is_rejected_with_directions(data: Any) -> None:
    """A UI-format workflow raises UIFormatError saying what it is and how to get API format."""
    with pytest.raises(UIFormatError) as info:
        parse_captured(data)
    err = info.value
    assert err.code == "ui_format_workflow"
    assert isinstance(err, InvalidWorkflowError)
    assert "UI-format workflow" in err.message
    for hint in ("Export (API)", "Save (API Format)", "devtools Network tab", "/prompt"):
        assert hint in err.message
    assert set(err.details) == {"hint"}


def _without_class_type(g: dict) -> dict:
    del g["4"]["class_type"]
    return g


def _link_to_missing(g: dict) -> dict:
    g["4"]["inputs"]["positive"] = ["99", 0]
    return g


def _int_link(g: dict) -> dict:
    g["4"]["inputs"]["model"] = [1, 0]
    return g


def _short_link(g: dict) -> dict:
    g["4"]["inputs"]["positive"] = ["23"]
    return g


def _no_inputs(g: dict) -> dict:
    del g["15"]["inputs"]
    return g


def _node_not_object(g: dict) -> dict:
    g["7"] = "PreviewImage"
    return g


def _cycle(g: dict) -> dict:
    g["27"]["inputs"]["image"] = ["15", 0]
    return g


def _negative_slot(g: dict) -> dict:
    g["26"]["inputs"]["vae"] = ["1", -1]
    return g


@pytest.mark.parametrize(
    ("make", "message", "details"),
    [
        (lambda: [1, 2], "a workflow must be a JSON object, got list", {"received_type": "list"}),
        (lambda: {}, "the workflow graph is empty", {}),
        (
            lambda: {"client_id": "x", "extra_data": {}},
            "this looks like a captured /prompt request body but it has no 'prompt' key",
            {"keys": ["client_id", "extra_data"]},
        ),
        (
            lambda: {"prompt": "not a graph"},
            "'prompt' must be an object (the API graph), got str",
            {"received_type": "str"},
        ),
        (
            lambda: _without_class_type(avatar_graph()),
            "node '4' has no class_type",
            {"node_id": "4", "keys": ["_meta", "inputs"]},
        ),
        (
            lambda: _link_to_missing(avatar_graph()),
            "input 'positive' of node '4' (KSampler) links to node '99', which is not in the graph",
            {"node_id": "4", "class_type": "KSampler", "input": "positive", "linked_node": "99"},
        ),
        (
            lambda: _int_link(avatar_graph()),
            "input 'model' of node '4' (KSampler) is not a link "
            '["<node id>", <output slot>]: [1, 0]',
            {"node_id": "4", "class_type": "KSampler", "input": "model", "received_value": [1, 0]},
        ),
        (
            lambda: _short_link(avatar_graph()),
            "input 'positive' of node '4' (KSampler) is not a link "
            '["<node id>", <output slot>]: ["23"]',
            {
                "node_id": "4",
                "class_type": "KSampler",
                "input": "positive",
                "received_value": ["23"],
            },
        ),
        (
            lambda: _negative_slot(avatar_graph()),
            "input 'vae' of node '26' (VAEEncode) links to a negative output slot -1",
            {"node_id": "26", "class_type": "VAEEncode", "input": "vae", "linked_node": "1"},
        ),
        (
            lambda: _no_inputs(avatar_graph()),
            "node '15' (VAEDecode) has no 'inputs' object",
            {"node_id": "15", "class_type": "VAEDecode"},
        ),
        (
            lambda: _node_not_object(avatar_graph()),
            "node '7' is not an object: an API graph maps node ids to "
            "{'class_type': ..., 'inputs': {...}}",
            {"node_id": "7"},
        ),
        (
            lambda: _cycle(avatar_graph()),
            "the graph has a cycle through nodes 4, 26, 27, 15",
            {"node_ids": ["4", "26", "27", "15"]},
        ),
    ],
    ids=[
        "not-an-object",
        "empty",
        "body-without-prompt",
        "prompt-not-object",
        "missing-class-type",
        "link-to-missing-node",
        "int-node-id-in-link",
        "one-element-link",
        "negative-slot",
        "no-inputs",
        "node-not-object",
        "cycle",
    ],
)
def test_invalid_graphs_are_rejected_naming_the_problem(
    make: Callable[[], Any], message: str, details: dict
) -> None:
    """Data that is not a valid API graph raises InvalidWorkflowError naming node and input."""
    with pytest.raises(InvalidWorkflowError) as info:
        parse_captured(make())
    assert body(info.value) == {"code": "invalid_workflow", "message": message, "details": details}


# --------------------------------------------------------------------------------------------
# Role discovery


def test_shipped_styles_are_loaded_and_examples_are_not(styles: dict[str, Workflow]) -> None:
    """load_workflows loads every top-level style and skips examples/ and side files."""
    assert sorted(styles) == ["avatar", "cartoon"]
    assert {w.path.name for w in styles.values()} == {"avatar.json", "cartoon.json"}


@pytest.mark.parametrize("name", ["avatar", "cartoon"])
def test_roles_of_shipped_styles(styles: dict[str, Workflow], name: str) -> None:
    """The shipped styles have photo 25, text 22, seed 4, size ImageScale 27, output 7."""
    assert styles[name].roles == AVATAR_ROLES
    assert styles[name].graph["27"]["class_type"] == "ImageScale"
    assert styles[name].graph["23"]["class_type"] == "ConditioningConcat"


def test_seed_graph_dangling_empty_latent_is_not_a_size() -> None:
    """The seed graph's unconnected EmptyLatentImage is not taken as size: size is missing."""
    with pytest.raises(MissingRoleError) as info:
        find_roles(seed_graph())
    assert body(info.value) == {
        "code": "workflow_missing_role",
        "message": "LoadImage 25 feeds 26 (VAEEncode) directly, so width/height would have no "
        "effect; add an ImageScale node between them so width/height take effect, or bind "
        "'size' explicitly (5 (EmptyLatentImage) has width/height but feeds no sampler, so it "
        "is not used)",
        "details": {"role": "size", "image": "25", "consumers": ["26"], "unconnected": ["5"]},
    }


def test_seed_graph_primary_text_found_through_impact_concat() -> None:
    """Through ImpactConcatConditionings the gender text goes to conditioning1's text node."""
    graph = prepare_import(seed_graph(), insert_image_scale=True).graph
    assert graph["23"]["class_type"] == "ImpactConcatConditionings"
    assert find_roles(graph) == Roles(
        image="25",
        positive_text=("22", "text"),
        seeds=(("4", "seed"),),
        size=(("27", "width", "height"),),
        outputs=("7",),
    )


def _txt2img_with_controlnet() -> dict:
    """Latent from EmptyLatentImage; the photo only reaches the sampler through a ControlNet."""
    g = avatar_graph()
    g["5"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1},
    }
    g["30"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}}
    g["31"] = {
        "class_type": "ControlNetApply",
        "inputs": {"conditioning": ["23", 0], "control_net": ["30", 0], "image": ["27", 0]},
    }
    g["4"]["inputs"].update(positive=["31", 0], latent_image=["5", 0])
    del g["26"]
    return g


def _advanced_sampler() -> dict:
    g = avatar_graph()
    g["4"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            "add_noise": "enable",
            "noise_seed": 1,
            "steps": 70,
            "cfg": 6,
            "sampler_name": "euler",
            "scheduler": "normal",
            "start_at_step": 20,
            "end_at_step": 70,
            "return_with_leftover_noise": "disable",
            "model": ["1", 0],
            "positive": ["23", 0],
            "negative": ["3", 0],
            "latent_image": ["26", 0],
        },
    }
    return g


def _preview_of_scaled_photo() -> dict:
    g = avatar_graph()
    g["30"] = {"class_type": "PreviewImage", "inputs": {"images": ["27", 0]}}
    g["31"] = {"class_type": "SaveImage", "inputs": {"images": ["15", 0], "filename_prefix": "a"}}
    return g


def _custom_advanced() -> dict:
    g = avatar_graph()
    g["40"] = {"class_type": "RandomNoise", "inputs": {"noise_seed": 7}}
    g["41"] = {
        "class_type": "CFGGuider",
        "inputs": {"model": ["1", 0], "positive": ["23", 0], "negative": ["3", 0], "cfg": 6},
    }
    g["42"] = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}}
    g["43"] = {
        "class_type": "BasicScheduler",
        "inputs": {"model": ["1", 0], "scheduler": "normal", "steps": 20, "denoise": 0.6},
    }
    g["4"] = {
        "class_type": "SamplerCustomAdvanced",
        "inputs": {
            "noise": ["40", 0],
            "guider": ["41", 0],
            "sampler": ["42", 0],
            "sigmas": ["43", 0],
            "latent_image": ["26", 0],
        },
    }
    return g


def _hires_fix() -> dict:
    g = avatar_graph()
    g["50"] = {
        "class_type": "LatentUpscale",
        "inputs": {
            "samples": ["4", 0],
            "upscale_method": "nearest-exact",
            "width": 768,
            "height": 768,
            "crop": "disabled",
        },
    }
    g["51"] = dict(g["4"], inputs=dict(g["4"]["inputs"], latent_image=["50", 0], seed=3))
    g["15"]["inputs"]["samples"] = ["51", 0]
    return g


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        pytest.param(
            _txt2img_with_controlnet,
            Roles("25", ("22", "text"), (("4", "seed"),), (("5", "width", "height"),), ("7",)),
            id="empty-latent-feeding-sampler-is-size",
        ),
        pytest.param(
            _advanced_sampler,
            Roles("25", ("22", "text"), (("4", "noise_seed"),), AVATAR_ROLES.size, ("7",)),
            id="ksampler-advanced-noise-seed",
        ),
        pytest.param(
            _preview_of_scaled_photo,
            Roles("25", ("22", "text"), (("4", "seed"),), AVATAR_ROLES.size, ("7", "31")),
            id="preview-without-sampler-is-not-an-output",
        ),
        pytest.param(
            _custom_advanced,
            Roles("25", ("22", "text"), (("40", "noise_seed"),), AVATAR_ROLES.size, ("7",)),
            id="sampler-custom-advanced-via-noise-and-guider",
        ),
        pytest.param(
            _hires_fix,
            Roles(
                "25",
                ("22", "text"),
                (("4", "seed"), ("51", "seed")),
                (("27", "width", "height"), ("50", "width", "height")),
                ("7",),
            ),
            id="two-samplers-share-one-text",
        ),
    ],
)
def test_roles_are_found_by_following_the_graph(make: Callable[[], dict], expected: Roles) -> None:
    """Roles come from the links, whatever the sampler kind or node ids."""
    assert find_roles(make()) == expected


def _two_photos(g: dict) -> dict:
    g["30"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    g["31"] = {
        "class_type": "ImageBlend",
        "inputs": {
            "image1": ["25", 0],
            "image2": ["30", 0],
            "blend_factor": 0.5,
            "blend_mode": "normal",
        },
    }
    g["27"]["inputs"]["image"] = ["31", 0]
    return g


def _combine(kind: str, first: str, second: str) -> Callable[[dict], dict]:
    def make(g: dict) -> dict:
        g["23"] = {"class_type": kind, "inputs": {first: ["22", 0], second: ["2", 0]}}
        return g

    return make


@pytest.mark.parametrize(
    ("mutate", "role", "candidates", "message"),
    [
        pytest.param(
            _two_photos,
            "image",
            [("25", "LoadImage"), ("30", "LoadImage")],
            "several LoadImage nodes feed the sampler's latent input: 25 (LoadImage), "
            "30 (LoadImage); remove the extra ones or bind 'image' explicitly",
            id="two-loadimages",
        ),
        pytest.param(
            _combine("ConditioningCombine", "conditioning_1", "conditioning_2"),
            "positive_text",
            [("2", "CLIPTextEncode"), ("22", "CLIPTextEncode")],
            "the positive prompt reaches several text nodes: 2 (CLIPTextEncode), "
            "22 (CLIPTextEncode); combine them with ConditioningConcat (the conditioning_to side "
            "gets the gender text) or bind 'positive_text' explicitly",
            id="conditioning-combine",
        ),
        pytest.param(
            _combine("ConditioningAverage", "conditioning_to", "conditioning_from"),
            "positive_text",
            [("2", "CLIPTextEncode"), ("22", "CLIPTextEncode")],
            "the positive prompt reaches several text nodes: 2 (CLIPTextEncode), "
            "22 (CLIPTextEncode); combine them with ConditioningConcat (the conditioning_to side "
            "gets the gender text) or bind 'positive_text' explicitly",
            id="conditioning-average",
        ),
    ],
)
def test_ambiguous_roles_name_the_candidates(
    mutate: Callable[[dict], dict], role: str, candidates: list, message: str
) -> None:
    """Two possible nodes for one role raise AmbiguousRoleError naming both, never a guess."""
    with pytest.raises(AmbiguousRoleError) as info:
        find_roles(mutate(avatar_graph()))
    assert body(info.value) == {
        "code": "workflow_ambiguous_role",
        "message": message,
        "details": {
            "role": role,
            "candidates": [{"node_id": n, "class_type": c} for n, c in candidates],
        },
    }


def _no_output(g: dict) -> dict:
    del g["7"]
    return g


def _no_sampler(g: dict) -> dict:
    g["7"]["inputs"]["images"] = ["27", 0]
    return g


def _no_photo(g: dict) -> dict:
    g = _txt2img_with_controlnet()
    g["31"]["inputs"]["image"] = ["32", 0]
    g["32"] = {
        "class_type": "EmptyImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
    }
    del g["27"], g["25"]
    return g


def _linked_text(g: dict) -> dict:
    g["60"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "a person"}}
    g["22"]["inputs"]["text"] = ["60", 0]
    return g


def _no_text(g: dict) -> dict:
    g["4"]["inputs"]["positive"] = ["61", 0]
    g["61"] = {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["62", 0]}}
    g["62"] = {"class_type": "unCLIPConditioning", "inputs": {"strength": 1.0}}
    return g


@pytest.mark.parametrize(
    ("mutate", "message", "details"),
    [
        pytest.param(
            _no_output,
            "no output node: add a SaveImage or PreviewImage node fed by the decoded image, "
            "or bind 'outputs' explicitly",
            {"role": "outputs"},
            id="outputs",
        ),
        pytest.param(
            _no_sampler,
            "no sampler (KSampler, KSamplerAdvanced, SamplerCustom, ...) feeds the output node(s) "
            "7 (PreviewImage); bind 'seeds' explicitly (an empty list is allowed)",
            {"role": "seeds", "outputs": ["7"]},
            id="seeds",
        ),
        pytest.param(
            _no_photo,
            "no LoadImage node feeds the output: add LoadImage -> ImageScale -> VAEEncode -> the "
            "sampler's latent_image, or bind 'image' explicitly",
            {"role": "image"},
            id="image",
        ),
        pytest.param(
            _linked_text,
            "the positive text of 22 (CLIPTextEncode) comes from a link; bind 'positive_text' "
            "to the node input that holds the literal text",
            {
                "role": "positive_text",
                "candidates": [{"node_id": "22", "class_type": "CLIPTextEncode"}],
            },
            id="text-from-link",
        ),
        pytest.param(
            _no_text,
            "no CLIPTextEncode node feeds the sampler's positive input; connect one (directly or "
            "as conditioning_to of a ConditioningConcat) or bind 'positive_text' explicitly",
            {"role": "positive_text", "samplers": ["4"]},
            id="no-text",
        ),
    ],
)
def test_missing_roles_say_which_and_how_to_fix(
    mutate: Callable[[dict], dict], message: str, details: dict
) -> None:
    """A role with no node raises MissingRoleError naming the role and the fix."""
    with pytest.raises(MissingRoleError) as info:
        find_roles(mutate(avatar_graph()))
    assert body(info.value) == {
        "code": "workflow_missing_role",
        "message": message,
        "details": details,
    }


# --------------------------------------------------------------------------------------------
# Bindings


@pytest.mark.parametrize(
    ("graph", "bindings", "expected"),
    [
        pytest.param(
            avatar_graph(),
            {"positive_text": ["2", "text"]},
            Roles("25", ("2", "text"), AVATAR_ROLES.seeds, AVATAR_ROLES.size, ("7",)),
            id="override-one-role",
        ),
        pytest.param(
            _combine("ConditioningCombine", "conditioning_1", "conditioning_2")(avatar_graph()),
            {"positive_text": ["22", "text"]},
            AVATAR_ROLES,
            id="resolves-ambiguity",
        ),
        pytest.param(
            avatar_graph(),
            {
                "image": "25",
                "positive_text": ["22", "text"],
                "seeds": [],
                "size": [["27", "width", "height"]],
                "outputs": ["7"],
            },
            Roles("25", ("22", "text"), (), AVATAR_ROLES.size, ("7",)),
            id="all-roles-empty-seeds",
        ),
    ],
)
def test_bindings_override_discovery(graph: dict, bindings: dict, expected: Roles) -> None:
    """Explicitly bound roles replace discovery; unbound roles are still discovered."""
    assert find_roles(graph, bindings) == expected


@pytest.mark.parametrize(
    ("bindings", "message", "details"),
    [
        (
            {"photo": "25"},
            "unknown binding key(s) 'photo'; known: image, positive_text, seeds, size, outputs",
            {"unknown": ["photo"]},
        ),
        (
            {"image": "99"},
            "binding 'image': node '99' is not in the graph",
            {"role": "image", "node_id": "99"},
        ),
        (
            {"image": "4"},
            "binding 'image': node 4 (KSampler) has no input 'image'",
            {"role": "image", "node_id": "4", "class_type": "KSampler", "input": "image"},
        ),
        (
            {"positive_text": ["22", "prompt"]},
            "binding 'positive_text': node 22 (CLIPTextEncode) has no input 'prompt'",
            {
                "role": "positive_text",
                "node_id": "22",
                "class_type": "CLIPTextEncode",
                "input": "prompt",
            },
        ),
        (
            {"positive_text": ["23", "conditioning_to"]},
            "binding 'positive_text': input 'conditioning_to' of node 23 (ConditioningConcat) "
            "must hold a literal str, it holds a link",
            {
                "role": "positive_text",
                "node_id": "23",
                "class_type": "ConditioningConcat",
                "input": "conditioning_to",
            },
        ),
        (
            {"positive_text": "22"},
            "binding 'positive_text': must be a list, got str",
            {"role": "positive_text"},
        ),
        (
            {"seeds": [["4", "sampler_name"]]},
            "binding 'seeds': input 'sampler_name' of node 4 (KSampler) must hold a literal "
            "int, it holds str 'dpmpp_2m'",
            {"role": "seeds", "node_id": "4", "class_type": "KSampler", "input": "sampler_name"},
        ),
        (
            {"seeds": ["4"]},
            "binding 'seeds': each item must be a list of 2, got '4'",
            {"role": "seeds"},
        ),
        (
            {"size": []},
            "binding 'size': must name at least one node, or width/height are ignored",
            {"role": "size"},
        ),
        (
            {"outputs": ["4"]},
            "binding 'outputs': node 4 (KSampler) is not an image output node (SaveImage, "
            "PreviewImage or a node with a linked 'images' input)",
            {"role": "outputs", "node_id": "4", "class_type": "KSampler"},
        ),
    ],
)
def test_invalid_bindings_are_rejected(bindings: dict, message: str, details: dict) -> None:
    """A binding naming a missing node/input or a node of the wrong kind is an error."""
    with pytest.raises(InvalidBindingError) as info:
        find_roles(avatar_graph(), bindings)
    assert body(info.value) == {
        "code": "workflow_invalid_binding",
        "message": message,
        "details": details,
    }


def test_binding_a_node_that_feeds_nothing_is_rejected() -> None:
    """Binding size to the seed graph's dangling EmptyLatentImage fails: it would be ignored."""
    with pytest.raises(InvalidBindingError) as info:
        find_roles(seed_graph(), {"size": [["5", "width", "height"]]})
    assert body(info.value) == {
        "code": "workflow_invalid_binding",
        "message": "binding 'size': node 5 (EmptyLatentImage) feeds no output node, so the "
        "values set there would be ignored",
        "details": {"role": "size", "node_id": "5", "class_type": "EmptyLatentImage"},
    }


# --------------------------------------------------------------------------------------------
# Loading from files


@pytest.fixture
def style_dir(tmp_path: Path) -> Path:
    """A writable copy of the shipped workflows directory."""
    target = tmp_path / "workflows"
    shutil.copytree(WORKFLOWS_DIR, target)
    return target


def write_json(path: Path, data: Any) -> None:
    """Write data as JSON."""
    path.write_text(json.dumps(data), encoding="utf-8")


def test_bindings_file_is_used(style_dir: Path) -> None:
    """<name>.bindings.json next to the graph overrides discovery."""
    write_json(style_dir / "avatar.bindings.json", {"positive_text": ["2", "text"]})
    assert load_workflow(style_dir / "avatar.json").roles.positive_text == ("2", "text")


def test_captured_body_file_loads_like_a_bare_graph(style_dir: Path) -> None:
    """A style file holding a whole captured /prompt body loads as its graph."""
    write_json(style_dir / "avatar.json", {"client_id": "c", "prompt": avatar_graph()})
    workflow = load_workflow(style_dir / "avatar.json")
    assert thaw(workflow.graph) == avatar_graph()
    assert workflow.roles == AVATAR_ROLES


def _presets(**changes: Any) -> dict:
    data = read_json(WORKFLOWS_DIR / "avatar.presets.json")
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


@pytest.mark.parametrize(
    ("files", "error", "message", "details"),
    [
        pytest.param(
            {"avatar.presets.json": None},
            InvalidPresetsError,
            "avatar.json: avatar.presets.json is missing: every workflow needs a presets file "
            "with description, defaults and gender_text (male/female/neutral)",
            {"file": "avatar.json", "presets_file": "avatar.presets.json"},
            id="presets-missing",
        ),
        pytest.param(
            {"avatar.presets.json": _presets(gender_text={"male": "m", "female": "f"})},
            InvalidPresetsError,
            "avatar.presets.json: 'gender_text' lacks neutral",
            {
                "file": "avatar.presets.json",
                "key": "gender_text",
                "missing": ["neutral"],
            },
            id="presets-without-neutral",
        ),
        pytest.param(
            {"avatar.presets.json": _presets(colour="red")},
            InvalidPresetsError,
            "avatar.presets.json: unknown presets key(s) 'colour'; known: defaults, "
            "description, gender_text, positive_template",
            {"file": "avatar.presets.json", "unknown": ["colour"]},
            id="presets-unknown-key",
        ),
        pytest.param(
            {"avatar.presets.json": _presets(positive_template="{text} only")},
            InvalidPresetsError,
            "avatar.presets.json: 'positive_template' must be a string containing "
            "{gender} (and usually {text})",
            {"file": "avatar.presets.json", "key": "positive_template"},
            id="presets-template-without-gender",
        ),
        pytest.param(
            {"avatar.presets.json": _presets(defaults={"gender": "robot"})},
            InvalidPresetsError,
            "avatar.presets.json: 'defaults.gender' 'robot' is not a key of 'gender_text'",
            {"file": "avatar.presets.json", "key": "defaults.gender"},
            id="presets-default-gender-unknown",
        ),
        pytest.param(
            {"avatar.presets.json": _presets(defaults={"steps": 20})},
            InvalidPresetsError,
            "avatar.json: avatar.presets.json: defaults.steps is 20 but the sampler runs 70 "
            "steps; update one of them",
            {"file": "avatar.json", "key": "defaults.steps", "graph_steps": [70]},
            id="presets-steps-disagree-with-graph",
        ),
        pytest.param(
            {"avatar.json": "{not json"},
            InvalidWorkflowError,
            "avatar.json is not valid JSON (line 1, column 2: Expecting property "
            "name enclosed in double quotes)",
            {"file": "avatar.json", "line": 1, "column": 2},
            id="graph-not-json",
        ),
        pytest.param(
            {"avatar.json": UI_WORKFLOW},
            UIFormatError,
            None,
            None,
            id="graph-in-ui-format",
        ),
        pytest.param(
            {"avatar.bindings.json": {"image": "99"}},
            InvalidBindingError,
            "avatar.json: binding 'image': node '99' is not in the graph",
            {"file": "avatar.json", "role": "image", "node_id": "99"},
            id="bad-bindings-file",
        ),
        pytest.param(
            {"avatar.json": seed_graph()},
            MissingRoleError,
            None,
            None,
            id="graph-without-size",
        ),
        pytest.param(
            {"avatar-old.presets.json": _presets()},
            InvalidPresetsError,
            "avatar-old.presets.json has no workflow avatar-old.json next to it",
            {"file": "avatar-old.presets.json"},
            id="orphan-presets",
        ),
    ],
)
def test_load_errors_name_the_file(
    style_dir: Path, files: dict, error: type, message: str | None, details: dict | None
) -> None:
    """Any problem while loading a style raises an error whose message and details name the file."""
    for name, content in files.items():
        path = style_dir / name
        if content is None:
            path.unlink()
        elif isinstance(content, str):
            path.write_text(content, encoding="utf-8")
        else:
            write_json(path, content)
    with pytest.raises(error) as info:
        load_workflows(style_dir)
    err = info.value
    assert err.message.startswith(err.details["file"])
    assert err.code == error.code
    if message is not None:
        assert body(err) == {"code": error.code, "message": message, "details": details}


@pytest.mark.parametrize("name", ["Bad Name", "", "ok.name", "x" * 65])
def test_style_names_must_be_url_safe(tmp_path: Path, name: str) -> None:
    """A style name that is not letters, digits, '_' or '-' is rejected."""
    with pytest.raises(InvalidWorkflowError) as info:
        load_workflow(WORKFLOWS_DIR / "avatar.json", name=name)
    assert info.value.details == {"file": "avatar.json", "name": name}


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    """load_workflows on a directory that does not exist raises InvalidWorkflowError."""
    with pytest.raises(InvalidWorkflowError) as info:
        load_workflows(tmp_path / "nope")
    assert info.value.details == {"directory": str(tmp_path / "nope")}


# --------------------------------------------------------------------------------------------
# patch_workflow


def test_patch_sets_photo_gender_seed_and_size(styles: dict[str, Workflow]) -> None:
    """patch_workflow sets the image, prepends the gender text, every seed and size input."""
    avatar = styles["avatar"]
    graph = patch_workflow(
        avatar, image="up/photo (1).png", gender="female", seed=2**64 - 1, width=640, height=384
    )
    expected = avatar_graph()
    expected["25"]["inputs"]["image"] = "up/photo (1).png"
    expected["4"]["inputs"]["seed"] = 2**64 - 1
    expected["27"]["inputs"].update(width=640, height=384)
    expected["22"]["inputs"]["text"] = (
        avatar.presets.gender_text["female"] + ", " + avatar_graph()["22"]["inputs"]["text"]
    )
    assert graph == expected


def test_patch_leaves_the_template_identical(styles: dict[str, Workflow]) -> None:
    """Patching (and then changing the result) never changes the stored template."""
    avatar = styles["avatar"]
    before = json.dumps(thaw(avatar.graph), sort_keys=True)
    first = patch_workflow(avatar, image="a.png", gender="male", seed=1, width=256, height=256)
    first["4"]["inputs"]["steps"] = 1
    second = patch_workflow(avatar, image="b.png", gender="neutral", seed=2, width=512, height=768)
    assert json.dumps(thaw(avatar.graph), sort_keys=True) == before
    assert thaw(avatar.graph) == avatar_graph()
    assert second["4"]["inputs"]["steps"] == 70
    assert second["22"]["inputs"]["text"].startswith(avatar.presets.gender_text["neutral"])


def test_template_is_read_only(styles: dict[str, Workflow]) -> None:
    """The template graph cannot be modified in place."""
    graph = styles["avatar"].graph
    with pytest.raises(TypeError):
        graph["4"]["inputs"]["seed"] = 5  # type: ignore[index]
    with pytest.raises(TypeError):
        graph["4"] = {}  # type: ignore[index]
    assert isinstance(graph["4"]["inputs"]["model"], tuple)


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{gender}, {text}", "a man, best quality,"),
        ("{text} {gender}", "best quality, a man"),
        ("{gender}", "a man"),
        ("{gender}, {a|b} {text} {{gender}}", "a man, {a|b} best quality, {a man}"),
    ],
)
def test_gender_text_rule(template: str, expected: str) -> None:
    """{gender} and {text} are replaced; other braces such as dynamic prompts stay."""
    assert render_positive_text(template, "a man", "best quality,") == expected


def test_gender_texts_differ_between_genders_and_styles(styles: dict[str, Workflow]) -> None:
    """Each gender gives a different positive prompt, and the two styles differ per gender."""
    prompts = {
        (name, gender): patch_workflow(
            styles[name], image="p.png", gender=gender, seed=0, width=512, height=512
        )["22"]["inputs"]["text"]
        for name in ("avatar", "cartoon")
        for gender in ("male", "female", "neutral")
    }
    assert len(set(prompts.values())) == 6
    for name in ("avatar", "cartoon"):
        texts = styles[name].presets.gender_text
        assert len({texts["male"], texts["female"], texts["neutral"]}) == 3
    for gender in ("male", "female", "neutral"):
        assert (
            styles["avatar"].presets.gender_text[gender]
            != styles["cartoon"].presets.gender_text[gender]
        )


@pytest.mark.parametrize(
    ("changes", "details"),
    [
        (
            {"gender": "other"},
            {"parameter": "gender", "value": "other", "allowed": ["female", "male", "neutral"]},
        ),
        ({"seed": -1}, {"parameter": "seed", "value": -1, "min": 0, "max": 2**64 - 1}),
        ({"seed": 2**64}, {"parameter": "seed", "value": 2**64, "min": 0, "max": 2**64 - 1}),
        ({"seed": True}, {"parameter": "seed", "value": True, "min": 0, "max": 2**64 - 1}),
        ({"width": 8}, {"parameter": "width", "value": 8, "min": 16, "max": 16384}),
        ({"width": "512"}, {"parameter": "width", "value": "512", "min": 16, "max": 16384}),
        ({"height": 20000}, {"parameter": "height", "value": 20000, "min": 16, "max": 16384}),
        ({"image": ""}, {"parameter": "image"}),
    ],
)
def test_patch_rejects_bad_parameters(
    styles: dict[str, Workflow], changes: dict, details: dict
) -> None:
    """Out-of-range or unknown parameters raise InvalidParameterError naming the parameter."""
    params: dict[str, Any] = {
        "image": "p.png",
        "gender": "male",
        "seed": 1,
        "width": 512,
        "height": 512,
    }
    params.update(changes)
    with pytest.raises(InvalidParameterError) as info:
        patch_workflow(styles["avatar"], **params)
    assert info.value.code == "invalid_parameter"
    assert info.value.details == details


# --------------------------------------------------------------------------------------------
# check_against_object_info


@pytest.fixture(scope="module")
def recorded_object_info(recording: Callable[[str], dict]) -> dict[str, Any]:
    """Every /object_info/<Class> answer recorded from the real ComfyUI 0.3.64."""
    info: dict[str, Any] = {}
    for name in ("10_misc_endpoints.json", "13_object_info_extra.json"):
        for step in recording(name)["steps"]:
            request = step.get("request", {})
            if request.get("path", "").startswith("/object_info/"):
                info.update(step["response"]["json"])
    return info


@pytest.fixture(scope="module")
def core_object_info(recorded_object_info: dict[str, Any]) -> dict[str, Any]:
    """The recorded classes minus the custom Impact node: what a core server offers."""
    return {k: v for k, v in recorded_object_info.items() if k != "ImpactConcatConditionings"}


def as_combo_type(object_info: dict[str, Any]) -> dict[str, Any]:
    """The same object_info with list combos written as ["COMBO", {"options": [...]}]."""
    converted = json.loads(json.dumps(object_info))
    for info in converted.values():
        for section in ("required", "optional"):
            for name, spec in info["input"].get(section, {}).items():
                if isinstance(spec[0], list):
                    opts = dict(spec[1]) if len(spec) > 1 else {}
                    info["input"][section][name] = ["COMBO", {**opts, "options": spec[0]}]
    return converted


def test_recorded_object_info_has_the_workflow_classes(
    recorded_object_info: dict[str, Any],
) -> None:
    """The recordings hold object_info for every class the shipped graphs use."""
    assert {n["class_type"] for n in avatar_graph().values()} <= set(recorded_object_info)
    assert isinstance(
        recorded_object_info["KSampler"]["input"]["required"]["sampler_name"][0], list
    )


@pytest.mark.parametrize("encoding", ["list", "COMBO"])
@pytest.mark.parametrize("name", ["avatar", "cartoon"])
def test_shipped_styles_pass_the_core_server(
    core_object_info: dict[str, Any], encoding: str, name: str
) -> None:
    """The shipped styles use only core classes and values the recorded server accepts."""
    info = core_object_info if encoding == "list" else as_combo_type(core_object_info)
    assert check_against_object_info(read_json(WORKFLOWS_DIR / f"{name}.json"), info) == []


def test_seed_graph_needs_the_custom_node(
    core_object_info: dict[str, Any], recorded_object_info: dict[str, Any]
) -> None:
    """ImpactConcatConditionings is unknown on a core server; the fix names ConditioningConcat."""
    assert check_against_object_info(seed_graph(), recorded_object_info) == []
    assert check_against_object_info(seed_graph(), core_object_info) == [
        Problem(
            node_id="23",
            class_type="ImpactConcatConditionings",
            input=None,
            message="node class ImpactConcatConditionings does not exist on this ComfyUI server",
            fix="it comes from the ComfyUI-Impact-Pack custom nodes: install that pack, or "
            "replace it by core ConditioningConcat (conditioning1 -> conditioning_to, "
            "conditioning2 -> conditioning_from; same maths)",
            code="unknown_class",
        )
    ]


def _set(node: str, name: str, value: Any) -> Callable[[dict], dict]:
    def mutate(g: dict) -> dict:
        g[node]["inputs"][name] = value
        return g

    return mutate


def _delete(node: str, name: str) -> Callable[[dict], dict]:
    def mutate(g: dict) -> dict:
        del g[node]["inputs"][name]
        return g

    return mutate


def _unknown_class(g: dict) -> dict:
    g["27"]["class_type"] = "ImageScaleFancy"
    return g


@pytest.mark.parametrize("encoding", ["list", "COMBO"])
@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        pytest.param(
            _unknown_class,
            ("27", None, "unknown_class", "node class ImageScaleFancy does not exist on this "
             "ComfyUI server", "install the custom node pack that provides ImageScaleFancy (e.g. "
             "with ComfyUI-Manager) or replace the node; similar classes on this server: "
             "ImageScaleBy, ImageScale"),
            id="unknown-class",
        ),
        pytest.param(
            _set("1", "ckpt_name", "dreamshaper_9.safetensors"),
            ("1", "ckpt_name", "value_not_in_list",
             "value 'dreamshaper_9.safetensors' of 'ckpt_name' is not in the server's list",
             "use one of the close matches: dreamshaper_8.safetensors (or add "
             "'dreamshaper_9.safetensors' to the server's models/checkpoints)"),
            id="checkpoint-not-in-list",
        ),
        pytest.param(
            _set("4", "sampler_name", "euler_a"),
            ("4", "sampler_name", "value_not_in_list",
             "value 'euler_a' of 'sampler_name' is not in the server's list",
             "use one of the close matches: euler, euler_ancestral, euler_cfg_pp"),
            id="sampler-not-in-list",
        ),
        pytest.param(
            _set("4", "scheduler", "zzz"),
            ("4", "scheduler", "value_not_in_list",
             "value 'zzz' of 'scheduler' is not in the server's list",
             "available: simple, sgm_uniform, karras, exponential, ddim_uniform, beta, normal, "
             "linear_quadratic, kl_optimal"),
            id="scheduler-lists-available",
        ),
        pytest.param(
            _set("27", "upscale_method", "lanczos4"),
            ("27", "upscale_method", "value_not_in_list",
             "value 'lanczos4' of 'upscale_method' is not in the server's list",
             "use one of the close matches: lanczos"),
            id="upscale-method-not-in-list",
        ),
        pytest.param(
            _set("4", "steps", 0),
            ("4", "steps", "value_smaller_than_min",
             "value 0 of 'steps' is smaller than the minimum 1", "use a value from 1 to 10000"),
            id="steps-below-min",
        ),
        pytest.param(
            _set("4", "cfg", 1000),
            ("4", "cfg", "value_bigger_than_max",
             "value 1000 of 'cfg' is bigger than the maximum 100.0",
             "use a value from 0.0 to 100.0"),
            id="cfg-above-max",
        ),
        pytest.param(
            _set("4", "steps", "abc"),
            ("4", "steps", "invalid_input_type", "value 'abc' of 'steps' is not a valid INT",
             "use a number for 'steps'"),
            id="steps-not-a-number",
        ),
        pytest.param(
            _delete("4", "model"),
            ("4", "model", "required_input_missing", "required input 'model' is missing",
             "add input 'model'"),
            id="required-input-missing",
        ),
        pytest.param(
            _delete("27", "crop"),
            ("27", "crop", "required_input_missing", "required input 'crop' is missing",
             "add input 'crop'"),
            id="required-combo-missing",
        ),
        pytest.param(
            _set("4", "positive", ["23", 5]),
            ("4", "positive", "bad_linked_input",
             "'positive' links to output slot 5 of node 23 (ConditioningConcat), which has 1 "
             "output(s)", "link to a slot from 0 to 0"),
            id="slot-out-of-range",
        ),
        pytest.param(
            _set("4", "latent_image", ["1", 0]),
            ("4", "latent_image", "return_type_mismatch",
             "'latent_image' expects LATENT but node 1 (CheckpointLoaderSimple) slot 0 gives "
             "MODEL", "link 'latent_image' to a LATENT output"),
            id="type-mismatch",
        ),
    ],
)  # fmt: skip
def test_object_info_problems(
    core_object_info: dict[str, Any],
    encoding: str,
    mutate: Callable[[dict], dict],
    expected: tuple,
) -> None:
    """Each kind of server-side rejection is reported once with node, input and a fix."""
    info = core_object_info if encoding == "list" else as_combo_type(core_object_info)
    node_id, name, code, message, fix = expected
    graph = mutate(avatar_graph())
    assert check_against_object_info(graph, info) == [
        Problem(node_id, graph[node_id]["class_type"], name, message, fix, code)
    ]


@pytest.mark.parametrize(
    ("node", "name", "value"),
    [
        ("27", "width", 0),
        ("27", "width", 16384),
        ("4", "seed", 2**64 - 1),
        ("4", "denoise", 1.0),
        ("4", "steps", "30"),
        ("25", "image", "not-uploaded-yet.png"),
        ("25", "upload", "image"),
    ],
)
def test_values_in_range_pass(
    core_object_info: dict[str, Any], node: str, name: str, value: Any
) -> None:
    """Boundary values, numeric strings, LoadImage's per-request file and UI-only keys pass."""
    assert (
        check_against_object_info(_set(node, name, value)(avatar_graph()), core_object_info) == []
    )


def test_empty_checkpoint_list_says_where_to_put_the_model(
    core_object_info: dict[str, Any],
) -> None:
    """With no checkpoints on the server the fix names the models folder."""
    info = json.loads(json.dumps(core_object_info))
    info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0] = []
    [problem] = check_against_object_info(avatar_graph(), info)
    assert problem.to_dict() == {
        "node_id": "1",
        "class_type": "CheckpointLoaderSimple",
        "input": "ckpt_name",
        "code": "value_not_in_list",
        "message": "value 'dreamshaper_8.safetensors' of 'ckpt_name' is not in the server's list",
        "fix": "the server has no files in models/checkpoints; add 'dreamshaper_8.safetensors' "
        "there",
    }


# --------------------------------------------------------------------------------------------
# describe and prepare_import


def test_describe_summarises_a_style(styles: dict[str, Workflow]) -> None:
    """describe gives name, texts, defaults, genders, roles, node classes and checkpoints."""
    avatar = styles["avatar"]
    assert describe(avatar) == {
        "name": "avatar",
        "description": avatar.presets.description,
        "defaults": {"width": 512, "height": 512, "gender": "neutral", "steps": 70},
        "genders": ["male", "female", "neutral"],
        "roles": {
            "image": {"node_id": "25", "class_type": "LoadImage"},
            "positive_text": {"node_id": "22", "class_type": "CLIPTextEncode", "input": "text"},
            "seeds": [{"node_id": "4", "class_type": "KSampler", "input": "seed"}],
            "size": [
                {
                    "node_id": "27",
                    "class_type": "ImageScale",
                    "width_input": "width",
                    "height_input": "height",
                }
            ],
            "outputs": [{"node_id": "7", "class_type": "PreviewImage"}],
        },
        "node_classes": [
            "CLIPTextEncode",
            "CheckpointLoaderSimple",
            "ConditioningConcat",
            "ImageScale",
            "KSampler",
            "LoadImage",
            "PreviewImage",
            "VAEDecode",
            "VAEEncode",
        ],
        "checkpoints": ["dreamshaper_8.safetensors"],
        "steps": [70],
        "file": "avatar.json",
    }
    json.dumps(describe(avatar))


def test_prepare_import_of_the_seed_graph_gives_the_shipped_structure() -> None:
    """Importing the seed body with both fixes gives avatar.json's nodes, links and roles."""
    result = prepare_import(
        {"client_id": "c", "prompt": seed_graph()},
        insert_image_scale=True,
        replace_impact_concat=True,
    )
    assert result.changes == (
        "node 23: ImpactConcatConditionings -> ConditioningConcat",
        "node 27: ImageScale inserted after LoadImage 25",
        "node 26: pixels now comes from ImageScale 27",
        "node 5: unconnected EmptyLatentImage removed",
    )

    def shape(graph: dict) -> dict:
        return {
            i: (n["class_type"], {k: v for k, v in n["inputs"].items() if k != "upload"})
            for i, n in graph.items()
            if i != "25"
        }

    assert shape(result.graph) == shape(avatar_graph())
    assert find_roles(result.graph) == AVATAR_ROLES


def test_prepare_import_without_options_only_unwraps() -> None:
    """Without options prepare_import returns the bare graph as is, even with roles missing."""
    result = prepare_import({"prompt": seed_graph()})
    assert result.graph == seed_graph()
    assert result.changes == ()


def _resize_and_pad() -> dict:
    g = avatar_graph()
    g["27"] = {
        "class_type": "ResizeAndPadImage",
        "inputs": {
            "image": ["25", 0],
            "target_width": 512,
            "target_height": 512,
            "padding_color": "white",
            "interpolation": "lanczos",
        },
    }
    return g


@pytest.mark.parametrize(
    ("bindings", "changes"),
    [
        ({"size": [["27", "target_width", "target_height"]]}, ()),
        (
            None,
            (
                "node 28: ImageScale inserted after LoadImage 25",
                "node 27: image now comes from ImageScale 28",
            ),
        ),
    ],
)
def test_prepare_import_respects_a_size_binding(bindings: dict | None, changes: tuple) -> None:
    """A bound 'size' needs no ImageScale; without the binding one is inserted."""
    result = prepare_import(_resize_and_pad(), insert_image_scale=True, bindings=bindings)
    assert result.changes == changes
    assert find_roles(result.graph, bindings).size == (
        (("27", "target_width", "target_height"),) if bindings else (("28", "width", "height"),)
    )


def test_checks_accept_the_frozen_template(
    styles: dict[str, Workflow], core_object_info: dict[str, Any]
) -> None:
    """check_against_object_info and find_roles work on a loaded, read-only template."""
    avatar = styles["avatar"]
    assert check_against_object_info(avatar.graph, core_object_info) == []
    assert find_roles(avatar.graph) == AVATAR_ROLES


def test_prepare_import_rejects_ui_format() -> None:
    """prepare_import raises the same UIFormatError for a UI-format file."""
    with pytest.raises(UIFormatError):
        prepare_import(UI_WORKFLOW, insert_image_scale=True)


# --------------------------------------------------------------------------------------------
# Style files and names


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("avatar", True),
        ("Avatar_2-b", True),
        ("a" * 64, True),
        ("a" * 65, False),
        ("", False),
        ("-avatar", False),
        ("avatar.json", False),
        ("../avatar", False),
        ("avatar\n", False),
    ],
)
def test_style_names(name: str, valid: bool) -> None:
    """A style name is 1-64 letters, digits, '_' or '-', starting with a letter or digit."""
    assert is_style_name(name) is valid


def test_style_files_sit_side_by_side(tmp_path: Path) -> None:
    """A style's graph, presets and bindings files are named after it in one directory."""
    graph_file = style_path(tmp_path, "cartoon")
    assert graph_file == tmp_path / "cartoon.json"
    assert presets_path(graph_file) == tmp_path / "cartoon.presets.json"
    assert bindings_path(graph_file) == tmp_path / "cartoon.bindings.json"


def test_shipped_style_files_are_where_the_helpers_say(styles: dict[str, Workflow]) -> None:
    """Every shipped style was loaded from style_path, with its presets file next to it."""
    for name, workflow in styles.items():
        assert workflow.path == style_path(WORKFLOWS_DIR, name)
        assert presets_path(workflow.path).is_file()


@pytest.mark.parametrize("steps", [20, None])
def test_fit_presets_takes_the_graph_steps(steps: int | None) -> None:
    """Copied presets say the steps the graph's sampler runs, or none when it states none."""
    source = read_json(WORKFLOWS_DIR / "avatar.presets.json")
    graph = avatar_graph()
    if steps is None:
        graph["4"]["inputs"]["steps"] = ["1", 0]  # a link: no literal to copy
    else:
        graph["4"]["inputs"]["steps"] = steps
    fitted = fit_presets(source, graph, AVATAR_ROLES)
    assert fitted["defaults"].get("steps") == steps
    assert {k: v for k, v in fitted["defaults"].items() if k != "steps"} == {
        k: v for k, v in source["defaults"].items() if k != "steps"
    }
    assert fitted["gender_text"] == source["gender_text"]
    assert source == read_json(WORKFLOWS_DIR / "avatar.presets.json")  # the source is untouched


def test_node_class_names_the_class_type() -> None:
    """node_class answers a node's class_type."""
    graph = avatar_graph()
    assert [node_class(graph, n) for n in ("4", "25", "7")] == [
        "KSampler",
        "LoadImage",
        "PreviewImage",
    ]
