"""Peak RSS of loading a V5.1 (Qwen2-VL) text encoder of about 0.32 B parameters (the tiny test tokenizer, wider and
deeper layers), in bf16 and with fp8 Linear storage. Each load runs in a fresh subprocess; peak = VmHWM - RSS
before the load, compared with the bytes the loaded weights hold.

    .venv/bin/python benchmarks/text_memory.py [--layers 8] [--hidden 2048] [--dir /tmp]

Ends with `RESULT text_load_peak_rss_over_weights_bf16=<x>` and `RESULT text_load_peak_rss_over_weights_fp8=<x>`
(one tensor of temporaries on top of the weights: target ≤ 1.15, as the transformer's load). The peak through the
first encode is printed too: weights left memory-mapped would only count once an encode touches them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_encoder(folder: Path, layers: int, hidden: int) -> None:
    """The tiny V5.1 text folder, its text_encoder widened to `hidden` and deepened to `layers` layers."""
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    import tiny_text

    tiny_text.write_v51_text(folder, seed=0)
    encoder = folder / "text_encoder"
    config = json.loads((encoder / "config.json").read_text())
    config.update(
        hidden_size=hidden,
        intermediate_size=int(2.75 * hidden),
        num_hidden_layers=layers,
        max_window_layers=layers,
        num_attention_heads=hidden // 128,
        num_key_value_heads=hidden // 512,
    )
    config["vision_config"]["hidden_size"] = hidden
    config["rope_scaling"]["mrope_section"] = [16, 24, 24]  # head_dim 128, as the released Qwen2-VL-7B
    (encoder / "config.json").write_text(json.dumps(config, indent=2))
    for old in encoder.glob("model*.safetensors*"):
        old.unlink()
    shapes = tiny_text._parameter_shapes(Qwen2VLForConditionalGeneration, Qwen2VLConfig(**config))
    shapes = {tiny_text._legacy_qwen2_vl_key(name): shape for name, shape in shapes.items()}
    generator = torch.Generator().manual_seed(0)
    tensors = {
        name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16) for name, shape in shapes.items()
    }
    half = sorted(tensors)[: len(tensors) // 2]
    tiny_text._save_sharded(encoder, tensors, [half, [k for k in tensors if k not in half]])


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """VmHWM: this process's own peak (ru_maxrss would keep the parent's peak across fork + exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _child(folder: str, storage: str) -> None:
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    # imported before the baseline: the figure is the load's, not transformers' import
    from transformers import AutoConfig, Qwen2Tokenizer  # noqa: F401
    from transformers.models.qwen2_vl import modeling_qwen2_vl  # noqa: F401

    from models.quant import allocated_bytes
    from models.text import load_text_encoder

    storage_dtype = None if storage == "bf16" else torch.float8_e4m3fn
    before = _rss()
    encoder = load_text_encoder(folder, "v5.1", dtype=torch.bfloat16, storage_dtype=storage_dtype)
    peak = _peak_rss() - before
    weights = sum(allocated_bytes(model) for model in encoder.models.values())
    rss_after = _rss() - before
    encoder.encode("a cat on the beach")  # touches every weight (mapped weights only count once touched)
    encoded_peak = _peak_rss() - before
    print(json.dumps({"peak": peak, "weights": weights, "rss_after": rss_after, "encode_peak": encoded_peak}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        write_encoder(Path(folder), args.layers, args.hidden)
        for storage in ("bf16", "fp8"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", folder, storage], check=True, capture_output=True, text=True
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            print(
                f"{storage}: peak RSS during load {r['peak'] / 2**20:.0f} MiB, RSS after {r['rss_after'] / 2**20:.0f}"
                f" MiB, weights {r['weights'] / 2**20:.0f} MiB, peak RSS through the first encode "
                f"{r['encode_peak'] / 2**20:.0f} MiB"
            )
            print(f"RESULT text_load_peak_rss_over_weights_{storage}={r['peak'] / r['weights']:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], sys.argv[3])
    else:
        main()
