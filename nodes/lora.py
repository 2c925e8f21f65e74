"""EasyAnimate LoRA: model in -> the same model with one more LoRA on its stack (models/lora.py; docs/lora.md)."""

from __future__ import annotations

from pathlib import Path

from .folders import CachedListing, files_under, find_in_folders, relative_name

LORAS_FOLDER = "loras"  # ComfyUI's own LoRA folder key (models/loras + extra_model_paths.yaml)
NO_LORAS = "(no LoRAs found: put .safetensors files in ComfyUI/models/loras/)"
APPLY_MODES = ["delta in forward", "merge (GPU speed)"]

# Every .safetensors file under the registered LoRA folders, as a path relative to its folder (nodes/folders.py).
list_loras = CachedListing(LORAS_FOLDER, files_under(".safetensors"))


def resolve_lora(name: str) -> Path:
    """The file behind a dropdown entry; refuses names that leave the LoRA folders and non-safetensors files."""
    if name == NO_LORAS:
        raise FileNotFoundError(
            "No LoRA is installed: put a .safetensors LoRA into ComfyUI/models/loras/ (or a "
            "folder named `loras` in extra_model_paths.yaml) and refresh the page."
        )
    relative = relative_name(name, "LoRA", "a file inside the loras folders")
    if relative.suffix.lower() != ".safetensors":
        raise ValueError(f"LoRA {name!r}: only .safetensors files are loaded (pickle formats can execute code)")
    return find_in_folders(LORAS_FOLDER, relative, "ComfyUI/models/loras", "LoRA", file_only=True)


class EasyAnimateLora:
    CATEGORY = "EasyAnimate"
    FUNCTION = "apply"
    RETURN_TYPES = ("EASYANIMATE_MODEL",)
    RETURN_NAMES = ("model",)
    DESCRIPTION = (
        "Adds a LoRA (kohya `lora_unet_` / `lora_te_` or diffusers/PEFT names, .safetensors from models/loras) to the "
        "model; a V5 LoRA's text-encoder part applies when prompts are encoded from this output. Chain several to "
        "stack them. The base weights are never changed: switching or removing a LoRA reloads nothing, "
        "and it works with fp8 storage and every memory mode. A LoRA made for another EasyAnimate size or version is "
        "refused with the layers that do not fit."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("EASYANIMATE_MODEL",),
                "lora_name": (list_loras() or [NO_LORAS], {"tooltip": "A .safetensors file in models/loras."}),
                "strength": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -10.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": "Multiplier m of m · alpha/rank · up @ down (0 = off).",
                    },
                ),
            },
            "optional": {
                "apply": (
                    APPLY_MODES,
                    {
                        "default": APPLY_MODES[0],
                        "tooltip": (
                            "delta in forward: exact, any memory mode, fp8-safe. merge: the stack (up to this node) is merged "
                            "in fp32 into a compute-dtype copy of each targeted layer for the run — faster on a GPU, costs "
                            "that copy's memory."
                        ),
                    },
                ),
                "text_encoder_ratio": (
                    "FLOAT",
                    {
                        "default": 1.0,
                        "min": -10.0,
                        "max": 10.0,
                        "step": 0.01,
                        "tooltip": (
                            "V5 only: strength of the LoRA's text-encoder part (lora_te_, Bert) as a multiple of `strength`. "
                            "1 = the same strength, as the original EasyAnimate plugin applies; 0 = prompts are encoded "
                            "without it. Connect the Text Encode node's model to this node's output for it to apply."
                        ),
                    },
                ),
            },
        }

    def apply(self, model, lora_name, strength, apply=APPLY_MODES[0], text_encoder_ratio=1.0):
        from ..models.lora import load_lora_file
        from ..models.lora_model import with_lora

        weights = load_lora_file(resolve_lora(lora_name))
        merge = apply == APPLY_MODES[1]
        return (with_lora(model, weights, strength, merge, text_strength=strength * text_encoder_ratio),)


NODE_CLASS_MAPPINGS = {"EasyAnimateLora": EasyAnimateLora}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimateLora": "EasyAnimate LoRA"}
