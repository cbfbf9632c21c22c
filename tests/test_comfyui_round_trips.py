"""What a job asks of a real-socket ComfyUI (the stand-in), beyond its prompt: the photo is sent
to a server once, a prompt whose every message was heard needs no /history, and a server that
lost the photo or restarted is sent it again."""

from __future__ import annotations

import shutil

from comfyui_standin import StandIn
from tests.helpers import wait_for


def generate(service, image_name: str, seed: int) -> dict:
    """A synchronous generation from the photo; its job record (succeeded)."""
    answer = service.http.post(
        "/generate-avatar-by-image", json={"imageName": image_name, "seed": seed}
    )
    assert answer.status_code == 200, answer.text
    job = answer.json()
    assert job["status"] == "succeeded" and len(job["avatars"]) == 1
    return job


def test_a_photo_is_sent_once_and_no_history_is_asked(service, standin: StandIn, photo):
    """Three avatars from one photo: one upload; every prompt's messages told its outputs."""
    name = service.upload(photo)
    for seed in (1, 2, 3):
        generate(service, name, seed)
    assert standin.request_count("POST /upload/image") == 1
    assert standin.request_count("POST /prompt") == 3
    assert standin.requests_under("GET /history") == 0
    assert standin.request_count("GET /view") == 3
    images = {prompt["prompt"]["25"]["inputs"]["image"] for prompt in standin.prompts}
    assert len(images) == 1


def test_a_server_that_lost_the_photo_is_sent_it_again(service, standin: StandIn, photo):
    """ComfyUI's input folder emptied behind the service's back: the next prompt is refused
    (LoadImage's file is missing), the photo is sent again and the job succeeds."""
    name = service.upload(photo)
    generate(service, name, 1)
    shutil.rmtree(standin.input_dir / "avatar_service")
    job = generate(service, name, 2)
    assert standin.request_count("POST /upload/image") == 2
    assert standin.request_count("POST /prompt") == 3  # one refused
    assert job["status"] == "succeeded"


def test_a_restarted_server_is_sent_the_photo_again(service, standin: StandIn, photo):
    """A server that restarted may have lost its input folder: after its websocket connects
    again, the next job sends the photo first."""
    name = service.upload(photo)
    generate(service, name, 1)
    client = service.services.clients[0]
    dropped_before = client.disconnected_since
    standin.restart()
    # The service saw its socket drop, and connected again.
    wait_for(
        lambda: client.connected and client.disconnected_since > dropped_before,
        message="the websocket connected again",
    )
    generate(service, name, 2)
    assert standin.request_count("POST /upload/image") == 2
    assert standin.request_count("POST /prompt") == 2


def test_a_prompt_heard_in_part_is_read_from_the_history(service, standin: StandIn, photo):
    """The websocket dropped while the prompt ran (messages may be lost): its end is read from
    /history."""
    name = service.upload(photo)
    standin.set_faults(step_delay=0.02, drop_websockets=True)  # cut at the first node
    job = generate(service, name, 1)
    assert job["status"] == "succeeded"
    assert standin.requests_under("GET /history/") >= 1
