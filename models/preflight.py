"""Pre-flight: a request is checked against the registry's hard limits and priced by the memory model BEFORE any
weight is read or any step runs, and refused with the nearest request that fits (docs/reliability.md).

Three questions, each answered in milliseconds from headers and arithmetic:
- `input_problems`: is each input inside its limits? One message per input, naming the input and its bounds.
- `price_request`: does the request fit in this device's memory in the chosen mode (RAM on a CPU, VRAM + RAM on a
  GPU)? If not: which frames / size / mode would.
- `longest_uninterruptible_seconds`: how long the longest stretch without an interrupt check (one transformer
  block: its attention dominates) would take; a request over `MAX_UNINTERRUPTIBLE_SECONDS` is refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .defaults import FRAME_STEP, MAX_FRAMES, MAX_SIDE, MIN_FRAMES, MIN_SIDE, SIDE_MULTIPLE

GIB = 1024**3
# The interrupt is checked between transformer blocks; one block must finish well inside this (docs/reliability.md).
MAX_UNINTERRUPTIBLE_SECONDS = 60.0
# Attention throughput assumed when pricing time: measured 13-27 GFLOP/s with SDPA on 2 CPU threads (bf16/fp32),
# so 6 GFLOP/s per thread is a conservative floor; 100 TFLOP/s for a CUDA GPU (an H100 does ~4x that).
CPU_ATTENTION_FLOPS_PER_THREAD = 6e9
GPU_ATTENTION_FLOPS = 1e14
RAM_HEADROOM = 1.1  # the OS, ComfyUI itself and allocator slack


class RequestRefused(ValueError):
    """A request that cannot run on this machine; the message says what would."""


# -- limits -----------------------------------------------------------------------------------------------------------


def _as_int(name: str, value) -> tuple[int | None, str | None]:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        return None, f"{name} must be a whole number (INT), got {type(value).__name__} {value!r}"
    return int(value), None


def side_problem(name: str, value) -> str | None:
    """The problem with one width/height value, or None."""
    value, problem = _as_int(name, value)
    if problem:
        return problem
    if not MIN_SIDE <= value <= MAX_SIDE:
        return f"{name} {value} is outside {MIN_SIDE}..{MAX_SIDE} pixels"
    if value % SIDE_MULTIPLE:
        lower = value // SIDE_MULTIPLE * SIDE_MULTIPLE
        return f"{name} {value} must be a multiple of {SIDE_MULTIPLE} (e.g. {max(lower, MIN_SIDE)} or {lower + SIDE_MULTIPLE})"
    return None


def frames_problem(value) -> str | None:
    value, problem = _as_int("frames", value)
    if problem:
        return problem
    if not MIN_FRAMES <= value <= MAX_FRAMES:
        return f"frames {value} is outside {MIN_FRAMES}..{MAX_FRAMES}"
    if (value - 1) % FRAME_STEP:
        lower = (value - 1) // FRAME_STEP * FRAME_STEP + 1
        return f"frames {value} must be 1 or 4k+1 (1, 5, 9, ..., 49, ..., {MAX_FRAMES}): nearest {lower} or {lower + FRAME_STEP}"
    return None


def input_problems(width, height, frames) -> dict[str, str]:
    """{input name: its one problem} for a requested video size; empty when every input is valid."""
    problems = {
        "width": side_problem("width", width),
        "height": side_problem("height", height),
        "frames": frames_problem(frames),
    }
    return {name: problem for name, problem in problems.items() if problem}


# -- time between interrupt checks -------------------------------------------------------------------------------------


def attention_flops(tokens: int, inner_dim: int, batch: int) -> float:
    """Multiply-adds ×2 of one full attention call: Q·Kᵀ and P·V, each tokens² × inner_dim per sample."""
    return 4.0 * batch * inner_dim * float(tokens) ** 2


def longest_uninterruptible_seconds(tokens: int, inner_dim: int, batch: int, device_type: str, threads: int) -> float:
    rate = GPU_ATTENTION_FLOPS if device_type == "cuda" else CPU_ATTENTION_FLOPS_PER_THREAD * max(1, threads)
    return attention_flops(tokens, inner_dim, batch) / rate


# -- memory -----------------------------------------------------------------------------------------------------------


@dataclass
class Price:
    """What one request costs on one device (bytes; estimates from models/memory.py)."""

    fits: bool
    ram_needed: int
    ram_available: int
    vram_needed: int = 0
    vram_available: int = 0
    seconds_between_checks: float = 0.0
    mode: str = "gpu"

    def describe(self) -> str:
        text = f"needs {_gb(self.ram_needed)} RAM of {_gb(self.ram_available)} free"
        if self.vram_available:
            text += f", {_gb(self.vram_needed)} GPU memory of {_gb(self.vram_available)} free"
        return text


def _gb(n: int) -> str:
    return f"{n / GIB:.1f} GB"


def largest_fitting(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest n in [low, high] with fits(n), for a `fits` that is monotone (true up to some n); None if none."""
    if high < low or not fits(low):
        return None
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def nearest_fitting_requests(fits: Callable[[int, int, int], bool], width: int, height: int, frames: int) -> list[str]:
    """Requests close to (width, height, frames) that fit: fewer frames at this size, a smaller size (same aspect
    ratio) at these frames."""
    suggestions = []
    k = largest_fitting(lambda k: fits(width, height, k * FRAME_STEP + 1), 0, (frames - 1) // FRAME_STEP - 1)
    if k is not None:
        suggestions.append(f"{width}x{height} with {k * FRAME_STEP + 1} frames")

    def scaled(step: int) -> tuple[int, int]:  # step 1..longest/16: the longer side in multiples of 16
        ratio = step * SIDE_MULTIPLE / max(width, height)
        return (
            max(MIN_SIDE, int(width * ratio) // SIDE_MULTIPLE * SIDE_MULTIPLE),
            max(MIN_SIDE, int(height * ratio) // SIDE_MULTIPLE * SIDE_MULTIPLE),
        )

    step = largest_fitting(lambda s: fits(*scaled(s), frames), 1, max(width, height) // SIDE_MULTIPLE - 1)
    if step is not None:
        suggestions.append("{}x{} with {} frames".format(*scaled(step), frames))
    return suggestions


def refusal(what: str, price: Price, suggestions: list[str], modes: list[str] = ()) -> RequestRefused:
    fixes = [f"memory_mode {m}" for m in modes] + list(suggestions)
    advice = (
        ("Nearest that fits: " + "; or ".join(fixes) + ".")
        if fixes
        else ("Nothing smaller fits either: close other programs or use a machine with more memory.")
    )
    return RequestRefused(f"EasyAnimate refused {what} before starting: it {price.describe()}. {advice}")


def too_slow(what: str, seconds: float, suggestions: list[str]) -> RequestRefused:
    advice = ("Nearest that runs in time: " + "; or ".join(suggestions) + ".") if suggestions else ""
    return RequestRefused(
        f"EasyAnimate refused {what} before starting: one transformer block would run about {seconds:.0f} s without "
        f"a chance to cancel (limit {MAX_UNINTERRUPTIBLE_SECONDS:.0f} s on this device). {advice}"
    )


# -- one request on one model -----------------------------------------------------------------------------------------


def storage_label(model) -> str:
    from .memory import STORAGE_DTYPES

    storage = model.storage_dtype or model.dtype
    return next(label for label, dtype in STORAGE_DTYPES.items() if dtype == storage)


def model_bytes(model, storages: tuple[str, ...]):
    """The memory model's ModelBytes for a ModelComponents (transformer headers; VAE/text from its folder)."""
    from .lora_model import add_lora_bytes
    from .memory import model_bytes_for_transformer_files

    folder = model.companion if model.detection.layout == "single_file" else model.path
    weights = model_bytes_for_transformer_files(
        model.path, model.dtype, storages, model.fp8_mode, model.version, folder, model.text_storage_dtype
    )
    return add_lora_bytes(weights, model)  # an attached LoRA stack's tensors (docs/lora.md, cost)


def gpu_peak(model, width: int, height: int, frames: int, cfg: bool = True) -> int:
    """Bytes of GPU memory the fastest mode (all on the device) would need: how much free memory to ask ComfyUI
    for before measuring. 0 without CUDA or for an invalid size."""
    import torch

    from .memory import CUDA_RESERVE, plan_memory

    if not torch.cuda.is_available() or input_problems(width, height, frames):
        return 0
    label = storage_label(model)
    chosen = plan_memory(
        model_bytes(model, (label,)), width, height, frames, 1 << 62, (label,), cfg, model.dtype, ("gpu",)
    )
    return chosen.peak_vram + CUDA_RESERVE


def check_request(
    model,
    device,
    width: int,
    height: int,
    frames: int,
    cfg: bool = True,
    free_vram: int | None = None,
    ram: int | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = print,
) -> Price:
    """Refuse (RequestRefused) a sampling request for `model` (a ModelComponents) that is out of limits, would not fit
    this device's memory, or would run a block longer than MAX_UNINTERRUPTIBLE_SECONDS; else its Price. Reads
    headers only: call it before loading and again before sampling."""
    import torch

    from .defaults import TEXT_TOKENS
    from .memory import available_ram, plan_memory, transformer_activation_bytes, video_tokens

    problems = input_problems(width, height, frames)
    if problems:
        raise RequestRefused("; ".join(problems.values()))
    device = torch.device(device)
    ram = available_ram() if ram is None else ram
    threads = threads or torch.get_num_threads()
    what = f"{width}x{height}x{frames}"
    label = storage_label(model)
    loaded_plan = model.plan if model.is_loaded("transformer") else None
    auto_fp8 = model.storage_dtype is None and model.memory_mode == "auto" and loaded_plan is None
    storages = (label, "fp8_e4m3fn") if auto_fp8 and label != "fp8_e4m3fn" else (label,)
    if loaded_plan is not None:
        storages = (loaded_plan.storage,)
    weights = model_bytes(model, storages)
    batch = 2 if cfg else 1

    def seconds(w: int, h: int, f: int) -> float:
        tokens = video_tokens(w, h, f) + TEXT_TOKENS[model.version]
        return longest_uninterruptible_seconds(tokens, weights.inner_dim, batch, device.type, threads)

    block_seconds = seconds(width, height, frames)
    if block_seconds > MAX_UNINTERRUPTIBLE_SECONDS:
        fast = nearest_fitting_requests(
            lambda w, h, f: seconds(w, h, f) <= MAX_UNINTERRUPTIBLE_SECONDS, width, height, frames
        )
        raise too_slow(what, block_seconds, fast)
    resident = 0 if loaded_plan is not None else weights.transformer[storages[0]]  # already in RAM: counted as used

    if device.type != "cuda" or free_vram is None:  # everything in RAM

        def ram_needed(w: int, h: int, f: int) -> int:
            activations = transformer_activation_bytes(weights.inner_dim, w, h, f, model.version, cfg, model.dtype)
            return int((resident + activations) * RAM_HEADROOM)

        price = Price(
            ram_needed(width, height, frames) <= ram,
            ram_needed(width, height, frames),
            ram,
            seconds_between_checks=block_seconds,
            mode="cpu",
        )
        if not price.fits:
            raise refusal(
                what, price, nearest_fitting_requests(lambda w, h, f: ram_needed(w, h, f) <= ram, width, height, frames)
            )
        log(f"EasyAnimate pre-flight {what}: {price.describe()}, longest block ~{block_seconds:.1f} s")
        return price

    mode = loaded_plan.mode if loaded_plan is not None else model.memory_mode
    vram = free_vram + (weights.transformer[storages[0]] if loaded_plan is not None and mode == "gpu" else 0)
    ram_room = ram + (weights.transformer[storages[0]] if loaded_plan is not None and mode != "gpu" else 0)

    def plan(w: int, h: int, f: int, modes):
        return plan_memory(weights, w, h, f, vram, storages, cfg, model.dtype, modes)

    def fits(w: int, h: int, f: int, modes=None) -> bool:
        chosen = plan(w, h, f, modes or (None if mode == "auto" else (mode,)))
        return chosen.fits and chosen.ram_needed * RAM_HEADROOM <= ram_room

    chosen = plan(width, height, frames, None if mode == "auto" else (mode,))
    price = Price(
        fits(width, height, frames),
        int(chosen.ram_needed * RAM_HEADROOM),
        ram_room,
        chosen.peak_vram,
        vram,
        block_seconds,
        chosen.mode,
    )
    if not price.fits:
        other_modes = [
            m
            for m in ("gpu", "model_cpu_offload", "sequential")
            if mode not in ("auto", m) and loaded_plan is None and fits(width, height, frames, (m,))
        ]
        raise refusal(what, price, nearest_fitting_requests(fits, width, height, frames), other_modes)
    log(f"EasyAnimate pre-flight {what}: mode {chosen.mode}, {price.describe()}, longest block ~{block_seconds:.1f} s")
    return price


# -- files ------------------------------------------------------------------------------------------------------------

WEIGHT_FOLDERS = ("vae", "text_encoder", "text_encoder_2")
TOKENIZER_FOLDERS = ("tokenizer", "tokenizer_2", "text_encoder")  # Qwen2-VL also ships its tokenizer files here
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "chat_template.json",
)


def check_component_files(folder) -> int:
    """Read the safetensors headers of the VAE and text encoders of a model folder and parse its tokenizer files, so
    a truncated or foreign file is named at load time, not minutes later. Returns the number of files checked."""
    import json
    from pathlib import Path

    from .loading.files import weight_files
    from .loading.headers import CheckpointError, read_headers

    folder, checked = Path(folder), 0
    for name in WEIGHT_FOLDERS:
        if (folder / name).is_dir() and any((folder / name).glob("*.safetensors*")):
            files = weight_files(folder / name, describe=f"the {name} weights")
            read_headers(files)  # raises CheckpointError naming a truncated / corrupt file
            checked += len(files)
    for name in TOKENIZER_FOLDERS:
        for file in (folder / name / f for f in TOKENIZER_FILES):
            if not file.is_file():
                continue
            checked += 1
            if file.stat().st_size == 0:
                raise CheckpointError(f"{file} is empty: the tokenizer download is incomplete. Re-download it.")
            if file.suffix == ".json":
                try:
                    json.loads(file.read_bytes())
                except (UnicodeDecodeError, ValueError) as error:
                    raise CheckpointError(
                        f"{file} is truncated or corrupt (not valid JSON: {error}). Re-download it into {file.parent}."
                    ) from None
    return checked


# -- prompts ----------------------------------------------------------------------------------------------------------


def dropped_tokens(encoder, text: str) -> dict[str, int]:
    """{stream: tokens cut off} for the streams of a models.text.TextEncoder that cannot hold all of `text`
    (tokenizers only, no model weights)."""
    dropped = {}
    for stream in encoder.streams:
        tokenizer, text_in = encoder.tokenizers[stream], text
        if stream == "qwen":  # counted as encoded: inside the chat template
            messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
            text_in = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        excess = len(tokenizer(text_in, truncation=False)["input_ids"]) - encoder.max_length(stream)
        if excess > 0:
            dropped[stream] = excess
    return dropped


def token_warnings(encoder, texts: dict[str, str]) -> list[str]:
    """One line per over-long text ({label: text}), naming how many tokens the encoder will ignore."""
    lines = []
    for label, text in texts.items():
        for stream, count in dropped_tokens(encoder, text).items():
            lines.append(
                f"EasyAnimate: the {label} is {count} tokens too long for the {stream} text encoder "
                f"(limit {encoder.max_length(stream)}): its last {count} tokens are ignored. Shorten it."
            )
    return lines
