"""Rectangles in a photo: a ``Box``, and the ``Crop`` a job uses (a box and where it came from).

Pure values with no dependency, so the engine's job record can hold a crop without loading
image or face detection libraries.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

# Where a job's crop came from: around a face, the request's own, or ComfyUI's centre crop.
CropSource = Literal["face", "request", "center"]
CROP_SOURCES: tuple[CropSource, ...] = ("face", "request", "center")


@dataclass(frozen=True)
class Box:
    """A rectangle in a photo's pixel coordinates: left, top, width, height."""

    x: int
    y: int
    width: int
    height: int

    @property
    def right(self) -> int:
        """The first column past the box."""
        return self.x + self.width

    @property
    def bottom(self) -> int:
        """The first row past the box."""
        return self.y + self.height

    @property
    def area(self) -> int:
        """Width times height."""
        return self.width * self.height

    def contains(self, other: Box) -> bool:
        """Whether ``other`` lies wholly inside this box."""
        return (
            self.x <= other.x
            and self.y <= other.y
            and other.right <= self.right
            and other.bottom <= self.bottom
        )

    def to_dict(self) -> dict[str, int]:
        """``{"x", "y", "width", "height"}``."""
        return {"x": self.x, "y": self.y, "width": self.width, "height": self.height}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Box:
        """The box of a ``{"x", "y", "width", "height"}`` mapping (already validated)."""
        return cls(int(value["x"]), int(value["y"]), int(value["width"]), int(value["height"]))


@dataclass(frozen=True)
class Crop:
    """The part of the photo a job uses, and where that choice came from."""

    box: Box
    source: CropSource

    def to_dict(self) -> dict[str, Any]:
        """The job record's ``crop``: ``{"x", "y", "width", "height", "source"}``."""
        return {**self.box.to_dict(), "source": self.source}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Crop:
        """A crop read back from its ``to_dict`` form."""
        source = value["source"]
        if source not in CROP_SOURCES:
            raise ValueError(f"unknown crop source {source!r}")
        return cls(Box.from_dict(value), cast(CropSource, source))
