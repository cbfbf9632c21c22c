"""Endpoint details that the replays cannot cover on a fresh server."""

from __future__ import annotations

import httpx

from comfyui_standin import StandIn

GRAPH = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "e"}},
}


def _submit(server: StandIn, prompt: dict) -> str:
    response = httpx.post(server.url + "/api/prompt", json={"prompt": prompt})
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def test_history_paging_and_delete(standin: StandIn) -> None:
    """max_items gives the newest entries, offset counts from the oldest; POST /history deletes."""
    ids = []
    for color in range(3):
        graph = {**GRAPH, "1": {**GRAPH["1"], "inputs": {**GRAPH["1"]["inputs"], "color": color}}}
        ids.append(_submit(standin, graph))
        standin.wait_idle()
    history = httpx.get(standin.url + "/history", params={"max_items": 2}).json()
    assert list(history) == ids[1:]
    window = httpx.get(standin.url + "/history", params={"max_items": 1, "offset": 1}).json()
    assert list(window) == ids[1:2]
    assert httpx.get(standin.url + "/history", params={"max_items": "x"}).status_code == 500
    httpx.post(standin.url + "/history", json={"delete": [ids[0]]}).raise_for_status()
    assert list(standin.history_snapshot()) == ids[1:]
    httpx.post(standin.url + "/history", json={"clear": True}).raise_for_status()
    assert standin.history_snapshot() == {}


def test_free_memory_clears_the_cache(standin: StandIn) -> None:
    """After POST /free {"free_memory": true} an identical prompt runs again (new file)."""
    first = _submit(standin, GRAPH)
    standin.wait_idle()
    second = _submit(standin, GRAPH)
    standin.wait_idle()
    history = standin.history_snapshot()
    assert history[second]["outputs"] == history[first]["outputs"]
    httpx.post(standin.url + "/free", json={"free_memory": True}).raise_for_status()
    third = _submit(standin, GRAPH)
    standin.wait_idle()
    outputs = standin.history_snapshot()[third]["outputs"]
    assert outputs["2"]["images"][0]["filename"] == "e_00002_.png"


def test_queue_clear_keeps_the_running_prompt(standin: StandIn) -> None:
    """POST /queue {"clear": true} empties pending items only; they never get history."""
    standin.set_faults(hang=True)
    running = _submit(standin, GRAPH)
    pending = _submit(
        standin,
        {**GRAPH, "2": {**GRAPH["2"], "inputs": {**GRAPH["2"]["inputs"], "filename_prefix": "p"}}},
    )
    httpx.post(standin.url + "/queue", json={"clear": True}).raise_for_status()
    queue = standin.queue_snapshot()
    assert [item[1] for item in queue["queue_running"]] == [running]
    assert queue["queue_pending"] == []
    standin.clear_faults()
    standin.wait_idle()
    assert set(standin.history_snapshot()) == {running}
    assert pending not in standin.history_snapshot()
    assert standin.queue_requests == [{"clear": True}]


def test_partial_graph_is_accepted_with_node_errors(standin: StandIn) -> None:
    """One good and one broken output: 200, the broken one reported in node_errors."""
    graph = {
        **GRAPH,
        "8": {"class_type": "LoadImage", "inputs": {"image": "missing.png"}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["8", 0]}},
    }
    response = httpx.post(standin.url + "/prompt", json={"prompt": graph})
    assert response.status_code == 200
    assert response.json()["node_errors"] == {
        "8": {
            "errors": [
                {
                    "type": "custom_validation_failed",
                    "message": "Custom validation failed for node",
                    "details": "image - Invalid image file: missing.png",
                    "extra_info": {"input_name": "image"},
                }
            ],
            "dependent_outputs": ["9"],
            "class_type": "LoadImage",
        }
    }
    standin.wait_idle()
    assert standin.queue_snapshot()["queue_pending"] == []
    entry = standin.history_snapshot()[response.json()["prompt_id"]]
    assert entry["prompt"][4] == ["2"]


def test_link_to_missing_node_on_output(standin: StandIn) -> None:
    """A broken link on the output node itself is exception_during_validation (KeyError)."""
    graph = {
        "2": {"class_type": "SaveImage", "inputs": {"images": ["99", 0], "filename_prefix": "x"}}
    }
    response = httpx.post(standin.url + "/prompt", json={"prompt": graph})
    assert response.status_code == 400
    body = response.json()
    error = body["node_errors"]["2"]["errors"][0]
    assert (error["type"], error["details"], error["extra_info"]["exception_type"]) == (
        "exception_during_validation",
        "'99'",
        "KeyError",
    )
    assert body["error"]["details"] == "Exception when validating node: '99'"
