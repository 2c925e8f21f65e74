"""torch.compile per transformer block (docs/gpu.md, torch.compile).

Each block's `forward` is replaced by its compiled version, so the block's module call — and the hooks block swap
registers on it (models/offload.py) — stay eager, and the weights a block reads are graph inputs, not constants:
block swap may point them at a fresh device copy every pass and a LoRA-patched Linear is traced like any other
layer. Blocks of one structure share a compiled graph. The first call of each block compiles; its time is reported
once, when every block has run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class CompileReport:
    blocks: int
    backend: str
    first_call_seconds: float = 0.0  # compile + one run of every block, summed
    pending: set = field(default_factory=set)
    log: Callable[[str], None] = print

    def first_call_done(self, index: int, seconds: float) -> None:
        self.pending.discard(index)
        self.first_call_seconds += seconds
        if not self.pending:
            self.log(
                f"EasyAnimate torch.compile ({self.backend}): {self.blocks} transformer blocks compiled in "
                f"{self.first_call_seconds:.1f} s (first call; a new video size compiles again)"
            )


def _synchronize(tensors) -> None:
    for tensor in tensors:
        if isinstance(tensor, torch.Tensor) and tensor.is_cuda:
            torch.cuda.synchronize(tensor.device)
            return


def _timed_first_call(compiled, index: int, report: CompileReport):
    def forward(*args, **kwargs):
        if index not in report.pending:
            return compiled(*args, **kwargs)
        start = time.perf_counter()
        out = compiled(*args, **kwargs)
        _synchronize(out)
        report.first_call_done(index, time.perf_counter() - start)
        return out

    return forward


def compile_blocks(
    model: torch.nn.Module, backend: str = "inductor", mode: str | None = None, log: Callable[[str], None] = print
) -> CompileReport:
    """Compile every `model.transformer_blocks[i].forward` in place; returns the report filled on the first run."""
    blocks = model.transformer_blocks
    report = CompileReport(len(blocks), backend, pending=set(range(len(blocks))), log=log)
    for index, block in enumerate(blocks):
        compiled = torch.compile(block.forward, backend=backend, mode=mode, dynamic=False)
        block.forward = _timed_first_call(compiled, index, report)
    model.compile_report = report
    return report


def uncompile_blocks(model: torch.nn.Module) -> None:
    """Back to the eager class forward."""
    for block in model.transformer_blocks:
        block.__dict__.pop("forward", None)
    model.__dict__.pop("compile_report", None)
