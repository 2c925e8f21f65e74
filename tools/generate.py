"""Generate one EasyAnimate video headless, on one process or many (sequence / CFG parallel; docs/parallel.md).

    python tools/generate.py --model ~/models/EasyAnimateV5.1-12b-zh --prompt "a cat" --out cat.mp4
    torchrun --nproc-per-node 4 tools/generate.py --model ... --prompt "a cat" --sp 2 --cfg-parallel --out cat.mp4
    # two machines, 8 GPUs each: the same command on both, torchrun's rendezvous joins them
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint HOST:29500 tools/generate.py ... --sp 8 --cfg-parallel

Image-to-video (InP model): --start-image a.png [--end-image b.png]; control (Control model): --control-video v.mp4
[--reference-image r.png]. The pipeline is the one the ComfyUI nodes run (models/pipeline.py); every rank runs it
with the same seed, only the transformer calls are split; rank 0 decodes and writes the video (imageio).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def parse_args(argv=None):
    from models import defaults as d

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model folder (original or -diffusers layout)")
    parser.add_argument("--prompt", required=True)
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--width", type=int, default=d.DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=d.DEFAULT_HEIGHT)
    parser.add_argument("--frames", type=int, default=d.DEFAULT_FRAMES)
    parser.add_argument("--steps", type=int, default=d.DEFAULT_STEPS)
    parser.add_argument("--cfg", type=float, default=d.DEFAULT_GUIDANCE)
    parser.add_argument("--seed", type=int, default=d.DEFAULT_SEED)
    parser.add_argument("--scheduler", default=d.AUTO_SCHEDULER, choices=d.SCHEDULER_CHOICES)
    parser.add_argument("--precision", choices=d.PRECISIONS, default=d.PRECISIONS[0])
    parser.add_argument("--weight-storage", choices=d.FP8_STORAGES, default=None)
    parser.add_argument("--teacache-threshold", type=float, default=0.0)
    parser.add_argument("--teacache-skip-start", type=int, default=0)
    parser.add_argument("--start-image", action="append", default=[], help="InP: first frame(s)")
    parser.add_argument("--end-image", action="append", default=[], help="InP: last frame(s)")
    parser.add_argument("--control-video", help="Control model: control frames (video file)")
    parser.add_argument("--reference-image", help="V5.1 Control: appearance reference")
    parser.add_argument("--sp", type=int, default=None, help="sequence-parallel ranks (default: all not used by CFG)")
    parser.add_argument("--cfg-parallel", action="store_true", help="negative/positive halves on two rank groups")
    parser.add_argument("--out", default="easyanimate.mp4", help="video written by rank 0 (.mp4, .gif, .webp)")
    parser.add_argument("--fps", type=int, default=d.DEFAULT_FPS)
    parser.add_argument("--save-latents", help="also write the final latents (safetensors) from rank 0")
    parser.add_argument("--no-decode", action="store_true", help="skip the VAE decode (with --save-latents)")
    return parser.parse_args(argv)


def _images(paths, height, width):
    import imageio.v3 as iio
    import torch

    from models.pipeline import resize_frames

    if not paths:
        return None
    frames = [torch.from_numpy(iio.imread(p)[..., :3].copy()).float() / 255.0 for p in paths]
    return resize_frames(torch.stack(frames), height, width)


def _video(path, height, width, count):
    import imageio.v3 as iio
    import torch

    from models.pipeline import fit_frames, resize_frames

    if path is None:
        return None
    frames = torch.from_numpy(iio.imread(path)[..., :3].copy()).float() / 255.0  # [T, H, W, 3]
    return fit_frames(resize_frames(frames, height, width), count)


def main(argv=None) -> int:
    import torch

    from models import pipeline
    from models.components import open_model
    from models.parallel import ParallelTransformer, init_distributed, make_groups
    from models.schedulers import DEFAULT_SCHEDULER

    args = parse_args(argv)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_distributed(device=device)
    groups = make_groups(args.sp, args.cfg_parallel)
    is_main = groups.rank == 0

    model = open_model(args.model, args.precision, args.weight_storage, memory_mode="gpu")
    variant = model.variant
    # each rank encodes the prompt itself (deterministic), then frees the encoder for the transformer
    encoder = model.text_encoder(device=device)
    embeddings = encoder.encode([args.prompt], args.negative_prompt, release_after=True)
    model.release("text_encoder")
    do_cfg = args.cfg > 1.0
    streams = embeddings.streams
    text = tuple(embeddings.guidance_batch(i) for i in range(len(streams))) if do_cfg else tuple(embeddings.positive)

    size = (args.width, args.height, args.frames)
    request = pipeline.Request(
        width=args.width,
        height=args.height,
        frames=args.frames,
        steps=args.steps,
        guidance_scale=args.cfg,
        seed=args.seed,
        scheduler=DEFAULT_SCHEDULER[variant.version] if args.scheduler == "auto" else args.scheduler,
        start_images=_images(args.start_image, args.height, args.width),
        end_images=_images(args.end_image, args.height, args.width),
        control_video=_video(args.control_video, args.height, args.width, args.frames),
        reference_image=_images([args.reference_image] if args.reference_image else [], args.height, args.width),
    )
    transformer = model.transformer(device=device, size=size, log=print if is_main else (lambda *_: None))
    progress = (lambda done, total: print(f"step {done}/{total}", flush=True)) if is_main else None
    latents = pipeline.generate(
        ParallelTransformer(transformer, groups),
        model.vae(device=device),
        text,
        request,
        variant=variant,
        scheduler_config=model.scheduler_config(),
        device=device,
        dtype=model.dtype,
        teacache_threshold=args.teacache_threshold,
        teacache_skip_start=args.teacache_skip_start,
        progress=progress,
    )
    if is_main:
        if args.save_latents:
            from safetensors.torch import save_file

            save_file({"latents": latents.contiguous()}, args.save_latents)
            print(f"latents: {args.save_latents}")
        if not args.no_decode:
            _write_video(model.vae(device=device).decode(latents.to(device, model.dtype), device=device), args)
    _finish()
    return 0


def _write_video(video, args) -> None:
    """[1, 3, T, H, W] in [0, 1] → args.out."""
    import imageio.v3 as iio

    frames = (video[0].permute(1, 2, 3, 0).float().clamp(0, 1) * 255).round().byte().cpu().numpy()
    extra = {"fps": args.fps} if args.out.endswith(".mp4") else {"duration": 1000 / args.fps}
    iio.imwrite(args.out, frames, **extra)
    print(f"video: {args.out}")


def _finish() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
