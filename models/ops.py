"""Layer classes injected into the architectures (the ComfyUI `operations` pattern).

The transformer and VAE build every parameterised layer from an `ops` namespace instead of `torch.nn` directly, so
storage precision (fp8 for qfloat8) and placement (offload) are decided here, never inside the blocks. The default
namespace, `cast`, casts each weight/bias to the input's dtype at call time: a no-op when they already match, and
an upcast when weights are stored in fp8 and activations run in bf16/fp32. It never moves a weight to another device:
placement is decided by models/offload.py, and a weight on the wrong device is an error (docs/architecture.md,
layering), not a silent host-to-device copy on every call.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from .attention import sdpa


class MisplacedWeightError(RuntimeError):
    """A layer's weight is not on the device its input is on: the module was not placed before it ran."""


def cast_like(param: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """Return `param` in `like`'s dtype (a view-free no-op when it already matches). Raises MisplacedWeightError when
    `param` lives on another device than `like`."""
    if param is None:
        return None
    if param.device != like.device:
        raise MisplacedWeightError(
            f"a {tuple(param.shape)} weight is on {param.device} but the layer's input is on {like.device}: the "
            f"module was not moved to {like.device} before running (models/offload.py places weights). If ComfyUI "
            f"loaded the model only partly, choose memory_mode model_cpu_offload or sequential."
        )
    if param.dtype == like.dtype:
        return param
    return param.to(dtype=like.dtype)


class Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, cast_like(self.weight, x), cast_like(self.bias, x))


class Conv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_like(self.weight, x), cast_like(self.bias, x))


class Conv3d(nn.Conv3d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, cast_like(self.weight, x), cast_like(self.bias, x))


class LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, cast_like(self.weight, x), cast_like(self.bias, x), self.eps)


class GroupNorm(nn.GroupNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, cast_like(self.weight, x), cast_like(self.bias, x), self.eps)


class RMSNorm(nn.Module):
    """Normalise in fp32, cast back to the input dtype, then scale (the V5.1 text-feature norm, docs/faithfulness.md,
    text streams)."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return normed * cast_like(self.weight, normed)


# `attention(q, k, v)` [B, heads, tokens, head_dim]: the backend the transformer calls (models/attention.py)
cast = SimpleNamespace(
    Linear=Linear,
    Conv2d=Conv2d,
    Conv3d=Conv3d,
    LayerNorm=LayerNorm,
    GroupNorm=GroupNorm,
    RMSNorm=RMSNorm,
    attention=sdpa,
)


def resolve(ops: SimpleNamespace | None) -> SimpleNamespace:
    """The namespace a constructor should use: the one given (entries it lacks taken from the default casting
    layers), else the default casting layers."""
    if ops is None:
        return cast
    if all(hasattr(ops, name) for name in vars(cast)):
        return ops
    return SimpleNamespace(**{**vars(cast), **vars(ops)})


# -- LoRA: low-rank deltas added in the forward (docs/lora.md) ---------------------------------------------------------


class LoraLinear:
    """Mixin placed in front of an injected Linear class while LoRAs are attached (models/lora.py swaps the class
    of each targeted layer and back). The base weight is never written:

    - unmerged: y = base(x) + up(down(x)), with `lora_down` [Σrank, in] and `lora_up` [out, Σrank] holding every
      stacked LoRA side by side (strength · alpha / rank folded into `lora_up`), both in the compute dtype, so one
      pair of thin matmuls serves the whole stack and fp8 storage never rounds the delta;
    - merged: `lora_merged_weight` (W + Σ delta, merged in fp32, held in the compute dtype) replaces W in the matmul.
    These are non-persistent buffers, so offload moves them with their block like any other tensor."""

    base_linear: type  # the injected class this one extends

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self._buffers.get("lora_merged_weight")
        if merged is not None:
            return F.linear(x, cast_like(merged, x), cast_like(self.bias, x))
        y = super().forward(x).contiguous()  # a no-op for F.linear's output; the in-place add below needs it
        hidden = F.linear(x, cast_like(self.lora_down, x))  # [..., Σrank]
        flat = y.view(-1, y.shape[-1])
        flat.addmm_(hidden.reshape(-1, hidden.shape[-1]), cast_like(self.lora_up, x).t())  # y += hidden @ upᵀ
        return y


def lora_class(linear_class: type) -> type:
    """The LoRA-aware subclass of an injected Linear class: one per class, built on first use and kept on the class
    itself (so it lives exactly as long as the class, with no table of classes in this module). Keyed by this module's
    mixin: where the package is imported twice (the tests import it under two names), each copy gets its own."""
    if issubclass(linear_class, LoraLinear):
        return linear_class
    made_for = linear_class.__dict__.get("_lora_subclasses")  # this class's own, never a base class's
    if made_for is None:
        made_for = {}
        linear_class._lora_subclasses = made_for
    if LoraLinear not in made_for:
        made_for[LoraLinear] = type(
            f"Lora{linear_class.__name__}", (LoraLinear, linear_class), {"base_linear": linear_class}
        )
    return made_for[LoraLinear]
