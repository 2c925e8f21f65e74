"""Side-by-side CPU benchmark: our MMDiT vs diffusers' EasyAnimateTransformer3DModel on the same weights.

Full width (48 heads x 64 = 3072), a few MMDiT blocks, fp32, 1 latent frame at 384x672 (24x42 = 1008 video tokens)
+ 256 text tokens. Repetitions alternate between the two models; medians are compared. Also reports our achieved
FLOP/s (FLOPs counted analytically from the config) as a fraction of plain `torch.matmul` FLOP/s on an FFN-shaped
product measured in the same run.

    .venv/bin/python benchmarks/transformer.py [--blocks 2] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.loading.keys import diffusers_to_original_key  # noqa: E402
from models.transformer import EasyAnimateTransformer, TransformerParams  # noqa: E402
from models.variants import VARIANTS  # noqa: E402


def analytic_flops(p: TransformerParams, video_tokens: int, text_tokens: int) -> dict[str, float]:
    """Multiply-add FLOPs (2 per MAC) of one forward with batch 1, by part."""
    d, tokens = p.inner_dim, video_tokens + text_tokens
    per_block = {
        "qkv+out projections": 2 * tokens * d * d * 4,
        "attention (QK^T, AV)": 2 * 2 * tokens * tokens * d,
        "feed-forward": 2 * tokens * d * 4 * d * 2,
        "modulation": 2 * 2 * p.time_embed_dim * 6 * d,
    }
    parts = {k: v * p.num_layers for k, v in per_block.items()}
    parts["patch embed"] = 2 * video_tokens * d * p.in_channels * p.patch_size**2
    parts["text projection"] = 2 * text_tokens * p.text_embed_dim * d
    parts["output head"] = 2 * video_tokens * d * p.patch_size**2 * p.out_channels + 2 * p.time_embed_dim * 2 * d
    parts["timestep embedding"] = 2 * (d * p.time_embed_dim + p.time_embed_dim**2)
    return parts


def matmul_probe(tokens: int, d: int):
    """A plain FFN-shaped product [tokens x d] @ [d x 4d] and its FLOPs: the machine's practical matmul peak."""
    a, b = torch.randn(tokens, d), torch.randn(d, 4 * d)
    return (lambda: torch.matmul(a, b)), 2 * tokens * d * 4 * d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--text-tokens", type=int, default=256)
    args = parser.parse_args()

    from diffusers.models.transformers.transformer_easyanimate import EasyAnimateTransformer3DModel

    config = VARIANTS["EasyAnimateV5.1-12b-zh"].transformer_config()
    config.update(num_layers=args.blocks, mmdit_layers=args.blocks)
    diffusers_keys = {
        "num_attention_heads",
        "attention_head_dim",
        "in_channels",
        "out_channels",
        "patch_size",
        "time_embed_dim",
        "num_layers",
        "mmdit_layers",
        "text_embed_dim",
        "text_embed_dim_t5",
        "add_norm_text_encoder",
        "norm_eps",
    }
    torch.manual_seed(0)
    theirs = EasyAnimateTransformer3DModel(**{k: config[k] for k in diffusers_keys}).eval()
    params = TransformerParams.from_config(config)
    with torch.device("meta"):
        ours = EasyAnimateTransformer(params).eval()
    renamed = {diffusers_to_original_key(key): value for key, value in theirs.state_dict().items()}
    ours.load_state_dict(renamed, strict=True, assign=True)  # shares the tensors: one copy of the weights

    latent_h, latent_w = 384 // 8, 672 // 8
    video_tokens = (latent_h // 2) * (latent_w // 2)
    latents = torch.randn(1, 16, 1, latent_h, latent_w)
    text = torch.randn(1, args.text_tokens, config["text_embed_dim"])
    timestep = torch.tensor([500.0])

    def run_ours():
        return ours(latents, timestep, text)

    def run_theirs():
        return theirs(latents, timestep, encoder_hidden_states=text, return_dict=False)[0]

    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, blocks {args.blocks}, "
        f"{video_tokens} video + {args.text_tokens} text tokens, fp32 CPU"
    )
    run_matmul, matmul_flops = matmul_probe(video_tokens + args.text_tokens, params.inner_dim)
    times = {"ours": [], "diffusers": [], "matmul": []}
    with torch.inference_mode():
        run_ours(), run_theirs(), run_matmul()  # warm-up
        for _ in range(args.reps):  # alternate, so a busy moment hits all three alike
            for name, fn in (("ours", run_ours), ("diffusers", run_theirs), ("matmul", run_matmul)):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    med = {k: statistics.median(v) for k, v in times.items()}
    peak = matmul_flops / med["matmul"]
    for name, values in times.items():
        print(f"{name:10s} median {med[name]:.3f} s  runs {' '.join(f'{t:.3f}' for t in values)}")
    parts = analytic_flops(params, video_tokens, args.text_tokens)
    total = sum(parts.values())
    for name, flops in parts.items():
        print(f"  {name:22s} {flops / 1e9:9.2f} GFLOP")
    achieved = total / med["ours"]
    print(
        f"  total {total / 1e9:.2f} GFLOP; ours {achieved / 1e9:.1f} GFLOP/s; torch.matmul "
        f"[{video_tokens + args.text_tokens}x{params.inner_dim}]x[{params.inner_dim}x{4 * params.inner_dim}] "
        f"{peak / 1e9:.1f} GFLOP/s"
    )
    print(f"RESULT transformer_forward_ratio_vs_diffusers={med['ours'] / med['diffusers']:.3f}")
    print(f"RESULT transformer_fraction_of_matmul_peak={achieved / peak:.3f}")


if __name__ == "__main__":
    main()
