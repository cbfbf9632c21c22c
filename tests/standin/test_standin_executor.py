"""The Pillow executor: real outputs from real inputs, with the sizes the graph implies."""

from __future__ import annotations

import copy
import io
import json

import httpx
import pytest
from PIL import Image, ImageChops, ImageStat
from standin_replay import png_bytes, synthetic_photo

from comfyui_standin import StandIn


def _upload(url: str, name: str, data: bytes) -> None:
    httpx.post(url + "/upload/image", files={"image": (name, data)}).raise_for_status()


def _run(server: StandIn, prompt: dict, **fields) -> dict:
    response = httpx.post(server.url + "/prompt", json={"prompt": prompt, **fields})
    assert response.status_code == 200, response.text
    server.wait_idle()
    return server.history_snapshot()[response.json()["prompt_id"]]


def _image(server: StandIn, entry: dict, node: str) -> Image.Image:
    (info,) = entry["outputs"][node]["images"]
    response = httpx.get(server.url + "/view", params=info)
    assert response.status_code == 200
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def _avatar_graph(seed_prompt: dict, image: str, width: int = 0, height: int = 0) -> dict:
    """The seed workflow with core nodes only, an ImageScale before VAEEncode and a SaveImage."""
    prompt = copy.deepcopy(seed_prompt)
    prompt["23"] = {
        "class_type": "ConditioningConcat",
        "inputs": {"conditioning_to": ["22", 0], "conditioning_from": ["2", 0]},
    }
    prompt["25"]["inputs"]["image"] = image
    prompt["30"] = {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["25", 0],
            "upscale_method": "lanczos",
            "width": width,
            "height": height,
            "crop": "center",
        },
    }
    prompt["26"]["inputs"]["pixels"] = ["30", 0]
    prompt["8"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["15", 0], "filename_prefix": "t/a"},
    }
    return prompt


def _distance(a: Image.Image, b: Image.Image) -> float:
    b = b.resize(a.size)
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(0, 0, (64, 64)), (100, 0, (96, 96)), (96, 48, (96, 48)), (130, 70, (128, 64))],
)
def test_output_size_follows_the_graph(
    standin: StandIn, seed_prompt: dict, width: int, height: int, expected: tuple[int, int]
) -> None:
    """ImageScale (0 keeps the aspect) then VAEEncode's crop to multiples of 8 set the size."""
    _upload(standin.url, "p.png", png_bytes(synthetic_photo(64, 64)))
    entry = _run(standin, _avatar_graph(seed_prompt, "p.png", width, height))
    assert entry["status"]["status_str"] == "success"
    assert _image(standin, entry, "8").size == expected
    assert _image(standin, entry, "7").size == expected


def test_output_comes_from_the_input_photo(standin: StandIn, seed_prompt: dict) -> None:
    """Two different photos give two different avatars, each closest to its own photo."""
    photos = {name: synthetic_photo(64, 64, seed=s) for name, s in (("a.png", 1), ("b.png", 4))}
    outputs = {}
    for name, image in photos.items():
        _upload(standin.url, name, png_bytes(image))
        outputs[name] = _image(standin, _run(standin, _avatar_graph(seed_prompt, name)), "8")
    assert _distance(outputs["a.png"], photos["a.png"]) < _distance(
        outputs["a.png"], photos["b.png"]
    )
    assert _distance(outputs["b.png"], photos["b.png"]) < _distance(
        outputs["b.png"], photos["a.png"]
    )
    assert _distance(outputs["a.png"], outputs["b.png"]) > 10


def test_sampler_depends_on_seed_prompt_and_denoise(standin: StandIn, seed_prompt: dict) -> None:
    """Seed, positive text and denoise each change the result; identical inputs reproduce it."""
    _upload(standin.url, "p.png", png_bytes(synthetic_photo(64, 64)))
    base = _avatar_graph(seed_prompt, "p.png")

    def render(change) -> bytes:
        prompt = copy.deepcopy(base)
        change(prompt)
        return _image(standin, _run(standin, prompt), "8").tobytes()

    reference = render(lambda p: None)
    assert render(lambda p: p["4"]["inputs"].update(seed=7)) != reference
    assert render(lambda p: p["22"]["inputs"].update(text="oil painting")) != reference
    assert render(lambda p: p["3"]["inputs"].update(text="blurry")) != reference
    assert render(lambda p: p["4"]["inputs"].update(denoise=0.2)) != reference
    assert render(lambda p: p["4"]["inputs"].update(seed=7)) == render(
        lambda p: p["4"]["inputs"].update(seed=7, cfg=6.0)
    )


def test_png_prompt_chunk_is_the_graph(standin: StandIn, seed_prompt: dict) -> None:
    """SaveImage writes the queued (coerced) prompt and extra_pnginfo keys as PNG text."""
    _upload(standin.url, "p.png", png_bytes(synthetic_photo(64, 64)))
    prompt = _avatar_graph(seed_prompt, "p.png")
    prompt["4"]["inputs"]["steps"] = "2"
    extra = {"extra_pnginfo": {"workflow": {"note": "x"}}}
    entry = _run(standin, prompt, extra_data=extra)
    image = _image(standin, entry, "8")
    assert json.loads(image.text["prompt"]) == entry["prompt"][2]
    assert entry["prompt"][2]["4"]["inputs"]["steps"] == 2
    assert json.loads(image.text["workflow"]) == {"note": "x"}


def test_unconnected_empty_latent_changes_nothing(tmp_path, seed_prompt: dict) -> None:
    """An EmptyLatentImage that feeds nothing does not influence the output."""
    server = StandIn(root=tmp_path / "nc", cache=False).start()
    try:
        _upload(server.url, "p.png", png_bytes(synthetic_photo(64, 64)))
        prompt = _avatar_graph(seed_prompt, "p.png")
        first = _image(server, _run(server, prompt), "8").tobytes()
        prompt["5"]["inputs"].update(width=1024, height=64)
        second = _run(server, prompt)
        assert _image(server, second, "8").tobytes() == first
        assert second["status"]["messages"][1][1]["nodes"] == []  # cache off: all re-ran
    finally:
        server.stop()


def test_load_image_applies_exif_rotation(standin: StandIn) -> None:
    """LoadImage turns an EXIF-rotated photo upright before use."""
    image = synthetic_photo(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    _upload(standin.url, "r.jpg", buffer.getvalue())
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "r.jpg"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "r"}},
    }
    assert _image(standin, _run(standin, graph), "2").size == (20, 40)


def test_empty_image_invert_and_scale_by(standin: StandIn) -> None:
    """EmptyImage -> ImageInvert -> ImageScaleBy -> PreviewImage gives the inverted colour."""
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 10, "height": 6, "batch_size": 1, "color": 0x102030},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {
            "class_type": "ImageScaleBy",
            "inputs": {"image": ["2", 0], "upscale_method": "nearest-exact", "scale_by": 2.0},
        },
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
    }
    entry = _run(standin, graph)
    (info,) = entry["outputs"]["4"]["images"]
    assert info["type"] == "temp" and info["filename"].startswith("ComfyUI_temp_")
    image = _image(standin, entry, "4")
    assert image.size == (20, 12)
    assert image.getpixel((0, 0)) == (0xEF, 0xDF, 0xCF)


def test_save_image_counter_and_subfolder(standin: StandIn) -> None:
    """SaveImage names files <prefix>_00001_.png, counting up from the highest existing one."""
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 8, "height": 8, "batch_size": 2, "color": 0},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "a/b"}},
    }
    (standin.output_dir / "a").mkdir()
    (standin.output_dir / "a" / "b_00007_.png").write_bytes(b"")
    entry = _run(standin, graph)
    assert entry["outputs"]["2"]["images"] == [
        {"filename": "b_00008_.png", "subfolder": "a", "type": "output"},
        {"filename": "b_00009_.png", "subfolder": "a", "type": "output"},
    ]


def test_plain_server_rejects_impact_node(standin: StandIn, seed_prompt: dict) -> None:
    """Without the impact custom nodes, ImpactConcatConditionings is an unknown class."""
    response = httpx.post(standin.url + "/prompt", json={"prompt": seed_prompt})
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node ImpactConcatConditionings does not exist.",
            "details": "Node ID '#23'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    assert httpx.get(standin.url + "/object_info/ImpactConcatConditionings").json() == {}


def test_object_info_lists_inputs_and_checkpoints(tmp_path) -> None:
    """LoadImage lists top-level input images; CheckpointLoaderSimple the configured ones."""
    server = StandIn(root=tmp_path / "oi", checkpoints=("b.safetensors", "a.ckpt")).start()
    try:
        (server.input_dir / "z.png").write_bytes(b"x")
        (server.input_dir / "notes.txt").write_bytes(b"x")
        (server.input_dir / "sub").mkdir()
        (server.input_dir / "sub" / "hidden.png").write_bytes(b"x")
        info = httpx.get(server.url + "/object_info").json()
        assert info["LoadImage"]["input"]["required"]["image"][0] == ["z.png"]
        ckpt = info["CheckpointLoaderSimple"]["input"]["required"]["ckpt_name"][0]
        assert ckpt == ["a.ckpt", "b.safetensors"]
        assert httpx.get(server.url + "/models/checkpoints").json() == ckpt
    finally:
        server.stop()


def test_origin_mismatch_is_forbidden(standin: StandIn) -> None:
    """A browser Origin that differs from the loopback Host gets 403 with an empty body."""
    response = httpx.get(standin.url + "/queue", headers={"Origin": "http://evil.example"})
    assert (response.status_code, response.content) == (403, b"")
    same = httpx.get(standin.url + "/queue", headers={"Origin": standin.url})
    assert same.status_code == 200
