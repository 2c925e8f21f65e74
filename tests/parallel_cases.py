"""Parity cases for sequence / CFG parallel sampling, run once in the test process (reference) and once under
`torchrun --nproc-per-node N tests/parallel_cases.py OUT_DIR` (every layout that N processes allow, one launch).

Tiny V5.1 12B-like checkpoints (2 heads: SP 2 takes the Ulysses path, SP 4 the all-gather-K/V fallback), fp32,
80x48 pixels x 5 frames = 30 video tokens (uneven shards over 4 ranks), CFG 6.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
for _path in (HERE.parent, HERE, HERE.parent / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

WIDTH, HEIGHT, FRAMES, STEPS, CFG, SEED = 80, 48, 5, 5, 6.0, 7
TEACACHE_THRESHOLD = 0.6  # high enough that the tiny random model skips steps
CASES = {  # name -> (tiny model, request extras, teacache threshold)
    "t2v": ("tiny-EasyAnimateV5.1-12b-zh", {}, 0.0),
    "v5_t2v": ("tiny-EasyAnimateV5-12b-zh", {"scheduler": "DDIM"}, 0.0),  # Bert + mT5 text streams
    "inp": ("tiny-EasyAnimateV5.1-12b-zh-InP", {"start": True}, 0.0),
    "control": ("tiny-EasyAnimateV5.1-12b-zh-Control", {"control": True}, 0.0),
    "t2v_teacache": ("tiny-EasyAnimateV5.1-12b-zh", {}, TEACACHE_THRESHOLD),
}
LAYOUTS = {2: [("sp2", 2, False), ("cfg2", 1, True)], 4: [("sp4", 4, False), ("sp2_cfg2", 2, True)]}


def _frames(count: int, seed: int) -> torch.Tensor:
    return torch.rand(count, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def text_embeds(version: str = "v5.1"):
    """[negative; positive] text streams: V5.1 one Qwen stream (64 wide), V5 Bert (32) and mT5 (48, 9 tokens)."""
    g = torch.Generator().manual_seed(3)
    shapes = [(12, 64)] if version == "v5.1" else [(12, 32), (9, 48)]
    return tuple(torch.randn(2, length, width, generator=g) for length, width in shapes)


class Recorder:
    """Passes calls through; keeps the TeaCache the pipeline hands the transformer and its accumulated distance
    after every call (equal on every rank only if the indicator is reduced over all of them)."""

    def __init__(self, transformer):
        self.transformer, self.teacache, self.accumulated = transformer, None, []

    def __call__(self, *args, options=None, **kwargs):
        teacache = None if options is None else options.teacache
        self.teacache = teacache or self.teacache
        out = self.transformer(*args, options=options, **kwargs)
        if teacache is not None:
            self.accumulated.append(teacache.accumulated)
        return out


def run_case(name: str, wrap=lambda model: model):
    """(latents [1,16,F,h,w], skipped TeaCache steps, accumulated distances) of one case; `wrap` turns the model into what is sampled."""
    from tiny_checkpoints import ensure_tiny_checkpoints

    from models import pipeline
    from models.components import open_model

    folder, extras, threshold = CASES[name]
    model = open_model(ensure_tiny_checkpoints() / folder, "fp32", memory_mode="gpu")
    request = pipeline.Request(
        width=WIDTH,
        height=HEIGHT,
        frames=FRAMES,
        steps=STEPS,
        guidance_scale=CFG,
        seed=SEED,
        scheduler=extras.get("scheduler", "Flow"),
        start_images=_frames(1, 1) if extras.get("start") else None,
        control_video=_frames(FRAMES, 2) if extras.get("control") else None,
    )
    recorder = Recorder(wrap(model.transformer()))
    latents = pipeline.generate(
        recorder,
        model.vae(),
        text_embeds(model.variant.version),
        request,
        variant=model.variant,
        dtype=torch.float32,
        teacache_threshold=threshold,
    )
    skipped = [] if recorder.teacache is None else list(recorder.teacache.skipped_steps)
    return latents, skipped, recorder.accumulated


def main(out_dir: str) -> None:
    import torch.distributed as dist

    from models.parallel import ParallelTransformer, init_distributed, make_groups

    torch.set_num_threads(1)
    init_distributed()
    world = dist.get_world_size()
    results = {}
    for layout, sp, cfg_parallel in LAYOUTS[world]:
        groups = make_groups(sp, cfg_parallel)
        for case in CASES:
            groups.stats.reset()
            latents, skipped, accumulated = run_case(case, lambda model: ParallelTransformer(model, groups))
            results[(layout, case)] = (latents, skipped, dict(groups.stats.sent), accumulated)
    gathered = [None] * world
    dist.all_gather_object(gathered, results)
    if dist.get_rank() == 0:
        torch.save(gathered, Path(out_dir) / f"world{world}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
