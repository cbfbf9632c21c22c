"""Face detection on real and faceless photos, and the crop geometry around a face."""

from __future__ import annotations

import random

import pytest

from avatar_service.photos.faces import Box, FaceDetector
from avatar_service.photos.framing import center_crop, crop_around_face, crop_problem
from tests import photos
from tests.photos import ASTRONAUT_FACE


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    """One detector for the module (loading the cascade takes a moment)."""
    return FaceDetector()


def overlap(a: Box, b: Box) -> float:
    """Intersection over union of two boxes."""
    width = max(0, min(a.right, b.right) - max(a.x, b.x))
    height = max(0, min(a.bottom, b.bottom) - max(a.y, b.y))
    shared = width * height
    return shared / (a.area + b.area - shared)


def scaled(box: Box, factor: float) -> Box:
    return Box(*(round(v * factor) for v in (box.x, box.y, box.width, box.height)))


def test_astronaut_face_is_found_where_it_is(detector):
    """The one face of the astronaut portrait is found over the face measured by eye."""
    [face] = detector.detect(photos.astronaut())
    assert overlap(face.box, ASTRONAUT_FACE) > 0.5
    assert face.confidence is not None and face.confidence > 0


def test_boxes_are_in_the_photo_coordinates_of_a_large_photo(detector):
    """A photo larger than the detector's copy gets boxes mapped back to its own pixels."""
    large = photos.astronaut().resize((2048, 2048))
    assert max(large.size) > detector.long_side
    [face] = detector.detect(large)
    assert overlap(face.box, scaled(ASTRONAUT_FACE, 4)) > 0.5
    assert face.box.right <= 2048 and face.box.bottom <= 2048


@pytest.mark.parametrize(
    "make",
    [photos.chelsea, photos.text_page, photos.gradient, photos.drawn_text],
    ids=["cat", "printed-text", "gradient", "drawn-text"],
)
def test_no_face_in_faceless_photos(detector, make):
    """A cat, text and gradients have no face."""
    assert detector.detect(make()) == []


def test_several_faces_come_largest_first(detector):
    """Two people: both faces, the larger one first."""
    faces = detector.detect(photos.two_people())
    assert len(faces) == 2
    big, small = faces
    assert big.box.area > small.box.area
    assert overlap(big.box, ASTRONAUT_FACE) > 0.5
    right_face = Box(512 + 120, 85 + 40, 60, 73)  # ASTRONAUT_FACE at 2/3 scale, moved right
    assert overlap(small.box, right_face) > 0.4


def test_grey_photos_are_accepted(detector):
    """A greyscale copy of the portrait finds the same face."""
    [face] = detector.detect(photos.astronaut().convert("L"))
    assert overlap(face.box, ASTRONAUT_FACE) > 0.5


TARGETS = [(512, 1024), (1024, 512), (512, 512), (2048, 512), (768, 1024)]


@pytest.mark.parametrize(("target_width", "target_height"), TARGETS)
def test_astronaut_face_crop_keeps_the_face(target_width, target_height):
    """For portrait, landscape and square targets the crop holds the face, at the target's ratio."""
    crop = crop_around_face(
        ASTRONAUT_FACE,
        photo_width=512,
        photo_height=512,
        target_width=target_width,
        target_height=target_height,
        margin=0.8,
    )
    assert crop.contains(ASTRONAUT_FACE)
    assert Box(0, 0, 512, 512).contains(crop)
    assert crop.width / crop.height == pytest.approx(target_width / target_height, rel=0.01)


def test_wide_avatar_centre_crop_loses_the_face_and_face_crop_keeps_it():
    """1024x512 from the 512x512 portrait: the centre crop cuts the face; the face crop does not."""
    centre = center_crop(photo_width=512, photo_height=512, target_width=1024, target_height=512)
    assert centre == Box(0, 128, 512, 256)
    assert not centre.contains(ASTRONAUT_FACE)
    face_crop = crop_around_face(
        ASTRONAUT_FACE,
        photo_width=512,
        photo_height=512,
        target_width=1024,
        target_height=512,
        margin=0.8,
    )
    assert face_crop.contains(ASTRONAUT_FACE)


def test_face_crop_is_head_and_shoulders_when_the_photo_has_room():
    """A small face in a big photo: margin face sizes on the sides and above, twice below."""
    face = Box(1000, 800, 200, 200)
    crop = crop_around_face(
        face, photo_width=4000, photo_height=3000, target_width=512, target_height=512, margin=0.5
    )
    # 0.5 face above, 1.0 face below -> 2.5 faces high; square: 2.5 faces wide, centred.
    assert crop == Box(850, 700, 500, 500)


def test_face_crop_never_leaves_the_photo_or_the_face():
    """Random faces, photos and targets: the crop lies in the photo, holds the face when it can."""
    rng = random.Random(20261130)
    for _ in range(2000):
        photo_width, photo_height = rng.randint(64, 4096), rng.randint(64, 4096)
        width, height = rng.randint(8, photo_width), rng.randint(8, photo_height)
        face = Box(
            rng.randint(0, photo_width - width),
            rng.randint(0, photo_height - height),
            width,
            height,
        )
        target_width, target_height = rng.randrange(64, 2049, 8), rng.randrange(64, 2049, 8)
        crop = crop_around_face(
            face,
            photo_width=photo_width,
            photo_height=photo_height,
            target_width=target_width,
            target_height=target_height,
            margin=rng.choice([0.0, 0.3, 0.8, 2.0]),
        )
        assert Box(0, 0, photo_width, photo_height).contains(crop), (face, crop)
        assert crop.width >= 1 and crop.height >= 1
        if crop.width >= face.width and crop.height >= face.height:
            assert crop.contains(face), (photo_width, photo_height, face, crop)
        # The aspect ratio is the target's, up to rounding to whole pixels.
        aspect = target_width / target_height
        assert abs(crop.width - crop.height * aspect) <= max(1.0, aspect), (crop, aspect)


SHAPE = 'must be an object {"x", "y", "width", "height"} of integers'
SIZES = "x and y must be at least 0, width and height at least 64"
OUTSIDE = (
    "must lie inside the stored photo (512x512): "
    "x + width <= photo width and y + height <= photo height"
)


@pytest.mark.parametrize(
    ("value", "size", "problem"),
    [
        ([1, 2, 3, 4], (512, 512), SHAPE),
        ({"x": 0, "y": 0, "width": 10}, (512, 512), SHAPE),
        ({"x": 0, "y": 0, "width": 10, "height": 10, "z": 1}, None, SHAPE),
        ({"x": 0.5, "y": 0, "width": 10, "height": 10}, None, SHAPE),
        ({"x": True, "y": 0, "width": 10, "height": 10}, None, SHAPE),
        ({"x": -1, "y": 0, "width": 10, "height": 10}, None, SIZES),
        ({"x": 0, "y": 0, "width": 0, "height": 10}, None, SIZES),
        ({"x": 0, "y": 0, "width": 63, "height": 100}, None, SIZES),
        ({"x": 0, "y": 0, "width": 1, "height": 1}, (512, 512), SIZES),
        ({"x": 449, "y": 0, "width": 64, "height": 64}, (512, 512), OUTSIDE),
        ({"x": 0, "y": 300, "width": 64, "height": 213}, (512, 512), OUTSIDE),
        ({"x": 500, "y": 0, "width": 64, "height": 64}, None, None),
        ({"x": 448, "y": 0, "width": 64, "height": 64}, (512, 512), None),
        ({"x": 0, "y": 0, "width": 512, "height": 512}, (512, 512), None),
    ],
)
def test_crop_problems(value, size, problem):
    """A request crop must be four integers, positive sizes, inside the photo when it is known."""
    assert crop_problem(value, size) == problem
