"""The web page driven in headless Chromium against the live service and the stand-in ComfyUI.

Needs Debian's ``chromium`` (/usr/bin/chromium, or CHROMIUM=path) and Playwright for Python; the
tests are skipped with the reason when either is missing. Playwright never downloads a browser
here: it drives the system one. Screenshots are saved in tests/artifacts/; with
UPDATE_DOCS_SCREENSHOT=1 the first test also writes docs/page.png for the README (and the face
test docs/page-framing.png).
"""

from __future__ import annotations

import io
import os
import re
import time
from dataclasses import fields
from pathlib import Path

import pytest

from avatar_service.config import Settings
from avatar_service.photos.framing import center_crop
from comfyui_standin import StandIn
from tests import photos
from tests.conftest import REPO_ROOT, make_photo
from tests.helpers import wait_for
from tests.replay_server import Answer, ReplayServer, step

CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "page.png"
FRAMING_SCREENSHOT = REPO_ROOT / "docs" / "page-framing.png"
WAIT_MS = 15_000
HAS_API_KEYS = "api_keys" in {field.name for field in fields(Settings)}
# A style from /styles in the select (not the note shown while the styles are not known).
STYLE_OPTION = '#style-select option:not([value=""])'


@pytest.fixture(scope="module")
def browser():
    """Headless system Chromium under Playwright (skipped with the reason when absent)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"no Chromium at {CHROMIUM}: install Debian's chromium package "
            "(apt-get install chromium) to run the browser tests"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="Playwright for Python is not installed (make setup)"
    )
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, request):
    """Open the page of a service in a fresh browser context; screenshot it at the end."""
    contexts = []
    errors: list[str] = []

    def open_(url: str, *, styles_loaded: bool = True, **context_options):
        context = browser.new_context(accept_downloads=True, **context_options)
        context.set_default_timeout(WAIT_MS)
        contexts.append(context)
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(url + "/")
        if styles_loaded:
            page.wait_for_selector("#style-select option", state="attached")
        return page

    yield open_
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for number, context in enumerate(contexts):
        for page in context.pages:
            suffix = f"-{number}" if number else ""
            page.screenshot(path=ARTIFACTS / f"{request.node.name}{suffix}.png", full_page=True)
        context.close()
    assert errors == [], "the page raised script errors"


def portrait() -> bytes:
    """A small drawn portrait (a face on a gradient) to upload."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (240, 300))
    draw = ImageDraw.Draw(image)
    for y in range(300):
        draw.line([(0, y), (240, y)], fill=(70 + y // 5, 110 + y // 6, 170 + y // 8))
    draw.ellipse((50, 190, 190, 330), fill=(40, 70, 120))  # shoulders
    draw.ellipse((70, 60, 170, 190), fill=(236, 188, 160))  # face
    draw.pieslice((62, 40, 178, 140), 180, 360, fill=(90, 55, 30))  # hair
    for x in (98, 142):
        draw.ellipse((x - 7, 112, x + 7, 124), fill=(40, 40, 60))
    draw.arc((100, 140, 140, 165), 20, 160, fill=(160, 60, 60), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def photo_file(tmp_path: Path, name: str, data: bytes) -> Path:
    """Write bytes to a file the browser can pick."""
    path = tmp_path / name
    path.write_bytes(data)
    return path


def text_of(page, selector: str) -> str:
    """The visible text of one element."""
    return page.locator(selector).inner_text().strip()


def wait_until(page, script: str, arg=None, *, timeout: float = WAIT_MS / 1000):
    """Poll a script in the page until it answers something truthy, with a hard bound.

    (Playwright's wait_for_function evaluates strings in the page, which the page's CSP forbids;
    evaluate() goes through the DevTools protocol and is not blocked.)
    """
    deadline = time.monotonic() + timeout
    while True:
        value = page.evaluate(script, arg)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout} s: {script}")
        page.wait_for_timeout(20)


def wait_text(page, selector: str, pattern: str) -> str:
    """Wait until an element's text matches ``pattern`` (a regex); return the text."""
    wait_until(
        page,
        "([selector, pattern]) => new RegExp(pattern).test("
        "document.querySelector(selector).textContent)",
        [selector, pattern],
    )
    return text_of(page, selector)


LOW_CONTRAST_SCRIPT = """() => {
  const parse = (c) => (c.match(/[\\d.]+/g) || []).map(Number);
  const lum = ([r, g, b]) => {
    const f = (v) => ((v /= 255) <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4);
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b);
  };
  const background = (el) => {
    for (; el; el = el.parentElement) {
      const c = parse(getComputedStyle(el).backgroundColor);
      if (c.length === 3 || c[3] > 0) return c.slice(0, 3);
    }
    return [255, 255, 255];
  };
  const low = [];
  for (const el of document.querySelectorAll("body *")) {
    const text = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text || !el.checkVisibility() || el.closest(":disabled")) continue;
    const a = lum(parse(getComputedStyle(el).color).slice(0, 3));
    const b = lum(background(el));
    const ratio = (Math.max(a, b) + 0.05) / (Math.min(a, b) + 0.05);
    if (ratio < 4.5) low.push(`${el.tagName.toLowerCase()}#${el.id}: ${ratio.toFixed(2)}`);
  }
  return low;
}"""


def low_contrast(page) -> list[str]:
    """Visible text whose contrast with its background is under 4.5:1 (WCAG AA)."""
    return page.evaluate(LOW_CONTRAST_SCRIPT)


def job_id_of(page) -> str:
    """The id of the job whose avatar the page shows (from the result image's URL)."""
    src = page.locator("#result-image").get_attribute("src")
    match = re.search(r"/avatars/([0-9a-f]{32})_", src or "")
    assert match, src
    return match.group(1)


# -- generating ------------------------------------------------------------------------------------


def test_photo_to_avatar_with_progress_download_and_recent(
    open_page, make_service, standin, tmp_path
):
    """Pick a photo, choose options, see live steps, get the avatar, download it, try again."""
    service = make_service()
    standin.set_faults(step_delay=0.02)
    page = open_page(service.url, viewport={"width": 1100, "height": 1000})
    page.locator("#standin-banner").wait_for(state="visible")  # after /readyz answers
    assert "not real avatars" in text_of(page, "#standin-banner")

    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.locator("#photo-preview").wait_for(state="visible")  # once the image has loaded
    page.check("input[name=gender][value=female]")
    page.select_option("#style-select", "cartoon")
    assert "cartoon" in wait_text(page, "#style-description", "[Cc]artoon").lower()
    page.check("input[name=size][value=custom]")
    page.fill("#width-input", "256")
    page.fill("#height-input", "256")
    page.click("#generate-button")

    assert re.fullmatch(r"Step \d+ of 70", wait_text(page, "#step-text", r"^Step \d+ of 70$"))
    assert page.locator("#cancel-button").is_visible()
    page.wait_for_selector("#result-image", state="visible")
    wait_until(page, "() => document.getElementById('result-image').naturalWidth === 256")
    job_id = job_id_of(page)
    record = service.http.get(f"/jobs/{job_id}").json()
    assert (record["status"], record["style"], record["gender"]) == (
        "succeeded",
        "cartoon",
        "female",
    )
    assert (record["width"], record["height"]) == (256, 256)
    assert text_of(page, "#result-caption") == (
        f"cartoon · female · 256 \u00d7 256 · seed {record['seed']}"
    )

    with page.expect_download() as download:
        page.click("#download-link")
    avatar = record["avatars"][0]
    # Named as the command line names its files: <photo>-<style>-<seed>.png.
    assert download.value.suggested_filename == f"me-cartoon-{record['seed']}.png"
    saved = Path(download.value.path()).read_bytes()
    assert saved == (tmp_path / "generated_avatar" / avatar["fileName"]).read_bytes()
    assert page.locator("#recent-list li").count() == 1
    assert low_contrast(page) == []
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=DOCS_SCREENSHOT)

    page.click("#again-button")
    wait_until(page, "() => document.querySelectorAll('#recent-list li').length === 2")
    second = service.http.get(f"/jobs/{job_id_of(page)}").json()
    assert second["jobId"] != job_id and second["seed"] != record["seed"]
    assert second["imageName"] == record["imageName"], "the photo is uploaded once"

    page.reload()
    wait_until(page, "() => document.querySelectorAll('#recent-list li').length === 2")
    page.locator("#recent-list button").nth(1).click()
    assert page.locator("#result-image").get_attribute("src") == avatar["url"]


def test_a_dropped_photo_is_taken(open_page, service):
    """Dropping a photo on the drop zone previews it like a chosen one."""
    page = open_page(service.url)
    data = portrait()
    transfer = page.evaluate_handle(
        """(bytes) => {
            const transfer = new DataTransfer();
            const file = new File([new Uint8Array(bytes)], "dropped.png", {type: "image/png"});
            transfer.items.add(file);
            return transfer;
        }""",
        list(data),
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.locator("#photo-preview").wait_for(state="visible")
    assert text_of(page, "#photo-name") == f"dropped.png ({int(len(data) / 1024 + 0.5)} KB)"
    assert page.locator("#photo-error").is_hidden()


def test_live_preview_frames_are_shown(open_page, make_service, tmp_path):
    """When ComfyUI sends preview frames, the page shows the latest one while the job runs."""
    standin = StandIn(root=tmp_path / "previewing", previews=True).start()
    try:
        service = make_service(comfyui_url=standin.url)
        standin.set_faults(step_delay=0.03)
        page = open_page(service.url)
        page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
        page.check("input[name=size][value=custom]")
        page.fill("#width-input", "256")
        page.fill("#height-input", "256")
        page.click("#generate-button")
        preview = page.locator("#live-preview")
        preview.wait_for(state="visible")
        assert re.search(r"/jobs/[0-9a-f]{32}/preview\?frame=\d+$", preview.get_attribute("src"))
        wait_until(page, "() => document.getElementById('live-preview').naturalWidth > 0")
        page.wait_for_selector("#result-image", state="visible")
        service.stop()
    finally:
        standin.stop()


def test_a_reload_takes_up_the_job_in_flight(open_page, make_service, standin, tmp_path):
    """Reloading the page while a job runs follows the same job to its avatar."""
    service = make_service()
    standin.set_faults(step_delay=0.05)
    page = open_page(service.url)
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.click("#generate-button")
    wait_text(page, "#step-text", r"^Step \d+ of 70$")
    job_id = page.locator("#progress-box").get_attribute("data-job-id")
    page.reload()
    wait_text(page, "#step-text", r"^Step \d+ of 70$")
    assert page.locator("#progress-box").get_attribute("data-job-id") == job_id
    assert page.locator("#generate-button").is_disabled()
    page.wait_for_selector("#result-image", state="visible")
    assert job_id_of(page) == job_id
    assert service.http.get(f"/jobs/{job_id}").json()["status"] == "succeeded"


def test_cancel_stops_the_job(open_page, make_service, standin, tmp_path):
    """Cancel while the sampler runs: the job is cancelled in the service and the page says so."""
    service = make_service()
    standin.set_faults(step_delay=0.2)
    page = open_page(service.url)
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.click("#generate-button")
    wait_text(page, "#step-text", r"^Step \d+ of 70$")
    job_id = page.locator("#progress-box").get_attribute("data-job-id")
    page.click("#cancel-button")
    assert wait_text(page, "#job-error", "cancelled") == "The job was cancelled."
    assert page.locator("#progress-box").is_hidden()
    assert service.http.get(f"/jobs/{job_id}").json()["status"] == "cancelled"
    assert len(standin.interrupts) == 1, "the running prompt was interrupted in ComfyUI"
    assert not page.locator("#generate-button").is_disabled()

    # A file refused next: the old photo and the cancelled job's message go, the hint resets.
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "notes.txt", b"hello")))
    assert wait_text(page, "#photo-error", "notes").startswith("“notes.txt” is a text/plain file")
    assert page.locator("#job-error").is_hidden()
    assert page.locator("#photo-frame").is_hidden()
    assert (text_of(page, "#drop-hint"), text_of(page, "#photo-name")) == ("Drop a photo here", "")
    assert page.locator("#empty-note").is_visible()


def test_queue_position_is_shown_while_waiting(open_page, make_service, standin, tmp_path):
    """Behind another job the page shows its place in the queue, then runs when it is free."""
    service = make_service()
    standin.set_faults(step_delay=0.2)
    blocker = service.http.post(
        "/generate-avatar-by-image", json={"imageName": service.upload(portrait()), "async": True}
    ).json()["jobId"]
    service.wait_job(blocker, until=lambda record: record["status"] == "running")
    page = open_page(service.url)
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.click("#generate-button")
    assert wait_text(page, "#status-text", "queue") == "Waiting in the queue: position 1."
    standin.set_faults(step_delay=0)
    service.http.post(f"/jobs/{blocker}/cancel")
    page.wait_for_selector("#result-image", state="visible")
    assert page.locator("#job-error").is_hidden()


# -- the face and the crop, before generating ----------------------------------------------------


def choose_photo(page, tmp_path: Path, name: str, data: bytes) -> str:
    """Pick a photo; the imageName of the upload the page makes at once."""
    with page.expect_response(lambda answer: "/upload-image" in answer.url) as uploaded:
        page.set_input_files("#photo-input", str(photo_file(tmp_path, name, data)))
    return uploaded.value.json()["imageName"]


def drawn_crop(page, previous: str | None = None) -> dict:
    """The crop the page draws (from its overlay), once it is drawn (and differs from before)."""
    text = wait_until(
        page,
        """(previous) => {
            const overlay = document.getElementById('framing-overlay');
            const crop = overlay.dataset.crop;
            return !overlay.hasAttribute('hidden') && crop && crop !== previous ? crop : null;
        }""",
        previous,
    )
    import json

    return json.loads(text)


def rect_of(page, selector: str) -> dict[str, int]:
    """The x, y, width and height attributes of an SVG rect, as numbers."""
    return {
        name: int(page.locator(selector).get_attribute(name))
        for name in ("x", "y", "width", "height")
    }


def assert_drawn_at(page, selector: str, box: dict, photo_size: tuple[int, int]) -> None:
    """The rect is on screen where ``box`` (photo pixels) lies on the scaled preview.

    Centres match within a pixel; sizes within the stroke drawn around the box (at most 3 px).
    """
    image = page.locator("#photo-preview").bounding_box()
    drawn = page.locator(selector).bounding_box()
    sx, sy = image["width"] / photo_size[0], image["height"] / photo_size[1]
    want_width, want_height = box["width"] * sx, box["height"] * sy
    want_cx = image["x"] + box["x"] * sx + want_width / 2
    want_cy = image["y"] + box["y"] * sy + want_height / 2
    assert drawn["x"] + drawn["width"] / 2 == pytest.approx(want_cx, abs=1.0), (drawn, box)
    assert drawn["y"] + drawn["height"] / 2 == pytest.approx(want_cy, abs=1.0), (drawn, box)
    assert want_width <= drawn["width"] <= want_width + 4, (drawn, box)
    assert want_height <= drawn["height"] <= want_height + 4, (drawn, box)


def test_face_and_crop_are_drawn_over_the_preview(open_page, service, tmp_path):
    """The astronaut: her face box and the service's crop over the preview; a new size moves the
    crop to the route's answer for it, and the job then uses that very crop."""
    page = open_page(service.url, viewport={"width": 1100, "height": 1000})
    image_name = choose_photo(page, tmp_path, "astronaut.png", photos.png(photos.astronaut()))
    assert wait_text(page, "#framing-text", "Face") == (
        "Face found; the avatar will be cropped around it."
    )
    crop = drawn_crop(page)
    square = service.http.get(
        f"/photos/{image_name}/framing", params={"width": 512, "height": 512}
    ).json()
    assert crop == square["crop"] and crop["source"] == "face"
    assert rect_of(page, "#crop-box") == {
        k: square["crop"][k] for k in ("x", "y", "width", "height")
    }
    face = square["faces"][0]
    assert rect_of(page, "#face-box") == {k: face[k] for k in ("x", "y", "width", "height")}
    page.locator("#photo-preview").wait_for(state="visible")
    wait_until(page, "() => document.getElementById('photo-preview').naturalWidth > 0")
    assert_drawn_at(page, "#crop-box", square["crop"], (512, 512))
    assert_drawn_at(page, "#face-box", face, (512, 512))

    page.check("input[name=size][value=custom]")
    page.fill("#width-input", "1024")
    page.fill("#height-input", "512")
    wide = drawn_crop(page, previous=page.locator("#framing-overlay").get_attribute("data-crop"))
    expected = service.http.get(
        f"/photos/{image_name}/framing", params={"width": 1024, "height": 512}
    ).json()["crop"]
    assert wide == expected and wide["width"] == 2 * wide["height"]
    assert_drawn_at(page, "#crop-box", wide, (512, 512))

    page.click("#generate-button")
    page.wait_for_selector("#result-image", state="visible")
    record = service.http.get(f"/jobs/{job_id_of(page)}").json()
    assert (record["imageName"], record["crop"]) == (image_name, wide)
    if os.environ.get("UPDATE_DOCS_SCREENSHOT") == "1":
        wait_until(page, "() => document.getElementById('result-image').naturalWidth > 0")
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(
            path=FRAMING_SCREENSHOT, clip={"x": 0, "y": 0, "width": 1100, "height": 720}
        )


def test_a_faceless_photo_says_no_face(open_page, service, tmp_path):
    """The cat: no face box, the centre crop drawn, and a sentence saying so (phone width)."""
    page = open_page(
        service.url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
    )
    image_name = choose_photo(page, tmp_path, "cat.png", photos.png(photos.chelsea()))
    assert wait_text(page, "#framing-text", "^No face") == (
        "No face found: the photo will be centre-cropped."
    )
    crop = drawn_crop(page)
    answer = service.http.get(f"/photos/{image_name}/framing").json()
    assert answer["faces"] == [] and crop == answer["crop"]
    centre = center_crop(photo_width=451, photo_height=300, target_width=512, target_height=512)
    assert crop == {**centre.to_dict(), "source": "center"}
    assert page.locator("#face-box").is_hidden()
    wait_until(page, "() => document.getElementById('photo-preview').naturalWidth > 0")
    assert_drawn_at(page, "#crop-box", crop, (451, 300))
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert low_contrast(page) == []


def test_require_shows_the_refusal_next_to_the_photo(open_page, make_service, tmp_path):
    """Under FACE_POLICY=require a faceless photo is refused at once, in a sentence."""
    service = make_service(face_policy="require")
    page = open_page(service.url)
    page.set_input_files(
        "#photo-input", str(photo_file(tmp_path, "cat.png", photos.png(photos.chelsea())))
    )
    assert wait_text(page, "#photo-error", "face") == (
        "No face was found in this photo, and this service needs one: choose a photo where one "
        "face looks at the camera."
    )
    assert page.locator("#framing-overlay").is_hidden()
    assert page.locator("#framing-text").is_hidden()


# -- errors next to their cause ------------------------------------------------------------------


def test_a_non_image_is_refused_before_upload(open_page, service, tmp_path):
    """A file that is not a JPEG, PNG or WebP is refused in the browser, next to the photo."""
    page = open_page(service.url)
    uploads = []
    page.on(
        "request", lambda request: uploads.append(request.url) if "upload" in request.url else None
    )
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "notes.txt", b"hello")))
    assert wait_text(page, "#photo-error", "notes") == (
        "“notes.txt” is a text/plain file; choose a JPEG, PNG or WebP photo."
    )
    assert page.locator("#photo-input").get_attribute("aria-invalid") == "true"
    page.click("#generate-button")
    assert wait_text(page, "#photo-error", "Choose") == "Choose a photo first."
    assert uploads == []


@pytest.mark.parametrize(
    ("name", "data", "sentence"),
    [
        pytest.param(
            "fake.png",
            b"not a picture at all",
            "This file is not a JPEG, PNG or WebP photo; choose another one.",
            id="text-named-png",
        ),
        pytest.param(
            "tiny.png",
            make_photo((10, 120, 200), size=(32, 48)),
            "The photo is 32x48; both sides must be at least 64 px.",
            id="too-small",
        ),
    ],
)
def test_service_refusals_of_the_photo_are_shown_next_to_it(
    open_page, service, tmp_path, name, data, sentence
):
    """What the upload answers (415, 400) is shown as a sentence next to the photo."""
    page = open_page(service.url)
    page.set_input_files("#photo-input", str(photo_file(tmp_path, name, data)))
    page.click("#generate-button")
    assert wait_text(page, "#photo-error", ".") == sentence
    assert page.locator("#progress-box").is_hidden()
    assert not page.locator("#generate-button").is_disabled()


def test_bad_size_and_seed_are_shown_next_to_the_fields(open_page, service, tmp_path):
    """A custom size off the 8 px grid and a seed that is not a number are refused in place."""
    page = open_page(service.url)
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.check("input[name=size][value=custom]")
    page.fill("#width-input", "100")
    page.fill("#seed-input", "twelve")
    page.click("#generate-button")
    assert wait_text(page, "#size-error", "Width") == (
        "Width and height must be whole numbers from 64 to 2048, multiples of 8."
    )
    assert wait_text(page, "#seed-error", "seed") == (
        "The seed must be a whole number from 0 to 9007199254740991."
    )
    assert page.locator("#width-input").get_attribute("aria-invalid") == "true"
    assert page.locator("#progress-box").is_hidden()
    assert low_contrast(page) == []
    page.emulate_media(color_scheme="dark")
    assert low_contrast(page) == []


def test_a_failed_job_shows_comfyuis_error(open_page, make_service, standin, tmp_path):
    """A job that fails in ComfyUI shows the service's message where the result would be."""
    service = make_service()
    standin.set_faults(fail_at_node="KSampler")
    page = open_page(service.url)
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.click("#generate-button")
    message = wait_text(page, "#job-error", "ComfyUI")
    assert message.startswith("ComfyUI failed while running node ")
    assert "(KSampler)" in message and message.endswith(".")
    assert page.locator("#result-box").is_hidden()


# -- layout, accessibility, banners ------------------------------------------------------------


def test_phone_width_layout(open_page, service):
    """At a phone's width nothing scrolls sideways and the camera button is offered."""
    page = open_page(
        service.url, viewport={"width": 360, "height": 740}, is_mobile=True, has_touch=True
    )
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    assert page.locator("label[for=camera-input]").is_visible()
    assert page.locator("#camera-input").get_attribute("capture") == "user"
    assert page.locator("#generate-button").bounding_box()["width"] <= 360


@pytest.mark.parametrize("motion", ["reduce", "no-preference"])
def test_progress_and_cancel_come_into_view_on_a_phone(
    open_page, make_service, standin, tmp_path, motion
):
    """At 360 x 740 the progress (with Cancel) is scrolled into view once a job starts."""
    service = make_service()
    standin.set_faults(step_delay=0.2)
    page = open_page(
        service.url,
        viewport={"width": 360, "height": 740},
        is_mobile=True,
        has_touch=True,
        reduced_motion=motion,
    )
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.locator("#photo-preview").wait_for(state="visible")
    page.click("#generate-button")
    wait_text(page, "#step-text", r"^Step \d+ of 70$")
    in_view = """() => {
        const box = document.getElementById('cancel-button').getBoundingClientRect();
        const status = document.getElementById('status-text').getBoundingClientRect();
        return box.height > 0 && status.top >= 0 && box.bottom <= window.innerHeight;
    }"""
    wait_until(page, in_view, timeout=3)
    page.click("#cancel-button")
    assert wait_text(page, "#job-error", "cancelled") == "The job was cancelled."


def test_every_control_is_labelled_and_reachable(open_page, service):
    """Each form control has a label, and the file picker is reached with the keyboard."""
    page = open_page(service.url)
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll('input, select, button, textarea')]
            .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                    && !el.textContent.trim())
            .map((el) => el.id || el.name || el.outerHTML)"""
    )
    assert unlabelled == []
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.id")
    assert focused == "photo-input"
    assert page.evaluate("getComputedStyle(document.activeElement).display") != "none"


def test_no_standin_banner_on_a_real_comfyui(open_page, make_service, recording):
    """Against a replay of a real ComfyUI's answers the stand-in banner stays hidden."""
    stats = step(recording("10_misc_endpoints.json"), "system_stats")
    replay = ReplayServer(frames=[], start_ms=0, ids={}, answers=[Answer(stats)]).start()
    try:
        service = make_service(comfyui_url=replay.url)
        page = open_page(service.url)
        page.wait_for_load_state("networkidle")
        assert page.locator("#standin-banner").is_hidden()
        service.stop()
    finally:
        replay.stop()


def test_a_service_that_is_not_ready_says_why(open_page, make_service):
    """With no ComfyUI reachable, a banner gives /readyz's reason (and no stand-in banner)."""
    service = make_service(comfyui_url="http://127.0.0.1:9")
    page = open_page(service.url)
    assert wait_text(page, "#ready-banner", "ready") == (
        "The service is not ready: No ComfyUI server is reachable."
    )
    assert page.locator("#standin-banner").is_hidden()


@pytest.mark.skipif(not HAS_API_KEYS, reason="API keys not available in this build")
def test_key_prompt_when_keys_are_on(open_page, make_service, tmp_path):
    """With API keys on, the page asks for the key once, then works with it (fresh links too)."""
    service = make_service(api_keys="sesame-0123456789abcdef", token_ttl=3)
    page = open_page(service.url, styles_loaded=False)
    page.locator("#key-dialog").wait_for(state="visible")
    # Behind the dialog the form says what it waits for instead of showing empty controls.
    pending = "Enter your API key to load the styles."
    assert wait_text(page, "#style-select", "API key") == pending
    assert text_of(page, "#gender-options") == pending
    assert page.locator("input[name=size]").evaluate_all("(all) => all.map((i) => i.value)") == [
        "512x512",
        "768x768",
        "1024x1024",
        "768x1024",
        "custom",
    ]
    assert page.locator("input[name=size][value='512x512']").is_checked()
    page.fill("#key-input", "wrong-key-0123456789")
    page.click("#key-save")
    assert wait_text(page, "#key-error", "accepted") == "This API key was not accepted."
    assert page.evaluate("document.body.innerText.split('not accepted').length - 1") == 1
    page.fill("#key-input", "sesame-0123456789abcdef")
    page.click("#key-save")
    page.wait_for_selector(STYLE_OPTION, state="attached")
    assert page.locator("input[name=gender]").count() > 0
    page.set_input_files("#photo-input", str(photo_file(tmp_path, "me.png", portrait())))
    page.click("#generate-button")
    page.wait_for_selector("#result-image", state="visible")
    assert page.locator("#key-dialog").is_hidden()

    # The avatar's signed link expires (TOKEN_TTL); the recent strip asks for a fresh one.
    old_url = page.locator("#recent-list button").get_attribute("data-url")
    assert "token=" in old_url
    wait_for(
        lambda: service.http.get(old_url).status_code == 401,
        timeout=10,
        message="the signed link expired",
        interval=0.1,
    )
    # A new browser profile with this one's storage: no cached image to fall back on.
    page = open_page(service.url, storage_state=page.context.storage_state())
    wait_until(
        page,
        """(old) => {
            const button = document.querySelector('#recent-list button');
            return button && button.dataset.url !== old
                && button.querySelector('img').naturalWidth > 0;
        }""",
        old_url,
    )
    assert page.locator("#key-dialog").is_hidden(), "the stored key is used without asking"
