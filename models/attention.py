"""Attention backends: one function `attention(q, k, v) -> out` with q, k, v and out [batch, heads, tokens, head_dim],
non-causal, no mask, softmax scale 1/sqrt(head_dim). The transformer calls the `attention` of its injected `ops`
namespace (models/ops.py), never a backend directly, so a backend (or a wrapper around one, e.g. sequence
parallelism) is chosen by whoever builds the model.

- `sdpa`: PyTorch's scaled_dot_product_attention; PyTorch picks flash / memory-efficient / cuDNN kernels itself.
- `flash`: the flash-attn package (Dao-AILab), when the user installed it; exact up to bf16/fp16 rounding.
- `sage`: the SageAttention package, when installed; quantizes Q and K to int8 — it CHANGES THE OUTPUT slightly
  (docs/gpu.md, attention backends).
Both packages only run fp16/bf16 on CUDA; other calls fall back to `sdpa` (`resolve_attention` says so once).
"""

from __future__ import annotations

import importlib
from typing import Callable

import torch
import torch.nn.functional as F

from .defaults import ATTENTION_CHOICES  # noqa: F401 (re-exported)

HALF_DTYPES = (torch.float16, torch.bfloat16)
# The import name and the pip command of each optional backend.
PACKAGES = {"sage": ("sageattention", "pip install sageattention"), "flash": ("flash_attn", "pip install flash-attn")}

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """[B, H, N, D] x3 -> [B, H, N, D] with PyTorch's fused attention."""
    return F.scaled_dot_product_attention(q, k, v)


def _sage_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn

    return sageattn(q, k, v, tensor_layout="HND", is_causal=False)  # HND = [B, H, N, D], our layout


def _flash_kernel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # it wants [B, N, H, D]
    return out.transpose(1, 2)


def _on_half_cuda(kernel: Attention) -> Attention:
    """The kernel where it can run (CUDA, fp16/bf16), SDPA elsewhere (CPU tests, fp32 precision)."""

    def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if q.is_cuda and q.dtype in HALF_DTYPES:
            return kernel(q, k, v)
        return sdpa(q, k, v)

    attention.__name__ = kernel.__name__.strip("_").replace("_kernel", "")
    return attention


sage = _on_half_cuda(_sage_kernel)
flash = _on_half_cuda(_flash_kernel)
BACKENDS: dict[str, Attention] = {"sdpa": sdpa, "sage": sage, "flash": flash}


def installed(name: str) -> str | None:
    """None when backend `name` can be imported, else why not (a message naming the pip command)."""
    if name == "sdpa":
        return None
    module, command = PACKAGES[name]
    try:
        importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken build (wrong CUDA / torch ABI) raising anything else
        return f"the {module} package is not usable ({type(error).__name__}: {error}); install it with `{command}`"
    return None


def resolve_attention(
    choice: str, device, dtype: torch.dtype, log: Callable[[str], None] = print
) -> tuple[str, Attention]:
    """(backend name, attention function) for the loader's `attention` choice on `device` in `dtype`.

    auto: flash-attn when installed and usable here (exact up to rounding), else SDPA — never sage, which changes
    the output. sage / flash that are not installed or cannot run here fall back to SDPA with one message."""
    if choice not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {choice!r}")
    runs_here = torch.device(device).type == "cuda" and dtype in HALF_DTYPES
    if choice == "auto":
        if runs_here and installed("flash") is None:
            return "flash", flash
        return "sdpa", sdpa
    if choice == "sdpa":
        return "sdpa", sdpa
    problem = installed(choice)
    if problem is None and not runs_here:
        problem = (
            f"{choice} attention runs only in bf16/fp16 on a CUDA GPU (here: {torch.device(device).type}, {dtype})"
        )
    if problem is not None:
        log(f"EasyAnimate attention: {problem}; using PyTorch SDPA instead.")
        return "sdpa", sdpa
    return choice, BACKENDS[choice]


def with_attention(ops, attention: Attention):
    """A copy of the `ops` namespace whose `attention` is `attention` (the layer classes unchanged)."""
    from types import SimpleNamespace

    return SimpleNamespace(**{**vars(ops), "attention": attention})
