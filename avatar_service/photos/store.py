"""Photo validation and normalisation: checked by content, EXIF-rotated, stored under our name.

Memory stays bounded whatever the photo: its header is checked before anything is decoded; a
JPEG is decoded straight at the smallest scale that still covers the stored size (libjpeg's DCT
scaling, Pillow's ``draft``); other formats are decoded once in their own mode and never copied
at full size: the stored PNG is made and written band by band (converted, scaled, rotated and
compressed a few rows at a time) to a temporary local file, published whole (renamed into the
folder, or uploaded to the bucket) once complete. At most ``max_concurrent_decodes`` photos are
decoded at once. Photos and their face records are read and written through the one storage
backend (``storage.base.Storage``).
"""

from __future__ import annotations

import io
import math
import os
import re
import secrets
import struct
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from PIL import Image, ImageChops, UnidentifiedImageError

from ..errors import BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable, UnsupportedMediaType
from ..storage.base import Storage
from ..storage.local import LocalFolders
from .geometry import Crop
from .memory import release_free_memory

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP"})
# A multi-picture JPEG (MPO: phones, stereo cameras) is a JPEG whose first frame is the photo.
FORMAT_ALIASES = {"MPO": "JPEG"}
# Stored photos are scaled down to these bounds: enough for the largest avatar (2048 px) cropped
# from any part of the photo, and small enough to stay well under ComfyUI's upload limit
# (100 MB by default) however large the original was.
STORED_SHORT_SIDE = 2048
STORED_LONG_SIDE = 4096
# Stored names are made here, never taken from the client: 22 url-safe characters + ".png".
IMAGE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_-]{22}\.png$")
# Rows of the stored photo made at a time: a band is a few MB at most.
BAND_ROWS = 32
# Pillow's resize first box-averages by whole factors while the result stays this many times the
# target, then resamples: much faster on big photos, and indistinguishable.
REDUCING_GAP = 3.0
PNG_COMPRESS_LEVEL = 6  # Pillow's default
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
IDAT_CHUNK_BYTES = 256 * 1024
RETRY_AFTER_BUSY = 5
# After decoding this many pixels (16 MB as RGB) or more, freed memory is handed back to the
# system: glibc would otherwise keep it in each server thread's arena (2.1 GB kept after 32
# uploads of 40-megapixel photos, against 0.1 GB with it; see bench/README.md).
TRIM_AFTER_PIXELS = 4_000_000
_ORIENTATION_TAG = 0x0112
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})

# What ``PhotoStore.save`` lets look at the stored photo: a reduced copy, and the stored size.
Inspect = Callable[[Image.Image, tuple[int, int]], None]
# The copy handed to an ``Inspect`` is reduced by a whole factor, never below this long side.
INSPECT_LONG_SIDE = 1024

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class StoredPhoto:
    """A validated photo saved in the storage."""

    image_name: str
    width: int
    height: int

    def to_dict(self) -> dict[str, object]:
        """The 201 answer of the upload route."""
        return {"imageName": self.image_name, "width": self.width, "height": self.height}


class PhotoStore:
    """Validates uploaded photos and keeps them as normalised PNGs under unguessable names.

    ``files`` is the storage backend (a Path is taken as the local folder of photos).
    """

    def __init__(
        self,
        files: Storage | Path,
        *,
        max_bytes: int,
        max_pixels: int,
        min_side: int,
        max_concurrent_decodes: int = 2,
        decode_wait: float = 60.0,
    ) -> None:
        self.files: Storage = (
            LocalFolders(photos=files, avatars=files) if isinstance(files, Path) else files
        )
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.min_side = min_side
        self.max_concurrent_decodes = max_concurrent_decodes
        self.decode_wait = decode_wait
        self._decode_slots = threading.BoundedSemaphore(max_concurrent_decodes)

    def save(self, upload: BinaryIO | bytes, *, inspect: Inspect | None = None) -> StoredPhoto:
        """Validate an uploaded photo (file or bytes) and store it; a ServiceError if refused.

        ``inspect`` sees the stored photo once it is written (reduced, with its full size) and
        may refuse it by raising: the file is then never published.
        """
        stream = io.BytesIO(upload) if isinstance(upload, bytes) else upload
        size = stream.seek(0, os.SEEK_END)
        stream.seek(0)
        if size > self.max_bytes:
            raise PayloadTooLarge(
                f"the photo is larger than the limit of {self.max_bytes} bytes",
                code="photo_too_large",
                details={"maxBytes": self.max_bytes},
            )
        if not size:
            raise BadRequest("the uploaded file is empty", code="empty_file")
        with self._open(stream) as image:
            stored_size = self._check_size(*image.size)
            with self.decode_slot():
                name = f"{secrets.token_urlsafe(16)}.png"
                try:
                    with _decode_errors(self.max_pixels):
                        box = _load(image, stored_size)
                        orientation = _orientation(image)
                    width, height = _upright_size(stored_size, orientation)
                    with self.files.publish("photos", name) as handle:
                        _write_png(
                            handle,
                            width,
                            height,
                            _upright_bands(image, box, stored_size, orientation),
                        )
                        if inspect is not None:
                            image.close()  # the source's pixels are not needed any more
                            _inspect_written(handle, inspect)
                finally:
                    image.close()  # frees the decoded pixels now, not when collected
                    if image.width * image.height >= TRIM_AFTER_PIXELS:
                        release_free_memory()
        return StoredPhoto(name, width, height)

    @contextmanager
    def decode_slot(self) -> Iterator[None]:
        """Hold one of the decode slots; 503 service_busy when none frees up within decode_wait."""
        if not self._decode_slots.acquire(timeout=self.decode_wait):
            raise ServiceUnavailable(
                "too many photos are being decoded at once; try again shortly",
                code="service_busy",
                details={"maxConcurrentDecodes": self.max_concurrent_decodes},
                retry_after=RETRY_AFTER_BUSY,
            )
        try:
            yield
        finally:
            self._decode_slots.release()

    @staticmethod
    def made_name(file_name: str) -> bool:
        """Whether a file name has the shape of the names this store makes for photos."""
        return IMAGE_NAME_PATTERN.fullmatch(file_name) is not None

    def require(self, image_name: object) -> str:
        """The imageName of a stored photo; NotFound for anything this service did not make
        or does not have."""
        if not isinstance(image_name, str) or not self.made_name(image_name):
            raise image_not_found(image_name)
        if not self.files.exists("photos", image_name):
            raise image_not_found(image_name)
        return image_name

    def local_copy(self, image_name: str) -> AbstractContextManager[Path]:
        """A local file of the stored photo (the file itself, or a temporary download)."""
        return self.files.local_copy("photos", self.require(image_name))

    def prepared(self, image_name: str, crop: Crop | None) -> bytes:
        """The photo ComfyUI receives for a job: cut to a face or request crop, else the
        photo as stored (NotFound when it is not stored)."""
        try:
            if crop is None or crop.source == "center":
                return self.files.read("photos", self.require(image_name))
            box = crop.box
            with self.local_copy(image_name) as path, Image.open(path) as image:
                cut = image.crop((box.x, box.y, box.right, box.bottom))
        except FileNotFoundError:  # deleted since it was looked up
            raise image_not_found(image_name) from None
        buffer = io.BytesIO()
        cut.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def read_record(self, image_name: str) -> bytes | None:
        """The record kept beside a photo (its faces, ``<imageName>.json``), if any."""
        try:
            return self.files.read("photos", f"{image_name}.json")
        except FileNotFoundError:
            return None

    def write_record(self, image_name: str, data: bytes) -> None:
        """Keep a record beside a photo, atomically."""
        self.files.write("photos", f"{image_name}.json", data)

    @contextmanager
    def _open(self, stream: BinaryIO) -> Iterator[Image.Image]:
        """Open by content (not name), reading only the header; refuse bombs and other formats."""
        with _decode_errors(self.max_pixels):
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                image = Image.open(stream)
            kind = FORMAT_ALIASES.get(image.format or "", image.format)
            if kind not in ACCEPTED_FORMATS:
                image.close()
                raise UnsupportedMediaType(
                    f"{image.format} images are not accepted; send a JPEG, PNG or WebP photo",
                    code="unsupported_image_type",
                    details={"format": image.format, "accepted": sorted(ACCEPTED_FORMATS)},
                )
        try:
            yield image
        finally:
            image.close()

    def _check_size(self, width: int, height: int) -> tuple[int, int]:
        """The stored size of a photo of this size, or the 400 that refuses it."""
        if width * height > self.max_pixels:
            raise BadRequest(
                f"the photo is {width}x{height} pixels; at most {self.max_pixels} pixels "
                "are accepted",
                code="image_too_many_pixels",
                details={"width": width, "height": height, "maxPixels": self.max_pixels},
            )
        if min(width, height) < self.min_side:
            raise BadRequest(
                f"the photo is {width}x{height}; both sides must be at least {self.min_side} px",
                code="image_too_small",
                details={"width": width, "height": height, "minSide": self.min_side},
            )
        stored_width, stored_height = stored_size(width, height)
        if min(stored_width, stored_height) < self.min_side:
            raise BadRequest(
                f"the photo is {width}x{height}; scaled to fit the stored size it would be "
                f"{stored_width}x{stored_height}, under the minimum side of {self.min_side} px: "
                "crop it to a less elongated shape",
                code="image_aspect_ratio",
                details={
                    "width": width,
                    "height": height,
                    "storedWidth": stored_width,
                    "storedHeight": stored_height,
                    "minSide": self.min_side,
                },
            )
        return stored_width, stored_height


def image_not_found(image_name: object) -> NotFound:
    """The 404 of a photo this service does not have (or does not show this caller)."""
    return NotFound(
        "unknown imageName; upload the photo first with POST /upload-image",
        code="image_not_found",
        details={"imageName": image_name},
    )


def reduced_copy(image: Image.Image, long_side: int = INSPECT_LONG_SIDE) -> Image.Image:
    """A copy of ``image`` box-averaged by the largest whole factor keeping ``long_side``."""
    factor = max(1, max(image.size) // long_side)
    image.load()
    return image.reduce(factor) if factor > 1 else image.copy()


def _inspect_written(handle: BinaryIO, inspect: Inspect) -> None:
    """Read back the PNG just written to ``handle`` and show a reduced copy to ``inspect``."""
    handle.flush()
    handle.seek(0)
    with Image.open(handle) as written:
        size = written.size
        small = reduced_copy(written)  # the stored size is bounded: at most 2048 x 4096
    handle.seek(0, os.SEEK_END)
    inspect(small, size)


def stored_size(width: int, height: int) -> tuple[int, int]:
    """A photo's size scaled down (never up) to STORED_SHORT_SIDE / STORED_LONG_SIDE."""
    short, long = sorted((width, height))
    scale = min(1.0, STORED_SHORT_SIDE / short, STORED_LONG_SIDE / long)
    if scale == 1.0:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


@contextmanager
def _decode_errors(max_pixels: int) -> Iterator[None]:
    """Turn Pillow's complaints about a file into the upload's 400 and 415 answers."""
    try:
        yield
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
            details={"maxPixels": max_pixels},
        ) from None
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise BadRequest(f"the image could not be decoded: {exc}", code="invalid_image") from None


def _load(image: Image.Image, size: tuple[int, int]) -> Box:
    """Decode the photo (a JPEG at the smallest DCT scale still covering ``size``).

    Answers the box of the decoded pixels that holds the whole photo.
    """
    box: Box = (0.0, 0.0, float(image.width), float(image.height))
    if image.format in {"JPEG", "MPO"} and size != image.size:
        drafted = image.draft(image.mode, size)
        if drafted is not None:
            box = tuple(float(edge) for edge in drafted[1])  # type: ignore[assignment]
    image.load()
    return box


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """The size of a picture of ``size`` once turned by its EXIF orientation."""
    return (size[1], size[0]) if orientation in {5, 6, 7, 8} else size


def _orientation(image: Image.Image) -> int:
    """The photo's EXIF orientation (1: upright as stored)."""
    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
    return orientation if orientation in _TRANSPOSE else 1


def _upright_bands(
    image: Image.Image, box: Box, size: tuple[int, int], orientation: int
) -> Iterator[Image.Image]:
    """The stored photo, RGB, scaled to ``size`` and turned upright, BAND_ROWS rows at a time."""
    width, height = size  # as the file has it, before turning
    flatten = _flattener(image)
    turned = orientation in {5, 6, 7, 8}
    rows = width if turned else height
    for top in range(0, rows, BAND_ROWS):
        bottom = min(rows, top + BAND_ROWS)
        # The part of the (scaled, not yet turned) photo that becomes these rows once turned.
        if orientation in {1, 2}:
            region = (0, top, width, bottom)
        elif orientation in {3, 4}:
            region = (0, height - bottom, width, height - top)
        elif orientation in {5, 6}:
            region = (top, 0, bottom, height)
        else:
            region = (width - bottom, 0, width - top, height)
        band = _scaled_region(image, box, size, region, flatten)
        method = _TRANSPOSE.get(orientation)
        yield band if method is None else band.transpose(method)


def _scaled_region(
    image: Image.Image,
    box: Box,
    size: tuple[int, int],
    region: tuple[int, int, int, int],
    flatten: Callable[[Image.Image], Image.Image],
) -> Image.Image:
    """One region of the photo scaled to ``size``, as RGB, made from a crop of the decoded photo.

    The crop has a margin wider than the resampling filter reaches, so bands join seamlessly.
    """
    x_scale = (box[2] - box[0]) / size[0]
    y_scale = (box[3] - box[1]) / size[1]
    left, top, right, bottom = region
    source = (
        box[0] + left * x_scale,
        box[1] + top * y_scale,
        box[0] + right * x_scale,
        box[1] + bottom * y_scale,
    )
    out_size = (right - left, bottom - top)
    if source == (left, top, right, bottom):  # no scaling
        return flatten(image.crop(region))
    # LANCZOS reaches 3 source pixels per stored pixel on each side; the rest covers rounding
    # and the whole-factor reduction that precedes it.
    margin = math.ceil(4 * max(x_scale, y_scale)) + 2
    crop = (
        max(0, math.floor(source[0]) - margin),
        max(0, math.floor(source[1]) - margin),
        min(image.width, math.ceil(source[2]) + margin),
        min(image.height, math.ceil(source[3]) + margin),
    )
    piece = flatten(image.crop(crop))
    within = (source[0] - crop[0], source[1] - crop[1], source[2] - crop[0], source[3] - crop[1])
    return piece.resize(out_size, Image.Resampling.LANCZOS, box=within, reducing_gap=REDUCING_GAP)


def _flattener(image: Image.Image) -> Callable[[Image.Image], Image.Image]:
    """How to make RGB pieces of this photo; transparency becomes white (a plain background)."""
    if image.mode == "RGB":
        return lambda piece: piece
    if image.mode in _SIXTEEN_BIT_MODES:
        # 16-bit and float greyscale: scale to 8 bits (a plain convert would clip to white),
        # by the whole photo's brightest value.
        _, high = image.getextrema()
        assert isinstance(high, int | float), "one band: its lowest and highest value"
        factor = 255.0 / 65535.0 if high > 255 else 1.0

        def from_sixteen_bits(piece: Image.Image) -> Image.Image:
            scaled = piece.convert("F").point(lambda value: value * factor)
            return scaled.convert("L").convert("RGB")

        return from_sixteen_bits
    if image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info:

        def on_white(piece: Image.Image) -> Image.Image:
            rgba = piece.convert("RGBA")
            background = Image.new("RGB", rgba.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            return background

        return on_white
    return lambda piece: piece.convert("RGB")


def _write_png(handle: BinaryIO, width: int, height: int, bands: Iterable[Image.Image]) -> None:
    """Write RGB bands, top to bottom, as one 8-bit RGB PNG of ``width`` x ``height``.

    Rows use PNG's "Up" filter (each byte minus the one above it), computed by Pillow a band
    at a time, so the whole picture never has to be in memory.
    """
    handle.write(PNG_SIGNATURE)
    _write_chunk(handle, b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    compressor = zlib.compressobj(PNG_COMPRESS_LEVEL)
    pending = bytearray()
    above = Image.new("RGB", (width, 1))  # the row above the first counts as zeros
    written = 0
    stride = 3 * width
    for band in bands:
        rows = band.height
        shifted = Image.new("RGB", band.size)
        shifted.paste(above, (0, 0))
        if rows > 1:
            shifted.paste(band.crop((0, 0, width, rows - 1)), (0, 1))
        filtered = memoryview(ImageChops.subtract_modulo(band, shifted).tobytes())
        above = band.crop((0, rows - 1, width, rows))
        raw = bytearray()
        for row in range(rows):
            raw += b"\x02"  # filter type Up
            raw += filtered[row * stride : (row + 1) * stride]
        pending += compressor.compress(raw)
        written += rows
        if len(pending) >= IDAT_CHUNK_BYTES:
            _write_chunk(handle, b"IDAT", pending)
            pending = bytearray()
    if written != height or above.width != width:
        raise RuntimeError(f"bands made {above.width}x{written}, not {width}x{height}")
    pending += compressor.flush()
    _write_chunk(handle, b"IDAT", pending)
    _write_chunk(handle, b"IEND", b"")


def _write_chunk(handle: BinaryIO, kind: bytes, data: bytes | bytearray) -> None:
    handle.write(struct.pack(">I", len(data)) + kind)
    handle.write(data)
    handle.write(struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))
