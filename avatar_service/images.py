"""Photo validation and normalisation: checked by content, EXIF-rotated, stored under our name."""

from __future__ import annotations

import io
import re
import secrets
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import BadRequest, NotFound, PayloadTooLarge, UnsupportedMediaType
from .storage import write_atomic

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# Stored photos are scaled down to these bounds: enough for the largest avatar (2048 px) cropped
# from any part of the photo, and small enough to stay well under ComfyUI's upload limit
# (100 MB by default) however large the original was.
STORED_SHORT_SIDE = 2048
STORED_LONG_SIDE = 4096
# Stored names are made here, never taken from the client: 22 url-safe characters + ".png".
IMAGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}\.png$")


@dataclass(frozen=True)
class StoredPhoto:
    """A validated photo saved in the upload folder."""

    image_name: str
    width: int
    height: int

    def to_dict(self) -> dict[str, object]:
        """The 201 answer of the upload route."""
        return {"imageName": self.image_name, "width": self.width, "height": self.height}


class PhotoStore:
    """Validates uploaded photos and keeps them as normalised PNGs under unguessable names."""

    def __init__(self, directory: Path, *, max_bytes: int, max_pixels: int, min_side: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.min_side = min_side

    def save(
        self, data: bytes, *, inspect: Callable[[Image.Image], None] | None = None
    ) -> StoredPhoto:
        """Validate the bytes of an uploaded photo and store it; raise a ServiceError if refused.

        ``inspect`` sees the photo as it will be stored, and may refuse it by raising.
        """
        if len(data) > self.max_bytes:
            raise PayloadTooLarge(
                f"the photo is larger than the limit of {self.max_bytes} bytes",
                code="photo_too_large",
                details={"maxBytes": self.max_bytes},
            )
        if not data:
            raise BadRequest("the uploaded file is empty", code="empty_file")
        image = self._decode(data)
        width, height = image.size
        if min(width, height) < self.min_side:
            raise BadRequest(
                f"the photo is {width}x{height}; both sides must be at least {self.min_side} px",
                code="image_too_small",
                details={"width": width, "height": height, "minSide": self.min_side},
            )
        image = _bounded(image)
        width, height = image.size
        if inspect is not None:
            inspect(image)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        name = f"{secrets.token_urlsafe(16)}.png"
        write_atomic(self.directory / name, buffer.getvalue())
        return StoredPhoto(name, width, height)

    def path_of(self, image_name: object) -> Path:
        """The stored file of an imageName; NotFound for anything this service did not make."""
        if not isinstance(image_name, str) or not IMAGE_NAME_PATTERN.fullmatch(image_name):
            raise NotFound(
                "unknown imageName; upload the photo first with POST /upload-image",
                code="image_not_found",
                details={"imageName": image_name},
            )
        path = self.directory / image_name
        if not path.is_file():
            raise NotFound(
                "unknown imageName; upload the photo first with POST /upload-image",
                code="image_not_found",
                details={"imageName": image_name},
            )
        return path

    def _decode(self, data: bytes) -> Image.Image:
        """Open by content (not name), refuse bombs and unsupported formats, apply EXIF rotation."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(io.BytesIO(data))
                if image.format not in ACCEPTED_FORMATS:
                    raise UnsupportedMediaType(
                        f"{image.format} images are not accepted; send a JPEG, PNG or WebP photo",
                        code="unsupported_image_type",
                        details={"format": image.format, "accepted": sorted(ACCEPTED_FORMATS)},
                    )
                width, height = image.size
                if width * height > self.max_pixels:
                    raise BadRequest(
                        f"the photo is {width}x{height} pixels; at most {self.max_pixels} pixels "
                        "are accepted",
                        code="image_too_many_pixels",
                        details={"width": width, "height": height, "maxPixels": self.max_pixels},
                    )
                image.load()
                image = ImageOps.exif_transpose(image)
        except UnidentifiedImageError:
            raise UnsupportedMediaType(
                "the file is not an image; send a JPEG, PNG or WebP photo",
                code="unsupported_image_type",
                details={"accepted": sorted(ACCEPTED_FORMATS)},
            ) from None
        except (Image.DecompressionBombWarning, Image.DecompressionBombError):
            raise BadRequest(
                "the photo has too many pixels (decompression bomb refused)",
                code="image_too_many_pixels",
                details={"maxPixels": self.max_pixels},
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise BadRequest(
                f"the image could not be decoded: {exc}",
                code="invalid_image",
            ) from None
        if image.mode != "RGB":
            image = _flatten(image)
        return image


def _bounded(image: Image.Image) -> Image.Image:
    """The photo scaled down (never up) to STORED_SHORT_SIDE / STORED_LONG_SIDE."""
    short, long = sorted(image.size)
    scale = min(1.0, STORED_SHORT_SIDE / short, STORED_LONG_SIDE / long)
    if scale == 1.0:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _flatten(image: Image.Image) -> Image.Image:
    """RGB copy; transparency becomes white, as a photo on a plain background."""
    if image.mode in {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}:
        # 16-bit and float greyscale: scale to 8 bits (a plain convert would clip to white).
        image = image.convert("F")
        _, high = image.getextrema()
        factor = 255.0 / 65535.0 if high > 255 else 1.0
        return image.point(lambda value: value * factor).convert("L").convert("RGB")
    if image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB")
