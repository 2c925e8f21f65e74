"""Sequence / CFG parallel transformer calls on 2 gloo ranks vs one process, and measured bytes vs the cost model.

    .venv/bin/python benchmarks/parallel.py [--heads 4] [--layers 2] [--frames 3] [--size 80x144]

Builds seeded random transformers in memory (no checkpoint): one whose heads divide by 2 (Ulysses all-to-all) and
one with an odd head count (all-gather K/V fallback). Starts `torchrun --nproc-per-node 2` on itself; every rank
computes the single-process reference and the parallel call for SP 2 and for CFG parallel 2, with the CFG batch
of 2, and counts the bytes it sends. Prints:

    RESULT sp2_parity_max_rel_err=<max |parallel - single| / max |single| over every layout and head count>
    RESULT sp_comm_bytes_model_error=<max |measured - modelled| / modelled bytes per call (cost model,
           models.parallel.comm_bytes_per_call, docs/parallel.md)>

No multi-GPU machine was available when this was written, so no speed-up is measured; on one, run
`torchrun --nproc-per-node 2 tools/generate.py ...` against the single-process command.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from models.transformer import EasyAnimateTransformer, TransformerParams  # noqa: E402

TEXT_TOKENS = 20


def build(heads: int, layers: int) -> EasyAnimateTransformer:
    torch.manual_seed(heads)
    params = TransformerParams(
        in_channels=16,
        num_layers=layers,
        mmdit_layers=layers,
        text_embed_dim=32,
        text_embed_dim_t5=None,
        add_norm_text_encoder=True,
        num_attention_heads=heads,
        attention_head_dim=16,
        time_embed_dim=24,
    )
    model = EasyAnimateTransformer(params).eval().requires_grad_(False)
    for tensor in model.state_dict().values():  # non-trivial norms and modulations everywhere
        tensor.copy_(torch.randn_like(tensor) * 0.2)
    return model


def inputs(frames: int, height: int, width: int):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(2, 16, frames, height // 8, width // 8, generator=g)
    return latents, torch.tensor([700.0, 700.0]), torch.randn(2, TEXT_TOKENS, 32, generator=g)


def rank_job(args, out: Path) -> None:
    import torch.distributed as dist

    from models.parallel import ParallelTransformer, comm_bytes_per_call, init_distributed, make_groups

    torch.set_num_threads(1)
    init_distributed()
    latents, timestep, text = inputs(args.frames, *args.hw)
    tokens = args.frames * (args.hw[0] // 16) * (args.hw[1] // 16)
    layouts = {"sp2": make_groups(2, False), "cfg2": make_groups(1, True)}
    report = {"errors": {}, "bytes": {}}
    for heads in (args.heads, args.heads + 1):  # the second does not divide by 2: fallback path
        model = build(heads, args.layers)
        with torch.no_grad():
            reference = model(latents, timestep, text)
            for name, groups in layouts.items():
                groups.stats.reset()
                out_parallel = ParallelTransformer(model, groups)(latents, timestep, text)
                error = ((out_parallel - reference).abs().max() / reference.abs().max()).item()
                modelled = comm_bytes_per_call(
                    TEXT_TOKENS, tokens, heads, 16, args.layers, groups.sp_size, name == "cfg2", element_bytes=4
                )
                key = f"{name}_heads{heads}"
                report["errors"][key] = error
                report["bytes"][key] = {"measured": groups.stats.total, "modelled": modelled}
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, report)
    if dist.get_rank() == 0:
        (out / "report.json").write_text(json.dumps(gathered))
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--size", default="80x144", help="HxW in pixels (multiples of 16)")
    parser.add_argument("--rank-job", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.hw = tuple(int(v) for v in args.size.split("x"))
    if args.rank_job:
        rank_job(args, Path(args.rank_job))
        return 0
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node=2",
            __file__,
            "--heads",
            str(args.heads),
            "--layers",
            str(args.layers),
            "--frames",
            str(args.frames),
            "--size",
            args.size,
            "--rank-job",
            out,
        ]
        subprocess.run(command, check=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        ranks = json.loads((Path(out) / "report.json").read_text())
    errors = [e for rank in ranks for e in rank["errors"].values()]
    model_errors = [
        abs(b["measured"] - b["modelled"]) / b["modelled"] for rank in ranks for b in rank["bytes"].values()
    ]
    for key, value in ranks[0]["bytes"].items():
        print(
            f"{key}: rank 0 sent {value['measured']} bytes per call, model {value['modelled']}, "
            f"parity {ranks[0]['errors'][key]:.2e}"
        )
    print(f"RESULT sp2_parity_max_rel_err={max(errors):.3e}")
    print(f"RESULT sp_comm_bytes_model_error={max(model_errors):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
