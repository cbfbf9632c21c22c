"""Framing a photo for an avatar: the faces found at upload, the policy, and the crop.

At upload the faces of the stored photo are detected once (``FACE_POLICY`` not ``off``) and kept
beside it as ``<imageName>.json``, in the same storage as the photo. At generate the job's crop
is chosen: the request's own ``crop``, else a box of the requested aspect ratio around the
largest face (head and shoulders), else the centre crop the workflow's ImageScale takes anyway
(the photo is then sent whole, as before). A face or request crop is cut out of the photo just
before it is uploaded to ComfyUI (``PhotoStore.prepared``)."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO

from PIL import Image

from ..config import FACE_POLICIES, MULTIPLE_FACE_RULES
from ..errors import NotFound, UnprocessablePhoto
from .faces import Face, FaceDetector
from .geometry import Box, Crop
from .store import PhotoStore, reduced_copy

if TYPE_CHECKING:
    from ..jobs import GenerateRequest

logger = logging.getLogger(__name__)

CROP_FIELDS = ("x", "y", "width", "height")
CROP_SHAPE_MESSAGE = 'must be an object {"x", "y", "width", "height"} of integers'
# A crop is never smaller than this on its short side: a request's is refused, a face crop
# grows to it (when the photo allows); a few pixels blown up to an avatar make nothing a user
# wants.
MIN_CROP_SIDE = 64


def center_crop(
    *, photo_width: int, photo_height: int, target_width: int, target_height: int
) -> Box:
    """The box ComfyUI's ImageScale (``crop: center``) keeps when scaling to the target size."""
    old_aspect = photo_width / photo_height
    new_aspect = target_width / target_height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((photo_width - photo_width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((photo_height - photo_height * (old_aspect / new_aspect)) / 2)
    return Box(x, y, photo_width - 2 * x, photo_height - 2 * y)


def crop_around_face(
    face: Box,
    *,
    photo_width: int,
    photo_height: int,
    target_width: int,
    target_height: int,
    margin: float,
) -> Box:
    """A box of the target's aspect ratio inside the photo, around the face with a margin.

    The margin is in face sizes: ``margin`` face widths left and right, ``margin`` face heights
    above and twice that below (the shoulders). The box is as small as that allows, grown along
    one side to the aspect ratio; when the photo cannot hold it, it shrinks to the largest box
    the photo holds and keeps the face inside whenever the face fits.
    """
    aspect = target_width / target_height
    left = face.x - margin * face.width
    right = face.right + margin * face.width
    top = face.y - margin * face.height
    bottom = face.bottom + 2 * margin * face.height
    width, height = right - left, bottom - top
    if width / height < aspect:
        width = height * aspect
    else:
        height = width / aspect
    if min(width, height) < MIN_CROP_SIDE:
        grow = MIN_CROP_SIDE / min(width, height)
        width, height = width * grow, height * grow
    largest_width = min(photo_width, photo_height * aspect)
    if width > largest_width:
        width, height = largest_width, largest_width / aspect
    width = max(1, min(photo_width, round(width)))
    height = max(1, min(photo_height, round(height)))
    x = _place(round((left + right - width) / 2), width, face.x, face.width, photo_width)
    y = _place(round((top + bottom - height) / 2), height, face.y, face.height, photo_height)
    return Box(x, y, width, height)


def _place(start: int, size: int, face_start: int, face_size: int, photo_size: int) -> int:
    """One axis of the box: moved to hold the face (or centred on it), then into the photo."""
    if size >= face_size:
        start = max(min(start, face_start), face_start + face_size - size)
    else:
        start = face_start + (face_size - size) // 2
    return min(max(0, start), photo_size - size)


def crop_problem(value: Any, photo_size: tuple[int, int] | None) -> str | None:
    """Why a request's ``crop`` is unacceptable, or None; bounds checked when the size is known."""
    if not isinstance(value, dict) or set(value) != set(CROP_FIELDS):
        return CROP_SHAPE_MESSAGE
    numbers = [value[name] for name in CROP_FIELDS]
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        return CROP_SHAPE_MESSAGE
    x, y, width, height = numbers
    if x < 0 or y < 0 or width < MIN_CROP_SIDE or height < MIN_CROP_SIDE:
        return f"x and y must be at least 0, width and height at least {MIN_CROP_SIDE}"
    if photo_size is not None:
        photo_width, photo_height = photo_size
        if x + width > photo_width or y + height > photo_height:
            return (
                f"must lie inside the stored photo ({photo_width}x{photo_height}): "
                "x + width <= photo width and y + height <= photo height"
            )
    return None


class Framing:
    """Detects faces at upload, applies FACE_POLICY, and chooses each job's crop."""

    def __init__(
        self,
        photos: PhotoStore,
        detector: FaceDetector | None,
        *,
        policy: str = "prefer",
        multiple: str = "largest",
        margin: float = 0.8,
    ) -> None:
        if policy not in FACE_POLICIES:
            raise ValueError(f"unknown face policy {policy!r}")
        if multiple not in MULTIPLE_FACE_RULES:
            raise ValueError(f"unknown rule for several faces {multiple!r}")
        if policy != "off" and detector is None:
            raise ValueError(f"FACE_POLICY={policy} needs a face detector")
        self.photos = photos
        self.detector = detector
        self.policy = policy
        self.multiple = multiple
        self.margin = margin

    def save_photo(self, upload: BinaryIO | bytes) -> dict[str, Any]:
        """Store an uploaded photo, file or bytes (refused, unstored, if the policy rules it out).

        Returns the upload answer: imageName, width, height and, unless FACE_POLICY is off,
        ``faces`` (largest first).
        """
        if self.policy == "off":
            return self.photos.save(upload).to_dict()
        found: list[Face] = []

        def inspect(image: Image.Image, size: tuple[int, int]) -> None:
            found.extend(self._detect(image, size))
            self._check(found, when="upload")

        stored = self.photos.save(upload, inspect=inspect)
        self._write_sidecar(stored.image_name, stored.width, stored.height, found)
        return {**stored.to_dict(), "faces": [face.to_dict() for face in found]}

    def photo_size(self, image_name: str) -> tuple[int, int] | None:
        """The stored photo's width and height, or None when there is no such photo."""
        try:
            self.photos.require(image_name)
        except NotFound:
            return None
        sidecar = self._read_sidecar(image_name)
        if sidecar is not None:
            return sidecar["width"], sidecar["height"]
        try:
            with self.photos.local_copy(image_name) as path, Image.open(path) as image:
                return image.size
        except (NotFound, FileNotFoundError):
            return None

    def frame(self, request: GenerateRequest) -> GenerateRequest:
        """The request with its crop chosen (NotFound for an unknown photo, 422 by policy)."""
        image_name = self.photos.require(request.image_name)
        if request.crop is not None:
            return request
        photo = self.photo_size(image_name) or (0, 0)
        _faces, crop = self._choose(image_name, photo, width=request.width, height=request.height)
        return replace(request, crop=crop)

    def describe(self, image_name: str, *, width: int, height: int) -> dict[str, Any]:
        """What generate would use for an avatar of this size: the photo, its faces, the crop.

        The same choice as ``frame`` (NotFound for an unknown photo, the same 422 by policy),
        made without a job, so a client can show it before generating.
        """
        self.photos.require(image_name)
        photo = self.photo_size(image_name) or (0, 0)
        faces, crop = self._choose(image_name, photo, width=width, height=height)
        return {
            "imageName": image_name,
            "width": photo[0],
            "height": photo[1],
            "faces": [face.to_dict() for face in faces],
            "crop": crop.to_dict(),
            "avatar": {"width": width, "height": height},
            "policy": self.policy,
        }

    def _choose(
        self, image_name: str, photo: tuple[int, int], *, width: int, height: int
    ) -> tuple[list[Face], Crop]:
        """The faces of the photo (of size ``photo``) and the crop for ``width`` x ``height``."""
        photo_width, photo_height = photo
        faces = [] if self.policy == "off" else self._faces_of(image_name)
        if self.policy != "off":
            self._check(faces, when="generate")
        if faces:
            box = crop_around_face(
                faces[0].box,
                photo_width=photo_width,
                photo_height=photo_height,
                target_width=width,
                target_height=height,
                margin=self.margin,
            )
            return faces, Crop(box, "face")
        box = center_crop(
            photo_width=photo_width,
            photo_height=photo_height,
            target_width=width,
            target_height=height,
        )
        return faces, Crop(box, "center")

    def _detect(self, image: Image.Image, size: tuple[int, int]) -> list[Face]:
        assert self.detector is not None
        return self.detector.detect(image, size=size)

    def _check(self, faces: list[Face], *, when: str) -> None:
        """Refuse by policy: no face under ``require``, several under ``refuse``."""
        if not faces and self.policy == "require":
            raise UnprocessablePhoto(
                "no face was found in the photo; send a photo where one face looks at the "
                "camera (FACE_POLICY=require)",
                code="no_face_found",
                details={"policy": self.policy, "checkedAt": when},
            )
        if len(faces) > 1 and self.multiple == "refuse":
            raise UnprocessablePhoto(
                f"{len(faces)} faces were found in the photo; send a photo of one person "
                "(FACE_MULTIPLE=refuse)",
                code="several_faces",
                details={
                    "faces": [face.to_dict() for face in faces],
                    "checkedAt": when,
                },
            )

    def _faces_of(self, image_name: str) -> list[Face]:
        """The faces kept beside the photo; detected now (and kept) for older photos."""
        sidecar = self._read_sidecar(image_name)
        if sidecar is not None:
            return [Face.from_dict(face) for face in sidecar["faces"]]
        with (
            self.photos.decode_slot(),
            self.photos.local_copy(image_name) as path,
            Image.open(path) as image,
        ):
            size = image.size
            faces = self._detect(reduced_copy(image), size)
        self._write_sidecar(image_name, size[0], size[1], faces)
        logger.info(
            "detected %d face(s) in %s, stored before face detection", len(faces), image_name
        )
        return faces

    def _read_sidecar(self, image_name: str) -> dict[str, Any] | None:
        try:
            raw = self.photos.read_record(image_name)
            if raw is None:
                return None
            data = json.loads(raw)
        except (OSError, ValueError) as exc:
            logger.warning("unreadable face record of %s (%s); detecting again", image_name, exc)
            return None
        return data if isinstance(data, dict) and isinstance(data.get("faces"), list) else None

    def _write_sidecar(self, image_name: str, width: int, height: int, faces: list[Face]) -> None:
        record = {"width": width, "height": height, "faces": [face.to_dict() for face in faces]}
        self.photos.write_record(image_name, json.dumps(record).encode())
