"""Face detection on photos with OpenCV's bundled Haar cascade (no model is fetched at run time).

The detector runs on a downscaled greyscale copy, so its cost is bounded whatever the photo's
size, and maps the boxes back to the photo's own pixel coordinates, largest face first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import cv2.data
import numpy as np
from PIL import Image, ImageOps

from .geometry import Box

# The frontal-face cascade that ships in opencv-python-headless under cv2.data.
CASCADE_FILE = "haarcascade_frontalface_alt2.xml"
# The copy the detector sees is at most this many pixels on its long side.
DETECT_LONG_SIDE = 640
# Faces smaller than this fraction of the copy's short side are not looked for (too small to
# make an avatar from, where most false positives of a cascade are, and most of its cost).
MIN_FACE_FRACTION = 1 / 10
# Step between the scales searched; 1.15 costs about half of 1.1 and finds the same faces here.
SCALE_STEP = 1.15
MIN_FACE_PIXELS = 24


@dataclass(frozen=True)
class Face:
    """A detected face: its box, and the cascade's final-stage weight (higher is surer)."""

    box: Box
    confidence: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The box fields plus ``confidence``."""
        return {**self.box.to_dict(), "confidence": self.confidence}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Face:
        """A face read back from its ``to_dict`` form."""
        confidence = value.get("confidence")
        return cls(Box.from_dict(value), None if confidence is None else float(confidence))


class FaceDetector:
    """Finds frontal faces in a photo; safe to call from many threads (one cascade per thread)."""

    def __init__(self, cascade_path: Path | None = None, *, long_side: int = DETECT_LONG_SIDE):
        self.cascade_path = cascade_path or Path(cv2.data.haarcascades) / CASCADE_FILE
        if not self.cascade_path.is_file():
            raise FileNotFoundError(f"face cascade not found: {self.cascade_path}")
        self.long_side = long_side
        self._local = threading.local()
        self._cascade()  # fail at start, not at the first upload, if the file cannot be read

    def detect(self, image: Image.Image, *, size: tuple[int, int] | None = None) -> list[Face]:
        """The faces in ``image`` (any mode), largest first.

        Boxes are in the pixel coordinates of ``size`` (the photo ``image`` is a reduced copy
        of), or of ``image`` itself.
        """
        width, height = size or image.size
        grey = ImageOps.grayscale(image) if image.mode != "L" else image
        scale = min(1.0, self.long_side / max(grey.size))
        if scale < 1.0:
            small_size = (max(1, round(grey.width * scale)), max(1, round(grey.height * scale)))
            grey = grey.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
        pixels = cv2.equalizeHist(np.asarray(grey, dtype=np.uint8))
        smallest = max(MIN_FACE_PIXELS, round(min(pixels.shape) * MIN_FACE_FRACTION))
        boxes, _, weights = self._cascade().detectMultiScale3(
            pixels,
            scaleFactor=SCALE_STEP,
            minNeighbors=5,
            minSize=(smallest, smallest),
            outputRejectLevels=True,
        )
        sx, sy = width / grey.width, height / grey.height
        faces = []
        for (x, y, w, h), weight in zip(boxes, weights, strict=True):
            left, top = round(x * sx), round(y * sy)
            right = min(width, round((x + w) * sx))
            bottom = min(height, round((y + h) * sy))
            box = Box(left, top, right - left, bottom - top)
            faces.append(Face(box, round(float(weight), 3)))
        faces.sort(key=lambda face: (-face.box.area, face.box.x, face.box.y))
        return faces

    def _cascade(self) -> cv2.CascadeClassifier:
        cascade = getattr(self._local, "cascade", None)
        if cascade is None:
            cascade = cv2.CascadeClassifier(str(self.cascade_path))
            if cascade.empty():
                raise ValueError(f"face cascade could not be read: {self.cascade_path}")
            self._local.cascade = cascade
        return cascade
