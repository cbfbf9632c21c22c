"""What running a node costs in time: a base per node plus a price per megapixel it produces.

On a real ComfyUI even nodes without a model take time that grows with their images (a
lanczos ImageScale to 5000x5000 takes about a second on the lab's CPU, a PNG of that size about
as long to write), so a graph of image nodes can be watched pending in /queue, interrupted or
reconnected to while it runs. The stand-in's Pillow work is far quicker than that on small
images, so a node is held until its cost has passed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from comfyui_standin.faults import Faults

MEGAPIXEL = 1_000_000


def count_pixels(value: Any) -> int:
    """Pixels of every image in ``value`` (images, batches, latents, tuples of those)."""
    if isinstance(value, Image.Image):
        return value.width * value.height
    if isinstance(value, Mapping):
        return count_pixels(value.get("samples"))
    if isinstance(value, (list, tuple)):
        return sum(count_pixels(item) for item in value)
    return 0


def node_seconds(faults: Faults, pixels: int) -> float:
    """How long a node that produced ``pixels`` takes: ``node_cost + pixel_cost x megapixels``."""
    return faults.node_cost + faults.pixel_cost * pixels / MEGAPIXEL
