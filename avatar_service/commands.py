"""Flask CLI: `flask --app app workflows check|import|list` for workflows captured from ComfyUI."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import httpx
from flask import Flask, current_app
from flask.cli import AppGroup

from .comfyui import ComfyUIClient, ComfyUIError, catalogue_size
from .comfyui.workflows import (
    Problem,
    Roles,
    WorkflowError,
    bindings_path,
    check_against_object_info,
    find_roles,
    fit_presets,
    is_style_name,
    load_workflow,
    node_class,
    prepare_import,
    presets_path,
    style_path,
)
from .config import Settings
from .storage.avatars import write_atomic

workflows_cli = AppGroup("workflows", help="Check, import and list ComfyUI workflows (styles).")

EXIT_PROBLEMS = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3


def init_app(app: Flask) -> None:
    """Register the command groups."""
    from .worker import worker_command

    app.cli.add_command(workflows_cli)
    app.cli.add_command(worker_command)


def _services():
    return current_app.extensions["avatar_service"]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"{path}: cannot read JSON ({exc})") from None


def _bindings_next_to(path: Path) -> dict[str, Any] | None:
    side = bindings_path(path)
    return _read_json(side) if side.is_file() else None


def _print_roles(graph: dict[str, Any], roles: Roles) -> None:
    def label(node_id: str) -> str:
        return f"{node_id} ({node_class(graph, node_id)})"

    click.echo("roles:")
    click.echo(f"  photo input    : node {label(roles.image)}")
    node_id, name = roles.positive_text
    click.echo(f"  positive text  : node {label(node_id)} input {name!r} (gender text goes here)")
    for node_id, name in roles.seeds:
        click.echo(f"  sampler seed   : node {label(node_id)} input {name!r}")
    for node_id, width, height in roles.size:
        click.echo(f"  size           : node {label(node_id)} inputs {width!r}/{height!r}")
    click.echo(f"  outputs        : {', '.join(label(n) for n in roles.outputs)}")


def _server_problems(graph: dict[str, Any], server: str | None) -> list[Problem] | None:
    """Problems against a server's /object_info, or None when no server could be asked."""
    url, source = _server_and_source(server)
    click.echo(f"ComfyUI server: {url} ({source})")
    client = ComfyUIClient(url, timeout=httpx.Timeout(30, connect=5))
    try:
        object_info = client.object_info()
    except ComfyUIError as exc:
        click.echo(f"ComfyUI at {url} is not reachable ({exc}); server checks skipped", err=True)
        return None
    finally:
        client.close()
    click.echo(f"checked against ComfyUI at {url} ({catalogue_size(object_info)} node classes)")
    return check_against_object_info(graph, object_info)


def _server_and_source(server: str | None) -> tuple[str, str]:
    """The ComfyUI to check against, and where that choice came from (said in the output)."""
    if server:
        return server, "from --server"
    configured = _services().settings.comfyui_url
    if "COMFYUI_URL" not in os.environ and configured == Settings.comfyui_url:
        return configured[0], "the default: COMFYUI_URL is not set; choose one with --server URL"
    return configured[0], "the first COMFYUI_URL"


def _print_problems(problems: list[Problem]) -> None:
    for problem in problems:
        where = f"node {problem.node_id} ({problem.class_type})"
        if problem.input:
            where += f" input {problem.input!r}"
        click.echo(f"PROBLEM {where}: {problem.message}\n        fix: {problem.fix}")


def _load_and_find_roles(path: Path, data: Any, **fixes: Any) -> tuple[dict[str, Any], Roles]:
    try:
        result = prepare_import(data, **fixes)
        for change in result.changes:
            click.echo(f"changed: {change}")
        return result.graph, find_roles(result.graph, _bindings_next_to(path))
    except WorkflowError as exc:
        click.echo(f"error: {path}: {exc}", err=True)
        if exc.details:
            click.echo(f"details: {json.dumps(exc.details, default=str)}", err=True)
        sys.exit(EXIT_INVALID)


@workflows_cli.command("check")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--server", help="ComfyUI URL to check against (default: the first COMFYUI_URL).")
@click.option("--offline", is_flag=True, help="Only check the file; do not ask a ComfyUI.")
def check_command(file: Path, server: str | None, offline: bool) -> None:
    """Load FILE (captured /prompt body or API graph), show its roles, check it on a server.

    Exit status: 0 fine, 1 problems on the server, 2 the file itself is unusable, 3 the server
    named with --server could not be reached.
    """
    graph, roles = _load_and_find_roles(file, _read_json(file))
    click.echo(f"{file}: {len(graph)} nodes, API format")
    _print_roles(graph, roles)
    problems = None if offline else _server_problems(graph, server)
    if problems is None and server is not None:
        sys.exit(EXIT_UNREACHABLE)
    if problems:
        _print_problems(problems)
        click.echo(f"{len(problems)} problem(s)")
        sys.exit(EXIT_PROBLEMS)
    click.echo("ok" if problems is not None else "ok (file only)")


@workflows_cli.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", required=True, help="Style name: workflows/<name>.json.")
@click.option(
    "--presets-from",
    default=None,
    help="Copy <style>.presets.json from this style (default: DEFAULT_STYLE).",
)
@click.option(
    "--fix/--no-fix",
    default=True,
    show_default=True,
    help="Insert an ImageScale so the size takes effect; swap the Impact Pack concat for core.",
)
@click.option("--server", help="ComfyUI URL to check against (default: the first COMFYUI_URL).")
@click.option("--offline", is_flag=True, help="Do not ask a ComfyUI.")
@click.option("--force", is_flag=True, help="Overwrite an existing style; store despite problems.")
def import_command(
    file: Path,
    name: str,
    presets_from: str | None,
    fix: bool,
    server: str | None,
    offline: bool,
    force: bool,
) -> None:
    """Check FILE and store it as a style under workflows/ with its presets and bindings."""
    if not is_style_name(name):
        raise click.BadParameter("letters, digits, '-' and '_' only (max 64)", param_hint="--name")
    services = _services()
    directory = services.settings.workflows_dir
    if not directory.is_absolute():
        directory = Path(current_app.root_path).parent / directory
    target = style_path(directory, name)
    if target.exists() and not force:
        raise click.ClickException(f"{target} exists; use --force to replace it")
    graph, roles = _load_and_find_roles(
        file, _read_json(file), insert_image_scale=fix, replace_impact_concat=fix
    )
    _print_roles(graph, roles)
    problems = None if offline else _server_problems(graph, server)
    if problems:
        _print_problems(problems)
        if not force:
            click.echo(f"{len(problems)} problem(s); not imported (use --force to store anyway)")
            sys.exit(EXIT_PROBLEMS)
    files = {
        target.name: graph,
        bindings_path(target).name: roles.to_dict(),
        presets_path(target).name: _presets_for(directory, name, presets_from, graph, roles),
    }
    # Load the style from a staging folder first: what is stored is known to load at start-up.
    with tempfile.TemporaryDirectory(dir=directory) as staging:
        for file_name, data in files.items():
            text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
            (Path(staging) / file_name).write_text(text, encoding="utf-8")
        try:
            load_workflow(style_path(Path(staging), name), name=name)
        except WorkflowError as exc:
            raise click.ClickException(f"the style would not load: {exc}") from None
        for file_name in files:
            write_atomic(directory / file_name, (Path(staging) / file_name).read_bytes())
            click.echo(f"wrote {directory / file_name}")
    click.echo(f"restart the service to offer style {name!r}")


def _presets_for(
    directory: Path, name: str, presets_from: str | None, graph: dict[str, Any], roles: Roles
) -> dict[str, Any]:
    """The style's existing presets, or a copy of another style's with this graph's steps."""
    existing = presets_path(style_path(directory, name))
    if existing.is_file():
        return _read_json(existing)
    source_style = presets_from or _services().settings.default_style
    source = presets_path(style_path(directory, source_style))
    if not source.is_file():
        raise click.ClickException(f"no presets to copy: {source} does not exist")
    presets = fit_presets(_read_json(source), graph, roles)
    click.echo(f"presets copied from style {source_style!r}: edit their prompt texts")
    return presets


@workflows_cli.command("list")
def list_command() -> None:
    """List the styles the service loads, with their roles."""
    for style in _services().describe_styles():
        click.echo(json.dumps(style, indent=2))
