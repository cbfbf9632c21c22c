"""The ComfyUI node classes the service knows by name, and which input of each means what."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

OUTPUT_CLASSES = frozenset({"SaveImage", "PreviewImage"})
IMAGE_LOADERS = frozenset({"LoadImage"})

# sampler class -> input holding its seed (None: the seed lives on the node linked to "noise")
SAMPLER_SEED_INPUT: Mapping[str, str | None] = MappingProxyType(
    {
        "KSampler": "seed",
        "KSamplerAdvanced": "noise_seed",
        "SamplerCustom": "noise_seed",
        "SamplerCustomAdvanced": None,
    }
)

NOISE_SEED_INPUT: Mapping[str, str] = MappingProxyType({"RandomNoise": "noise_seed"})

# guider class -> its positive conditioning input (SamplerCustomAdvanced takes a guider)
GUIDER_POSITIVE_INPUT: Mapping[str, str] = MappingProxyType(
    {"CFGGuider": "positive", "BasicGuider": "conditioning", "DualCFGGuider": "cond1"}
)

# combinators whose result is "primary side + extra": the primary side holds the subject text
PRIMARY_CONDITIONING_INPUT: Mapping[str, str] = MappingProxyType(
    {"ConditioningConcat": "conditioning_to", "ImpactConcatConditionings": "conditioning1"}
)
