"""Side-by-side CPU benchmark: one transformer step with a rank-128 LoRA on every Linear vs the same step without.

Full width (48 heads x 64 = 3072, the 12B's blocks), a few MMDiT blocks, fp32, 1 latent frame at 384x672 (1008 video
tokens) + 256 text tokens. Three states of ONE model alternate rep by rep (no second copy of the weights): no LoRA,
the LoRA as a delta in the forward (models/lora.py, unmerged), and the LoRA merged for the run. The RESULT lines are
medians of per-rep ratios, timed in this process's CPU seconds on one thread (robust to other jobs on the machine).
Analytic extra FLOPs of the delta: rank·(in+out) / (in·out) per Linear ≈ 8 % on the 3072x3072 projections.

    .venv/bin/python benchmarks/lora.py [--blocks 1] [--reps 5] [--rank 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.lora import attach_loras, detach_loras, parse_lora  # noqa: E402
from models.ops import LoraLinear  # noqa: E402
from models.transformer import EasyAnimateTransformer, TransformerParams  # noqa: E402
from models.variants import VARIANTS  # noqa: E402


def random_model(blocks: int) -> EasyAnimateTransformer:
    """The 12B's width with `blocks` MMDiT blocks, random weights allocated straight into their final storage."""
    config = VARIANTS["EasyAnimateV5.1-12b-zh"].transformer_config()
    config.update(num_layers=blocks, mmdit_layers=blocks)
    with torch.device("meta"):
        model = EasyAnimateTransformer(TransformerParams.from_config(config))
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.ndim >= 2:
                tensor.normal_(0.0, tensor.shape[-1] ** -0.5, generator=generator)
            else:
                tensor.fill_(1.0 if name.endswith("norm.weight") or "norm_" in name else 0.0)
    model.compute_dtype = torch.float32
    return model.eval().requires_grad_(False)


def every_linear_lora(model: nn.Module, rank: int, alpha: float):
    """A kohya-named LoRA of `rank` on every Linear of `model` (random values)."""
    generator = torch.Generator().manual_seed(1)
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            stem = "lora_unet__" + name.replace(".", "_")
            tensors[f"{stem}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=generator) * 0.01
            tensors[f"{stem}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=generator) * 0.01
            tensors[f"{stem}.alpha"] = torch.tensor(alpha)
    return parse_lora(tensors, f"rank{rank}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=1)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="1: CPU time of one thread is robust to a busy machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model = random_model(args.blocks)
    lora = every_linear_lora(model, args.rank, alpha=args.rank / 2)
    latent_h, latent_w = 384 // 8, 672 // 8
    latents = torch.randn(1, 16, 1, latent_h, latent_w)
    text = torch.randn(1, args.text_tokens, model.params.text_embed_dim)
    timestep = torch.tensor([500.0])
    video_tokens = (latent_h // 2) * (latent_w // 2)
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, blocks {args.blocks}, rank {args.rank}, "
        f"{video_tokens} video + {args.text_tokens} text tokens, fp32 CPU, {len(lora.transformer)} LoRA'd Linears"
    )

    attach_seconds, attached = {}, {}
    for state, merge in (("lora", False), ("merged", True)):  # attach once per state, keep its tensors to re-use
        start = time.process_time()
        attach_loras(model, [(lora, 1.0)], merge=merge)
        attach_seconds[state] = time.process_time() - start
        attached[state] = [(m, type(m), dict(m._buffers)) for m in model.modules() if isinstance(m, LoraLinear)]
        detach_loras(model)

    def set_state(state: str) -> None:
        detach_loras(model)
        for module, lora_class, buffers in attached.get(state, ()):
            module._buffers.update(buffers)
            module.__class__ = lora_class

    times = {"none": [], "lora": [], "merged": []}
    with torch.inference_mode():
        for state in times:  # warm-up
            set_state(state)
            model(latents, timestep, text)
        for _ in range(args.reps):  # alternate, so a busy moment on the machine hits all three alike
            for state in times:
                set_state(state)
                start = time.process_time()  # this process's CPU seconds: other jobs on the machine do not count
                model(latents, timestep, text)
                times[state].append(time.process_time() - start)
    detach_loras(model)

    med = {k: statistics.median(v) for k, v in times.items()}
    for name, values in times.items():
        print(f"{name:7s} median {med[name]:.3f} CPU s  runs {' '.join(f'{t:.3f}' for t in values)}")
    for name, seconds in attach_seconds.items():
        print(f"attach {name:7s} {seconds:.3f} CPU s (once per sampling run)")
    # Each rep's three forwards ran back to back: the median of per-rep ratios cancels slow drifts of the machine.
    ratio = {k: statistics.median(t / base for t, base in zip(times[k], times["none"])) for k in ("lora", "merged")}
    print(f"ratio of medians: lora {med['lora'] / med['none']:.3f}, merged {med['merged'] / med['none']:.3f}")
    print(f"RESULT lora_step_overhead_rank{args.rank}={ratio['lora']:.3f}")
    print(f"RESULT lora_merged_step_overhead={ratio['merged']:.3f}")


if __name__ == "__main__":
    main()
