"""Every node costs time that grows with the pixels it produces, so a graph of image nodes can be
watched pending, interrupted and reconnected to while it runs, as on a real ComfyUI."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from standin_replay import Socket, recorded_ws_messages

from comfyui_standin import Faults, StandIn
from comfyui_standin.__main__ import DEFAULT_NODE_COST, DEFAULT_PIXEL_COST, parse_args
from comfyui_standin.cost import count_pixels, node_seconds

#: the chain: LoadImage 1 -> ImageScale 2, 3, 4 (lanczos) -> SaveImage 5. Its Pillow work takes
#: well under a millisecond per node, so without a cost the prompt is over before anyone can look.
SCALES = {"2": 96, "3": 128, "4": 96}
#: seconds per megapixel in these tests: each node of the chain takes 0.09 to 0.16 s
PIXEL_COST = 10.0


def _chain(prefix: str = "chain") -> dict:
    graph: dict = {"1": {"class_type": "LoadImage", "inputs": {"image": "p.png"}}}
    source = "1"
    for node_id, size in SCALES.items():
        graph[node_id] = {
            "class_type": "ImageScale",
            "inputs": {
                "image": [source, 0],
                "upscale_method": "lanczos",
                "width": size,
                "height": size,
                "crop": "disabled",
            },
        }
        source = node_id
    graph["5"] = {
        "class_type": "SaveImage",
        "inputs": {"images": [source, 0], "filename_prefix": prefix},
    }
    return graph


@pytest.fixture
def costly(standin: StandIn, photo: bytes) -> Iterator[httpx.Client]:
    """A client of a stand-in whose nodes cost PIXEL_COST s/MP, with the chain's photo uploaded."""
    standin.set_faults(pixel_cost=PIXEL_COST)
    with httpx.Client(base_url=standin.url, timeout=10) as client:
        client.post("/upload/image", files={"image": ("p.png", photo)}).raise_for_status()
        yield client


def _from_interrupt(messages: list[dict]) -> list[dict]:
    """The messages from execution_interrupted on."""
    types = [m["type"] for m in messages]
    return messages[types.index("execution_interrupted") :]


def _submit(client: httpx.Client, prompt: dict, client_id: str | None = None) -> str:
    body: dict = {"prompt": prompt}
    if client_id is not None:
        body["client_id"] = client_id
    response = client.post("/prompt", json=body)
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


# -- the cost model -------------------------------------------------------------------------------


def test_count_pixels_counts_images_batches_and_latents() -> None:
    """Images, batches, latents and output tuples count their pixels; other values count 0."""
    image = Image.new("RGB", (100, 20))
    assert count_pixels(image) == 2000
    assert count_pixels(([image, image], [Image.new("L", (10, 10))])) == 4100
    assert count_pixels(({"samples": [image]},)) == 2000
    assert count_pixels(("text", 3, None, {"other": image})) == 0


def test_node_seconds_is_a_base_plus_a_price_per_megapixel() -> None:
    """node_cost + pixel_cost x megapixels; the Python defaults make every node instant."""
    assert node_seconds(Faults(node_cost=0.01, pixel_cost=0.04), 2_500_000) == pytest.approx(0.11)
    assert node_seconds(Faults(), 25_000_000) == 0


def test_the_command_line_defaults_are_a_real_servers_cheap_node_costs() -> None:
    """python -m comfyui_standin costs ~1 s per 25 MP lanczos ImageScale unless told otherwise."""
    args = parse_args([])
    assert (args.pixel_cost, args.node_cost) == (DEFAULT_PIXEL_COST, DEFAULT_NODE_COST)
    assert node_seconds(Faults(pixel_cost=args.pixel_cost), 5000 * 5000) == pytest.approx(1.0)
    zero = parse_args(["--pixel-cost", "0", "--node-cost", "0"])
    assert (zero.pixel_cost, zero.node_cost) == (0, 0)


@pytest.mark.parametrize("value", ["-1", "fast", "nan"])
def test_the_command_line_rejects_bad_costs(value: str, capsys: pytest.CaptureFixture) -> None:
    """A negative, non-numeric or NaN cost is a usage error (exit 2), not a broken server."""
    with pytest.raises(SystemExit) as exited:
        parse_args(["--pixel-cost", value])
    assert exited.value.code == 2
    assert "argument --pixel-cost" in capsys.readouterr().err


def test_clearing_faults_keeps_the_start_up_costs() -> None:
    """clear() turns faults off but puts back the speed settings the stand-in started with."""
    faults = Faults(step_delay=0.1, node_cost=0.002, pixel_cost=0.04)
    faults.update(pixel_cost=1.0, node_cost=0.5, step_delay=0.0, hang=True, view_status=500)
    faults.clear()
    assert faults.as_dict() == {
        **Faults().as_dict(),
        "step_delay": 0.1,
        "node_cost": 0.002,
        "pixel_cost": 0.04,
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"pixel_cost": -0.5}, "pixel_cost must be a number of seconds >= 0, got -0.5"),
        ({"node_cost": "slow"}, "node_cost must be a number of seconds >= 0, got 'slow'"),
        ({"step_delay": True}, "step_delay must be a number of seconds >= 0, got True"),
    ],
)
def test_bad_costs_over_http_are_rejected(standin: StandIn, body: dict, message: str) -> None:
    """POST /_standin/faults with a bad cost answers 400 and changes nothing."""
    before = standin.faults.as_dict()
    response = httpx.post(standin.url + "/_standin/faults", json=body, timeout=5)
    assert (response.status_code, response.json()) == (400, {"error": message})
    assert standin.faults.as_dict() == before


def test_costs_are_set_and_read_over_http(standin: StandIn) -> None:
    """node_cost and pixel_cost are switches of the /_standin/faults API like the others."""
    answer = httpx.post(
        standin.url + "/_standin/faults", json={"node_cost": 0.01, "pixel_cost": 0.2}, timeout=5
    ).json()
    assert (answer["node_cost"], answer["pixel_cost"]) == (0.01, 0.2)
    assert (standin.faults.node_cost, standin.faults.pixel_cost) == (0.01, 0.2)
    cleared = httpx.delete(standin.url + "/_standin/faults", timeout=5).json()
    assert (cleared["node_cost"], cleared["pixel_cost"]) == (0, 0)


def test_a_node_takes_its_cost(standin: StandIn) -> None:
    """EmptyImage 512x512 -> SaveImage with costs set runs at least 2 x (base + pixel price)."""
    standin.set_faults(node_cost=0.05, pixel_cost=0.5)
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "c"}},
    }
    with httpx.Client(base_url=standin.url, timeout=10) as client:
        prompt_id = _submit(client, graph)
    standin.wait_idle()
    messages = standin.history_snapshot()[prompt_id]["status"]["messages"]
    assert [name for name, _ in messages] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    took_ms = messages[-1][1]["timestamp"] - messages[0][1]["timestamp"]
    assert took_ms >= 1000 * 2 * (0.05 + 0.5 * 512 * 512 / 1_000_000) - 1


# -- what a client can now observe with a graph of image nodes -------------------------------------


def test_a_chain_of_image_nodes_is_seen_running_and_pending_in_queue(
    standin: StandIn, costly: httpx.Client
) -> None:
    """Once the chain's first ImageScale starts, /queue shows it running, a later one pending."""
    socket = Socket(standin.url, "look")
    try:
        first = _submit(costly, _chain("first"), "look")
        socket.wait_for(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
        second = _submit(costly, _chain("second"), "look")
        queue = costly.get("/queue").json()
        assert [item[1] for item in queue["queue_running"]] == [first]
        assert [item[1] for item in queue["queue_pending"]] == [second]
        assert costly.get("/prompt").json() == {"exec_info": {"queue_remaining": 2}}
        socket.wait_done(second)
    finally:
        socket.close()
    history = standin.history_snapshot()
    assert [history[pid]["status"]["status_str"] for pid in (first, second)] == ["success"] * 2


def test_a_chain_of_image_nodes_is_interrupted_at_the_next_node(
    standin: StandIn, costly: httpx.Client, recording
) -> None:
    """POST /interrupt {prompt_id} mid-run lands at the next node start, as recorded."""
    socket = Socket(standin.url, "cut")
    try:
        prompt_id = _submit(costly, _chain(), "cut")
        socket.wait_for(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
        assert [item[1] for item in costly.get("/queue").json()["queue_running"]] == [prompt_id]
        costly.post("/interrupt", json={"prompt_id": prompt_id}).raise_for_status()
        socket.wait_done(prompt_id)
        messages = socket.messages()
    finally:
        socket.close()
    recorded = recorded_ws_messages(recording("06_interrupt.json"))
    ours_tail, recorded_tail = _from_interrupt(messages), _from_interrupt(recorded)
    assert [m["type"] for m in ours_tail] == [m["type"] for m in recorded_tail]
    interrupted = ours_tail[0]["data"]
    assert set(interrupted) == set(recorded_tail[0]["data"])
    # Node 2 was running when the interrupt came: like a real node it finishes first.
    graph, order = _chain(), ["1", "2", "3", "4", "5"]
    assert interrupted["node_id"] in ("3", "4", "5")
    assert interrupted["node_type"] == graph[interrupted["node_id"]]["class_type"]
    assert interrupted["executed"] == order[: order.index(interrupted["node_id"])]
    entry = standin.history_snapshot()[prompt_id]
    assert (entry["status"]["status_str"], entry["status"]["completed"]) == ("error", False)
    assert entry["outputs"] == {}
    assert list(Path(standin.output_dir).iterdir()) == []


def test_a_client_reconnects_while_a_chain_of_image_nodes_runs(
    standin: StandIn, costly: httpx.Client, recording
) -> None:
    """A socket reopened with the same clientId mid-run is told the node, then sees the end."""
    first = Socket(standin.url, "again")
    try:
        prompt_id = _submit(costly, _chain(), "again")
        first.wait_for(lambda m: m["type"] == "executing" and m["data"].get("node") == "2")
    finally:
        first.close()
    second = Socket(standin.url, "again")
    try:
        second.wait_done(prompt_id)
        messages = second.messages()
    finally:
        second.close()
    late = recorded_ws_messages(recording("11_ws_edge_cases.json"), "late")
    assert [m["type"] for m in messages[:2]] == [m["type"] for m in late[:2]]
    assert messages[0]["data"] == {"status": {"exec_info": {"queue_remaining": 1}}, "sid": "again"}
    assert set(messages[1]["data"]) == set(late[1]["data"]) == {"node"}
    assert messages[1]["data"]["node"] in ("2", "3", "4", "5")
    saved = next(m for m in messages if m["type"] == "executed")["data"]
    assert (saved["node"], saved["output"]["images"][0]["filename"]) == ("5", "chain_00001_.png")
    assert [m["type"] for m in messages[-3:]] == ["execution_success", "status", "executing"]


def test_heavy_pillow_work_does_not_stall_the_server(standin: StandIn, photo: bytes) -> None:
    """Even at zero cost, /queue answers while a big lanczos ImageScale works (own thread)."""
    graph = _chain()
    graph["2"]["inputs"].update(width=3000, height=3000)
    graph["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}
    seen_running = []
    with httpx.Client(base_url=standin.url, timeout=10) as client:
        client.post("/upload/image", files={"image": ("p.png", photo)}).raise_for_status()
        prompt_id = _submit(client, graph)
        deadline = time.monotonic() + 10
        while prompt_id not in standin.history_snapshot():
            assert time.monotonic() < deadline, "the prompt did not finish in time"
            queue = client.get("/queue").json()
            seen_running += [item[1] for item in queue["queue_running"]]
    assert prompt_id in seen_running
    assert standin.history_snapshot()[prompt_id]["status"]["status_str"] == "success"
