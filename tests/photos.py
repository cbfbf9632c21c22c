"""Test photos: real pictures shipped inside scikit-image's wheel, and synthetic faceless ones."""

from __future__ import annotations

import io
from importlib.resources import files

from PIL import Image, ImageDraw

from avatar_service.photos.faces import Box

# Where the astronaut's face is in skimage's astronaut.png (512x512), measured by eye on the
# picture (brow to chin, ear to ear), independently of any detector.
ASTRONAUT_FACE = Box(180, 60, 90, 110)


def _packaged(name: str) -> Image.Image:
    """A picture from skimage/data (files inside the wheel; nothing is downloaded)."""
    with Image.open(files("skimage.data") / name) as image:
        return image.convert("RGB")


def astronaut() -> Image.Image:
    """Public-domain NASA portrait of Eileen Collins, 512x512, one face."""
    return _packaged("astronaut.png")


def chelsea() -> Image.Image:
    """A cat (Chelsea), 451x300: no human face."""
    return _packaged("chelsea.png")


def text_page() -> Image.Image:
    """skimage's text.png: printed text, no face."""
    return _packaged("text.png")


def gradient(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A smooth colour gradient: no face."""
    image = Image.linear_gradient("L").resize(size)
    return Image.merge("RGB", (image, image.rotate(90).resize(size), Image.new("L", size, 90)))


def drawn_text(size: tuple[int, int] = (640, 480)) -> Image.Image:
    """Black text on white: no face."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for row in range(0, size[1], 24):
        draw.text((10, row), "The quick brown fox jumps over the lazy dog 0123456789", fill="black")
    return image


def two_people() -> Image.Image:
    """The astronaut twice, side by side, the right one at two thirds of the size."""
    left = astronaut()
    right = left.resize((341, 341))
    image = Image.new("RGB", (512 + 341, 512), "white")
    image.paste(left, (0, 0))
    image.paste(right, (512, 85))
    return image


def png(image: Image.Image) -> bytes:
    """The image as PNG bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
