"""The one streaming loader: every component (transformer, VAE, text encoders) is filled by `load_state_streaming`.

A module is built on the meta device, then each tensor is read from its safetensors file with plain file reads (not
mmap, so pages already read never count towards the process's RSS), converted straight to its storage dtype and
assigned; no second copy of a model is ever held (docs/memory.md, loading). Every missing / unexpected / wrongly
shaped key is reported in one error (the reference loader silently skips mismatches, docs/faithfulness.md, numerical
pitfalls).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn

from .headers import PICKLE_SUFFIXES, CheckpointError, TensorInfo, pickle_refusal, read_safetensors_header


@dataclass
class LoadReport:
    files: list[Path]
    loaded: list[str]  # module names that received a tensor
    missing: list[str]  # only non-empty with strict=False (module built off-meta keeps its values)
    unexpected: list[str]  # file keys with no module target, only with strict=False


def _tensor_targets(module: nn.Module) -> dict[str, tuple[nn.Module, str, bool]]:
    """state-dict name -> (owning module, attribute, is_parameter) for parameters and persistent buffers."""
    targets = {}
    for prefix, owner in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for attr, param in owner._parameters.items():
            if param is not None:
                targets[dot + attr] = (owner, attr, True)
        for attr, buffer in owner._buffers.items():
            if buffer is not None and attr not in owner._non_persistent_buffers_set:
                targets[dot + attr] = (owner, attr, False)
    return targets


def _tied_names(module: nn.Module, targets: dict[str, tuple[nn.Module, str, bool]]) -> dict[str, tuple[str, ...]]:
    """name -> every name holding the same tensor (tied weights such as T5's shared / encoder.embed_tokens)."""
    by_tensor: dict[int, list[str]] = {}
    for name, (owner, attr, _) in targets.items():
        by_tensor.setdefault(id(getattr(owner, attr)), []).append(name)
    return {name: tuple(names) for names in by_tensor.values() for name in names}


def load_state_streaming(
    module: nn.Module,
    files: str | Path | Iterable[str | Path],
    dtype: torch.dtype | None = torch.bfloat16,
    rename: Callable[[str], str | None] | None = None,
    keep_dtype: Callable[[str], torch.dtype | None] | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], None] | None = None,
    saturate: bool = False,
) -> LoadReport:
    """Fill `module` (built on the meta device) from safetensors `files`, one tensor at a time.

    Each tensor is read with plain file reads (never mapped), converted to its storage dtype — `keep_dtype(name)` if
    that returns a dtype, else `dtype` (None keeps the file's dtype; integer tensors always keep theirs) — moved to
    `device`, and assigned in place of the module's parameter/buffer; no second copy of the model is ever held.
    `rename(file_key)` maps file keys to module names (return None to skip a key on purpose).

    All problems are collected first from the headers (before any data is read) and raised as one CheckpointError
    naming the files: wrongly shaped keys always; missing and unexpected keys when `strict`. With strict=False,
    missing keys are tolerated only for tensors that are not on the meta device. Non-persistent buffers are not
    loaded; the caller builds them. Tied tensors (one tensor under several names) are read once, from whichever name
    the files hold, and stay tied. `saturate` clamps values to an fp8 target's range before the cast (fp8 casts do
    not saturate; the text encoders' fp8 storage does this, the transformer's reference-exact mode does not).
    Returns a LoadReport.
    """
    if isinstance(files, (str, Path)):
        files = [files]
    files = [Path(f).absolute() for f in files]
    if not files:
        raise CheckpointError(f"no weight files given to load into {type(module).__name__}")
    for file in files:
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise pickle_refusal(file.parent, [file])
    targets = _tensor_targets(module)
    tied = _tied_names(module, targets)

    plan: dict[Path, list[tuple[str, str]]] = {file: [] for file in files}  # file -> [(file key, module name)]
    source: dict[str, tuple[str, Path]] = {}
    unexpected, mismatched, duplicates = [], [], []
    for file in files:
        for key, info in read_safetensors_header(file).items():
            name = rename(key) if rename is not None else key
            if name is None:
                continue
            if name not in targets:
                unexpected.append(f"{key}  [{file.name}]")
                continue
            if name in source:
                duplicates.append(f"{name}  [{source[name][1].name} and {file.name}]")
                continue
            if any(alias in source for alias in tied[name]):
                continue  # a tied tensor already read under another name
            source[name] = (key, file)
            owner, attr, _ = targets[name]
            expected = tuple(getattr(owner, attr).shape)
            if info.shape != expected:
                mismatched.append(f"{key}: file {info.shape}, model expects {expected}  [{file.name}]")
                continue
            plan[file].append((key, name))
    missing = [name for name in targets if not any(alias in source for alias in tied[name])]
    missing_on_meta = [name for name in missing if getattr(targets[name][0], targets[name][1]).is_meta]

    sections = []
    reported_missing = missing if strict else missing_on_meta
    if reported_missing:
        sections.append(
            (f"{len(reported_missing)} missing (the model needs them, the files lack them)", reported_missing)
        )
    if unexpected and strict:
        sections.append((f"{len(unexpected)} unexpected (in the files, no such tensor in the model)", unexpected))
    if mismatched:
        sections.append((f"{len(mismatched)} wrongly shaped", mismatched))
    if duplicates:
        sections.append((f"{len(duplicates)} stored more than once", duplicates))
    if sections:
        shown = ", ".join(str(f) for f in files)
        lines = [f"checkpoint {shown} does not fit the {type(module).__name__} it is loaded into:"]
        for title, names in sections:
            lines.append(f"  {title}:")
            lines += [f"    {n}" for n in names]
        lines.append(
            "This usually means the files belong to another model variant, are incomplete, or the "
            "config.json next to them does not match the weights."
        )
        error = CheckpointError("\n".join(lines))
        error.missing, error.unexpected, error.mismatched = reported_missing, unexpected, mismatched
        raise error

    # Tensors are read with plain file reads, one at a time, into a temporary of the stored dtype, then converted:
    # unlike an mmap reader, pages already read never count towards the process's RSS, so peak host memory stays
    # at the final weights plus one tensor (benchmarks/memory.py).
    total = sum(len(entries) for entries in plan.values())
    done = 0
    loaded = []
    for file, entries in plan.items():
        if not entries:
            continue
        header = read_safetensors_header(file)
        # One read buffer per file, reused for every tensor: fresh per-tensor temporaries would be kept by the C
        # allocator and show up as RSS. Each tensor is then copied out (copy=True), converted on the way.
        buffer = torch.empty(max(header[key].nbytes for key, _ in entries), dtype=torch.uint8)
        with open(file, "rb") as handle:
            data_start = 8 + int.from_bytes(handle.read(8), "little")
            for key, name in entries:
                if interrupt is not None:
                    interrupt()
                tensor = _read_tensor(handle, file, key, header[key], data_start, buffer)
                wanted = keep_dtype(name) if keep_dtype is not None else None
                wanted = wanted or dtype
                if wanted is not None and tensor.is_floating_point():
                    if saturate and wanted in _FP8_DTYPES:  # in place on the read buffer: no temporary
                        limit = torch.finfo(wanted).max
                        tensor = tensor.clamp_(-limit, limit)
                    tensor = tensor.to(device=device, dtype=wanted, copy=True)
                else:
                    tensor = tensor.to(device=device, copy=True)
                if targets[name][2]:
                    tensor = nn.Parameter(tensor, requires_grad=False)
                for alias in tied[name]:
                    owner, attr, is_parameter = targets[alias]
                    (owner._parameters if is_parameter else owner._buffers)[attr] = tensor
                loaded.append(name)
                done += 1
                if progress is not None:
                    progress(done, total)

    still_meta = [name for name, (owner, attr, _) in targets.items() if getattr(owner, attr).is_meta]
    if still_meta:
        raise CheckpointError(
            f"after loading {', '.join(str(f) for f in files)} these tensors were never filled: {', '.join(still_meta)}"
        )
    return LoadReport(files=files, loaded=loaded, missing=missing, unexpected=unexpected)


_FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
_TORCH_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _read_tensor(handle, file: Path, key: str, info: TensorInfo, data_start: int, buffer: torch.Tensor) -> torch.Tensor:
    """One tensor of an open safetensors file, read (not mapped) into `buffer`, viewed in its stored dtype.

    The result aliases `buffer`: copy it before reading the next tensor."""
    if info.dtype not in _TORCH_DTYPES:
        raise CheckpointError(f"{file}: tensor {key!r} has dtype {info.dtype}, which EasyAnimate weights never use")
    raw = buffer[: info.nbytes]
    handle.seek(data_start + info.data_offsets[0])
    read = handle.readinto(memoryview(raw.numpy()))
    if read != info.nbytes:
        raise CheckpointError(
            f"{file} could not be read: tensor {key!r} is cut short ({read} of {info.nbytes} bytes); the file is "
            "truncated or corrupt. Re-download it."
        )
    return raw.view(_TORCH_DTYPES[info.dtype]).reshape(info.shape)
