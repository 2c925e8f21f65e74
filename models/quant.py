"""qfloat8: transformer weights stored in fp8, computed in bf16/fp32 (docs/faithfulness.md, qfloat8).

Everything here is injected from outside the architecture: which tensors are stored in fp8 is a `keep_dtype` rule
handed to the streaming loader, and per-tensor scaled fp8 is a different `Linear` class in the `ops` namespace. The
transformer code never mentions fp8.

Modes (the loader's `fp8_mode` widget):
- "reference exact": every floating tensor is a plain cast to fp8, like the official plugin (norms, biases, the time
  embedding, `proj`, `proj_out` included; docs/faithfulness.md, qfloat8). Output = the reference qfloat8 output.
- "quality": the precision-sensitive layers stay in the compute dtype — norms, embeddings (time, text projections),
  adaLN modulation, patch embed (`proj`), output projection (`proj_out`) and biases; the big block matmul weights
  (attention q/k/v/out, feed-forward) are fp8. About 1 % more bytes than reference exact at full size.
- "scaled": as "quality", and each fp8 Linear weight carries a per-tensor fp32 scale (amax / fp8 max), so small
  weights use the whole fp8 range instead of flushing to subnormals: measurably lower error than the plain cast.

`fp8_matmul=True` (scaled mode only) computes with `torch._scaled_mm` where the GPU supports it (compute capability
≥ 8.9); it CHANGES THE OUTPUT (activations are rounded to fp8 too) and is never the default.
"""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from . import ops as cast_ops
from .defaults import FP8_MODES  # noqa: F401 (re-exported)

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)

# Tensors kept in the compute dtype by "quality"/"scaled": state-dict names (original key naming) of norms,
# modulation (norm1/norm2/norm_out .linear), embeddings, patch embed, output projection, and every bias.
_SENSITIVE = re.compile(
    r"^(proj|proj_out|time_embedding|text_proj[^.]*)\."  # patch embed, output projection, embeddings (root level)
    r"|(^|\.)norm[^.]*\."  # norms and the adaLN modulation linears inside norm1 / norm2 / norm_out
    r"|\.bias$"
)


def is_precision_sensitive(name: str) -> bool:
    """True for the tensors "quality" mode keeps out of fp8 (names in the original checkpoint naming)."""
    return bool(_SENSITIVE.search(name))


def storage_rule(
    mode: str, storage_dtype: torch.dtype | None, compute_dtype: torch.dtype
) -> Callable[[str], torch.dtype]:
    """name -> the dtype that tensor is held in, for a transformer loaded with `storage_dtype` in `mode`."""
    if mode not in FP8_MODES:
        raise ValueError(f"fp8_mode must be one of {FP8_MODES}, got {mode!r}")
    if storage_dtype is None or storage_dtype not in FP8_DTYPES:
        held = storage_dtype or compute_dtype
        return lambda name: held
    if mode == "reference exact":
        return lambda name: storage_dtype
    return lambda name: compute_dtype if is_precision_sensitive(name) else storage_dtype


# -- scaled fp8 -------------------------------------------------------------------------------------------------------


def fp8_max(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).max)


def quantize_scaled(
    weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 tensor, fp32 scalar scale) with weight ≈ fp8.float() * scale; amax maps to the fp8 maximum."""
    amax = weight.detach().abs().max().float().clamp(min=1e-12)
    scale = amax / fp8_max(dtype)
    quantized = (weight.float() / scale).clamp(-fp8_max(dtype), fp8_max(dtype)).to(dtype)
    return quantized, scale.reshape(())


def dequantize(quantized: torch.Tensor, scale: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if scale is None:
        return quantized.to(dtype)
    return (quantized.float() * scale.float()).to(dtype)


def fp8_matmul_supported(device: torch.device | str) -> bool:
    """torch._scaled_mm needs a CUDA GPU of compute capability ≥ 8.9 (Ada / Hopper)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


class ScaledLinear(cast_ops.Linear):
    """Linear whose weight may be fp8 with a per-tensor `weight_scale` (a non-persistent buffer; None = plain)."""

    fp8_matmul = False  # set on the class of a namespace built with fp8_matmul=True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = getattr(self, "weight_scale", None)
        if scale is None:
            return super().forward(x)
        if self.fp8_matmul and fp8_matmul_supported(x.device) and x.shape[-1] % 16 == 0 and self.out_features % 16 == 0:
            return self._scaled_mm_forward(x, scale)
        weight = dequantize(self.weight, scale, x.dtype)  # placed by models/offload.py, never moved here
        return F.linear(x, weight, cast_ops.cast_like(self.bias, x))

    def _scaled_mm_forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        # Changes output: the activations are rounded to e4m3 with their own per-tensor scale.
        flat = x.reshape(-1, x.shape[-1])
        x_scale = (flat.abs().max().float().clamp(min=1e-12) / fp8_max(torch.float8_e4m3fn)).reshape(())
        x8 = (flat.float() / x_scale).to(torch.float8_e4m3fn)
        w8 = self.weight.to(torch.float8_e4m3fn)
        out = torch._scaled_mm(x8, w8.t(), scale_a=x_scale, scale_b=scale.float(), out_dtype=x.dtype)
        if self.bias is not None:
            out = out + cast_ops.cast_like(self.bias, out)
        return out.reshape(*x.shape[:-1], self.out_features)


def scaled_ops(fp8_matmul: bool = False) -> SimpleNamespace:
    """The `cast` namespace with Linear replaced by ScaledLinear (and optionally the fp8-matmul path on)."""
    linear = ScaledLinear if not fp8_matmul else type("ScaledMatmulLinear", (ScaledLinear,), {"fp8_matmul": True})
    return SimpleNamespace(**{**vars(cast_ops.cast), "Linear": linear})


class ScaledLoader:
    """Hooks for `load_state_streaming` that turn each scaled Linear weight into (fp8, scale) right after it is
    assigned: the loader reads that one tensor in the compute dtype, then this replaces it — at most one extra
    full-precision tensor exists at any time."""

    def __init__(self, model: torch.nn.Module, rule: Callable[[str], torch.dtype], fp8_dtype, compute_dtype):
        self.linears = {
            f"{name}.weight": module for name, module in model.named_modules() if isinstance(module, ScaledLinear)
        }
        self.rule, self.fp8_dtype, self.compute_dtype = rule, fp8_dtype, compute_dtype
        self.pending: str | None = None

    def keep_dtype(self, name: str) -> torch.dtype:
        self.flush()
        held = self.rule(name)
        if held == self.fp8_dtype and name in self.linears:
            self.pending = name
            return self.compute_dtype  # read full precision; quantized with a scale in flush()
        return held

    def flush(self) -> None:
        if self.pending is None:
            return
        module = self.linears[self.pending]
        self.pending = None
        if module.weight.is_meta:
            return
        quantized, scale = quantize_scaled(module.weight.data, self.fp8_dtype)
        module._parameters["weight"] = torch.nn.Parameter(quantized, requires_grad=False)
        module.register_buffer("weight_scale", scale.to(module.weight.device), persistent=False)


def allocated_bytes(module: torch.nn.Module) -> int:
    """Bytes actually held by a module's parameters and buffers (persistent or not), each storage counted once."""
    seen, total = set(), 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_meta:
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.device)
        if key in seen:
            continue
        seen.add(key)
        total += tensor.numel() * tensor.element_size()
    return total
