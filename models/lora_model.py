"""The model object the EasyAnimate LoRA node outputs (a ModelComponents seen through a stack of LoRAs) and what a
stack adds to the memory plan. Reading files, matching entries to layers and attaching them: models/lora.py."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Callable

import torch

from .lora import LoraError, LoraWeights, loras_attached, match_lora, meta_transformer

# -- the model object the LoRA node outputs ---------------------------------------------------------------------------


class LoraModel:
    """A ModelComponents seen through a LoRA stack: every attribute and component is the base's own (nothing is
    loaded twice, nothing copied), except `placement`, which attaches the stack around the sampler's run, and
    `text_encoder`, which applies the V5 `lora_te_` entries while prompts are encoded (models/lora_text.py).

    Chaining LoRA nodes builds a new LoraModel on the same base with one more (LoraWeights, strength) entry in
    `loras` and one more (LoraWeights, text-encoder strength) in `text_loras`; the stack's tensors live as long as
    ComfyUI keeps that node's output."""

    def __init__(self, base, stack=(), merge: bool = False, text_stack=None):
        self.base_components = getattr(base, "base_components", base)
        self.loras = tuple(getattr(base, "loras", ())) + tuple(stack)
        self.text_loras = tuple(getattr(base, "text_loras", ())) + tuple(stack if text_stack is None else text_stack)
        self.merge = merge

    def __getattr__(self, name: str):  # only for names not set above: the shared components object answers
        return getattr(self.__dict__["base_components"], name)

    @contextlib.contextmanager
    def placement(self, transformer, device, stats=None):
        with loras_attached(transformer, self.loras, self.merge):
            with self.base_components.placement(transformer, device, stats) as placed:
                yield placed

    def text_encoder(self, device="cpu"):
        """The base's text encoder; for V5 with text-encoder entries, a view of it that encodes through them."""
        encoder = self.base_components.text_encoder(device=device)
        stack = [(weights, strength) for weights, strength in self.text_loras if weights.text_encoder and strength]
        if not stack or "bert" not in encoder.streams:
            return encoder
        from .lora_text import LoraTextEncoder

        return LoraTextEncoder(encoder, stack)

    def __repr__(self) -> str:
        stack = ", ".join(f"{weights.name}×{strength:g}" for weights, strength in self.loras)
        return f"{self.base_components!r} + LoRA [{stack}]{' merged' if self.merge else ''}"


def with_lora(
    model,
    weights: LoraWeights,
    strength: float,
    merge: bool = False,
    log: Callable[[str], None] = print,
    text_strength: float | None = None,
):
    """`model` (ModelComponents or LoraModel) plus one LoRA, checked against the transformer's module tree first (on
    the meta device: nothing is loaded), so a LoRA for another model fails at its own node. `text_strength` is the
    multiplier of its `lora_te_` entries (None: `strength`, as the original plugin does; docs/lora.md)."""
    text_strength = float(strength if text_strength is None else text_strength)
    match_lora(weights, meta_transformer(model.detection), log)
    if weights.text_encoder and model.detection.version != "v5":
        message = (
            f"{weights.name}: its {len(weights.text_encoder)} text-encoder entries (lora_te_) are for V5's "
            f"Bert encoder; this {model.detection.version.upper()} model encodes prompts with Qwen2-VL"
        )
        if not weights.transformer:
            raise LoraError(message + ", so this LoRA changes nothing. Use it with a V5 model.")
        if text_strength:
            log(f"EasyAnimate LoRA warning: {message}: they are ignored, only the transformer part is used.")
    return LoraModel(model, [(weights, float(strength))], merge, [(weights, text_strength)])


# -- memory: what an attached stack adds to the transformer's weights --------------------------------------------------


def lora_bytes(model) -> int:
    """Bytes the model's LoRA stack attaches to the transformer for a run (0 without LoRAs): down + up of every
    transformer entry in the compute dtype, or, in merge mode, one compute-dtype copy of every targeted layer. They
    sit where their layer sits: on the device in gpu mode, with their block under block swap (docs/lora.md, cost)."""
    stack = [(weights, strength) for weights, strength in getattr(model, "loras", ()) if strength]
    if not stack:
        return 0
    itemsize = torch.empty((), dtype=model.dtype).element_size()
    if getattr(model, "merge", False):
        root = meta_transformer(model.detection)
        layers = {name for weights, _ in stack for name in match_lora(weights, root, log=lambda line: None)}
        return sum(root.get_submodule(name).weight.numel() for name in layers) * itemsize
    return sum(
        (entry.down.numel() + entry.up.numel()) * itemsize
        for weights, _ in stack
        for entry in weights.transformer.values()
    )


def add_lora_bytes(weights, model):
    """A copy of `weights` (models.memory.ModelBytes) with the model's LoRA bytes added to the transformer of every storage,
    spread evenly over its blocks (a LoRA on every Linear is nearly all block layers)."""
    extra = lora_bytes(model)
    if not extra:
        return weights
    per_block = extra // max(weights.num_blocks, 1)
    return replace(
        weights,
        transformer={label: total + extra for label, total in weights.transformer.items()},
        block={label: block + per_block for label, block in weights.block.items()},
    )
