"""Command line: ``python -m comfyui_standin --port 8188`` runs the stand-in until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import math
import signal
import threading
from pathlib import Path

from comfyui_standin import Faults, StandIn
from comfyui_standin.catalogue import CUSTOM_NODE_PACKS

logger = logging.getLogger("comfyui_standin")

#: a real ComfyUI's cheap nodes: a lanczos ImageScale to 5000x5000 (25 MP) takes ~1 s on CPU
DEFAULT_PIXEL_COST = 0.04
#: the executor's own overhead per node on a real ComfyUI is a few milliseconds
DEFAULT_NODE_COST = 0.002


def _seconds(text: str) -> float:
    """A number of seconds >= 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m comfyui_standin",
        description="Stand-in ComfyUI for development and tests (does not generate real avatars).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8188)
    parser.add_argument("--root", type=Path, default=Path(".standin"), help="base directory")
    parser.add_argument("--input-dir", type=Path)
    parser.add_argument("--output-dir", type=Path)
    parser.add_argument("--temp-dir", type=Path)
    parser.add_argument("--checkpoint", action="append", dest="checkpoints")
    parser.add_argument("--step-delay", type=_seconds, default=0.0, help="seconds per sampler step")
    parser.add_argument(
        "--node-cost",
        type=_seconds,
        default=DEFAULT_NODE_COST,
        help=f"seconds every executed node takes at least (default {DEFAULT_NODE_COST})",
    )
    parser.add_argument(
        "--pixel-cost",
        type=_seconds,
        default=DEFAULT_PIXEL_COST,
        help="seconds more per megapixel a node produces, like a real ComfyUI's image nodes "
        f"(default {DEFAULT_PIXEL_COST}; 0 makes image nodes instant)",
    )
    parser.add_argument("--previews", action="store_true", help="send binary preview frames")
    parser.add_argument("--no-cache", action="store_true", help="like ComfyUI's --cache-none")
    parser.add_argument(
        "--custom-nodes", action="append", default=[], choices=sorted(CUSTOM_NODE_PACKS)
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Run the stand-in in the foreground."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    faults = Faults(
        step_delay=args.step_delay, node_cost=args.node_cost, pixel_cost=args.pixel_cost
    )
    server = StandIn(
        root=args.root,
        host=args.host,
        port=args.port,
        input_dir=args.input_dir,
        output_dir=args.output_dir,
        temp_dir=args.temp_dir,
        checkpoints=args.checkpoints or ("dreamshaper_8.safetensors",),
        cache=not args.no_cache,
        previews=args.previews,
        custom_nodes=args.custom_nodes,
        faults=faults,
    )
    try:
        server.start()
    except OSError as exc:
        logger.error("cannot listen on %s:%d: %s", args.host, args.port, exc)
        raise SystemExit(1) from None
    logger.warning(
        "This is a STAND-IN ComfyUI for development and tests; it does not generate real "
        "avatars. Listening on %s (input %s, output %s)",
        server.url,
        server.input_dir,
        server.output_dir,
    )
    done = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: done.set())
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    done.wait()
    server.stop()


if __name__ == "__main__":
    main()
