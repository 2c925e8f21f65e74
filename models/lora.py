"""LoRA for the EasyAnimate transformer: read a LoRA file, find the Linear each entry targets, and attach the stack to
the transformer for one sampling run without ever writing the base weights (docs/lora.md).

Key formats read:
- kohya (what EasyAnimate's own trainer writes): `lora_unet__<module path, "." replaced by "_">.lora_down.weight`,
  `.lora_up.weight`, optional `.alpha`; `lora_te_…` entries belong to the V5 Bert text encoder (models/lora_text.py
  applies them while prompts are encoded). The `_`-joined path is resolved against the module tree greedily, shortest
  attribute first, as the original loader does. Names written against a `-diffusers` layout model
  (`attn1_add_q_proj`, `attn1_to_add_out`, …) are translated to ours.
- diffusers / PEFT: `transformer.<dotted path>.lora_A.weight` / `.lora_B.weight`, optional `.alpha`, in either layout.

Scale per LoRA: strength · alpha / rank. Without alpha the scale is strength · 1.0, in either format: the original
loader's rule for kohya files and diffusers' default (lora_alpha = r) for PEFT files (docs/lora.md, missing alpha).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import ops

KOHYA_TRANSFORMER_PREFIX = "lora_unet_"
KOHYA_TEXT_PREFIX = "lora_te_"
PEFT_PREFIXES = ("transformer.", "diffusion_model.", "base_model.model.")
_SUFFIXES = {  # key ending -> (format, part)
    ".lora_down.weight": ("kohya", "down"),
    ".lora_up.weight": ("kohya", "up"),
    ".lora_A.weight": ("peft", "down"),
    ".lora_B.weight": ("peft", "up"),
    ".alpha": (None, "alpha"),
}
# `-diffusers` layout names of the MMDiT text-stream attention, in kohya's `_` form -> the original names we use.
_DIFFUSERS_KOHYA = re.compile(r"^(transformer_blocks_\d+_)attn1_(add_q_proj|add_k_proj|add_v_proj|to_add_out)$")
_DIFFUSERS_KOHYA_TO_ORIGINAL = {
    "add_q_proj": "to_q",
    "add_k_proj": "to_k",
    "add_v_proj": "to_v",
    "to_add_out": "to_out_0",
}
LORA_BUFFERS = ("lora_down", "lora_up", "lora_merged_weight")


class LoraError(ValueError):
    """A LoRA file that cannot be applied to this model (nothing matches, wrong size or version, bad file)."""


@dataclass
class LoraModule:
    """One low-rank pair as stored in the file: delta W = (alpha / rank) · up @ down."""

    key: str  # the entry's name in the file (without the .lora_down/.lora_A suffix)
    down: torch.Tensor | None = None  # [rank, in]
    up: torch.Tensor | None = None  # [out, rank]
    alpha: float | None = None
    file_format: str = "kohya"

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        return 1.0 if self.alpha is None else self.alpha / self.rank  # docs/lora.md, missing alpha


@dataclass
class LoraWeights:
    """A parsed LoRA file: transformer entries, V5 text-encoder (`lora_te_`) entries and keys we do not understand."""

    name: str
    transformer: dict[str, LoraModule] = field(default_factory=dict)
    text_encoder: dict[str, LoraModule] = field(default_factory=dict)
    unknown: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        parts = [m.down for m in self.transformer.values()] + [m.up for m in self.transformer.values()]
        parts += [m.down for m in self.text_encoder.values()] + [m.up for m in self.text_encoder.values()]
        return sum(t.numel() * t.element_size() for t in parts)


def parse_lora(tensors: dict[str, torch.Tensor], name: str = "LoRA") -> LoraWeights:
    """Group a LoRA state dict into LoraModules; incomplete pairs are an error naming them."""
    weights = LoraWeights(name)
    for key, tensor in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            weights.unknown.append(key)
            continue
        file_format, part = _SUFFIXES[suffix]
        stem = key[: -len(suffix)]
        if stem.startswith(KOHYA_TEXT_PREFIX):
            group, file_format = weights.text_encoder, "kohya"
        else:
            group = weights.transformer
            file_format = file_format or ("kohya" if stem.startswith(KOHYA_TRANSFORMER_PREFIX) else "peft")
        module = group.setdefault(stem, LoraModule(stem, file_format=file_format))
        if part == "alpha":
            module.alpha = float(tensor.float().reshape(-1)[0])
        else:
            setattr(module, part, tensor)
    for group in (weights.transformer, weights.text_encoder):
        broken = [k for k, m in group.items() if m.down is None or m.up is None]
        if broken:
            raise LoraError(
                f"{name}: {len(broken)} entries lack their down/up pair (first: {broken[:3]}); the file "
                "is incomplete or not a LoRA."
            )
        for module in group.values():
            if module.down.ndim == 4:  # 1×1 convolutions saved as [r, in, 1, 1]
                module.down, module.up = module.down.flatten(1), module.up.flatten(1)
            if module.down.ndim != 2 or module.up.ndim != 2 or module.up.shape[1] != module.down.shape[0]:
                raise LoraError(
                    f"{name}: {module.key} has down {tuple(module.down.shape)} and up "
                    f"{tuple(module.up.shape)}; expected [rank, in] and [out, rank]."
                )
    return weights


def load_lora_file(path: str | Path) -> LoraWeights:
    """Read a .safetensors LoRA (pickle formats are refused: they can run code)."""
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise LoraError(
            f"{path.name}: only .safetensors LoRA files are loaded (pickle files such as .pt/.ckpt/.bin "
            "can execute code). Convert it to safetensors and put it in ComfyUI/models/loras/."
        )
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a damaged header
        raise LoraError(f"{path}: not a readable safetensors file ({error}).") from None
    return parse_lora(tensors, path.name)


# -- which Linear each entry targets ----------------------------------------------------------------------------------


def _child(module: nn.Module, name: str) -> nn.Module | None:
    return module._modules.get(name)


def resolve_kohya_name(root: nn.Module, underscored: str) -> str | None:
    """The dotted module path an `_`-joined kohya name denotes under `root`, or None.

    The whole name is tried as one child first, then the parts are consumed greedily: join parts with `_` until a
    child of that name exists, descend, repeat (so `ff_net_0_proj` -> ff.net.0.proj, `time_embedding_linear_1` ->
    time_embedding.linear_1) — the original loader's rule; where it would fail, longer joins are tried too."""
    if _child(root, underscored) is not None:
        return underscored
    parts = underscored.split("_")

    def walk(module: nn.Module, start: int) -> list[str] | None:
        if start == len(parts):
            return []
        for end in range(start + 1, len(parts) + 1):
            child = _child(module, "_".join(parts[start:end]))
            if child is not None:
                rest = walk(child, end)
                if rest is not None:
                    return ["_".join(parts[start:end])] + rest
        return None

    path = walk(root, 0)
    return None if path is None else ".".join(path)


def target_name(entry: LoraModule, root: nn.Module) -> str | None:
    """Our module path (original key naming) for one transformer entry, or None when nothing in `root` matches."""
    from .loading.keys import diffusers_to_original_key

    if entry.key.startswith(KOHYA_TRANSFORMER_PREFIX):
        underscored = entry.key[len(KOHYA_TRANSFORMER_PREFIX) :].lstrip("_")  # the root's empty path gives "__"
        diffusers_name = _DIFFUSERS_KOHYA.match(underscored)
        if diffusers_name:
            underscored = f"{diffusers_name[1]}attn2_{_DIFFUSERS_KOHYA_TO_ORIGINAL[diffusers_name[2]]}"
        name = resolve_kohya_name(root, underscored)
    else:
        dotted = next((entry.key[len(p) :] for p in PEFT_PREFIXES if entry.key.startswith(p)), entry.key)
        name = diffusers_to_original_key(dotted + ".weight")[: -len(".weight")]
    return _linear_or_none(root, name)


def text_target_name(entry: LoraModule, root: nn.Module) -> str | None:
    """The Bert module path of one `lora_te_` entry (`lora_te_encoder_layer_0_attention_self_query` ->
    encoder.layer.0.attention.self.query), resolved like the transformer's names; None when nothing matches."""
    return _linear_or_none(root, resolve_kohya_name(root, entry.key[len(KOHYA_TEXT_PREFIX) :]))


def _linear_or_none(root: nn.Module, name: str | None) -> str | None:
    if name is None:
        return None
    try:
        module = root.get_submodule(name)
    except AttributeError:
        return None
    return name if isinstance(module, nn.Linear) else None


# part of a LoRA -> (how an entry finds its Linear, what the messages call the model)
PARTS = {
    "transformer": (target_name, "EasyAnimate transformer"),
    "text_encoder": (text_target_name, "V5 Bert text encoder"),
}


def match_lora(
    weights: LoraWeights, root: nn.Module, log: Callable[[str], None] = print, part: str = "transformer"
) -> dict[str, LoraModule]:
    """{our Linear path: entry} for every entry of `weights` that belongs to `part` ("transformer", or
    "text_encoder" with `root` the V5 Bert model); errors and warnings as docs/lora.md says.

    Nothing matched -> LoraError naming the first unmatched keys; a shape that does not fit -> LoraError naming the
    layer and both shapes (a LoRA for another size or version); some entries unmatched -> a warning with counts. A
    LoRA with text-encoder entries only matches no transformer layer and no error is raised for that."""
    entries = getattr(weights, part)
    resolve, what = PARTS[part]
    matched, unmatched, mismatched = {}, [], []
    for entry in entries.values():
        name = resolve(entry, root)
        if name is None:
            unmatched.append(entry.key)
            continue
        linear = root.get_submodule(name)
        if entry.down.shape[1] != linear.in_features or entry.up.shape[0] != linear.out_features:
            mismatched.append(
                f"{name}: the model's layer is [{linear.out_features}, {linear.in_features}] "
                f"(out, in), the LoRA's up @ down is [{entry.up.shape[0]}, {entry.down.shape[1]}]"
            )
        matched[name] = entry
    if part == "transformer":
        mismatched += [problem for key in unmatched if (problem := _other_model_problem(key, root))]
    if mismatched:
        raise LoraError(
            f"{weights.name} does not fit this model ({len(mismatched)} entries; it was trained for "
            "another EasyAnimate size or version):\n  " + "\n  ".join(mismatched[:5])
        )
    if not matched and (entries or part == "text_encoder" or not weights.text_encoder):
        shown = unmatched[:5] or weights.unknown[:5]
        raise LoraError(
            f"{weights.name}: none of its {len(entries)} {part.replace('_', '-')} entries names a layer "
            f"of this {what} (first unmatched: {shown}). Is it a LoRA for another model?"
        )
    unknown = weights.unknown if part == "transformer" else []
    skipped = len(unmatched) + len(unknown)
    if skipped:
        log(
            f"EasyAnimate LoRA warning: {weights.name} ({what}): {len(matched)} of {len(matched) + skipped} entries "
            f"applied; {skipped} unmatched (first: {(unmatched + unknown)[:3]})."
        )
    return matched


_BLOCK_ENTRY = re.compile(r"^transformer_blocks_(\d+)_(.+)$")
_TEXT_STREAM = re.compile(r"^(attn2_|txt_ff_|attn1_add_|attn1_to_add_out)")


def _other_model_problem(key: str, root: nn.Module) -> str | None:
    """Why an unmatched entry shows the LoRA was made for another EasyAnimate size or version (None: just unknown).

    Same-width models differ in structure, not shapes: the 12B has 48 MMDiT blocks, the 7B 36 blocks of which the
    last 18 share one set of weights for both streams; V5 projects Bert + mT5 text (`text_proj`, `text_proj_t5`), V5.1
    Qwen2-VL text through `text_proj.1` after an RMSNorm."""
    underscored = (
        key[len(KOHYA_TRANSFORMER_PREFIX) :].lstrip("_")
        if key.startswith(KOHYA_TRANSFORMER_PREFIX)
        else (next((key[len(p) :] for p in PEFT_PREFIXES if key.startswith(p)), key).replace(".", "_"))
    )
    blocks = root._modules.get("transformer_blocks")
    block = _BLOCK_ENTRY.match(underscored)
    if block and blocks is not None:
        index = int(block[1])
        if index >= len(blocks):
            return f"{key}: targets transformer block {index}, this model has {len(blocks)} blocks"
        if _TEXT_STREAM.match(block[2]) and blocks[index]._modules.get("attn2") is None:
            return f"{key}: targets separate text-stream weights in block {index}, which this model's block shares"
    v51 = isinstance(root._modules.get("text_proj"), nn.Sequential)
    if underscored in ("text_proj", "text_proj_t5") and v51:
        return f"{key}: a V5 (Bert + mT5) text projection; this model is V5.1"
    if underscored.startswith("text_proj_1") and not v51:
        return f"{key}: the V5.1 (Qwen2-VL) text projection; this model is V5"
    return None


def meta_transformer(detection) -> nn.Module:
    """The transformer's module tree without weights (meta device): enough to check a LoRA before loading anything."""
    from .transformer import EasyAnimateTransformer, TransformerParams

    with torch.device("meta"):
        return EasyAnimateTransformer(TransformerParams.from_config(detection.transformer_config))


# -- attaching a stack for one run ------------------------------------------------------------------------------------


def _weight_fp32(linear: nn.Module) -> torch.Tensor:
    """The layer's weight as it computes, in fp32 (fp8 with a per-tensor scale dequantized)."""
    scale = getattr(linear, "weight_scale", None)
    weight = linear.weight.float()
    return weight if scale is None else weight * scale.float().to(weight.device)


def attach_loras(
    transformer: nn.Module, stack, merge: bool = False, log: Callable[[str], None] = print, part: str = "transformer"
) -> int:
    """Attach `stack`, (LoraWeights, strength) pairs, to the transformer's Linears (part "text_encoder": their
    `lora_te_` entries to the V5 Bert model given as `transformer`); returns how many layers got one.

    Unmerged (default): each targeted Linear gets `lora_down` / `lora_up` in the compute dtype (all stacked LoRAs
    concatenated on the rank axis, strength·alpha/rank folded into up in fp32 first). Merged: layer by layer, W and
    the deltas are summed in fp32 and the result kept in the compute dtype as `lora_merged_weight`; W is untouched.
    Tensors are created where the layer's weight lives now, so offload moves them with their block afterwards."""
    detach_loras(transformer)
    dtype = getattr(transformer, "compute_dtype", None)
    per_layer: dict[str, list[tuple[LoraModule, float]]] = {}
    for weights, strength in stack:
        matched = match_lora(weights, transformer, log, part)
        if strength == 0:
            continue
        for name, entry in matched.items():
            per_layer.setdefault(name, []).append((entry, float(strength)))
    order = {name: i for i, (name, _) in enumerate(transformer.named_modules())}  # block by block, in model order
    for name in sorted(per_layer, key=order.__getitem__):
        linear = transformer.get_submodule(name)
        device, held = linear.weight.device, dtype or linear.weight.dtype
        down = torch.cat([entry.down.to(device, torch.float32) for entry, _ in per_layer[name]])  # [Σr, in]
        up = torch.cat(
            [entry.up.to(device, torch.float32) * (strength * entry.scale) for entry, strength in per_layer[name]],
            dim=1,
        )  # [out, Σr]
        if merge:
            linear.register_buffer("lora_merged_weight", (_weight_fp32(linear) + up @ down).to(held), persistent=False)
        else:
            linear.register_buffer("lora_down", down.to(held), persistent=False)
            linear.register_buffer("lora_up", up.to(held), persistent=False)
        linear.__class__ = ops.lora_class(type(linear))
    return len(per_layer)


def detach_loras(transformer: nn.Module) -> int:
    """Remove every attached LoRA tensor and restore each layer's own class; returns how many layers had one."""
    count = 0
    for module in transformer.modules():
        if isinstance(module, ops.LoraLinear):
            for buffer in LORA_BUFFERS:
                module._buffers.pop(buffer, None)
            module.__class__ = module.base_linear
            count += 1
    return count


@contextlib.contextmanager
def loras_attached(
    transformer: nn.Module, stack, merge: bool = False, log: Callable[[str], None] = print, part: str = "transformer"
):
    """Attach for the duration of the block; detached on exit, error and interrupt included."""
    try:
        attach_loras(transformer, stack, merge, log, part)
        yield transformer
    finally:
        detach_loras(transformer)
