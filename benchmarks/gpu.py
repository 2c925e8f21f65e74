"""The GPU check: every memory mode of the 12B / 7B V5.1 transformers on a real card, the VAE decode, and the
`auto` memory plans under a simulated 24 GB card — in one run of ≤ 8 minutes on an H100/H200, with no downloads.

Random weights at full width, created tensor by tensor directly on the GPU (no host copy; offloaded parts are moved
to pinned host memory from there). Transformer speed is measured on `--blocks` blocks and scaled to the full depth
with the per-block time (the output says so); the 24 GB plans run the FULL model for one step under a
`torch.cuda.set_per_process_memory_fraction` cap. CFG is on everywhere (batch 2). A time guard skips what no longer
fits the budget and says so. Prints `RESULT name=value` lines and writes a JSON file (docs/gpu.md explains each).

    python benchmarks/gpu.py                       # on a CUDA machine; JSON into benchmarks/results/
    python benchmarks/gpu.py --tiny --out x.json   # the same code paths on the CPU in seconds (CI)
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "benchmarks", REPO_ROOT / "tools"):
    sys.path.insert(0, str(_path))

from tiny_checkpoints import tiny_transformer_params  # noqa: E402  (tools/tiny_checkpoints.py)
from transformer import analytic_flops  # noqa: E402  (benchmarks/transformer.py)

from models import defaults, memory  # noqa: E402
from models import ops as cast_ops  # noqa: E402
from models.offload import BlockSwap, OffloadStats, Placement, on_device  # noqa: E402
from models.quant import ScaledLinear, fp8_matmul_supported, quantize_scaled, scaled_ops, storage_rule  # noqa: E402
from models.transformer import EasyAnimateTransformer, TransformerParams  # noqa: E402
from models.vae import VAE, VAEConfig  # noqa: E402
from models.variants import released_vae_config, variant_for  # noqa: E402

GIB = 1024**3
TEXT_TOKENS = defaults.TEXT_TOKENS[defaults.V5_1]  # the Qwen2-VL prompt length
# Dense bf16 tensor-core peaks (TFLOP/s, vendor data sheets) by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756),
    ("H200", 989),
    ("H100", 989),
    ("GH200", 989),
    ("A100", 312),
    ("L40S", 362),
    ("L40", 181),
    ("L4", 121),
    ("A10", 125),
    ("4090", 165),
    ("3090", 71),
)
MODES = ("gpu_bf16", "gpu_fp8", "fp8_scaled_mm", "model_cpu_offload", "sequential")


@dataclass
class Setup:
    device: torch.device
    models: dict  # label -> (version, size, TransformerParams at full depth)
    sizes: list  # (width, height, frames) timed per mode
    plan_rows: list  # (width, height, frames, card bytes, modes or None = all) of the README memory table
    card_bytes: int  # the simulated card (the sequential mode timings use its plan)
    blocks: int  # transformer blocks built for timing
    repeats: int
    vae: VAEConfig
    tiny: bool
    dtype: torch.dtype = torch.bfloat16


def gpu_setup(blocks: int) -> Setup:
    models = {}
    for size in ("12b", "7b"):
        params = TransformerParams.from_config(variant_for("v5.1", size, "t2v").transformer_config())
        models[size] = ("v5.1", size, params)
    sizes = [(672, 384, 49), (1008, 576, 49), (1344, 768, 49), (1344, 768, 25)]
    rows = [(*size, 24 * GIB, None) for size in sizes]
    vae = VAEConfig.from_dict(released_vae_config("v5.1"), source="released config")
    vae = replace(vae, mid_block_use_attention=False)  # V5.1: no mid-block attention
    return Setup(torch.device("cuda"), models, [sizes[0], sizes[2]], rows, 24 * GIB, blocks, 2, vae, False)


def tiny_setup() -> Setup:
    models = {}
    for size, layers in (("12b", 6), ("7b", 4)):
        params = tiny_transformer_params(num_layers=layers, mmdit_layers=layers if size == "12b" else 2)
        models[size] = ("v5.1", size, params)
    reserve, mib = memory.CUDA_RESERVE, 1024**2
    # tiny cards and forced modes: every kind of plan runs (the VAE decode estimate dominates tiny cards otherwise)
    rows = [
        (32, 32, 5, reserve + 64 * mib, ("gpu",)),
        (64, 32, 5, reserve + 64 * mib, ("model_cpu_offload",)),
        (64, 64, 5, reserve + mib, ("sequential",)),
    ]
    vae = VAEConfig(block_out_channels=(8, 16, 32, 32), norm_num_groups=4, mid_block_use_attention=False)
    return Setup(torch.device("cpu"), models, [(32, 32, 5), (64, 32, 5)], rows, reserve + mib, 2, 1, vae, True)


# -- building random models on the device -----------------------------------------------------------------------


def _random_(tensor: torch.Tensor, name: str, generator: torch.Generator) -> torch.Tensor:
    """Weights N(0, 0.25 / fan_in), biases 0, norm scales 1: every layer keeps its input's scale (at any width), so
    the blocks change the output as much as trained ones do and fp8 errors show."""
    if name.endswith("bias"):
        return tensor.zero_()
    if tensor.ndim == 1:
        return tensor.fill_(1.0)
    return tensor.normal_(0.0, 0.5 / tensor[0].numel() ** 0.5, generator=generator)


def materialize(module: nn.Module, device, dtype, generator, hold=lambda name: None, home=lambda name: None):
    """Fill a meta-device module with random tensors created on `device` one at a time. hold(name) -> storage dtype
    (None = `dtype`; fp8 with a per-tensor scale for ScaledLinear weights); home(name) -> "host" moves that tensor to
    host memory (offloaded parts; the offload code pins it as in a real run), else it stays on `device`."""
    for module_name, owner in module.named_modules():
        for attr, meta in list(owner._parameters.items()):
            if meta is None:
                continue
            name = f"{module_name}.{attr}" if module_name else attr
            tensor = _random_(torch.empty(meta.shape, device=device, dtype=dtype), name, generator)
            held, scale = hold(name) or dtype, None
            if held != dtype and isinstance(owner, ScaledLinear) and owner.fp8_matmul and attr == "weight":
                tensor, scale = quantize_scaled(tensor, held)
            tensor = tensor.to(held)
            if home(name) == "host" and tensor.device.type == "cuda":
                tensor = tensor.to("cpu")  # pageable, as the loader leaves it: offload pins it (models/offload.py)
            owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
            if scale is not None:
                owner.register_buffer("weight_scale", scale.to(tensor.device), persistent=False)
    return module.eval()


def build_transformer(params, blocks, device, dtype, storage, fp8_mode="quality", seed=0, host_blocks=()):
    """`blocks` blocks of `params` (MMDiT as in the full model's first blocks). storage: a memory.STORAGE_DTYPES
    label; fp8_mode "scaled" builds per-tensor-scaled fp8 computed with torch._scaled_mm where supported.
    host_blocks: block indices whose weights rest in pinned host memory, or "all" for the whole model."""
    params = replace(params, num_layers=blocks, mmdit_layers=min(params.mmdit_layers, blocks))
    scaled = fp8_mode == "scaled"
    ops = scaled_ops(fp8_matmul=True) if scaled else cast_ops.cast
    with torch.device("meta"):
        model = EasyAnimateTransformer(params, ops)
    rule = storage_rule("quality", memory.STORAGE_DTYPES[storage], dtype)
    host = ("",) if host_blocks == "all" else tuple(f"transformer_blocks.{i}." for i in host_blocks)
    generator = torch.Generator(device).manual_seed(seed)  # same seed: same bf16 weights in every mode
    materialize(
        model, device, dtype, generator, hold=rule, home=lambda name: "host" if host and name.startswith(host) else None
    )
    model.compute_dtype = dtype
    return model


def inputs(params, width, height, frames, device, dtype, seed=1):
    """CFG batch 2: latents [2, C, F, h, w], timestep [2], text [2, 256, text_embed_dim]."""
    g = torch.Generator("cpu").manual_seed(seed)
    latent = (2, params.in_channels, (frames - 1) // 4 + 1, height // 8, width // 8)
    text = (2, TEXT_TOKENS, params.text_embed_dim)
    return (
        torch.randn(latent, generator=g).to(device, dtype),
        torch.tensor([500.0, 500.0], device=device),
        torch.randn(text, generator=g).to(device, dtype),
    )


# -- measuring --------------------------------------------------------------------------------------------------------


def _sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peaks:
    """Peak device memory (CUDA allocator, since entry) and peak host RSS (sampled every 5 ms) of a block of work."""

    def __init__(self, device):
        self.device, self.host_peak, self._stop = device, _rss(), threading.Event()

    def _sample(self):
        while not self._stop.wait(0.005):
            self.host_peak = max(self.host_peak, _rss())

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.device_base = torch.cuda.memory_allocated(self.device)
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.host_peak = max(self.host_peak, _rss())
        self.device_peak = None
        if self.device.type == "cuda":
            self.device_peak = torch.cuda.max_memory_allocated(self.device) - self.device_base


def time_forward(model, args, device, repeats) -> tuple[float, torch.Tensor]:
    """(median seconds of one CFG-batched forward after one warm-up, the output); repeats=0: one cold run."""
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            _sync(device)
            start = time.perf_counter()
            out = model(*args)
            _sync(device)
            if i or not repeats:
                times.append(time.perf_counter() - start)
    return statistics.median(times), out


def matmul_peak(device, dtype) -> float:
    """FLOP/s of a plain square bf16 matmul: the card's practical peak (fallback when the data sheet is unknown)."""
    n = 8192 if device.type == "cuda" else 256
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    seconds, _ = time_forward(lambda: a @ b, (), device, 5)
    return 2 * n**3 / seconds


def peak_flops(setup: Setup) -> tuple[float, str]:
    if setup.device.type == "cuda":
        name = torch.cuda.get_device_name(setup.device)
        for key, tflops in PEAK_BF16_TFLOPS:
            if key in name:
                return tflops * 1e12, f"data sheet dense bf16 of {name}"
    return matmul_peak(setup.device, setup.dtype), "measured square matmul (data sheet unknown)"


def step_flops(params: TransformerParams, width: int, height: int, frames: int) -> float:
    """Analytic FLOPs of one denoising step with CFG (batch 2) at full depth."""
    return 2 * sum(analytic_flops(params, memory.video_tokens(width, height, frames), TEXT_TOKENS).values())


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    return float((out.float() - reference.float()).norm() / reference.float().norm().clamp(min=1e-30))


def free(device) -> None:
    """Between sections: device cache emptied, and the host as after ComfyUI releases a model (cached pinned blocks
    and freed heap handed back), so each section's host RSS is its own."""
    memory.release_host_memory()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def guarded(what: str, device, errors: dict):
    """Run one section; an exception (a bug, an unexpected OOM) is printed and recorded, and the check goes on with
    the next section, so one failure never costs the figures of the others."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - reported, recorded, and the run continues
        import traceback

        text = traceback.format_exc()
        print(
            f"ERROR in {what}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}", flush=True
        )
        print(text, flush=True)
        errors[what] = text
    finally:
        free(device)


class Budget:
    def __init__(self, seconds: float):
        self.seconds, self.start, self.skipped = seconds, time.perf_counter(), []

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def allows(self, what: str, estimate_s: float) -> bool:
        if self.elapsed + estimate_s <= self.seconds:
            return True
        self.skipped.append(what)
        print(
            f"SKIPPED {what}: the {self.seconds:.0f} s time budget would be exceeded "
            f"({self.elapsed:.0f} s used, ~{estimate_s:.0f} s needed)",
            flush=True,
        )
        return False


# -- sections ---------------------------------------------------------------------------------------------------------


def model_bytes(setup: Setup, label: str) -> memory.ModelBytes:
    """What the planner knows about the model: released shapes on a GPU run; the tiny model's own bytes otherwise."""
    version, size, params = setup.models[label]
    if not setup.tiny:
        return memory.full_size_model_bytes(version, size)
    with torch.device("meta"):
        meta = EasyAnimateTransformer(params)
    vae_bytes = sum(p.numel() for p in _meta_vae(setup).parameters()) * 2
    return memory.model_bytes_for_module(meta, 1024**2, vae_bytes, version)


def _meta_vae(setup: Setup) -> VAE:
    with torch.device("meta"):
        return VAE(setup.vae)


def build_vae(setup: Setup, seed: int = 2) -> VAE:
    return materialize(_meta_vae(setup), setup.device, setup.dtype, torch.Generator(setup.device).manual_seed(seed))


def _key(label: str, width: int, height: int, frames: int) -> str:
    return f"{label}_{height}x{width}x{frames}"


def _mode_build(mode: str, plan, blocks: int, layers: int) -> tuple[str, str, object, int]:
    """(storage, fp8_mode, host blocks, resident blocks built) of one timed memory mode."""
    if mode == "gpu_bf16":
        return "bf16", "quality", (), blocks
    if mode == "gpu_fp8":
        return "fp8_e4m3fn", "quality", (), blocks
    if mode == "fp8_scaled_mm":
        return "fp8_e4m3fn", "scaled", (), blocks
    if mode == "model_cpu_offload":
        return "fp8_e4m3fn", "quality", "all", blocks
    streamed = min(layers - plan.resident_blocks, blocks)  # home in pinned host memory, as the loader leaves it
    return plan.storage, "quality", "all", blocks - streamed


def run_modes(setup: Setup, label: str, size, budget: Budget, peak: float, out: dict, errors: dict) -> None:
    """Every memory mode at one size: s/it, peak VRAM, peak host RSS, MFU (scaled from `setup.blocks` blocks)."""
    version, _, params = setup.models[label]
    width, height, frames = size
    key, device, layers = _key(label, *size), setup.device, params.num_layers
    blocks = min(setup.blocks, layers)
    args = inputs(params, width, height, frames, device, setup.dtype)
    plan = memory.plan_memory(model_bytes(setup, label), width, height, frames, setup.card_bytes, modes=("sequential",))
    flops = step_flops(params, width, height, frames)
    rows, reference, last_wall = {}, None, 30.0
    for mode in MODES:
        if not budget.allows(f"{key} {mode}", 1.5 * last_wall):
            continue
        wall = time.perf_counter()
        with guarded(f"{key} {mode}", device, errors):
            row, output = _run_mode(mode, setup, params, plan, blocks, layers, args, flops, peak, rows)
            if mode == "gpu_bf16":
                reference = output
            elif reference is not None and mode in ("gpu_fp8", "fp8_scaled_mm"):
                row["rel_error_vs_bf16"] = relative_error(output, reference)
            output = None
            rows[mode] = row
            _print_mode(key, mode, row)
        free(device)
        last_wall = time.perf_counter() - wall
    out[key] = {
        "blocks_scaled_from": blocks,
        "note": f"measured on {blocks} of {layers} blocks, scaled per block",
        "modes": rows,
    }


def _run_mode(mode, setup, params, plan, blocks, layers, args, flops, peak, rows) -> tuple[dict, torch.Tensor]:
    """One memory mode at one size: (its figures, the output of the last forward)."""
    device = setup.device
    storage, fp8_mode, host, resident = _mode_build(mode, plan, blocks, layers)
    row = {"storage": storage, "blocks_built": blocks, "layers": layers}
    with Peaks(device) as peaks:
        model = build_transformer(params, blocks, device, setup.dtype, storage, fp8_mode, host_blocks=host)
        block_bytes = sum(t.numel() * t.element_size() for t in model.transformer_blocks[0].parameters())
        if mode == "model_cpu_offload":
            Placement(model, device, OffloadStats(), pin_memory=True)  # the first run pins (counted in the RSS)
            start = time.perf_counter()
            with on_device(model, device):
                _sync(device)
                row["load_s_full"] = (time.perf_counter() - start) * layers / blocks
                seconds, output = time_forward(model, args, device, setup.repeats)
        elif mode == "sequential":
            with BlockSwap(model, device, resident_blocks=resident) as swap:
                seconds, output = time_forward(model, args, device, setup.repeats)
            row.update(resident_full=plan.resident_blocks, prefetch_hits=swap.stats.prefetch_hits)
        else:
            seconds, output = time_forward(model, args, device, setup.repeats)
    row.update(measured_s=seconds, peak_vram_measured=peaks.device_peak, peak_host_rss=peaks.host_peak)
    full_blocks_on_device = layers if mode != "sequential" else plan.resident_blocks + 2
    built_on_device = blocks if mode != "sequential" else resident + min(2, blocks - resident)
    if peaks.device_peak is not None:
        row["peak_vram_full_estimate"] = peaks.device_peak + (full_blocks_on_device - built_on_device) * block_bytes
    row["s_per_it"] = seconds * layers / blocks
    if mode == "sequential":  # streamed blocks measured; the rest run like resident blocks of that storage
        resident_block_s = rows.get("gpu_fp8" if storage.startswith("fp8") else "gpu_bf16", row)["measured_s"] / blocks
        streamed_full = layers - plan.resident_blocks
        if streamed_full <= blocks:
            row["s_per_it"] = seconds + (layers - blocks) * resident_block_s
        else:
            row["s_per_it"] = seconds * streamed_full / blocks + plan.resident_blocks * resident_block_s
        row["over_gpu_same_storage"] = row["s_per_it"] / (resident_block_s * layers)
    if mode == "fp8_scaled_mm":
        row["scaled_mm"] = fp8_matmul_supported(device)
        if not row["scaled_mm"]:
            row["note"] = "no torch._scaled_mm on this device (needs CUDA sm89+): ran the dequantizing fallback"
    row["mfu"] = flops / row["s_per_it"] / peak
    del model
    return row, output


def _print_mode(key: str, mode: str, row: dict) -> None:
    figures = {"s_per_it": row["s_per_it"], "mfu": row["mfu"], "peak_host_rss_gib": row["peak_host_rss"] / GIB}
    if row.get("peak_vram_full_estimate") is not None:
        figures["peak_vram_gib"] = row["peak_vram_full_estimate"] / GIB
    for name in ("rel_error_vs_bf16", "over_gpu_same_storage", "load_s_full"):
        if name in row:
            figures[name] = row[name]
    for name, value in figures.items():
        print(f"RESULT {key}_{mode}_{name}={value:.4g}", flush=True)


def run_attention(setup: Setup, label: str, size, out: dict) -> None:
    """Attention backends (the installed ones; error vs SDPA) on one block's attention shape."""
    from models.attention import BACKENDS, installed

    _, _, params = setup.models[label]
    width, height, frames = size
    key, device = _key(label, *size), setup.device
    tokens = memory.video_tokens(width, height, frames) + TEXT_TOKENS
    g = torch.Generator(device).manual_seed(3)
    q, k, v = (
        torch.randn(
            2,
            params.num_attention_heads,
            tokens,
            params.attention_head_dim,
            generator=g,
            device=device,
            dtype=setup.dtype,
        )
        for _ in range(3)
    )
    reference = BACKENDS["sdpa"](q, k, v).float()
    attention = {}
    for name, backend in BACKENDS.items():
        problem = installed(name)
        if problem is not None:
            attention[name] = {"installed": False, "why": problem}
            continue
        seconds, result = time_forward(backend, (q, k, v), device, setup.repeats)
        attention[name] = {
            "s": seconds,
            "rel_error_vs_sdpa": relative_error(result, reference),
            "ran_kernel": device.type == "cuda" and setup.dtype in (torch.float16, torch.bfloat16),
        }
        print(f"RESULT {key}_attention_{name}_ms={seconds * 1e3:.4g}", flush=True)
    del q, k, v, reference
    out[f"{key}_attention"] = attention


def run_compile(setup: Setup, label: str, size, budget: Budget, out: dict) -> None:
    """torch.compile per block on `setup.blocks` bf16 blocks: compile time (first call) and s/it scaled to the full
    depth, vs eager."""
    from models.compile import compile_blocks

    _, _, params = setup.models[label]
    width, height, frames = size
    key, device = _key(label, *size), setup.device
    if not budget.allows(f"{key} torch.compile", 120.0 if not setup.tiny else 5.0):
        return
    blocks = min(setup.blocks, params.num_layers)
    args = inputs(params, width, height, frames, device, setup.dtype)
    model = build_transformer(params, blocks, device, setup.dtype, "bf16")
    eager_s, _ = time_forward(model, args, device, setup.repeats)
    lines = []
    report = compile_blocks(model, backend="eager" if setup.tiny else "inductor", log=lines.append)
    compiled_s, _ = time_forward(model, args, device, setup.repeats)  # the warm-up call compiles
    model = None
    free(device)
    scale = params.num_layers / blocks
    out[f"{key}_compile"] = {
        "compile_s_blocks_built": report.first_call_seconds,
        "eager_s_per_it": eager_s * scale,
        "compiled_s_per_it": compiled_s * scale,
        "log": lines,
        "backend": report.backend,
    }
    print(f"RESULT {key}_compile_first_call_s={report.first_call_seconds:.4g}", flush=True)
    print(f"RESULT {key}_compiled_over_eager={compiled_s / eager_s:.4g}", flush=True)


def run_profile(setup: Setup, label: str, size, out: dict, blocks: int = 2) -> None:
    """Where the eager time of a bf16 block goes: the kernels of `blocks` blocks under torch.profiler, grouped by
    name, largest first (what torch.compile or a fused kernel would have to win back)."""
    from torch.profiler import ProfilerActivity, profile

    _, _, params = setup.models[label]
    device = setup.device
    args = inputs(params, *size, device, setup.dtype)
    model = build_transformer(params, blocks, device, setup.dtype, "bf16")
    time_forward(model, args, device, 1)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof, torch.inference_mode():
        model(*args)
        _sync(device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=30, max_name_column_width=70)
    print(table, flush=True)
    out[f"{_key(label, *size)}_profile_{blocks}_blocks"] = table


@contextlib.contextmanager
def card_cap(setup: Setup, card_bytes: int):
    """The simulated card: the allocator may hold at most card − CUDA reserve (what the planner budgets)."""
    if setup.device.type != "cuda":
        yield
        return
    index = setup.device.index if setup.device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (card_bytes - memory.CUDA_RESERVE) / total), index)
    try:
        yield
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, index)


def _peak(peaks: Peaks, host_base: int) -> int:
    return peaks.device_peak if peaks.device_peak is not None else peaks.host_peak - host_base


def _is_oom(error: BaseException) -> bool:
    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def transformer_phase_estimate(plan, model: memory.ModelBytes, activations: int) -> int:
    """The planner's bytes for the sampling phase of `plan` (models/memory.py plan_memory, per mode)."""
    weights, block = model.transformer[plan.storage], model.block[plan.storage]
    if plan.mode == "gpu":
        return weights + model.text_encoder + model.vae + activations
    if plan.mode == "model_cpu_offload":
        return weights + activations
    return weights - block * model.num_blocks + (plan.resident_blocks + 2) * block + activations


def run_plan_row(setup: Setup, label: str, row, budget: Budget, out: list) -> None:
    """One `auto` plan of the README memory table, run at full depth for one CFG step under the card cap."""
    version, _, params = setup.models[label]
    width, height, frames, card, modes = row
    key, device, layers = _key(label, width, height, frames), setup.device, params.num_layers
    if not budget.allows(f"{card / GIB:.0f} GB plan {key}", 25.0 if not setup.tiny else 1.0):
        return
    bytes_ = model_bytes(setup, label)
    plan = memory.plan_memory(bytes_, width, height, frames, card, modes=modes)
    activations = memory.transformer_activation_bytes(bytes_.inner_dim, width, height, frames, version)
    estimate = transformer_phase_estimate(plan, bytes_, activations)
    record = {
        "key": key,
        "mode": plan.mode,
        "storage": plan.storage,
        "resident_blocks": plan.resident_blocks,
        "layers": layers,
        "planned_fits": plan.fits,
        "estimate": estimate,
        "vae_budget": plan.vae_budget,
        "planned_peak": plan.peak_vram,
        "card": card,
        "size": (width, height, frames),
    }
    # sequential: the whole model rests in pinned host memory (as the loader leaves it); the other modes run with
    # every weight on the device, so it is created there (the same VRAM as after model offload's copy)
    host = "all" if plan.mode == "sequential" else ()
    args = inputs(params, width, height, frames, device, setup.dtype)
    free(device)
    host_base = _rss()
    model = others = None
    with card_cap(setup, card):
        try:
            with Peaks(device) as peaks:
                model = build_transformer(params, layers, device, setup.dtype, plan.storage, host_blocks=host)
                extra = bytes_.text_encoder + bytes_.vae if plan.mode == "gpu" else 0  # resident beside it in gpu mode
                others = torch.empty(extra, dtype=torch.uint8, device=device)
                placement = BlockSwap(model, device, plan.resident_blocks) if host else contextlib.nullcontext()
                with placement:
                    record["step_s_full_depth"], _ = time_forward(model, args, device, 0)
                model = others = None
            record["measured"] = _peak(peaks, host_base)
            record["fits"] = True
        except Exception as error:
            if not _is_oom(error):
                raise
            record.update(fits=False, measured=None, error=str(error).splitlines()[0])
        del model, others  # the failed step's frames went with the error; drop the weights too
        free(device)
        if plan.mode != "gpu":  # the text encoder phase runs alone: its weights must fit too
            try:
                text = torch.empty(bytes_.text_encoder, dtype=torch.uint8, device=device)
                del text
                record["text_encoder_fits"] = True
            except Exception as error:
                if not _is_oom(error):
                    raise
                record.update(text_encoder_fits=False, fits=False)
            free(device)
    if record.get("measured"):
        record["estimate_error"] = abs(record["measured"] - estimate) / record["measured"]
    out.append(record)
    print(f"RESULT plan_{key}_fits={int(record['fits'])}", flush=True)
    print(
        f"  plan {key}: {plan.mode} {plan.storage}"
        + (f" {plan.resident_blocks}/{layers} resident" if host else "")
        + f"; estimated {estimate / GIB:.2f} GiB, measured "
        + ("OOM" if record.get("measured") is None else f"{record['measured'] / GIB:.2f} GiB"),
        flush=True,
    )


def run_vae(
    setup: Setup,
    size,
    budget: Budget,
    out: list,
    memory_budget: int | None = None,
    card: int | None = None,
    label: str = "vae",
) -> None:
    """Decode 49 (or `frames`) frames at `size` with the tile size `auto` picks from `memory_budget` (default: half
    the free VRAM, as the VAE Decode node does)."""
    width, height, frames = size
    device = setup.device
    if not budget.allows(f"{label} decode {height}x{width}x{frames}", 60.0 if not setup.tiny else 1.0):
        return
    free(device)
    if memory_budget is None:
        memory_budget = torch.cuda.mem_get_info(device)[0] // 2 if device.type == "cuda" else 64 * 1024**2
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)  # on the CPU, as the node holds them
    record = {"size": f"{height}x{width}x{frames}", "memory_budget": memory_budget, "card": card}
    host_base = _rss()
    vae = None
    with card_cap(setup, card) if card else contextlib.nullcontext():
        try:
            with Peaks(device) as peaks:
                vae = build_vae(setup)
                record["tile"] = vae.auto_tile_size(height, width, memory_budget, element_size=2)
                _sync(device)
                start = time.perf_counter()
                vae.decode(latents, memory_budget=memory_budget, device=device)
                _sync(device)
                record["decode_s"] = time.perf_counter() - start
                vae = None
            record.update(fits=True, peak=_peak(peaks, host_base), peak_host_rss=peaks.host_peak)
        except Exception as error:
            if not _is_oom(error):
                raise
            record.update(fits=False, error=str(error).splitlines()[0])
        vae = None
        free(device)
    out.append(record)
    tag = f"{label}_{height}x{width}x{frames}"
    if record["fits"]:
        print(f"RESULT {tag}_decode_s={record['decode_s']:.3f}", flush=True)
        print(f"RESULT {tag}_peak_vram_gib={record['peak'] / GIB:.4g}", flush=True)
    else:
        print(f"RESULT {tag}_fits=0", flush=True)


def plan_summary(rows: list, vae_phases: list) -> float | None:
    """Per plan: the measured peak over its phases vs the planner's peak; returns the largest relative error."""
    errors = []
    for row in rows:
        vae = next(
            (
                v
                for v in vae_phases
                if v["size"] == row["key"].split("_", 1)[1]
                and v["card"] == row["card"]
                and v["memory_budget"] == (row["vae_budget"] or v["memory_budget"])
            ),
            None,
        )
        phases = [row.get("measured")] + ([vae.get("peak")] if vae else [])
        if vae is not None and not vae["fits"]:
            row["fits"] = False
        row["vae_phase_measured"] = vae is not None
        if row["fits"] and all(p is not None for p in phases):
            planned = max(row["estimate"], row["planned_peak"])
            row["overall_error"] = abs(max(phases) - planned) / max(phases)
            errors.append(row["overall_error"])
    return max(errors) if errors else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny models on the CPU: the same code paths in seconds")
    parser.add_argument("--out", type=Path, help="JSON file (default benchmarks/results/gpu-<date>-<card>.json)")
    parser.add_argument("--budget-s", type=float, default=None, help="time budget (default 480 s; tiny 300 s)")
    parser.add_argument("--blocks", type=int, default=8, help="transformer blocks built for the per-mode timings")
    parser.add_argument("--only", default="", help="comma-separated parts of section names to run (default: all)")
    parser.add_argument("--profile", action="store_true", help="also print a kernel profile of two bf16 blocks")
    args = parser.parse_args()
    if not args.tiny and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs a CUDA GPU (torch sees none); run with --tiny for the CPU check")
    setup = tiny_setup() if args.tiny else gpu_setup(args.blocks)
    budget = Budget(args.budget_s or (300.0 if args.tiny else 480.0))
    card = "cpu-tiny" if args.tiny else torch.cuda.get_device_name(setup.device)
    now = datetime.datetime.now(datetime.timezone.utc)
    peak, peak_source = peak_flops(setup)
    print(
        f"EasyAnimate GPU check on {card}, torch {torch.__version__}, {now:%Y-%m-%d %H:%M} UTC; MFU against "
        f"{peak / 1e12:.3g} TFLOP/s ({peak_source}); budget {budget.seconds:.0f} s",
        flush=True,
    )
    results = {
        "card": card,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "date_utc": now.isoformat(),
        "tiny": args.tiny,
        "peak_flops": peak,
        "peak_source": peak_source,
        "card_simulated_bytes": setup.card_bytes,
        "modes": {},
        "plans": [],
        "vae": [],
        "plan_vae_phases": [],
        "speed_options": {},
        "skipped": budget.skipped,
    }
    results["errors"] = errors = {}
    out = args.out or REPO_ROOT / "benchmarks" / "results" / f"gpu-{now:%Y%m%d-%H%M}-{card.replace(' ', '_')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)

    def section(what: str, run, *run_args, **run_kwargs) -> None:
        """One guarded section, then the JSON is rewritten: a run cut short still leaves every figure so far."""
        if only and not any(part in what for part in only):
            return
        with guarded(what, setup.device, errors):
            run(*run_args, **run_kwargs)
        out.write_text(json.dumps(results, indent=1, default=str))

    # In order of importance, so a short budget keeps the figures the README and the targets need.
    only = [part.strip() for part in args.only.split(",") if part.strip()]
    labels = list(setup.models)
    first_size, *other_sizes = setup.sizes
    if args.profile:
        section("profile", run_profile, setup, labels[0], first_size, results["speed_options"])
    section("modes 12b headline", run_modes, setup, labels[0], first_size, budget, peak, results["modes"], errors)
    section("attention backends", run_attention, setup, labels[0], first_size, results["speed_options"])
    for row in setup.plan_rows:
        for label in labels:
            section(f"plan {label} {row[:3]}", run_plan_row, setup, label, row, budget, results["plans"])
    done = set()
    for row in results["plans"]:  # the VAE phase of each plan, once per (size, tile budget, card)
        phase = (tuple(row["size"]), row["vae_budget"], row["card"])
        if row["fits"] and phase not in done:
            done.add(phase)
            section(
                f"plan vae {row['size']}",
                run_vae,
                setup,
                row["size"],
                budget,
                results["plan_vae_phases"],
                row["vae_budget"] or None,
                row["card"],
                label="plan_vae",
            )
    section("torch.compile", run_compile, setup, labels[0], first_size, budget, results["speed_options"])
    for size in setup.sizes:
        section(f"vae {size}", run_vae, setup, size, budget, results["vae"])
    for label, size in [(labels[1], first_size)] + [(label, size) for size in other_sizes for label in labels]:
        section(f"modes {label} {size}", run_modes, setup, label, size, budget, peak, results["modes"], errors)
    worst = plan_summary(results["plans"], results["plan_vae_phases"])
    if worst is not None:
        print(f"RESULT plan_estimate_error_max={worst:.3f}")
    print(f"RESULT plans_fitting={sum(r['fits'] for r in results['plans'])}")
    print(f"RESULT plans_run={len(results['plans'])}")
    print(f"RESULT gpu_check_seconds={budget.elapsed:.0f}")
    print(f"RESULT gpu_check_complete={int(not budget.skipped)}")
    if budget.skipped:
        print(f"NOTE skipped for time: {'; '.join(budget.skipped)}")
    print(f"RESULT gpu_check_errors={len(errors)}")
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
