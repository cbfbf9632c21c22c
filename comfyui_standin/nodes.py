"""Pillow implementations of the ComfyUI core nodes an avatar workflow uses.

Values passed between nodes: IMAGE and MASK are lists of Pillow images (one per batch item),
LATENT is ``{"samples": [RGB images]}`` kept at pixel resolution (a multiple of 8, like the latent
grid), CONDITIONING is a list of entries, each a tuple of prompt texts, and MODEL/CLIP/VAE are
small records naming the checkpoint. Nothing here is a real diffusion model: the sampler is a
deterministic stylisation that depends on the seed, the prompt texts and ``denoise``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import re
import string
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageFilter, ImageOps, PngImagePlugin

from comfyui_standin.catalogue import OBJECT_INFO

RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass
class Model:
    """The MODEL / CLIP / VAE a checkpoint loader hands out (only the checkpoint name)."""

    kind: str
    ckpt_name: str


@dataclass(frozen=True)
class Dirs:
    """The input, output and temp directories of one server."""

    input: Path
    output: Path
    temp: Path


@dataclass
class NodeContext:
    """What a running node may use besides its inputs."""

    node_id: str
    prompt: dict[str, Any]
    extra_pnginfo: dict[str, Any] | None
    dirs: Dirs
    preview_prefixes: dict[str, str]
    #: awaited once per sampler step with (value, max, a function making the preview image)
    on_step: Callable[[int, int, Callable[[], Image.Image]], Awaitable[None]] | None = None
    #: awaited once per image to send whole: (value, max, image) -> a progress message and the
    #: image as a PNG binary frame to the prompt's client
    send_image: Callable[[int, int, Image.Image], Awaitable[None]] | None = None


@dataclass(frozen=True)
class NodeDef:
    """How a class_type runs: its function and the flags the executor needs."""

    function: Callable[..., Any]
    output_node: bool = False
    #: custom validation of the named inputs (skips the built-in checks of those inputs)
    validate_inputs: Callable[[Dirs, dict[str, Any]], Any] | None = None
    validated_inputs: tuple[str, ...] = ()
    is_changed: Callable[[Dirs, dict[str, Any]], Any] | None = None

    @property
    def is_async(self) -> bool:
        """Whether the node function is a coroutine function."""
        return inspect.iscoroutinefunction(self.function)


# --------------------------------------------------------------------------------------------
# Files


def annotated_path(name: str, dirs: Dirs) -> Path:
    """Resolve a LoadImage name: ``"x.png [output]"`` selects another base directory."""
    base = dirs.input
    if name.endswith("[output]"):
        name, base = name[:-9], dirs.output
    elif name.endswith("[input]"):
        name = name[:-8]
    elif name.endswith("[temp]"):
        name, base = name[:-7], dirs.temp
    return base / name


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_png(image: Image.Image, path: Path, ctx: NodeContext, compress_level: int) -> None:
    info = PngImagePlugin.PngInfo()
    if ctx.prompt is not None:
        info.add_text("prompt", json.dumps(ctx.prompt))
    for key, value in (ctx.extra_pnginfo or {}).items():
        info.add_text(key, json.dumps(value))
    tmp = path.with_name(path.name + ".part")
    image.save(tmp, format="PNG", pnginfo=info, compress_level=compress_level)
    os.replace(tmp, path)


def _next_counter(folder: Path, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"_(\d+)_", re.IGNORECASE)
    highest = 0
    if folder.is_dir():
        for entry in os.listdir(folder):
            match = pattern.match(entry)
            if match:
                highest = max(highest, int(match.group(1)))
    return highest + 1


def _expand_prefix(prefix: str, image: Image.Image) -> str:
    now = datetime.now()
    values = {
        "%width%": str(image.width),
        "%height%": str(image.height),
        "%year%": str(now.year),
        "%month%": f"{now.month:02}",
        "%day%": f"{now.day:02}",
        "%hour%": f"{now.hour:02}",
        "%minute%": f"{now.minute:02}",
        "%second%": f"{now.second:02}",
    }
    for key, value in values.items():
        prefix = prefix.replace(key, value)
    return prefix


def _save_images(
    ctx: NodeContext,
    images: list[Image.Image],
    prefix: str,
    base: Path,
    kind: str,
    compress_level: int,
) -> dict[str, Any]:
    prefix = _expand_prefix(prefix, images[0])
    normalized = os.path.normpath(prefix)
    subfolder, stem = os.path.split(normalized)
    folder = Path(os.path.abspath(base / subfolder))
    base_abs = os.path.abspath(base)
    if os.path.commonpath((base_abs, str(folder))) != base_abs:
        raise Exception("Saving image outside the output folder is not allowed.")
    folder.mkdir(parents=True, exist_ok=True)
    counter = _next_counter(folder, stem)
    results = []
    for image in images:
        filename = f"{stem}_{counter:05}_.png"
        _save_png(image, folder / filename, ctx, compress_level)
        results.append({"filename": filename, "subfolder": subfolder, "type": kind})
        counter += 1
    return {"images": results}


# --------------------------------------------------------------------------------------------
# Node functions


def checkpoint_loader_simple(ctx: NodeContext, ckpt_name: str) -> tuple[Any, ...]:
    """Hand out MODEL, CLIP and VAE records for the checkpoint."""
    return Model("MODEL", ckpt_name), Model("CLIP", ckpt_name), Model("VAE", ckpt_name)


def clip_text_encode(ctx: NodeContext, text: str, clip: Model) -> tuple[Any, ...]:
    """Turn a text into a one-entry conditioning."""
    return ([(text,)],)


def conditioning_concat(
    ctx: NodeContext, conditioning_to: list[tuple[str, ...]], conditioning_from: list
) -> tuple[Any, ...]:
    """Append the first entry of ``conditioning_from`` to every entry of ``conditioning_to``."""
    first = conditioning_from[0] if conditioning_from else ()
    return ([tuple(entry) + tuple(first) for entry in conditioning_to],)


def impact_concat_conditionings(ctx: NodeContext, conditioning1: list, **more: Any) -> tuple:
    """Impact Pack's concat: conditioning1 followed by conditioning2..N (undeclared inputs)."""
    extra = sorted(
        (int(name[len("conditioning") :]), value)
        for name, value in more.items()
        if re.fullmatch(r"conditioning\d+", name)
    )
    if not extra:
        # The real node never assigns its result when only conditioning1 is linked.
        raise UnboundLocalError(
            "cannot access local variable 'res' where it is not associated with a value"
        )
    result = conditioning1
    for _, value in extra:
        (result,) = conditioning_concat(ctx, result, value)
    return (result,)


def load_image(ctx: NodeContext, image: str) -> tuple[Any, ...]:
    """Load an input file: EXIF rotation applied, RGB image plus a mask (1 - alpha)."""
    path = annotated_path(image, ctx.dirs)
    with Image.open(str(path)) as opened:
        frame = ImageOps.exif_transpose(opened)
        if frame.mode == "I":
            frame = frame.point(lambda value: value * (1 / 255))
        rgb = frame.convert("RGB")
        if "A" in frame.getbands():
            mask = ImageOps.invert(frame.getchannel("A"))
        else:
            mask = Image.new("L", (64, 64), 0)
    return [rgb], [mask]


def _load_image_validate(dirs: Dirs, inputs: dict) -> Any:
    image = inputs["image"]
    if not annotated_path(str(image), dirs).exists():
        return f"Invalid image file: {image}"
    return True


def _load_image_changed(dirs: Dirs, inputs: dict) -> Any:
    path = annotated_path(str(inputs.get("image")), dirs)
    try:
        return file_sha256(path)
    except OSError:
        return None


def _target_size(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int]:
    if target_w == 0 and target_h == 0:
        return width, height
    if target_w == 0:
        target_w = max(1, round(width * target_h / height))
    elif target_h == 0:
        target_h = max(1, round(height * target_w / width))
    return target_w, target_h


def _center_crop_to_aspect(image: Image.Image, width: int, height: int) -> Image.Image:
    old_aspect = image.width / image.height
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((image.width - image.width * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((image.height - image.height * (old_aspect / new_aspect)) / 2)
    return image.crop((x, y, image.width - x, image.height - y))


def image_scale(
    ctx: NodeContext, image: list, upscale_method: str, width: int, height: int, crop: str
) -> tuple[Any, ...]:
    """Resize to width x height (0 keeps the aspect ratio); ``crop=center`` crops first."""
    out = []
    for item in image:
        target = _target_size(item.width, item.height, width, height)
        if crop == "center":
            item = _center_crop_to_aspect(item, *target)
        out.append(item.resize(target, RESAMPLE[upscale_method]))
    return (out,)


def image_scale_by(
    ctx: NodeContext, image: list, upscale_method: str, scale_by: float
) -> tuple[Any, ...]:
    """Resize by a factor."""
    out = []
    for item in image:
        size = (max(1, round(item.width * scale_by)), max(1, round(item.height * scale_by)))
        out.append(item.resize(size, RESAMPLE[upscale_method]))
    return (out,)


def image_invert(ctx: NodeContext, image: list) -> tuple[Any, ...]:
    """Invert the colours."""
    return ([ImageOps.invert(item.convert("RGB")) for item in image],)


def empty_image(
    ctx: NodeContext, width: int, height: int, batch_size: int, color: int
) -> tuple[Any, ...]:
    """A batch of single-colour images; ``color`` is 0xRRGGBB."""
    rgb = ((color >> 16) & 0xFF, (color >> 8) & 0xFF, color & 0xFF)
    return ([Image.new("RGB", (width, height), rgb) for _ in range(batch_size)],)


def empty_latent_image(
    ctx: NodeContext, width: int, height: int, batch_size: int
) -> tuple[Any, ...]:
    """A batch of blank latents of (width // 8) x (height // 8) cells."""
    size = ((width // 8) * 8, (height // 8) * 8)
    return ({"samples": [Image.new("RGB", size, (128, 128, 128)) for _ in range(batch_size)]},)


def vae_encode(ctx: NodeContext, pixels: list, vae: Model) -> tuple[Any, ...]:
    """Centre-crop each image to a multiple of 8 and keep it as the latent."""
    samples = []
    for item in pixels:
        w, h = (item.width // 8) * 8, (item.height // 8) * 8
        if w == 0 or h == 0:
            raise RuntimeError(f"Image of {item.width}x{item.height} is too small to encode")
        left, top = (item.width % 8) // 2, (item.height % 8) // 2
        samples.append(item.crop((left, top, left + w, top + h)))
    return ({"samples": samples},)


def vae_decode(ctx: NodeContext, samples: dict, vae: Model) -> tuple[Any, ...]:
    """Turn a latent back into images of 8 x its cell size."""
    return ([item.copy() for item in samples["samples"]],)


def _texts(conditioning: list) -> str:
    return " | ".join(" ".join(entry) for entry in conditioning)


def _colour(text: str, salt: str) -> tuple[int, int, int]:
    digest = hashlib.sha256((salt + text).encode("utf-8")).digest()
    return digest[0], digest[1], digest[2]


def stylise(
    image: Image.Image, seed: int, positive: str, negative: str, denoise: float
) -> tuple[Image.Image, Image.Image]:
    """The sampler's deterministic look: (final image, seed noise) for one batch item."""
    width, height = image.size
    rng = random.Random(seed)
    cells = (max(1, width // 8), max(1, height // 8))
    noise = Image.frombytes("RGB", cells, rng.randbytes(cells[0] * cells[1] * 3))
    noise = noise.resize((width, height), Image.Resampling.BICUBIC)
    bits = 3 + hashlib.sha256(negative.encode("utf-8")).digest()[0] % 3
    base = ImageOps.posterize(image.convert("RGB"), bits).filter(ImageFilter.SMOOTH_MORE)
    tinted = Image.blend(base, Image.new("RGB", (width, height), _colour(positive, "+")), 0.22)
    shaded = Image.blend(tinted, Image.new("RGB", (width, height), _colour(negative, "-")), 0.06)
    return Image.blend(shaded, noise, 0.45 * max(0.0, min(1.0, denoise))), noise


def _preview(image: Image.Image, size: int = 512) -> Image.Image:
    scale = size / max(image.size)
    target = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(target, Image.Resampling.BILINEAR)


async def ksampler(
    ctx: NodeContext,
    model: Model,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent_image: dict,
    denoise: float,
) -> tuple[Any, ...]:
    """Stylise each latent; one progress callback (and optional preview) per step."""
    pos, neg = _texts(positive), _texts(negative)
    finals = []
    noises = []
    for index, item in enumerate(latent_image["samples"]):
        final, noise = stylise(item, seed + index, pos, neg, denoise)
        finals.append(final)
        noises.append(noise)
    for step in range(steps):
        if ctx.on_step is not None:
            fraction = (step + 1) / steps

            def preview(fraction: float = fraction) -> Image.Image:
                return _preview(Image.blend(noises[0], finals[0], fraction))

            await ctx.on_step(step + 1, steps, preview)
    return ({"samples": finals},)


def save_image(ctx: NodeContext, images: list, filename_prefix: str) -> dict[str, Any]:
    """Write PNGs to output/<subfolder>/<prefix>_<counter>_.png with the prompt chunk."""
    return _save_images(ctx, images, filename_prefix, ctx.dirs.output, "output", 4)


def preview_image(ctx: NodeContext, images: list) -> dict[str, Any]:
    """Write PNGs to temp/ComfyUI_temp_<5 letters>_<counter>_.png."""
    prefix = ctx.preview_prefixes.get(ctx.node_id)
    if prefix is None:
        letters = "".join(random.choice(string.ascii_lowercase) for _ in range(5))
        prefix = ctx.preview_prefixes[ctx.node_id] = f"ComfyUI_temp_{letters}"
    return _save_images(ctx, images, prefix, ctx.dirs.temp, "temp", 1)


async def save_image_websocket(ctx: NodeContext, images: list) -> None:
    """Send each image, full size, as a PNG binary frame to the prompt's client; write nothing.

    Like ComfyUI's example node: one progress message per image (value = the image's index,
    max = their number), no UI result (so no ``executed`` and nothing in the history's outputs).
    """
    for index, image in enumerate(images):
        if ctx.send_image is not None:
            await ctx.send_image(index, len(images), image)


def _always_changed(dirs: Dirs, inputs: dict) -> Any:
    """A new value every run: the node is never taken from the cache (its IS_CHANGED)."""
    return time.time_ns()


NODES: dict[str, NodeDef] = {
    "CheckpointLoaderSimple": NodeDef(checkpoint_loader_simple),
    "CLIPTextEncode": NodeDef(clip_text_encode),
    "ConditioningConcat": NodeDef(conditioning_concat),
    "ImpactConcatConditionings": NodeDef(impact_concat_conditionings),
    "LoadImage": NodeDef(
        load_image,
        validate_inputs=_load_image_validate,
        validated_inputs=("image",),
        is_changed=_load_image_changed,
    ),
    "ImageScale": NodeDef(image_scale),
    "ImageScaleBy": NodeDef(image_scale_by),
    "ImageInvert": NodeDef(image_invert),
    "EmptyImage": NodeDef(empty_image),
    "EmptyLatentImage": NodeDef(empty_latent_image),
    "VAEEncode": NodeDef(vae_encode),
    "KSampler": NodeDef(ksampler),
    "VAEDecode": NodeDef(vae_decode),
    "SaveImage": NodeDef(save_image, output_node=True),
    "PreviewImage": NodeDef(preview_image, output_node=True),
    "SaveImageWebsocket": NodeDef(
        save_image_websocket, output_node=True, is_changed=_always_changed
    ),
}

assert set(NODES) == set(OBJECT_INFO), "catalogue and implementations disagree"
