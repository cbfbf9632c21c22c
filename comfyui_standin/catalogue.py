"""Node catalogue: the /object_info entries of the classes the stand-in implements."""

from __future__ import annotations

from typing import Any

# Placeholders replaced at request time by the live file lists.
INPUT_FILES = "__INPUT_FILES__"
CHECKPOINTS = "__CHECKPOINTS__"

#: Classes that exist only when the matching custom node pack is enabled.
CUSTOM_NODE_PACKS: dict[str, tuple[str, ...]] = {"impact": ("ImpactConcatConditionings",)}

OBJECT_INFO: dict[str, dict[str, Any]] = {
    "CheckpointLoaderSimple": {
        "input": {
            "required": {
                "ckpt_name": [
                    CHECKPOINTS,
                    {"tooltip": "The name of the checkpoint (model) to load."},
                ]
            }
        },
        "input_order": {"required": ["ckpt_name"]},
        "output": ["MODEL", "CLIP", "VAE"],
        "output_is_list": [False, False, False],
        "output_name": ["MODEL", "CLIP", "VAE"],
        "name": "CheckpointLoaderSimple",
        "display_name": "Load Checkpoint",
        "description": "Loads a diffusion model checkpoint, diffusion models are used to "
        "denoise latents.",
        "python_module": "nodes",
        "category": "loaders",
        "output_node": False,
        "output_tooltips": [
            "The model used for denoising latents.",
            "The CLIP model used for encoding text prompts.",
            "The VAE model used for encoding and decoding images to and from latent space.",
        ],
    },
    "CLIPTextEncode": {
        "input": {
            "required": {
                "text": [
                    "STRING",
                    {
                        "multiline": True,
                        "dynamicPrompts": True,
                        "tooltip": "The text to be encoded.",
                    },
                ],
                "clip": ["CLIP", {"tooltip": "The CLIP model used for encoding the text."}],
            }
        },
        "input_order": {"required": ["text", "clip"]},
        "output": ["CONDITIONING"],
        "output_is_list": [False],
        "output_name": ["CONDITIONING"],
        "name": "CLIPTextEncode",
        "display_name": "CLIP Text Encode (Prompt)",
        "description": "Encodes a text prompt using a CLIP model into an embedding that can be "
        "used to guide the diffusion model towards generating specific images.",
        "python_module": "nodes",
        "category": "conditioning",
        "output_node": False,
        "output_tooltips": [
            "A conditioning containing the embedded text used to guide the diffusion model."
        ],
    },
    "ConditioningConcat": {
        "input": {
            "required": {"conditioning_to": ["CONDITIONING"], "conditioning_from": ["CONDITIONING"]}
        },
        "input_order": {"required": ["conditioning_to", "conditioning_from"]},
        "output": ["CONDITIONING"],
        "output_is_list": [False],
        "output_name": ["CONDITIONING"],
        "name": "ConditioningConcat",
        "display_name": "Conditioning (Concat)",
        "description": "",
        "python_module": "nodes",
        "category": "conditioning",
        "output_node": False,
    },
    "ImpactConcatConditionings": {
        "input": {
            "required": {"conditioning1": ["CONDITIONING"]},
            "optional": {"conditioning2": ["CONDITIONING"]},
        },
        "input_order": {"required": ["conditioning1"], "optional": ["conditioning2"]},
        "output": ["CONDITIONING"],
        "output_is_list": [False],
        "output_name": ["CONDITIONING"],
        "name": "ImpactConcatConditionings",
        "display_name": "ImpactConcatConditionings",
        "description": "",
        "python_module": "custom_nodes.lab_impact_concat",
        "category": "lab",
        "output_node": False,
    },
    "LoadImage": {
        "input": {"required": {"image": [INPUT_FILES, {"image_upload": True}]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE", "MASK"],
        "output_is_list": [False, False],
        "output_name": ["IMAGE", "MASK"],
        "name": "LoadImage",
        "display_name": "Load Image",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "ImageScale": {
        "input": {
            "required": {
                "image": ["IMAGE"],
                "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                "width": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                "height": ["INT", {"default": 512, "min": 0, "max": 16384, "step": 1}],
                "crop": [["disabled", "center"]],
            }
        },
        "input_order": {"required": ["image", "upscale_method", "width", "height", "crop"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageScale",
        "display_name": "Upscale Image",
        "description": "",
        "python_module": "nodes",
        "category": "image/upscaling",
        "output_node": False,
    },
    "ImageScaleBy": {
        "input": {
            "required": {
                "image": ["IMAGE"],
                "upscale_method": [["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]],
                "scale_by": ["FLOAT", {"default": 1.0, "min": 0.01, "max": 8.0, "step": 0.01}],
            }
        },
        "input_order": {"required": ["image", "upscale_method", "scale_by"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageScaleBy",
        "display_name": "Upscale Image By",
        "description": "",
        "python_module": "nodes",
        "category": "image/upscaling",
        "output_node": False,
    },
    "ImageInvert": {
        "input": {"required": {"image": ["IMAGE"]}},
        "input_order": {"required": ["image"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "ImageInvert",
        "display_name": "Invert Image",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "EmptyImage": {
        "input": {
            "required": {
                "width": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "height": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
                "batch_size": ["INT", {"default": 1, "min": 1, "max": 4096}],
                "color": [
                    "INT",
                    {"default": 0, "min": 0, "max": 16777215, "step": 1, "display": "color"},
                ],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size", "color"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "EmptyImage",
        "display_name": "EmptyImage",
        "description": "",
        "python_module": "nodes",
        "category": "image",
        "output_node": False,
    },
    "EmptyLatentImage": {
        "input": {
            "required": {
                "width": [
                    "INT",
                    {
                        "default": 512,
                        "min": 16,
                        "max": 16384,
                        "step": 8,
                        "tooltip": "The width of the latent images in pixels.",
                    },
                ],
                "height": [
                    "INT",
                    {
                        "default": 512,
                        "min": 16,
                        "max": 16384,
                        "step": 8,
                        "tooltip": "The height of the latent images in pixels.",
                    },
                ],
                "batch_size": [
                    "INT",
                    {
                        "default": 1,
                        "min": 1,
                        "max": 4096,
                        "tooltip": "The number of latent images in the batch.",
                    },
                ],
            }
        },
        "input_order": {"required": ["width", "height", "batch_size"]},
        "output": ["LATENT"],
        "output_is_list": [False],
        "output_name": ["LATENT"],
        "name": "EmptyLatentImage",
        "display_name": "Empty Latent Image",
        "description": "Create a new batch of empty latent images to be denoised via sampling.",
        "python_module": "nodes",
        "category": "latent",
        "output_node": False,
        "output_tooltips": ["The empty latent image batch."],
    },
    "VAEEncode": {
        "input": {"required": {"pixels": ["IMAGE"], "vae": ["VAE"]}},
        "input_order": {"required": ["pixels", "vae"]},
        "output": ["LATENT"],
        "output_is_list": [False],
        "output_name": ["LATENT"],
        "name": "VAEEncode",
        "display_name": "VAE Encode",
        "description": "",
        "python_module": "nodes",
        "category": "latent",
        "output_node": False,
    },
    "KSampler": {
        "input": {
            "required": {
                "model": ["MODEL", {"tooltip": "The model used for denoising the input latent."}],
                "seed": [
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 18446744073709551615,
                        "control_after_generate": True,
                        "tooltip": "The random seed used for creating the noise.",
                    },
                ],
                "steps": [
                    "INT",
                    {
                        "default": 20,
                        "min": 1,
                        "max": 10000,
                        "tooltip": "The number of steps used in the denoising process.",
                    },
                ],
                "cfg": [
                    "FLOAT",
                    {
                        "default": 8.0,
                        "min": 0.0,
                        "max": 100.0,
                        "step": 0.1,
                        "round": 0.01,
                        "tooltip": "The Classifier-Free Guidance scale balances "
                        "creativity and adherence to the prompt. "
                        "Higher values result in images more closely "
                        "matching the prompt however too high values "
                        "will negatively impact quality.",
                    },
                ],
                "sampler_name": [
                    [
                        "euler",
                        "euler_cfg_pp",
                        "euler_ancestral",
                        "euler_ancestral_cfg_pp",
                        "heun",
                        "heunpp2",
                        "dpm_2",
                        "dpm_2_ancestral",
                        "lms",
                        "dpm_fast",
                        "dpm_adaptive",
                        "dpmpp_2s_ancestral",
                        "dpmpp_2s_ancestral_cfg_pp",
                        "dpmpp_sde",
                        "dpmpp_sde_gpu",
                        "dpmpp_2m",
                        "dpmpp_2m_cfg_pp",
                        "dpmpp_2m_sde",
                        "dpmpp_2m_sde_gpu",
                        "dpmpp_2m_sde_heun",
                        "dpmpp_2m_sde_heun_gpu",
                        "dpmpp_3m_sde",
                        "dpmpp_3m_sde_gpu",
                        "ddpm",
                        "lcm",
                        "ipndm",
                        "ipndm_v",
                        "deis",
                        "res_multistep",
                        "res_multistep_cfg_pp",
                        "res_multistep_ancestral",
                        "res_multistep_ancestral_cfg_pp",
                        "gradient_estimation",
                        "gradient_estimation_cfg_pp",
                        "er_sde",
                        "seeds_2",
                        "seeds_3",
                        "sa_solver",
                        "sa_solver_pece",
                        "ddim",
                        "uni_pc",
                        "uni_pc_bh2",
                    ],
                    {
                        "tooltip": "The algorithm used when sampling, "
                        "this can affect the quality, "
                        "speed, and style of the generated "
                        "output."
                    },
                ],
                "scheduler": [
                    [
                        "simple",
                        "sgm_uniform",
                        "karras",
                        "exponential",
                        "ddim_uniform",
                        "beta",
                        "normal",
                        "linear_quadratic",
                        "kl_optimal",
                    ],
                    {
                        "tooltip": "The scheduler controls how noise is "
                        "gradually removed to form the "
                        "image."
                    },
                ],
                "positive": [
                    "CONDITIONING",
                    {
                        "tooltip": "The conditioning describing the "
                        "attributes you want to include in the "
                        "image."
                    },
                ],
                "negative": [
                    "CONDITIONING",
                    {
                        "tooltip": "The conditioning describing the "
                        "attributes you want to exclude from "
                        "the image."
                    },
                ],
                "latent_image": ["LATENT", {"tooltip": "The latent image to denoise."}],
                "denoise": [
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "The amount of denoising applied, lower "
                        "values will maintain the structure of "
                        "the initial image allowing for image to "
                        "image sampling.",
                    },
                ],
            }
        },
        "input_order": {
            "required": [
                "model",
                "seed",
                "steps",
                "cfg",
                "sampler_name",
                "scheduler",
                "positive",
                "negative",
                "latent_image",
                "denoise",
            ]
        },
        "output": ["LATENT"],
        "output_is_list": [False],
        "output_name": ["LATENT"],
        "name": "KSampler",
        "display_name": "KSampler",
        "description": "Uses the provided model, positive and negative conditioning to denoise "
        "the latent image.",
        "python_module": "nodes",
        "category": "sampling",
        "output_node": False,
        "output_tooltips": ["The denoised latent."],
    },
    "VAEDecode": {
        "input": {
            "required": {
                "samples": ["LATENT", {"tooltip": "The latent to be decoded."}],
                "vae": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
            }
        },
        "input_order": {"required": ["samples", "vae"]},
        "output": ["IMAGE"],
        "output_is_list": [False],
        "output_name": ["IMAGE"],
        "name": "VAEDecode",
        "display_name": "VAE Decode",
        "description": "Decodes latent images back into pixel space images.",
        "python_module": "nodes",
        "category": "latent",
        "output_node": False,
        "output_tooltips": ["The decoded image."],
    },
    "SaveImage": {
        "input": {
            "required": {
                "images": ["IMAGE", {"tooltip": "The images to save."}],
                "filename_prefix": [
                    "STRING",
                    {
                        "default": "ComfyUI",
                        "tooltip": "The prefix for the file to "
                        "save. This may include "
                        "formatting information such as "
                        "%date:yyyy-MM-dd% or %Empty "
                        "Latent Image.width% to include "
                        "values from nodes.",
                    },
                ],
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {
            "required": ["images", "filename_prefix"],
            "hidden": ["prompt", "extra_pnginfo"],
        },
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImage",
        "display_name": "Save Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
    "PreviewImage": {
        "input": {
            "required": {"images": ["IMAGE"]},
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        },
        "input_order": {"required": ["images"], "hidden": ["prompt", "extra_pnginfo"]},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "PreviewImage",
        "display_name": "Preview Image",
        "description": "Saves the input images to your ComfyUI output directory.",
        "python_module": "nodes",
        "category": "image",
        "output_node": True,
    },
    # The example custom node a real ComfyUI ships and loads by default
    # (custom_nodes/websocket_image_save.py): no display name of its own, no description.
    "SaveImageWebsocket": {
        "input": {"required": {"images": ["IMAGE"]}},
        "input_order": {"required": ["images"]},
        "output": [],
        "output_is_list": [],
        "output_name": [],
        "name": "SaveImageWebsocket",
        "display_name": "SaveImageWebsocket",
        "description": "",
        "python_module": "custom_nodes.websocket_image_save",
        "category": "image",
        "output_node": True,
    },
}
