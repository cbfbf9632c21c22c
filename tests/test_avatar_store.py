"""The avatar store: what it keeps of ComfyUI's PNGs."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from avatar_service.storage.avatars import without_png_text


def png_with_text(**text: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in text.items():
        info.add_text(key, value)
    info.add_itxt("comment", "ünïcode", zip=True)
    buffer = io.BytesIO()
    Image.new("RGB", (8, 4), (10, 200, 30)).save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()


def test_text_chunks_are_dropped_and_pixels_kept():
    """tEXt/iTXt chunks go; the image decodes to the very same pixels."""
    original = png_with_text(prompt='{"1": {}}', workflow="{}")
    stripped = without_png_text(original)
    assert b"prompt" not in stripped and len(stripped) < len(original)
    with Image.open(io.BytesIO(original)) as before, Image.open(io.BytesIO(stripped)) as after:
        assert after.info.get("prompt") is None and after.info.get("comment") is None
        assert list(after.getdata()) == list(before.getdata())


@pytest.mark.parametrize(
    "data",
    [b"", b"\xff\xd8\xff\xe0 a jpeg", png_with_text(prompt="x")[:40], b"\x89PNG\r\n\x1a\n\x00"],
    ids=["empty", "jpeg", "truncated-png", "signature-only"],
)
def test_anything_else_comes_back_unchanged(data):
    """Non-PNG or malformed data is stored as it came (nothing to strip safely)."""
    assert without_png_text(data) == data
