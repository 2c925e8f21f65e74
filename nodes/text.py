"""EasyAnimate Text Encode: prompt + negative prompt → cached prompt embeddings for the sampler."""

from __future__ import annotations

from ..models.defaults import MAX_SEQUENCE_LENGTH
from .bridge import Progress, check_interrupt, free_memory, torch_device


class EasyAnimatePromptEncode:
    CATEGORY = "EasyAnimate"
    FUNCTION = "encode"
    RETURN_TYPES = ("EASYANIMATE_EMBEDS",)
    RETURN_NAMES = ("embeddings",)
    DESCRIPTION = (
        "Encodes the prompt and negative prompt exactly as the model was trained: Bert + mT5 for V5, Qwen2-VL "
        f"(penultimate layer, {MAX_SEQUENCE_LENGTH} tokens) for V5.1. Identical prompts are not encoded twice; the text "
        "encoder is released afterwards so the transformer gets the memory."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("EASYANIMATE_MODEL",),
                "prompt": ("STRING", {"multiline": True, "default": "", "tooltip": "What the video shows."}),
                "negative_prompt": (
                    "STRING",
                    {"multiline": True, "default": "", "tooltip": "What to avoid (classifier-free guidance)."},
                ),
            }
        }

    def encode(self, model, prompt, negative_prompt):
        from ..models.preflight import token_warnings

        encoder = model.text_encoder(device=torch_device())
        warnings = token_warnings(encoder, {"prompt": prompt, "negative prompt": negative_prompt})
        for line in warnings:
            print(line)  # the server console
        progress = Progress(1)
        try:
            embeddings = encoder.encode(
                [prompt], negative_prompt, progress=progress.callback, interrupt=check_interrupt, release_after=True
            )
        finally:
            free_memory()
        return {"ui": {"text": warnings}, "result": (embeddings,)}


NODE_CLASS_MAPPINGS = {"EasyAnimatePromptEncode": EasyAnimatePromptEncode}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimatePromptEncode": "EasyAnimate Text Encode"}
