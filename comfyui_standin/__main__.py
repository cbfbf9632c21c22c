"""Command line: ``python -m comfyui_standin --port 8188`` runs the stand-in until Ctrl-C."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from comfyui_standin import StandIn
from comfyui_standin.catalogue import CUSTOM_NODE_PACKS

logger = logging.getLogger("comfyui_standin")


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
    parser.add_argument("--step-delay", type=float, default=0.0, help="seconds per sampler step")
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
    )
    server.faults.step_delay = args.step_delay
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
