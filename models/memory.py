"""Memory model and planner: bytes of weights per component, activations per (resolution, frames), and the fastest
memory mode that fits a VRAM budget (the loader's `memory_mode="auto"`; docs/memory.md, memory modes,
docs/memory.md, memory modes).

Weight bytes come from the safetensors headers of a model on disk (exact: they equal the bytes the loaders
allocate, for every storage dtype and fp8 mode) or from a model built on the meta device (full-size variants without
their files). Activation figures are ESTIMATES until measured on a GPU: they count the live [tokens, width] tensors
of one transformer block and the VAE decode tile, with a safety factor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .defaults import PATCH_SIZE, TEXT_TOKENS, VAE_SPATIAL_SCALE, VAE_TEMPORAL_SCALE
from .quant import FP8_DTYPES, storage_rule

GIB = 1024**3
CUDA_RESERVE = int(0.8 * GIB)  # CUDA context, allocator fragmentation, cuDNN workspaces (estimate)
ACTIVATION_FACTOR = 20  # live [batch, tokens, inner_dim] tensors at a block's peak (x, text, q, k, v, attn, 4×FF, ...)
# Text encoder parameter counts of the released checkpoints (visual tower dropped for Qwen2-VL), from the HF repos.
TEXT_ENCODER_PARAMS = {"v5": 102_000_000 + 1_670_000_000, "v5.1": 7_070_000_000}


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# -- weights ----------------------------------------------------------------------------------------------------------


def tensor_bytes(
    shapes: dict[str, tuple[tuple[int, ...], bool]],
    rule: Callable[[str], torch.dtype],
    scaled: bool = False,
    file_itemsize: dict[str, int] | None = None,
) -> int:
    """Sum over tensors {name: (shape, is_float)} of numel × itemsize of the dtype `rule(name)` holds it in; in scaled
    fp8 mode each fp8 matrix also carries a 4-byte fp32 scale. Non-float tensors keep their file size."""
    total = 0
    for name, (shape, is_float) in shapes.items():
        numel = 1
        for size in shape:
            numel *= size
        if not is_float:
            total += numel * (file_itemsize or {}).get(name, 8)
            continue
        held = rule(name)
        total += numel * _itemsize(held)
        if scaled and held in FP8_DTYPES and len(shape) == 2:
            total += 4
    return total


def transformer_weight_bytes(
    source, dtype: torch.dtype = torch.bfloat16, storage_dtype: torch.dtype | None = None, fp8_mode: str = "quality"
) -> int:
    """Bytes the transformer at `source` (folder or single file) will hold, read from its safetensors headers."""
    from .loading.headers import read_headers
    from .loading.transformer import transformer_checkpoint

    _, files, rename = transformer_checkpoint(source)
    shapes, itemsizes = {}, {}
    for key, (info, _) in read_headers(files).items():
        name = rename(key) if rename is not None else key
        if name is None:
            continue
        shapes[name] = (tuple(info.shape), _is_float(info.dtype))
        itemsizes[name] = info.nbytes // max(info.numel, 1)
    rule = storage_rule(fp8_mode, storage_dtype, dtype)
    return tensor_bytes(shapes, rule, fp8_mode == "scaled" and storage_dtype in FP8_DTYPES, itemsizes)


def module_weight_bytes(
    module: torch.nn.Module,
    dtype: torch.dtype = torch.bfloat16,
    storage_dtype: torch.dtype | None = None,
    fp8_mode: str = "quality",
) -> int:
    """The same figure for a model built on the meta device (full-size variants without their files)."""
    shapes = {n: (tuple(t.shape), t.is_floating_point()) for n, t in module.state_dict().items()}
    rule = storage_rule(fp8_mode, storage_dtype, dtype)
    return tensor_bytes(shapes, rule, fp8_mode == "scaled" and storage_dtype in FP8_DTYPES)


def vae_weight_bytes(model_dir, dtype: torch.dtype) -> int:
    """Bytes of the VAE in `dtype` (load_vae stores every float tensor in the dtype it is given)."""
    from .loading.headers import read_headers
    from .vae import _find_vae_folder

    folder = _find_vae_folder(Path(model_dir))
    files = sorted(folder.glob("*.safetensors"))
    return sum(
        info.numel * (_itemsize(dtype) if _is_float(info.dtype) else info.nbytes // max(info.numel, 1))
        for info, _ in read_headers(files).values()
    )


def _is_float(safetensors_dtype) -> bool:
    return str(safetensors_dtype).upper().startswith(("F", "BF"))


def full_size_transformer(version: str, size: str, kind: str = "t2v") -> torch.nn.Module:
    """A released variant's transformer on the meta device (no memory, exact parameter shapes)."""
    from .transformer import EasyAnimateTransformer, TransformerParams
    from .variants import variant_for

    params = TransformerParams.from_config(variant_for(version, size, kind).transformer_config())
    with torch.device("meta"):
        return EasyAnimateTransformer(params)


def full_size_vae_bytes(version: str, dtype: torch.dtype) -> int:
    from .vae import VAE, VAEConfig
    from .variants import released_vae_config

    config = VAEConfig.from_dict(released_vae_config(version), source="released config")
    if config.mid_block_use_attention is None:
        config.mid_block_use_attention = version == "v5"
    with torch.device("meta"):
        vae = VAE(config)
    return sum(t.numel() for t in vae.state_dict().values()) * _itemsize(dtype)


# -- activations ------------------------------------------------------------------------------------------------------


def video_tokens(width: int, height: int, frames: int, patch_size: int = PATCH_SIZE) -> int:
    latent_frames = (frames - 1) // VAE_TEMPORAL_SCALE + 1
    pixels_per_token = VAE_SPATIAL_SCALE * patch_size
    return latent_frames * (height // pixels_per_token) * (width // pixels_per_token)


def transformer_activation_bytes(
    inner_dim: int,
    width: int,
    height: int,
    frames: int,
    version: str = "v5.1",
    cfg: bool = True,
    dtype: torch.dtype = torch.bfloat16,
) -> int:
    """Peak activation bytes of one transformer call (ESTIMATE): memory-efficient attention keeps no
    tokens×tokens matrix, so the peak is a block's live [batch, tokens, inner_dim] tensors."""
    tokens = video_tokens(width, height, frames) + TEXT_TOKENS[version]
    batch = 2 if cfg else 1
    return ACTIVATION_FACTOR * batch * tokens * inner_dim * _itemsize(dtype)


def vae_decode_bytes(width: int, height: int, dtype: torch.dtype = torch.bfloat16, version: str = "v5.1") -> int:
    """Working bytes the plan leaves for the VAE decode: the VAE's own per-chunk estimate (models/vae/memory.py, the
    one its tile planner sizes tiles with, calibrated on measured peaks) at the smallest tile it may pick, since it
    tiles down to whatever budget the plan leaves (docs/memory.md, VAE); the whole frame when that is smaller."""
    from .vae import VAEConfig, smallest_tile_working_bytes
    from .variants import released_vae_config

    config = VAEConfig.from_dict(released_vae_config(version), source="released config")
    return smallest_tile_working_bytes(config, height, width, _itemsize(dtype))


# -- planning ---------------------------------------------------------------------------------------------------------


@dataclass
class ModelBytes:
    """Weight bytes of one model per component, for each candidate transformer storage."""

    transformer: dict[str, int]  # storage label ("bf16", "fp8_e4m3fn", ...) -> bytes
    block: dict[str, int]  # bytes of one transformer block, same labels
    num_blocks: int
    inner_dim: int
    text_encoder: int
    vae: int
    version: str = "v5.1"


@dataclass
class Plan:
    mode: str  # gpu | model_cpu_offload | sequential
    storage: str  # transformer storage label
    resident_blocks: int  # sequential only (all blocks otherwise)
    peak_vram: int
    ram_needed: int  # host RAM the weights need in this mode
    vae_budget: int  # bytes left for VAE decode tiles
    fits: bool
    lines: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return "\n".join(self.lines)


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GB"


def plan_memory(
    model: ModelBytes,
    width: int,
    height: int,
    frames: int,
    vram_budget: int,
    storages: tuple[str, ...] = ("bf16", "fp8_e4m3fn"),
    cfg: bool = True,
    compute_dtype: torch.dtype = torch.bfloat16,
    modes: tuple[str, ...] | None = None,
) -> Plan:
    """The fastest (mode, storage) whose estimated peak fits `vram_budget`, in this order: all resident, whole-model
    offload, block swap with as many resident blocks as fit; wider storage before fp8, except for block swap. When nothing
    fits, the smallest configuration, marked fits=False."""
    activations = transformer_activation_bytes(
        model.inner_dim, width, height, frames, model.version, cfg, compute_dtype
    )
    decode = vae_decode_bytes(width, height, compute_dtype, model.version)
    budget = vram_budget - CUDA_RESERVE
    candidates = []
    for mode in modes or ("gpu", "model_cpu_offload", "sequential"):
        # block swap streams every non-resident block each step: fewer bytes (fp8) first
        order = sorted(storages, key=lambda s: model.block[s]) if mode == "sequential" else storages
        for storage in order:
            weights, block = model.transformer[storage], model.block[storage]
            rest = weights - block * model.num_blocks
            if mode == "gpu":
                peak = weights + model.text_encoder + model.vae + activations
                resident, ram = model.num_blocks, 0
            elif mode == "model_cpu_offload":
                peak = max(weights + activations, model.text_encoder, model.vae + decode)
                resident, ram = model.num_blocks, weights + model.text_encoder + model.vae
            else:
                streaming = 2 * block  # the running block and the prefetched one
                room = budget - rest - streaming - activations
                resident = max(0, min(model.num_blocks - 2, room // block)) if block else 0
                peak = max(rest + (resident + 2) * block + activations, model.text_encoder, model.vae + decode)
                ram = weights + model.text_encoder + model.vae
            candidates.append(Plan(mode, storage, int(resident), int(peak), int(ram), 0, peak <= budget))
    chosen = next((c for c in candidates if c.fits), min(candidates, key=lambda c: c.peak_vram))
    chosen.vae_budget = max(0, budget - (model.vae if chosen.mode != "gpu" else chosen.peak_vram - activations))
    chosen.lines = [
        f"EasyAnimate memory plan for {width}x{height}x{frames} (estimates): mode={chosen.mode}, "
        f"transformer {chosen.storage}"
        + (f", {chosen.resident_blocks}/{model.num_blocks} blocks resident" if chosen.mode == "sequential" else ""),
        f"  weights: transformer {_gb(model.transformer[chosen.storage])}, text encoder {_gb(model.text_encoder)}, "
        f"VAE {_gb(model.vae)}; activations {_gb(activations)}; peak VRAM {_gb(chosen.peak_vram + CUDA_RESERVE)} "
        f"of {_gb(vram_budget)}" + ("" if chosen.fits else "  -> DOES NOT FIT: lower resolution/frames"),
    ]
    return chosen


STORAGE_DTYPES = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}


def model_bytes_for_module(
    transformer: torch.nn.Module,
    text_encoder: int,
    vae: int,
    version: str,
    compute_dtype: torch.dtype = torch.bfloat16,
    fp8_mode: str = "quality",
    storages: tuple[str, ...] = ("bf16", "fp8_e4m3fn"),
) -> ModelBytes:
    """ModelBytes of a (meta or real) transformer for each storage label."""
    totals, blocks = {}, {}
    for label in storages:
        storage = STORAGE_DTYPES[label]
        totals[label] = module_weight_bytes(transformer, compute_dtype, storage, fp8_mode)
        blocks[label] = module_weight_bytes(transformer.transformer_blocks[-1], compute_dtype, storage, fp8_mode)
    return ModelBytes(
        totals, blocks, len(transformer.transformer_blocks), transformer.params.inner_dim, text_encoder, vae, version
    )


def full_size_model_bytes(
    version: str, size: str, kind: str = "t2v", compute_dtype: torch.dtype = torch.bfloat16, fp8_mode: str = "quality"
) -> ModelBytes:
    """ModelBytes of a released variant from the registry alone (meta device; text encoder from released counts)."""
    transformer = full_size_transformer(version, size, kind)
    text = TEXT_ENCODER_PARAMS[version] * _itemsize(compute_dtype)
    return model_bytes_for_module(
        transformer, text, full_size_vae_bytes(version, compute_dtype), version, compute_dtype, fp8_mode
    )


# -- RAM pre-flight ---------------------------------------------------------------------------------------------------


def available_ram() -> int:
    """Bytes of RAM the OS can give without swapping (MemAvailable)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # unknown: do not block


class NotEnoughMemoryError(MemoryError):
    pass


def check_ram(needed: int, what: str, path, hint: str, available: int | None = None) -> None:
    """Refuse, before reading any weight, a load whose weights cannot fit in free RAM (+10 % headroom)."""
    available = available_ram() if available is None else available
    if needed * 1.1 > available:
        raise NotEnoughMemoryError(
            f"not enough free RAM to load {what} from {path}: it needs {_gb(needed)} (+10 % headroom), "
            f"{_gb(available)} is free. {hint}"
        )


def model_bytes_for_transformer_files(
    source,
    compute_dtype: torch.dtype,
    storages: tuple[str, ...],
    fp8_mode: str,
    version: str,
    folder=None,
    text_storage: torch.dtype | None = None,
) -> ModelBytes:
    """ModelBytes of a model on disk, from its safetensors headers (text encoder: from the folder's text-encoder
    headers in `text_storage`, fp8 or None; the released estimate when the folder or its files are absent)."""
    from .loading.headers import read_headers
    from .loading.transformer import transformer_checkpoint
    from .transformer import TransformerParams

    config, files, rename = transformer_checkpoint(source)
    params = TransformerParams.from_config(config)
    last = f"transformer_blocks.{params.num_layers - 1}."
    shapes = {}
    for key, (info, _) in read_headers(files).items():
        name = rename(key) if rename is not None else key
        if name is not None:
            shapes[name] = (tuple(info.shape), _is_float(info.dtype))
    block_shapes = {n: v for n, v in shapes.items() if n.startswith(last)}
    totals, blocks = {}, {}
    for label in storages:
        rule = storage_rule(fp8_mode, STORAGE_DTYPES[label], compute_dtype)
        scaled = fp8_mode == "scaled" and STORAGE_DTYPES[label] in FP8_DTYPES
        totals[label] = tensor_bytes(shapes, rule, scaled)
        blocks[label] = tensor_bytes(block_shapes, rule, scaled)
    text = TEXT_ENCODER_PARAMS.get(version, 0) * _itemsize(compute_dtype)
    vae = 0
    if folder is not None:
        from .loading.text import TextEncoderFilesError, text_weight_bytes

        try:
            text = text_weight_bytes(folder, version, compute_dtype, text_storage)
        except TextEncoderFilesError:  # the text-encode node names what is missing; priced as released meanwhile
            pass
        try:
            vae = vae_weight_bytes(folder, compute_dtype)
        except Exception:  # no vae folder: the node will say so when it needs it
            vae = 0
    return ModelBytes(totals, blocks, params.num_layers, params.inner_dim, text, vae, version)


def oom_advice(mode: str, storage: str, width: int, height: int, frames: int, stage: str = "sampling") -> str:
    """What to change after a CUDA out-of-memory error, most effective first."""
    steps = []
    if not storage.startswith("fp8"):
        steps.append("set weight_storage to fp8_e4m3fn (halves the transformer)")
    if mode in ("auto", "gpu"):
        steps.append("set memory_mode to model_cpu_offload")
    if mode != "sequential":
        steps.append("set memory_mode to sequential (block swap; resident_blocks 0 = automatic)")
    else:
        steps.append("lower resident_blocks")
    smaller = (max(16, width // 32 * 16), max(16, height // 32 * 16))
    steps.append(
        f"or generate fewer frames / a smaller size (e.g. {smaller[0]}x{smaller[1]}, or {max(1, (frames - 1) // 8 * 4 + 1)} frames)"
    )
    if stage == "decode":
        steps.insert(0, "set the VAE Decode tile_size to 256 (or lower)")
    return (
        f"EasyAnimate ran out of GPU memory during {stage} at {width}x{height}x{frames} with memory_mode={mode}, "
        f"transformer {storage}. GPU memory has been freed. To fit: " + "; ".join(steps) + "."
    )


def release_host_memory() -> None:
    """Collect garbage and hand freed heap back to the OS: glibc keeps freed large blocks of a long-lived process in
    its arenas (RSS creeps up run after run); malloc_trim(0) returns them. A no-op beyond gc elsewhere."""
    import gc

    from .offload import trim_heap

    gc.collect()
    _empty_pinned_cache()
    trim_heap()


def _empty_pinned_cache() -> None:
    """torch keeps freed pinned (page-locked) host blocks cached for reuse; after an offloaded model is released they
    would stay locked in RAM for the rest of the session. Only where CUDA is already running (never starts it)."""
    import torch

    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        empty()
