"""A ≥100 M-parameter EasyAnimate V5.1 model folder, generated in a temporary directory for memory tests and
benchmarks: the tiny V5.1 folder's VAE, text encoder and tokenizer, with a wider transformer (1024 wide, 4 MMDiT
blocks, ≈105 M parameters, bf16 ≈ 0.2 GB) written from the pack's own module built on the meta device."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "tests", REPO_ROOT / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

BIG_WIDTH = {"num_attention_heads": 16, "attention_head_dim": 64, "num_layers": 4, "mmdit_layers": 4}


def write_big_model(
    dest: Path, name: str = "big-EasyAnimateV5.1-12b-zh", seed: int = 0, width: dict = BIG_WIDTH
) -> Path:
    """Write the model folder `dest/name` (once) and return it; `width` overrides the tiny transformer config."""
    from safetensors.torch import save_file
    from tiny_checkpoints import tiny_model_dir

    from models.transformer import EasyAnimateTransformer, TransformerParams

    folder = Path(dest) / name
    if (folder / "transformer" / "diffusion_pytorch_model.safetensors").is_file():
        return folder
    source = tiny_model_dir("EasyAnimateV5.1-12b-zh")
    shutil.copytree(source, folder, ignore=shutil.ignore_patterns("transformer"))
    config = json.loads((source / "transformer" / "config.json").read_text())
    config.update(width)
    (folder / "transformer").mkdir()
    (folder / "transformer" / "config.json").write_text(json.dumps(config, indent=2))
    with torch.device("meta"):
        module = EasyAnimateTransformer(TransformerParams.from_config(config))
    generator = torch.Generator().manual_seed(seed)
    tensors = {
        key: (torch.randn(tuple(t.shape), generator=generator) * 0.02).to(torch.bfloat16)
        for key, t in module.state_dict().items()
    }
    save_file(tensors, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    return folder


def parameter_count(folder: Path) -> int:
    from models.loading.headers import read_safetensors_header

    header = read_safetensors_header(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    return sum(info.numel for info in header.values())
