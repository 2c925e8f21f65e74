"""Tiny LoRA files for the tiny checkpoints, in each key format, and the oracle: a checkpoint merged by the original
formula `W + m · alpha / rank · up @ down` (alpha missing -> the factor alpha / rank is 1.0, in both formats: the
original loader's `alpha = 1.0` names that factor, and PEFT's default lora_alpha = r gives the same).

Everything here works on the checkpoint FILE's key names (read from its safetensors header), never through the
pack's LoRA code: a layer is every 2-D `.weight` tensor, its kohya name is `lora_unet__` + the key path with `.`
replaced by `_`, its PEFT name `transformer.<key path>.lora_A.weight`. So the names of a `-diffusers` checkpoint are
the diffusers ones (`attn1.add_q_proj`), exactly what a LoRA trained on that layout carries. The V5 Bert encoder's
LoRA (`lora_te_` + the key path of `text_encoder/model.safetensors` with `_`) is made the same way.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMATS = ("kohya", "peft")
STEMS = {
    "kohya": ("lora_unet__", "lora_down", "lora_up"),
    "peft": ("transformer.", "lora_A", "lora_B"),
    "kohya_te": ("lora_te_", "lora_down", "lora_up"),
}


def transformer_file(model_dir: Path) -> Path:
    return Path(model_dir) / "transformer" / "diffusion_pytorch_model.safetensors"


def bert_file(model_dir: Path) -> Path:
    return Path(model_dir) / "text_encoder" / "model.safetensors"


def linear_shapes(model_dir: Path, file: Path | None = None) -> dict[str, tuple[int, int]]:
    """{module path in the file's naming: (out, in)} for every Linear weight (2-D) of the transformer checkpoint."""
    with safe_open(str(file or transformer_file(model_dir)), "pt") as handle:
        return {
            key[: -len(".weight")]: tuple(handle.get_slice(key).get_shape())
            for key in handle.keys()
            if key.endswith(".weight") and len(handle.get_slice(key).get_shape()) == 2
        }


@dataclass
class TinyLora:
    """A LoRA's content by the file's module path: (down [r, in], up [out, r], alpha or None)."""

    pairs: dict[str, tuple[torch.Tensor, torch.Tensor, float | None]]
    file_format: str

    def scale(self, alpha: float | None, rank: int) -> float:
        return 1.0 if alpha is None else alpha / rank

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        prefix, down_key, up_key = STEMS[self.file_format]
        for path, (down, up, alpha) in self.pairs.items():
            stem = prefix + (path if self.file_format == "peft" else path.replace(".", "_"))
            out[f"{stem}.{down_key}.weight"], out[f"{stem}.{up_key}.weight"] = down.contiguous(), up.contiguous()
            if alpha is not None:
                out[f"{stem}.alpha"] = torch.tensor(float(alpha))
        return out

    def save(self, path: Path, dtype: torch.dtype = torch.float32) -> Path:
        save_file({k: v.to(dtype) for k, v in self.tensors().items()}, str(path))
        return path


def make_lora(
    model_dir: Path,
    file_format: str = "kohya",
    rank: int = 4,
    alpha: float | None = 2.0,
    seed: int = 0,
    only=None,
    magnitude: float = 0.5,
) -> TinyLora:
    """Random LoRA on every Linear of the checkpoint (or the paths for which `only(path)` is true). file_format
    "kohya_te": on every Linear of the V5 Bert encoder's layers (what EasyAnimate's trainer wraps: `BertEncoder`)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = {}
    text = file_format == "kohya_te"
    shapes = linear_shapes(model_dir, bert_file(model_dir) if text else None)
    for path, (out_features, in_features) in sorted(shapes.items()):
        if text and not path.startswith("encoder."):
            continue
        if only is not None and not only(path):
            continue
        down = torch.randn(rank, in_features, generator=generator) * magnitude / in_features**0.5
        up = torch.randn(out_features, rank, generator=generator) * magnitude
        pairs[path] = (down, up, alpha)
    return TinyLora(pairs, file_format)


def merged_transformer(model_dir: Path, dest: Path, stack, dtype: torch.dtype = torch.float32) -> Path:
    """A bare transformer folder at `dest` whose weights are the checkpoint's with every (TinyLora, strength) of
    `stack` merged in fp32 by the original formula, stored in `dtype`."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(model_dir) / "transformer" / "config.json", dest / "config.json")
    _merge_file(transformer_file(model_dir), dest / "diffusion_pytorch_model.safetensors", stack, dtype)
    return dest


def merged_text_encoder_model(model_dir: Path, dest: Path, stack) -> Path:
    """A V5 model folder at `dest` (other parts linked) whose Bert weights have every (TinyLora "kohya_te",
    strength) of `stack` merged in fp32 by the original formula."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in Path(model_dir).iterdir():
        if item.name != "text_encoder":
            (dest / item.name).symlink_to(item.absolute())
    (dest / "text_encoder").mkdir()
    shutil.copyfile(Path(model_dir) / "text_encoder" / "config.json", dest / "text_encoder" / "config.json")
    _merge_file(bert_file(model_dir), bert_file(dest), stack, torch.float32)
    return dest


def _merge_file(source: Path, dest: Path, stack, dtype: torch.dtype) -> None:
    merged = {}
    with safe_open(str(source), "pt") as handle:
        for key in handle.keys():
            weight = handle.get_tensor(key).float()
            path = key[: -len(".weight")] if key.endswith(".weight") else None
            for lora, strength in stack:
                if path in lora.pairs:
                    down, up, alpha = lora.pairs[path]
                    weight = weight + strength * lora.scale(alpha, down.shape[0]) * (up.float() @ down.float())
            merged[key] = weight.to(dtype)
    save_file(merged, str(dest))


def model_inputs(model_dir: Path, seed: int = 3, frames: int = 2, size: int = 4):
    """(latents, timestep, text, text_t5) for one transformer forward of a tiny model."""
    config = json.loads((Path(model_dir) / "transformer" / "config.json").read_text())
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, config["in_channels"], frames, size, size, generator=generator)
    text = torch.randn(1, 6, config["text_embed_dim"], generator=generator)
    t5 = config.get("text_embed_dim_t5")
    text_t5 = torch.randn(1, 5, t5, generator=generator) if t5 else None
    return latents, torch.tensor([600.0]), text, text_t5
