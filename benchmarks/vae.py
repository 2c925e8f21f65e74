"""VAE benchmark (CPU, one run, random weights at the released widths 128/256/512/512; V5.1 form, no mid attention).

(a) Decode time, ours vs diffusers 0.42.1 `AutoencoderKLMagvit` on identical weights: a 5-frame 128x128 clip
    (latents [1, 16, 2, 16, 16]), both with the released chunking (first latent frame, then 1 at a time) and the
    pipeline post-processing; repetitions alternate between the two so load changes hit both alike. Prints
    `RESULT vae_decode_ratio_vs_diffusers=<median ours / median diffusers>` (target <= 1.00).
(b) Working memory of our chunked + tiled decode: peak RSS growth during `decode` minus the bytes of the returned
    video, for 9, 25 and 49 frames at 128x128 with 80 px tiles, 16 px overlap (2 x 2 tiles), each in a fresh
    subprocess. Prints `RESULT vae_decode_peak_growth_49_vs_9=<x>` (target <= 1.15).
    The children run with a fixed glibc mmap threshold (MALLOC_MMAP_THRESHOLD_=1 MiB), so freed tensors go back to
    the OS and RSS tracks live memory; with glibc's default dynamic threshold, freed blocks stay cached in the heap
    and the growth figure mostly says what earlier calls happened to leave there (run with --default-malloc to see).

Usage: .venv/bin/python benchmarks/vae.py [--reps N] [--skip-speed] [--skip-memory] [--default-malloc]
diffusers is a benchmark/test-time oracle only; the pack never imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from models.vae import VAE, VAEConfig  # noqa: E402

RELEASED_V5_1 = VAEConfig(mid_block_use_attention=False)
MEMORY_TILE_PX = 80
MEMORY_OVERLAP_PX = 16
MEMORY_FRAMES = (9, 25, 49)
SIZE_PX = 128


def _rss_bytes(field: str) -> int:
    """VmRSS / VmHWM of this process from /proc (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _reset_peak_rss() -> None:
    # writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0)
    Path("/proc/self/clear_refs").write_text("5")


def speed(reps: int) -> float:
    from diffusers import AutoencoderKLMagvit

    torch.manual_seed(0)
    reference = AutoencoderKLMagvit().eval()
    ours = VAE(RELEASED_V5_1).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    scale = RELEASED_V5_1.scaling_factor
    latents = torch.randn(1, 16, 2, SIZE_PX // 8, SIZE_PX // 8, generator=torch.Generator().manual_seed(1))

    def run_ours() -> torch.Tensor:
        return ours.decode(latents)

    def run_diffusers() -> torch.Tensor:
        with torch.no_grad():
            video = reference.decode(latents / scale).sample
        return (video.clamp(-1, 1) + 1) / 2  # the pipeline's post-processing, as ours does

    difference = (run_ours() - run_diffusers()).abs().max().item()  # also warms up both
    times: dict[str, list[float]] = {"ours": [], "diffusers": []}
    for rep in range(reps):
        order = (("ours", run_ours), ("diffusers", run_diffusers))
        for name, fn in order if rep % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    ours_s, diffusers_s = statistics.median(times["ours"]), statistics.median(times["diffusers"])
    print(
        f"decode 5x{SIZE_PX}x{SIZE_PX}, {reps} alternating reps: ours median {ours_s:.2f} s "
        f"(all {[round(t, 2) for t in times['ours']]}), diffusers median {diffusers_s:.2f} s "
        f"(all {[round(t, 2) for t in times['diffusers']]}); max|ours - diffusers| = {difference:.2e}"
    )
    return ours_s / diffusers_s


def memory_child(frames: int) -> dict:
    """Runs in a fresh process: peak RSS growth of one chunked + tiled decode of `frames` frames."""
    torch.manual_seed(0)
    vae = VAE(RELEASED_V5_1).eval()
    latent_frames = 1 + (frames - 1) // 4
    generator = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, latent_frames, SIZE_PX // 8, SIZE_PX // 8, generator=generator)
    warmup = torch.randn(1, 16, 2, SIZE_PX // 8, SIZE_PX // 8, generator=generator)
    vae.decode(warmup, tile_size=MEMORY_TILE_PX, tile_overlap=MEMORY_OVERLAP_PX)  # one-time allocations
    del warmup
    baseline = _rss_bytes("VmRSS")
    _reset_peak_rss()
    start = time.perf_counter()
    video = vae.decode(latents, tile_size=MEMORY_TILE_PX, tile_overlap=MEMORY_OVERLAP_PX)
    seconds = time.perf_counter() - start
    peak = _rss_bytes("VmHWM")
    output_bytes = video.numel() * video.element_size()
    return {
        "frames": frames,
        "shape": list(video.shape),
        "peak_growth": peak - baseline,
        "output_bytes": output_bytes,
        "working": peak - baseline - output_bytes,
        "seconds": seconds,
    }


def memory(default_malloc: bool) -> float:
    env = dict(os.environ)
    if not default_malloc:
        env["MALLOC_MMAP_THRESHOLD_"] = str(2**20)
    results = {}
    for frames in MEMORY_FRAMES:
        completed = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(frames)],
            check=True,
            capture_output=True,
            text=True,
            env=env,
        )
        result = json.loads(completed.stdout.strip().splitlines()[-1])
        results[frames] = result
        print(
            f"decode {frames}x{SIZE_PX}x{SIZE_PX}, {MEMORY_TILE_PX} px tiles: peak RSS growth "
            f"{result['peak_growth'] / 2**20:.1f} MiB - output {result['output_bytes'] / 2**20:.1f} MiB = "
            f"working {result['working'] / 2**20:.1f} MiB ({result['seconds']:.1f} s)"
        )
    return results[MEMORY_FRAMES[-1]]["working"] / results[MEMORY_FRAMES[0]]["working"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--skip-speed", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--default-malloc", action="store_true", help="measure with glibc's default mmap threshold")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        print(json.dumps(memory_child(args.memory_child)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    if not args.skip_speed:
        print(f"RESULT vae_decode_ratio_vs_diffusers={speed(args.reps):.3f}")
    if not args.skip_memory:
        print(f"RESULT vae_decode_peak_growth_49_vs_9={memory(args.default_malloc):.3f}")


if __name__ == "__main__":
    main()
