"""Photo decoding: multi-picture JPEGs, extreme aspect ratios, orientation, bounded memory."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageDraw, ImageOps, ImageStat

from tests.conftest import REPO_ROOT


def encoded(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def pattern(size: tuple[int, int]) -> Image.Image:
    """An RGB picture whose every quarter differs, so a wrong rotation or flip shows."""
    image = Image.new("RGB", size, (30, 60, 90))
    draw = ImageDraw.Draw(image)
    w, h = size
    draw.rectangle((0, 0, w // 2, h // 3), fill=(220, 40, 40))
    draw.rectangle((w // 2, h // 2, w, h), fill=(40, 200, 60))
    draw.ellipse((w // 8, h // 2, w // 3, h - h // 8), fill=(250, 240, 20))
    return image


def test_mpo_is_stored_as_its_first_frame(service, tmp_path):
    """A multi-picture JPEG (MPO: phones, stereo cameras) is a JPEG: its first frame is kept."""
    left = Image.new("RGB", (320, 240), (200, 30, 30))
    right = Image.new("RGB", (320, 240), (30, 30, 200))
    data = encoded(left, "MPO", save_all=True, append_images=[right])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    answer = service.http.post("/upload-image", files={"image": ("stereo.jpg", data)})
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert (body["width"], body["height"]) == (320, 240)
    with Image.open(tmp_path / "uploads" / body["imageName"]) as stored:
        red, _, blue = stored.convert("RGB").getpixel((160, 120))
    assert red > 150 and blue < 80


@pytest.mark.parametrize(
    ("size", "stored"),
    [((64, 20000), (13, 4096)), ((20000, 100), (4096, 20))],
    ids=["64x20000", "20000x100"],
)
def test_extreme_aspect_ratio_is_refused(service, tmp_path, size, stored):
    """A photo whose short side would fall under MIN_IMAGE_SIDE once scaled to 4096 px is a 400."""
    data = encoded(Image.new("L", size, 128), "PNG")
    answer = service.http.post("/upload-image", files={"image": ("strip.png", data)})
    assert answer.status_code == 400, answer.text
    width, height = size
    assert answer.json() == {
        "error": {
            "code": "image_aspect_ratio",
            "message": (
                f"the photo is {width}x{height}; scaled to fit the stored size it would be "
                f"{stored[0]}x{stored[1]}, under the minimum side of 64 px: crop it to a "
                "less elongated shape"
            ),
            "details": {
                "width": width,
                "height": height,
                "storedWidth": stored[0],
                "storedHeight": stored[1],
                "minSide": 64,
            },
        }
    }
    assert list((tmp_path / "uploads").iterdir()) == []


def test_long_photo_within_the_rule_is_stored(service):
    """A long photo whose scaled short side still reaches MIN_IMAGE_SIDE is accepted."""
    data = encoded(Image.new("L", (100, 6000), 128), "PNG")
    answer = service.http.post("/upload-image", files={"image": ("strip.png", data)})
    assert answer.status_code == 201, answer.text
    assert (answer.json()["width"], answer.json()["height"]) == (68, 4096)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied(service, tmp_path, orientation):
    """Each EXIF orientation gives the same picture as rotating first, then scaling down."""
    original = pattern((4300, 240))
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(original, "PNG", exif=exif.tobytes())
    answer = service.http.post("/upload-image", files={"image": ("o.png", data)})
    assert answer.status_code == 201, answer.text
    upright = ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    expected = upright.resize(
        (answer.json()["width"], answer.json()["height"]), Image.Resampling.LANCZOS
    )
    with Image.open(tmp_path / "uploads" / answer.json()["imageName"]) as stored:
        assert stored.size == expected.size
        difference = ImageStat.Stat(ImageChops.difference(stored.convert("RGB"), expected))
    # Scaling before or after turning rounds differently at hard edges, by a few levels at most.
    assert max(difference.mean) < 0.5, difference.mean


def test_transparency_is_flattened_on_white_in_every_band(service, tmp_path):
    """A transparent photo too big to keep whole is flattened onto white across its whole height."""
    image = Image.new("RGBA", (300, 5000), (0, 0, 0, 0))
    ImageDraw.Draw(image).rectangle((0, 2500, 300, 5000), fill=(10, 20, 200, 255))
    answer = service.http.post("/upload-image", files={"image": ("t.png", encoded(image, "PNG"))})
    assert answer.status_code == 201, answer.text
    with Image.open(tmp_path / "uploads" / answer.json()["imageName"]) as stored:
        stored = stored.convert("RGB")
        assert stored.size == (246, 4096)
        assert stored.getpixel((100, 10)) == (255, 255, 255)
        assert stored.getpixel((100, 1000)) == (255, 255, 255)
        assert stored.getpixel((100, 4000)) == (10, 20, 200)


def test_busy_decoder_answers_503_service_busy(make_service, photo, tmp_path):
    """With every decode slot taken past DECODE_WAIT, an upload answers 503 service_busy."""
    service = make_service(max_concurrent_decodes=1, decode_wait=0.2)
    with service.services.photos.decode_slot():
        answer = service.http.post("/upload-image", files={"image": ("p.png", photo)})
    assert answer.status_code == 503
    assert answer.headers["Retry-After"] == "5"
    assert answer.json() == {
        "error": {
            "code": "service_busy",
            "message": "too many photos are being decoded at once; try again shortly",
            "details": {"maxConcurrentDecodes": 1},
        }
    }
    assert list((tmp_path / "uploads").iterdir()) == []
    assert service.http.post("/upload-image", files={"image": ("p.png", photo)}).status_code == 201


# -- memory: measured in a fresh process, as the peak resident size during one save ------------

MEASURE = """
import json, resource, sys
from pathlib import Path
from avatar_service.photos.store import PhotoStore

def rss_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

store = PhotoStore(Path(sys.argv[2]), max_bytes=10**9, max_pixels=50_000_000, min_side=64)
data = Path(sys.argv[1]).read_bytes()
inspect = None
if sys.argv[4:] == ["faces"]:  # as FACE_POLICY=prefer does: detect in the stored photo
    from avatar_service.photos.faces import FaceDetector

    detector = FaceDetector()
    inspect = lambda image, size: detector.detect(image, size=size)
store.save(open(sys.argv[3], "rb").read(), inspect=inspect)  # load every plugin first
try:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # reset the peak (VmHWM) to the current size
    peak_field = "VmHWM"
except OSError:
    peak_field = None
before = rss_kib("VmRSS")
stored = store.save(data, inspect=inspect)
peak = rss_kib(peak_field) if peak_field else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"before": before, "peak": peak, "size": [stored.width, stored.height]}))
"""


def peak_rss_increase(
    tmp_path: Path, data: bytes, *, faces: bool = False
) -> tuple[int, tuple[int, int]]:
    """Bytes the resident size of a fresh process rises by while it stores ``data``.

    With ``faces``, the stored photo is also read back for face detection.
    """
    source = tmp_path / "source.bin"
    source.write_bytes(data)
    small = tmp_path / "small.png"
    small.write_bytes(encoded(pattern((300, 200)), "PNG"))
    store_dir = tmp_path / "stored"
    store_dir.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURE,
            str(source),
            str(store_dir),
            str(small),
            *(["faces"] if faces else []),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    result = json.loads(done.stdout)
    return (result["peak"] - result["before"]) * 1024, tuple(result["size"])


@pytest.mark.parametrize("faces", [False, True], ids=["plain", "with-face-detection"])
def test_large_greyscale_png_is_never_copied_at_full_size(tmp_path, faces):
    """A tiny 6000x6000 greyscale PNG costs one decode plus less than its stored RGB size."""
    image = Image.new("L", (6000, 6000), 90)
    ImageDraw.Draw(image).ellipse((1000, 1000, 5000, 5000), fill=200)
    data = encoded(image, "PNG")
    del image
    assert len(data) < 500_000
    increase, size = peak_rss_increase(tmp_path, data, faces=faces)
    assert size == (2048, 2048)
    decoded = 6000 * 6000  # one byte per pixel, as it is in the file
    stored_rgb = 2048 * 2048 * 4  # Pillow keeps RGB in four bytes per pixel
    assert increase < decoded + stored_rgb, f"peak rose by {increase / 2**20:.0f} MiB"


@pytest.mark.parametrize("faces", [False, True], ids=["plain", "with-face-detection"])
def test_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, faces):
    """A 40-megapixel JPEG is decoded at the scale it is stored at (draft), never at full size."""
    image = pattern((8000, 5000))
    data = encoded(image, "JPEG", quality=90)
    del image
    increase, size = peak_rss_increase(tmp_path, data, faces=faces)
    assert size == (3277, 2048)
    full_size = 8000 * 5000 * 4
    stored_rgb = 3277 * 2048 * 4
    assert increase < 2 * stored_rgb < full_size, f"peak rose by {increase / 2**20:.0f} MiB"


def test_photo_within_bounds_is_stored_pixel_for_pixel(service, tmp_path):
    """A photo that needs no scaling is stored losslessly (the band-wise PNG writer is exact)."""
    original = Image.merge(
        "RGB", [Image.effect_noise((300, 200), 60).convert("L") for _ in range(3)]
    )
    answer = service.http.post(
        "/upload-image", files={"image": ("n.png", encoded(original, "PNG"))}
    )
    assert answer.status_code == 201, answer.text
    with Image.open(tmp_path / "uploads" / answer.json()["imageName"]) as stored:
        assert stored.mode == "RGB"
        assert stored.tobytes() == original.tobytes()
