"""Draw docs/face-crop.png: today's centre crop against the face crop, for a 1024x512 avatar.

Runs the service's own detector and crop functions on the astronaut portrait that ships with
scikit-image. Usage: ``.venv/bin/python -m scripts.face_crop_figure [--out docs/face-crop.png]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from avatar_service.photos.faces import FaceDetector
from avatar_service.photos.framing import center_crop, crop_around_face
from avatar_service.photos.geometry import Box
from tests import photos

ROOT = Path(__file__).resolve().parent.parent
TARGET = (1024, 512)
MARGIN = 0.8
CENTRE, FACE_CROP, FACE = (230, 40, 40), (30, 170, 60), (255, 210, 0)
GAP, LABEL = 16, 28


def outline(draw: ImageDraw.ImageDraw, box: Box, colour: tuple[int, int, int], width: int) -> None:
    draw.rectangle((box.x, box.y, box.right - 1, box.bottom - 1), outline=colour, width=width)


def figure() -> Image.Image:
    photo = photos.astronaut()
    [face] = FaceDetector().detect(photo)
    size = {"photo_width": photo.width, "photo_height": photo.height}
    targets = {"target_width": TARGET[0], "target_height": TARGET[1]}
    centre = center_crop(**size, **targets)
    around = crop_around_face(face.box, **size, **targets, margin=MARGIN)

    marked = photo.copy()
    draw = ImageDraw.Draw(marked)
    outline(draw, centre, CENTRE, 5)
    outline(draw, around, FACE_CROP, 5)
    outline(draw, face.box, FACE, 3)

    strip_width = photo.width
    strip_height = strip_width * TARGET[1] // TARGET[0]
    height = max(LABEL + photo.height, 2 * (LABEL + strip_height))
    canvas = Image.new("RGB", (photo.width + GAP + strip_width, height), (255, 255, 255))
    canvas.paste(marked, (0, LABEL))
    text = ImageDraw.Draw(canvas)
    text.text((4, 8), "photo: detected face (yellow)", fill=(0, 0, 0))
    left = photo.width + GAP
    for row, (name, box, colour) in enumerate(
        [
            ("today: centre crop", centre, CENTRE),
            ("FACE_POLICY=prefer: face crop", around, FACE_CROP),
        ]
    ):
        top = LABEL + row * (strip_height + LABEL)
        strip = photo.crop((box.x, box.y, box.right, box.bottom)).resize(
            (strip_width, strip_height), Image.Resampling.LANCZOS
        )
        canvas.paste(strip, (left, top))
        ImageDraw.Draw(canvas).rectangle(
            (left, top, left + strip_width - 1, top + strip_height - 1), outline=colour, width=4
        )
        label = f"{name} {box.width}x{box.height} at ({box.x}, {box.y}) -> {TARGET[0]}x{TARGET[1]}"
        text.text((left + 4, top - LABEL + 8 if row else 8), label, fill=colour)
    return canvas


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "face-crop.png")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # 256 colours keep the committed picture small; the crops stay easy to see.
    figure().quantize(256, dither=Image.Dither.FLOYDSTEINBERG).save(args.out, optimize=True)
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
