"""Captured workflows: the `flask workflows` commands, styles, and checks against ComfyUI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avatar_service import create_app
from avatar_service.comfyui.workflows import load_workflows
from avatar_service.config import ConfigError
from comfyui_standin import StandIn
from tests.conftest import REPO_ROOT
from tests.helpers import wait_for

SEED_GRAPH = REPO_ROOT / "workflows" / "examples" / "seed_impact_pack.json"


@pytest.fixture
def workflows_dir(tmp_path: Path) -> Path:
    """A copy of the shipped styles that the commands may write into."""
    target = tmp_path / "workflows"
    shutil.copytree(REPO_ROOT / "workflows", target)
    return target


@pytest.fixture
def cli(service_config: dict, workflows_dir: Path):
    """Run `flask workflows ...` against an app whose styles live in a scratch folder."""
    app = create_app({**service_config, "WORKFLOWS_DIR": workflows_dir})
    runner = app.test_cli_runner()
    yield lambda *args: runner.invoke(args=["workflows", *args])
    app.extensions["avatar_service"].close()


def write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def captured_body(graph: dict) -> dict:
    """What the browser sends to POST /prompt when Queue is pressed."""
    return {"client_id": "abc123", "prompt": graph, "extra_data": {"extra_pnginfo": {}}}


def avatar_graph() -> dict:
    return json.loads((REPO_ROOT / "workflows" / "avatar.json").read_text())


def two_photo_graph() -> dict:
    """The avatar graph with a second LoadImage blended into the photo: two photo candidates."""
    graph = avatar_graph()
    graph["30"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    graph["31"] = {
        "class_type": "ImageBlend",
        "inputs": {
            "image1": ["27", 0],
            "image2": ["30", 0],
            "blend_factor": 0.5,
            "blend_mode": "normal",
        },
    }
    graph["26"]["inputs"]["pixels"] = ["31", 0]
    return graph


def test_check_shows_roles_and_passes_on_the_standin(cli, tmp_path):
    """`check` on a captured request body prints the roles and exits 0 against the stand-in."""
    path = write(tmp_path / "body.json", captured_body(avatar_graph()))
    result = cli("check", str(path))
    assert result.exit_code == 0, result.output
    assert "photo input    : node 25 (LoadImage)" in result.output
    assert "positive text  : node 22 (CLIPTextEncode) input 'text'" in result.output
    assert "sampler seed   : node 4 (KSampler) input 'seed'" in result.output
    assert "size           : node 27 (ImageScale)" in result.output
    assert "checked against ComfyUI at" in result.output
    assert result.output.rstrip().endswith("ok")


def test_check_bare_graph(cli, tmp_path):
    """A bare API graph is accepted as well."""
    result = cli("check", str(write(tmp_path / "graph.json", avatar_graph())))
    assert result.exit_code == 0, result.output


def test_check_ui_format_explains_how_to_export(cli, tmp_path):
    """A UI-format workflow fails with exit 2 and says how to get the API format."""
    ui = {
        "last_node_id": 3,
        "last_link_id": 1,
        "nodes": [{"id": 1, "type": "LoadImage"}],
        "links": [],
    }
    result = cli("check", str(write(tmp_path / "ui.json", ui)))
    assert result.exit_code == 2
    assert "Export (API)" in result.output
    assert "/prompt" in result.output


def test_check_unknown_class_and_checkpoint_lists_fixes(cli, tmp_path):
    """Unknown node class and checkpoint: exit 1, each problem with its node id and a fix."""
    graph = avatar_graph()
    graph["1"]["inputs"]["ckpt_name"] = "missing_model.safetensors"
    graph["23"] = {
        "class_type": "ImpactConcatConditionings",
        "inputs": {"conditioning1": ["22", 0], "conditioning2": ["2", 0]},
    }
    result = cli("check", str(write(tmp_path / "graph.json", graph)))
    assert result.exit_code == 1, result.output
    assert "PROBLEM node 1 (CheckpointLoaderSimple) input 'ckpt_name'" in result.output
    assert "dreamshaper_8.safetensors" in result.output
    assert "PROBLEM node 23 (ImpactConcatConditionings)" in result.output
    assert "ConditioningConcat" in result.output
    assert "2 problem(s)" in result.output


def test_check_seed_graph_names_the_missing_size_role(cli):
    """The seed's graph (dangling EmptyLatentImage) fails with exit 2 explaining the size role."""
    result = cli("check", str(SEED_GRAPH), "--offline")
    assert result.exit_code == 2
    assert "ImageScale" in result.output
    assert "size" in result.output


def test_check_ambiguous_image_names_candidates(cli, tmp_path):
    """Two photos feeding the graph is an error naming both LoadImage candidates."""
    graph = two_photo_graph()
    result = cli("check", str(write(tmp_path / "graph.json", graph)), "--offline")
    assert result.exit_code == 2
    assert "25" in result.output and "30" in result.output


def test_check_uses_explicit_bindings_next_to_the_file(cli, tmp_path):
    """A <name>.bindings.json next to the file settles an ambiguous graph."""
    graph = two_photo_graph()
    path = write(tmp_path / "blend.json", graph)
    write(tmp_path / "blend.bindings.json", {"image": "30"})
    result = cli("check", str(path), "--offline")
    assert result.exit_code == 0, result.output
    assert "photo input    : node 30 (LoadImage)" in result.output


def test_import_fixes_and_stores_a_style(cli, workflows_dir):
    """`import` of the seed's captured body stores a runnable style with bindings and presets."""
    body = captured_body(json.loads(SEED_GRAPH.read_text()))
    path = write(workflows_dir.parent / "captured.json", body)
    result = cli("import", str(path), "--name", "seedstyle")
    assert result.exit_code == 0, result.output
    assert "ImageScale inserted" in result.output
    assert "ImpactConcatConditionings -> ConditioningConcat" in result.output
    styles = load_workflows(workflows_dir)
    assert "seedstyle" in styles
    stored = json.loads((workflows_dir / "seedstyle.json").read_text())
    assert "prompt" not in stored and "client_id" not in stored
    assert {node["class_type"] for node in stored.values()} >= {"ImageScale", "ConditioningConcat"}
    assert (workflows_dir / "seedstyle.bindings.json").is_file()
    again = cli("import", str(path), "--name", "seedstyle")
    assert again.exit_code == 1
    assert "exists" in again.output


def test_import_takes_presets_steps_from_the_graph(cli, workflows_dir, tmp_path):
    """A captured graph with 20 steps gets presets saying 20, so the style loads at start-up."""
    graph = avatar_graph()
    graph["4"]["inputs"]["steps"] = 20
    result = cli("import", str(write(tmp_path / "g.json", graph)), "--name", "quick")
    assert result.exit_code == 0, result.output
    presets = json.loads((workflows_dir / "quick.presets.json").read_text())
    assert presets["defaults"]["steps"] == 20
    assert "quick" in load_workflows(workflows_dir)


def test_import_refuses_a_graph_the_server_cannot_run(cli, workflows_dir, tmp_path):
    """A graph naming an unknown checkpoint is not imported (exit 1); nothing is written."""
    graph = avatar_graph()
    graph["1"]["inputs"]["ckpt_name"] = "missing_model.safetensors"
    result = cli("import", str(write(tmp_path / "g.json", graph)), "--name", "broken")
    assert result.exit_code == 1
    assert "not imported" in result.output
    assert not (workflows_dir / "broken.json").exists()


def test_list_shows_styles(cli):
    """`list` prints every loaded style."""
    result = cli("list")
    assert result.exit_code == 0
    assert '"name": "avatar"' in result.output and '"name": "cartoon"' in result.output


def test_two_styles_send_different_prompt_text(service, standin, photo):
    """The same request in two styles sends different positive text to ComfyUI."""
    name = service.upload(photo)
    for style in ("avatar", "cartoon"):
        answer = service.http.post(
            "/generate-avatar-by-image",
            json={"imageName": name, "style": style, "gender": "male", "seed": 7},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["style"] == style
    texts = []
    for body in standin.prompts:
        graph = body["prompt"]
        sampler = next(n for n in graph.values() if n["class_type"] == "KSampler")
        concat = graph[sampler["inputs"]["positive"][0]]
        texts.append(graph[concat["inputs"]["conditioning_to"][0]]["inputs"]["text"])
    assert len(texts) == 2
    assert texts[0] != texts[1]
    assert all(text.startswith("portrait of a man") or "man" in text for text in texts)


def test_readyz_reports_a_style_the_server_cannot_run(make_service, tmp_path):
    """A ComfyUI without the styles' checkpoint: /readyz is 503 and names node, input and fix."""
    bare = StandIn(root=tmp_path / "bare", checkpoints=("other_model.safetensors",)).start()
    try:
        service = make_service(comfyui_url=bare.url)
        report = wait_for(
            lambda: (
                "workflows" in (read := service.http.get("/readyz").json())["servers"][bare.url]
                and read
            ),
            timeout=10,
            message="the styles checked against the server",
        )
        assert service.http.get("/readyz").status_code == 503
        assert "default style 'avatar'" in report["reason"]
        avatar = report["servers"][bare.url]["workflows"]["avatar"]
        assert avatar["ok"] is False
        [problem] = avatar["problems"]
        assert (problem["node_id"], problem["input"]) == ("1", "ckpt_name")
        assert "other_model.safetensors" in problem["fix"]
    finally:
        service.stop()
        bare.stop()


def test_style_missing_a_role_stops_start_up(service_config, tmp_path):
    """A style whose size cannot take effect stops create_app with a message naming the fix."""
    styles = tmp_path / "broken_styles"
    styles.mkdir()
    shutil.copy(SEED_GRAPH, styles / "avatar.json")
    shutil.copy(REPO_ROOT / "workflows" / "avatar.presets.json", styles / "avatar.presets.json")
    with pytest.raises(ConfigError) as failure:
        create_app({**service_config, "WORKFLOWS_DIR": styles})
    message = str(failure.value)
    assert "avatar.json" in message
    assert "ImageScale" in message


def test_unknown_default_style_stops_start_up(service_config):
    """DEFAULT_STYLE naming no workflow stops create_app, listing the styles found."""
    with pytest.raises(ConfigError, match=r"DEFAULT_STYLE='nope'.*'avatar', 'cartoon'"):
        create_app({**service_config, "DEFAULT_STYLE": "nope"})


def test_check_against_an_unreachable_named_server_fails(cli, tmp_path):
    """`check --server URL` with nobody at URL exits 3 instead of passing unchecked."""
    path = write(tmp_path / "graph.json", avatar_graph())
    result = cli("check", str(path), "--server", "http://127.0.0.1:9")
    assert result.exit_code == 3
    assert "not reachable" in result.output


def test_check_says_which_server_it_used(cli, tmp_path, standin):
    """`check` names the server it asked and why that one (first COMFYUI_URL here)."""
    path = write(tmp_path / "graph.json", avatar_graph())
    result = cli("check", str(path))
    assert f"ComfyUI server: {standin.url} (the first COMFYUI_URL)" in result.output


def test_check_without_comfyui_url_says_it_uses_the_default(
    service_config, workflows_dir, tmp_path, monkeypatch
):
    """With no COMFYUI_URL anywhere, `check` says it falls back to the default server."""
    monkeypatch.delenv("COMFYUI_URL", raising=False)
    config = {key: value for key, value in service_config.items() if key != "COMFYUI_URL"}
    app = create_app({**config, "WORKFLOWS_DIR": workflows_dir})
    try:
        path = write(tmp_path / "graph.json", avatar_graph())
        result = app.test_cli_runner().invoke(args=["workflows", "check", str(path)])
    finally:
        app.extensions["avatar_service"].close()
    assert (
        "ComfyUI server: http://127.0.0.1:8188 (the default: COMFYUI_URL is not set; "
        "choose one with --server URL)"
    ) in result.output
