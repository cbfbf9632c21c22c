"""The web page in headless Chromium: a new photo lets go of the job made from the old one, and
"try again" makes another avatar of the photo the shown avatar was made from."""

from __future__ import annotations

from tests import test_browser
from tests.conftest import make_photo
from tests.test_browser import job_id_of, photo_file, portrait, wait_text, wait_until

# The browser fixtures of the page's own tests: headless system Chromium, one context a page.
browser = test_browser.browser
open_page = test_browser.open_page

RECENT_COUNT = "() => document.querySelectorAll('#recent-list li').length"


def choose(page, path) -> None:
    """Pick a photo and wait for its preview."""
    page.set_input_files("#photo-input", str(path))
    page.locator("#photo-preview").wait_for(state="visible")


def image_name_of_photo(page) -> str:
    """The imageName the page's chosen photo was uploaded under (the last upload)."""
    return page.evaluate(
        "() => performance.getEntriesByType('resource')"
        ".filter((e) => e.name.includes('/photos/')).pop().name"
        ".split('/photos/')[1].split('/')[0]"
    )


def test_a_new_photo_lets_go_of_the_running_job(open_page, make_service, standin, tmp_path):
    """Choosing another photo mid-job: the old job's progress goes, its avatar never shows."""
    service = make_service()
    standin.set_faults(step_delay=0.05)
    page = open_page(service.url)
    choose(page, photo_file(tmp_path, "first.png", portrait()))
    page.click("#generate-button")
    wait_text(page, "#step-text", r"^Step \d+ of 70$")
    old_job = page.locator("#progress-box").get_attribute("data-job-id")

    choose(page, photo_file(tmp_path, "second.png", make_photo((20, 160, 90), (128, 128))))
    assert page.locator("#progress-box").is_hidden()
    assert page.locator("#empty-note").is_visible()
    assert not page.locator("#generate-button").is_disabled()
    assert page.evaluate("() => sessionStorage.getItem('avatarService.job')") is None
    assert service.wait_job(old_job)["status"] == "succeeded"
    assert page.locator("#result-box").is_hidden()
    assert page.evaluate(RECENT_COUNT) == 0

    wait_until(page, "() => !document.getElementById('framing-overlay').hasAttribute('hidden')")
    second_name = image_name_of_photo(page)
    standin.set_faults(step_delay=0)
    page.click("#generate-button")
    page.wait_for_selector("#result-image", state="visible")
    new_job = service.http.get(f"/jobs/{job_id_of(page)}").json()
    assert new_job["jobId"] != old_job
    assert new_job["imageName"] == second_name
    assert page.evaluate(RECENT_COUNT) == 1


def test_try_again_uses_the_photo_of_the_shown_avatar(open_page, make_service, tmp_path):
    """With another photo chosen, "try again" on a recent avatar remakes that avatar's photo."""
    service = make_service()
    page = open_page(service.url)
    choose(page, photo_file(tmp_path, "first.png", portrait()))
    page.click("#generate-button")
    page.wait_for_selector("#result-image", state="visible")
    first = service.http.get(f"/jobs/{job_id_of(page)}").json()

    choose(page, photo_file(tmp_path, "second.png", make_photo((20, 160, 90), (128, 128))))
    assert page.locator("#result-box").is_hidden()
    page.locator("#recent-list button").first.click()
    assert page.locator("#again-button").is_visible()
    page.click("#again-button")
    wait_until(page, f"() => ({RECENT_COUNT})() === 2")
    again = service.http.get(f"/jobs/{job_id_of(page)}").json()
    assert again["jobId"] != first["jobId"] and again["seed"] != first["seed"]
    assert again["imageName"] == first["imageName"]
    with page.expect_download() as download:
        page.click("#download-link")
    assert download.value.suggested_filename == f"first-avatar-{again['seed']}.png"
    # the chosen photo stays chosen
    assert page.locator("#photo-name").inner_text().startswith("second.png")
