"""The ``avatar`` command: generate avatars from photos, list styles, show and cancel jobs.

Exit status: 0 success, 1 the service answered an error (or could not be reached), 2 bad usage,
130 interrupted with Ctrl-C (the jobs this command started are cancelled first).
"""

from __future__ import annotations

import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .client import ApiError, AvatarClient, ClientError
from .jobs import RETRY_FOR_SECONDS, Batch, client_error
from .progress import BarReporter, LineReporter
from .server import default_server

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
CANCEL_GRACE_SECONDS = 10.0
MAX_SEED = 2**64 - 1
# The service's size rules, used when it does not publish its own in /service-info.
SIZE_RULES = {"minSide": 64, "maxSide": 2048, "sideStep": 8}


def _common(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options every command takes: where the service is, its key, and --json."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print machine-readable JSON on stdout."
    )(command)
    command = click.option(
        "--key",
        envvar="AVATAR_KEY",
        default=None,
        show_envvar=True,
        help="API key, sent as 'Authorization: Bearer KEY'.",
    )(command)
    return click.option(
        "--server",
        envvar="AVATAR_SERVER",
        default=default_server,
        show_default="http://127.0.0.1:$PORT, PORT from the environment or ./.env, else 5000",
        show_envvar=True,
        help="Base URL of the avatar service.",
    )(command)


def _parse_size(_ctx: click.Context, _param: click.Parameter, value: str | None):
    if value is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", value)
    if not match:
        raise click.BadParameter("use WIDTHxHEIGHT, e.g. 768x768")
    return int(match.group(1)), int(match.group(2))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="avatar-service", prog_name="avatar")
def cli() -> None:
    """Make avatars from photos with the avatar service."""


@cli.command()
@click.argument(
    "photos",
    nargs=-1,
    required=True,
    type=click.Path(exists=True, dir_okay=False, readable=True, path_type=Path),
)
@click.option("--gender", help="male, female or neutral (default: the style's).")
@click.option("--style", help="A style from 'avatar styles' (default: the service's).")
@click.option("--size", callback=_parse_size, metavar="WxH", help="Avatar size, e.g. 768x768.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED), help="Seed (default: random).")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder to save the avatars in (created if missing).",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, 32),
    default=4,
    show_default=True,
    help="Photos sent at once.",
)
@click.option(
    "--timeout",
    "retry_for",
    type=click.FloatRange(0, min_open=True),
    default=RETRY_FOR_SECONDS,
    show_default=True,
    metavar="SECONDS",
    help="How long to keep retrying a running job's service while it cannot be reached "
    "(a restart), before giving up on the job.",
)
@_common
def generate(
    photos: tuple[Path, ...],
    gender: str | None,
    style: str | None,
    size: tuple[int, int] | None,
    seed: int | None,
    out_dir: Path,
    parallel: int,
    retry_for: float,
    server: str,
    key: str | None,
    as_json: bool,
) -> None:
    """Make an avatar from each PHOTO and save it in --out.

    Before each job it prints the face found in the photo and the crop the avatar is made from.
    """
    request: dict[str, Any] = {}
    if gender:
        request["gender"] = gender
    if style:
        request["style"] = style
    if size:
        request["width"], request["height"] = size
    if seed is not None:
        request["seed"] = seed
    err = Console(stderr=True, soft_wrap=True)
    client = AvatarClient(server, key=key)
    if size:
        _check_size(client, size, as_json)
    unique = list(dict.fromkeys(photos))
    reporter = BarReporter(err, unique) if err.is_terminal else LineReporter(err)
    batch = Batch(
        client, reporter, request=request, out_dir=out_dir, parallel=parallel, retry_for=retry_for
    )
    interrupted = False
    signal.signal(signal.SIGTERM, _interrupt)
    with reporter:
        batch.start(unique)
        try:
            batch.wait()
        except KeyboardInterrupt:
            interrupted = True
            err.print("interrupted: cancelling the jobs started by this command", markup=False)
            batch.cancel()
            batch.wait(CANCEL_GRACE_SECONDS)
    client.close()
    results = batch.results
    if as_json:
        click.echo(json.dumps({"results": [result.to_dict() for result in results]}, indent=2))
    for result in results:
        if result.error is not None:
            message = (
                result.error.describe()
                if isinstance(result.error, ApiError)
                else result.error.message
            )
            err.print(f"{result.photo}: {message}", markup=False, highlight=False)
        if not as_json:
            for path in result.files:
                click.echo(f"{result.photo} -> {path}")
    if interrupted:
        sys.exit(EXIT_INTERRUPTED)
    if not all(result.ok for result in results):
        sys.exit(EXIT_FAILED)


@cli.command()
@_common
def styles(server: str, key: str | None, as_json: bool) -> None:
    """List the styles the service offers."""
    body = _call(lambda client: client.styles(), server, key, as_json)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    table = Table("style", "description", "default size", "genders", "steps")
    for style in body.get("styles", []):
        defaults = style.get("defaults") or {}
        name = style["name"] + (" (default)" if style["name"] == body.get("default") else "")
        table.add_row(
            name,
            style.get("description") or "",
            f"{defaults.get('width', '?')}x{defaults.get('height', '?')}",
            ", ".join(style.get("genders") or []),
            ", ".join(str(steps) for steps in style.get("steps") or []),
        )
    Console(soft_wrap=True).print(table)


@cli.command()
@click.argument("job_id")
@_common
def jobs(job_id: str, server: str, key: str | None, as_json: bool) -> None:
    """Show a job: status, progress, error and avatars."""
    record = _call(lambda client: client.job(job_id), server, key, as_json)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    click.echo(f"job {record['jobId']}: {record['status']}")
    for label, name in [
        ("style", "style"),
        ("gender", "gender"),
        ("seed", "seed"),
        ("created", "createdAt"),
        ("finished", "finishedAt"),
    ]:
        if record.get(name) is not None:
            click.echo(f"  {label}: {record[name]}")
    click.echo(f"  size: {record.get('width')}x{record.get('height')}")
    if record.get("queuePosition"):
        click.echo(f"  queue position: {record['queuePosition']}")
    progress = record.get("progress") or {}
    if progress.get("max"):
        click.echo(
            f"  progress: {progress.get('value')}/{progress['max']} ({progress.get('nodeType')})"
        )
    if record.get("error"):
        error = ApiError.from_record(record["error"])
        click.echo(f"  error: {error.describe()}")
    for avatar in record.get("avatars") or []:
        click.echo(f"  avatar: {avatar.get('url')}")


@cli.command()
@click.argument("job_id")
@_common
def cancel(job_id: str, server: str, key: str | None, as_json: bool) -> None:
    """Cancel a queued or running job."""
    record = _call(lambda client: client.cancel(job_id), server, key, as_json)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    state = "cancelled" if record["status"] == "cancelled" else f"{record['status']}, cancelling"
    click.echo(f"job {record['jobId']}: {state}")


def size_problems(size: tuple[int, int], rules: dict[str, int]) -> dict[str, str]:
    """What is wrong with each side of ``size`` under the service's rules (empty: it is fine)."""
    low, high, step = rules["minSide"], rules["maxSide"], rules["sideStep"]
    rule = f"must be an integer from {low} to {high} and a multiple of {step}"
    return {
        name: rule
        for name, side in zip(("width", "height"), size, strict=True)
        if not low <= side <= high or side % step
    }


def _check_size(client: AvatarClient, size: tuple[int, int], as_json: bool) -> None:
    """Refuse a size the service would refuse (exit 2) before anything is uploaded."""
    rules = dict(SIZE_RULES)
    try:
        limits = client.service_info().get("limits") or {}
    except ClientError:
        limits = {}  # an older service, or none at all: the upload will tell
    for name in rules:
        if isinstance(limits.get(name), int) and limits[name] > 0:
            rules[name] = limits[name]
    problems = size_problems(size, rules)
    if not problems:
        return
    client.close()
    text = "; ".join(f"{name}: {problem}" for name, problem in problems.items())
    # The service's own error for this request, so --json reads the same either way.
    message = text if len(problems) == 1 else "several fields are invalid"
    error = {"code": "invalid_fields", "message": message, "details": {"fields": problems}}
    _fail(f"Error: Invalid value for '--size': {text}", error, as_json, status=EXIT_USAGE)


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM ends a generate like Ctrl-C: its jobs are cancelled first."""
    raise KeyboardInterrupt


def _call(
    action: Callable[[AvatarClient], dict[str, Any]], server: str, key: str | None, as_json: bool
):
    """Run one request; on an error print the service's message (and its JSON) and exit 1."""
    client = AvatarClient(server, key=key)
    try:
        return action(client)
    except ApiError as exc:
        _fail(f"error: {exc.describe()}", exc.to_dict(), as_json)
    except ClientError as exc:
        _fail(f"error: {exc.message}", client_error(exc), as_json)
    finally:
        client.close()


def _fail(message: str, error: dict[str, Any], as_json: bool, status: int = EXIT_FAILED) -> None:
    """Say what went wrong on stderr (and as ``{"error": ...}`` on stdout with --json); exit."""
    if as_json:
        click.echo(json.dumps({"error": error}, indent=2))
    click.echo(message, err=True)
    sys.exit(status)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="avatar")
