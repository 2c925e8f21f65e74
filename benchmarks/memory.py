"""Peak RSS of loading a ≥1 B-parameter synthetic checkpoint into fp8: our streaming load vs a naive
"load everything in bf16, then cast" load. Each load runs in a fresh subprocess; peak = VmHWM - RSS before the load.

    .venv/bin/python benchmarks/memory.py [--params-billions 1.07] [--dir /tmp]

Ends with `RESULT load_peak_rss_over_final_weights=<x>` (streaming load; target ≤ 1.15), then
`RESULT offload_pin_peak_over_weights=<x>` (pinning for offload, with an injected pin function on the CPU; target
≤ 1.05) and `RESULT settings_change_peak_over_one_copy=<x>` (a ≥100 M-parameter model loaded in bf16, then its
precision changed to fp32: peak RSS over the fp32 copy; target ≤ 1.10). `--skip-load` runs only the last two.
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
WIDTH = 4096


def _model(blocks: int):
    from torch import nn

    from models import ops

    model = nn.Module()
    model.blocks = nn.ModuleList(
        nn.ModuleDict({"up": ops.Linear(WIDTH, WIDTH), "down": ops.Linear(WIDTH, WIDTH)}) for _ in range(blocks)
    )
    return model


def write_checkpoint(path: Path, blocks: int) -> None:
    import torch
    from safetensors.torch import save_file

    shard, tensors, index = 0, {}, {}
    for i in range(blocks):  # 2 GB shards, like the released multi-file checkpoints
        for name in ("up", "down"):
            tensors[f"blocks.{i}.{name}.weight"] = torch.randn(WIDTH, WIDTH, dtype=torch.bfloat16) * 0.02
            tensors[f"blocks.{i}.{name}.bias"] = torch.zeros(WIDTH, dtype=torch.bfloat16)
        if len(tensors) >= 2 * 16 or i == blocks - 1:
            file = path / f"model-{shard:05d}.safetensors"
            save_file(tensors, str(file))
            index.update({k: file.name for k in tensors})
            tensors, shard = {}, shard + 1


def _child(folder: str, blocks: int, how: str) -> None:
    import torch

    sys.path.insert(0, str(REPO_ROOT))
    from models.loading.stream import load_state_streaming
    from models.quant import allocated_bytes

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    files = sorted(Path(folder).glob("*.safetensors"))
    with torch.device("meta"):
        model = _model(blocks)
    before = rss()
    if how == "streaming":
        load_state_streaming(model, files, torch.float8_e4m3fn)
    else:  # naive: the whole state dict in bf16 first, then cast
        from safetensors.torch import load_file

        state = {}
        for file in files:
            state.update(load_file(str(file)))
        model = _model(blocks).to(torch.bfloat16)
        model.load_state_dict(state)
        del state
        model = model.to(torch.float8_e4m3fn)
    peak = _peak_rss() - before
    print(json.dumps({"peak": peak, "weights": allocated_bytes(model)}))


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss() -> int:
    """VmHWM: this process's own peak. ru_maxrss is not: Linux keeps the parent's resident size from the fork across
    the exec, so a parent holding 2 GB (the checkpoint it just wrote) made a 400 MB child read as 570 MB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def _pin_child(megabytes: int) -> None:
    """Pin a module's weights for offload with a copying pin function (what pin_memory does on CUDA hosts)."""
    import torch
    from torch import nn

    sys.path.insert(0, str(REPO_ROOT))
    from models.offload import OffloadStats, PinnedArena, Placement

    layers = max(1, megabytes * 2**20 // (1024 * 1024 * 4))
    with torch.device("meta"):
        module = nn.Sequential(*[nn.Linear(1024, 1024, bias=False) for _ in range(layers)])
    before = _rss()
    module.to_empty(device="cpu")
    for parameter in module.parameters():
        parameter.data.fill_(0.5)  # touch every page
    # the weights' real host footprint (allocator and thread-pool start-up included), measured like the peak
    weights = max(_rss(), _peak_rss()) - before
    # the arena the loader pins through, with plain host memory standing in for pinned chunks
    arena = PinnedArena.for_modules([module], allocate=lambda nbytes: torch.empty(nbytes, dtype=torch.uint8))
    Placement(module, "cpu", OffloadStats(), pin_memory=True, arena=arena)
    print(json.dumps({"peak": _peak_rss() - before, "weights": weights}))


def _settings_child(folder: str) -> None:
    """Load the transformer in bf16, then change precision to fp32 (the loader's settings change)."""

    sys.path.insert(0, str(REPO_ROOT))
    from models.components import open_model
    from models.quant import allocated_bytes

    first = open_model(folder, "bf16")
    before = _rss()
    first.transformer(device="cpu", log=lambda s: None)
    changed = open_model(folder, "fp32")
    transformer = changed.transformer(device="cpu", log=lambda s: None)
    print(
        json.dumps(
            {
                "peak": _peak_rss() - before,
                "weights": allocated_bytes(transformer),
                "first_released": not first.is_loaded("transformer"),
            }
        )
    )


def _run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def reliability_results(folder: str, pin_megabytes: int) -> None:
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from big_checkpoint import parameter_count, write_big_model

    pinned = _run_child("pin", str(pin_megabytes))
    print(
        f"pinning: peak RSS {pinned['peak'] / 2**20:.0f} MiB; the weights alone took {pinned['weights'] / 2**20:.0f} "
        f"MiB of RSS ({pin_megabytes} MiB of tensors)"
    )
    print(f"RESULT offload_pin_peak_over_weights={pinned['peak'] / pinned['weights']:.3f}")
    model = write_big_model(Path(folder))
    changed = _run_child("settings", str(model))
    print(
        f"settings change bf16 -> fp32 ({parameter_count(model) / 1e6:.0f} M parameters): peak RSS "
        f"{changed['peak'] / 2**20:.0f} MiB, fp32 copy {changed['weights'] / 2**20:.0f} MiB, "
        f"first copy released before the second loaded: {changed['first_released']}"
    )
    print(f"RESULT settings_change_peak_over_one_copy={changed['peak'] / changed['weights']:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params-billions", type=float, default=1.07)
    parser.add_argument("--dir", default=None)
    parser.add_argument("--pin-megabytes", type=int, default=512)
    parser.add_argument("--skip-load", action="store_true", help="only the pinning and settings-change figures")
    args = parser.parse_args()
    if args.skip_load:
        with tempfile.TemporaryDirectory(dir=args.dir) as folder:
            reliability_results(folder, args.pin_megabytes)
        return
    blocks = max(1, round(args.params_billions * 1e9 / (2 * WIDTH * (WIDTH + 1))))
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        write_checkpoint(Path(folder), blocks)
        params = blocks * 2 * WIDTH * (WIDTH + 1)
        print(f"synthetic checkpoint: {params / 1e9:.2f} B parameters, bf16 on disk")
        results = {}
        for how in ("streaming", "naive"):
            out = subprocess.run(
                [sys.executable, __file__, "--child", folder, str(blocks), how],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            results[how] = json.loads(out.strip().splitlines()[-1])
            r = results[how]
            print(
                f"{how:9s}: peak RSS during load {r['peak'] / 2**30:.2f} GiB, final fp8 weights "
                f"{r['weights'] / 2**30:.2f} GiB, ratio {r['peak'] / r['weights']:.2f}"
            )
    print("GPU: none on this machine; peak VRAM and s/step per mode were not measured.")
    ratio = results["streaming"]["peak"] / results["streaming"]["weights"]
    print(f"RESULT load_peak_rss_over_final_weights={ratio:.3f}")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        reliability_results(folder, args.pin_megabytes)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child" and sys.argv[2] == "pin":
        _pin_child(int(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "--child" and sys.argv[2] == "settings":
        _settings_child(sys.argv[3])
    elif len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        main()
