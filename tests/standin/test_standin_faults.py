"""Fault switches, through the Python object and the /_standin HTTP control API."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import httpx
import pytest
from standin_replay import Socket

from comfyui_standin import Faults, StandIn


def _poll(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def graph(client: httpx.Client, photo: bytes) -> dict:
    """A small LoadImage -> ImageScale -> SaveImage graph with its photo uploaded."""
    client.post("/upload/image", files={"image": ("p.png", photo)}).raise_for_status()
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "p.png"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {
                "image": ["1", 0],
                "upscale_method": "bilinear",
                "width": 32,
                "height": 32,
                "crop": "disabled",
            },
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "f"}},
    }


def _sampler_graph(seed_prompt: dict, steps: int) -> dict:
    prompt = copy.deepcopy(seed_prompt)
    prompt["4"]["inputs"]["steps"] = steps
    return prompt


@pytest.fixture
def uploaded(client: httpx.Client, photo: bytes) -> None:
    """The seed workflow's input photo is in the input dir."""
    client.post(
        "/upload/image", files={"image": ("rec_astronaut_64.png", photo)}
    ).raise_for_status()


@pytest.mark.usefixtures("uploaded")
def test_step_delay_slows_each_sampler_step(
    lab_standin: StandIn, client: httpx.Client, seed_prompt: dict
) -> None:
    """With step_delay the run takes at least steps x delay."""
    lab_standin.set_faults(step_delay=0.03)
    started = time.monotonic()
    client.post("/prompt", json={"prompt": _sampler_graph(seed_prompt, 5)}).raise_for_status()
    lab_standin.wait_idle()
    assert time.monotonic() - started >= 5 * 0.03


def test_fail_at_node_gives_execution_error(
    lab_standin: StandIn, client: httpx.Client, graph: dict
) -> None:
    """fail_at_node (by class_type) makes that node fail with execution_error and error history."""
    lab_standin.set_faults(fail_at_node="ImageScale")
    socket = Socket(lab_standin.url, "f1")
    try:
        prompt_id = client.post("/prompt", json={"prompt": graph, "client_id": "f1"}).json()[
            "prompt_id"
        ]
        socket.wait_done(prompt_id)
        error = next(m for m in socket.messages() if m["type"] == "execution_error")["data"]
        assert (error["node_id"], error["node_type"], error["executed"]) == (
            "2",
            "ImageScale",
            ["1"],
        )
        assert error["exception_type"] == "RuntimeError"
        assert error["exception_message"].endswith("\n")
        history = client.get(f"/history/{prompt_id}").json()[prompt_id]
        assert (history["status"]["status_str"], history["status"]["completed"]) == ("error", False)
    finally:
        socket.close()


def test_hang_blocks_until_cleared(lab_standin: StandIn, client: httpx.Client, graph: dict) -> None:
    """hang keeps the prompt running until the fault is cleared, then it completes."""
    lab_standin.faults.hang = True
    prompt_id = client.post("/prompt", json={"prompt": graph}).json()["prompt_id"]
    _poll(lambda: lab_standin.queue_snapshot()["queue_running"] != [])
    with pytest.raises(TimeoutError):
        lab_standin.wait_idle(timeout=0.2)
    lab_standin.clear_faults()
    lab_standin.wait_idle()
    assert lab_standin.history_snapshot()[prompt_id]["status"]["status_str"] == "success"


def test_hang_ends_with_interrupt(lab_standin: StandIn, client: httpx.Client, graph: dict) -> None:
    """An interrupt ends a hanging prompt with execution_interrupted."""
    lab_standin.set_faults(hang=True)
    prompt_id = client.post("/prompt", json={"prompt": graph}).json()["prompt_id"]
    _poll(lambda: lab_standin.queue_snapshot()["queue_running"] != [])
    client.post("/interrupt", json={"prompt_id": prompt_id})
    lab_standin.wait_idle()
    messages = lab_standin.history_snapshot()[prompt_id]["status"]["messages"]
    assert messages[-1][0] == "execution_interrupted"


def test_drop_websockets_is_one_shot(
    lab_standin: StandIn, client: httpx.Client, graph: dict
) -> None:
    """drop_websockets cuts every socket at the next node start, then resets itself."""
    socket = Socket(lab_standin.url, "d1")
    try:
        socket.wait_for(lambda m: m["type"] == "status")
        lab_standin.set_faults(drop_websockets=True)
        client.post("/prompt", json={"prompt": graph, "client_id": "d1"}).raise_for_status()
        lab_standin.wait_idle()
        socket._thread.join(5)
        assert not socket._thread.is_alive()
        assert lab_standin.faults.drop_websockets is False
        assert not any(
            m["type"] == "executing" and m["data"]["node"] is None for m in socket.messages()
        )
    finally:
        socket.close()


def test_restart_forgets_everything(
    lab_standin: StandIn, client: httpx.Client, graph: dict
) -> None:
    """restart() forgets history, queue and cache and closes websockets; the port stays."""
    socket = Socket(lab_standin.url, "r1")
    client.post("/prompt", json={"prompt": graph}).raise_for_status()
    lab_standin.wait_idle()
    lab_standin.restart()
    socket._thread.join(5)
    assert not socket._thread.is_alive()
    socket.close()
    assert client.get("/history").json() == {}
    first = client.post("/prompt", json={"prompt": graph}).json()
    assert first["number"] == 0
    lab_standin.wait_idle()
    cached = lab_standin.history_snapshot()[first["prompt_id"]]["status"]["messages"][1][1]
    assert cached["nodes"] == []


def test_restart_via_http(lab_standin: StandIn, client: httpx.Client, graph: dict) -> None:
    """POST /_standin/restart does the same as restart()."""
    client.post("/prompt", json={"prompt": graph}).raise_for_status()
    lab_standin.wait_idle()
    assert client.post("/_standin/restart").status_code == 200
    assert client.get("/history").json() == {}


def test_refuse_connections_really_refuses(lab_standin: StandIn) -> None:
    """refuse_connections closes the listening socket (ECONNREFUSED) until switched off."""
    lab_standin.set_faults(refuse_connections=True)
    with pytest.raises(httpx.ConnectError):
        httpx.get(lab_standin.url + "/prompt", timeout=2)
    lab_standin.set_faults(refuse_connections=False)
    assert httpx.get(lab_standin.url + "/prompt", timeout=2).status_code == 200


def test_refuse_connections_cuts_open_websockets(lab_standin: StandIn) -> None:
    """refuse_connections is a ComfyUI gone away: open websockets are cut, not left hanging."""
    socket = Socket(lab_standin.url, "gone1")
    try:
        socket.wait_for(lambda m: m["type"] == "status")
        lab_standin.set_faults(refuse_connections=True)
        socket._thread.join(5)
        assert not socket._thread.is_alive()
    finally:
        socket.close()
        lab_standin.set_faults(refuse_connections=False)


def test_refuse_connections_via_http_for_a_duration(lab_standin: StandIn) -> None:
    """POST /_standin/faults {refuse_connections, duration} refuses, then listens again."""
    response = httpx.post(
        lab_standin.url + "/_standin/faults",
        json={"refuse_connections": True, "duration": 0.3},
        timeout=2,
    )
    assert response.json()["refuse_connections"] is True
    _poll(lambda: lab_standin.faults.refuse_connections)
    with pytest.raises(httpx.ConnectError):
        httpx.get(lab_standin.url + "/prompt", timeout=2)

    def up() -> bool:
        try:
            return httpx.get(lab_standin.url + "/prompt", timeout=2).status_code == 200
        except httpx.ConnectError:
            return False

    _poll(up)


@pytest.mark.parametrize("status", [500, 503])
def test_view_status_fault(
    lab_standin: StandIn, client: httpx.Client, photo: bytes, status
) -> None:
    """view_status makes GET /view answer that status with an empty body."""
    client.post("/upload/image", files={"image": ("v.png", photo)}).raise_for_status()
    lab_standin.set_faults(view_status=status)
    response = client.get("/view", params={"filename": "v.png", "type": "input"})
    assert (response.status_code, response.content) == (status, b"")
    lab_standin.clear_faults()
    assert client.get("/view", params={"filename": "v.png", "type": "input"}).content == photo


def test_view_delay_via_http(lab_standin: StandIn, client: httpx.Client, photo: bytes) -> None:
    """view_delay set through the control API slows GET /view."""
    client.post("/upload/image", files={"image": ("v.png", photo)}).raise_for_status()
    assert client.post("/_standin/faults", json={"view_delay": 0.2}).json()["view_delay"] == 0.2
    started = time.monotonic()
    client.get("/view", params={"filename": "v.png", "type": "input"}).raise_for_status()
    assert time.monotonic() - started >= 0.2
    assert client.delete("/_standin/faults").json() == Faults().as_dict()


def test_reject_prompts(lab_standin: StandIn, client: httpx.Client, graph: dict) -> None:
    """reject_prompts answers 400 with a validation error body; the counter still advances."""
    lab_standin.set_faults(reject_prompts=True)
    response = client.post("/prompt", json={"prompt": graph})
    assert response.status_code == 400
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["node_errors"]["1"]["errors"][0]["type"] == "custom_validation_failed"
    assert body["node_errors"]["1"]["dependent_outputs"] == ["3"]
    lab_standin.clear_faults()
    assert client.post("/prompt", json={"prompt": graph}).json()["number"] == 1
    assert len(lab_standin.prompts) == 2


def test_unknown_fault_is_rejected(lab_standin: StandIn, client: httpx.Client) -> None:
    """Unknown fault names fail loudly in Python and with 400 over HTTP."""
    with pytest.raises(TypeError):
        lab_standin.set_faults(explode=True)
    assert client.post("/_standin/faults", json={"explode": True}).status_code == 400


def test_stop_and_start_reuse_the_port(tmp_path) -> None:
    """stop() is idempotent and start() again listens on the same port."""
    server = StandIn(root=tmp_path / "s").start()
    port = server.port
    server.stop()
    server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/prompt", timeout=2)
    server.start()
    try:
        assert server.port == port
        assert httpx.get(server.url + "/prompt", timeout=2).status_code == 200
    finally:
        server.stop()
