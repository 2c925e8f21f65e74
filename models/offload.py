"""Where weights live while a component runs: all resident, whole-component offload, or transformer block swap.

Applied from outside the architecture (docs/memory.md, memory modes; docs/memory.md, ComfyUI models): a module's tensors
have a "home" copy on the offload device (pinned host memory when the target is a CUDA GPU); running on the target
device means pointing the parameters at a device copy, and offloading means pointing them back at home — weights never
change, so nothing is copied back. `OffloadStats` counts every move so tests on a CPU-only machine (where the two
placements are two CPU copies) can check the mechanism really ran.

Modes (the loader's `memory_mode`):
- "gpu": everything loaded on the device; nothing moves.
- "model_cpu_offload": each component is copied to the device only while it runs (`on_device`).
- "sequential": block swap — `resident_blocks` transformer blocks stay on the device, the others are copied in just
  before their forward, the next one prefetched on a side CUDA stream, and dropped right after (`BlockSwap`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from .defaults import MEMORY_MODES  # noqa: F401 (re-exported)


@dataclass
class OffloadStats:
    module_loads: int = 0  # whole components copied to the device (model_cpu_offload)
    block_loads: int = 0  # streamed transformer blocks copied to the device (on demand or prefetched)
    block_evictions: int = 0  # streamed blocks dropped from the device after their forward
    prefetches: int = 0  # block loads started ahead of need (side stream on CUDA)
    prefetch_hits: int = 0  # forwards that found their block already prefetched
    bytes_moved: int = 0


def _tensor_slots(module: nn.Module):
    """(owner, attribute, is_parameter) for every parameter and buffer of `module`."""
    for owner in module.modules():
        for attr, tensor in owner._parameters.items():
            if tensor is not None:
                yield owner, attr, True
        for attr, tensor in owner._buffers.items():
            if tensor is not None:
                yield owner, attr, False


def trim_heap() -> None:
    """Hand freed heap pages back to the OS (glibc keeps freed blocks below its mmap threshold, up to 32 MB each, in
    the process: without this the pageable originals of pinned weights would stay resident beside their pinned
    copies). A no-op off glibc."""
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


def _pinned_bytes(size: int) -> torch.Tensor:
    return torch.empty(size, dtype=torch.uint8, pin_memory=True)


class PinnedArena:
    """Pinned host memory handed out in exact pieces.

    torch's pinned-memory allocator rounds every request up to a power of two, so pinning tensor by tensor costs up to
    2x (a 37.7 MB fp8 weight of the 12B takes 64 MB: the whole model ~1.7x, measured on an H200; docs/gpu.md). The
    arena asks only for chunks whose size IS a power of two (at least the largest tensor) and packs the tensors into
    them first-fit, so the waste is the unfilled room of the chunks, and pinning peaks at the weights plus one chunk.
    `allocate(nbytes) -> uint8 tensor` is injectable: a CPU test proves the packing and the peak."""

    ALIGN = 512  # bytes: every piece starts aligned for any dtype and for DMA

    def __init__(self, largest_bytes: int, allocate: Callable[[int], torch.Tensor] = _pinned_bytes):
        self.chunk_bytes = 1 << max(20, (self._aligned(largest_bytes) - 1).bit_length())  # >= 1 MiB, power of two
        self.allocate, self.chunks = allocate, []  # [uint8 chunk, bytes used]

    @classmethod
    def _aligned(cls, nbytes: int) -> int:
        return -(-max(nbytes, 1) // cls.ALIGN) * cls.ALIGN

    @classmethod
    def for_modules(cls, modules, allocate: Callable[[int], torch.Tensor] = _pinned_bytes) -> "PinnedArena":
        largest = max(
            (t.numel() * t.element_size() for m in modules for t in (*m.parameters(), *m.buffers())), default=1
        )
        return cls(largest, allocate)

    @property
    def allocated_bytes(self) -> int:
        return sum(chunk.numel() for chunk, _ in self.chunks)

    def place(self, tensor: torch.Tensor) -> torch.Tensor:
        """A copy of `tensor` in the arena (same dtype, shape and values)."""
        nbytes = tensor.numel() * tensor.element_size()
        size = self._aligned(nbytes)
        if size > self.chunk_bytes:
            raise ValueError(f"tensor of {nbytes} bytes is larger than the arena's {self.chunk_bytes}-byte chunks")
        entry = next((e for e in self.chunks if e[0].numel() - e[1] >= size), None)
        if entry is None:
            trim_heap()  # the originals copied so far go back to the OS before the next chunk is locked
            entry = [self.allocate(self.chunk_bytes), 0]
            self.chunks.append(entry)
        piece = entry[0][entry[1] : entry[1] + nbytes]
        entry[1] += size
        if tensor.dtype != torch.uint8:
            piece = piece.view(tensor.dtype)
        piece = piece.view(tensor.shape)
        piece.copy_(tensor)
        return piece


class Placement:
    """One module's home tensors (offload device) and, while loaded, its device copies."""

    def __init__(
        self,
        module: nn.Module,
        device: torch.device,
        stats: OffloadStats,
        pin_memory: bool = False,
        pin: Callable[[torch.Tensor], torch.Tensor] | None = None,
        arena: PinnedArena | None = None,
    ):
        self.module, self.device, self.stats = module, torch.device(device), stats
        self.slots = list(_tensor_slots(module))
        self.home = []
        pinning = pin_memory and (self.device.type == "cuda" or pin is not None or arena is not None)
        for slot in self.slots:
            tensor = getattr(slot[0], slot[1])
            if pinning and not tensor.is_pinned():
                # Tensor by tensor, each original released as its pinned copy takes its place: the host holds the
                # weights plus ONE tensor (and one arena chunk), never two copies (docs/reliability.md, pinning).
                if pin is None:
                    arena = arena if arena is not None else PinnedArena.for_modules([module])
                    pin = arena.place
                tensor = pin(tensor.detach())
                self._point_at([tensor], [slot])
            self.home.append(tensor)
        self.loaded = False
        self.ready: torch.cuda.Event | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.home)

    def _point_at(self, tensors, slots=None) -> None:
        for (owner, attr, is_parameter), tensor in zip(self.slots if slots is None else slots, tensors):
            if is_parameter:
                owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
            else:
                owner._buffers[attr] = tensor

    def load(self, stream: torch.cuda.Stream | None = None) -> None:
        """Copy to the device (asynchronously on `stream` when given); a real copy even when both are the CPU."""
        if self.loaded:
            return
        context = torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()
        with context:
            copies = [t.to(self.device, non_blocking=True, copy=True) for t in self.home]
            if stream is not None:
                self.ready = torch.cuda.Event()
                self.ready.record(stream)
        self._point_at(copies)
        self.loaded = True
        self.stats.bytes_moved += self.nbytes

    def wait(self) -> None:
        """Make the current stream wait for an asynchronous load; keep the copies alive for it."""
        if self.ready is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(self.ready)
            for owner, attr, _ in self.slots:
                getattr(owner, attr).record_stream(current)
            self.ready = None

    def evict(self) -> None:
        if self.loaded:
            self._point_at(self.home)
            self.loaded = False
            self.ready = None


@contextlib.contextmanager
def on_device(module: nn.Module, device, stats: OffloadStats | None = None, pin_memory: bool = True):
    """model_cpu_offload: `module` runs on `device` inside the block and is back on its home device after it."""
    stats = stats if stats is not None else OffloadStats()
    placement = Placement(module, device, stats, pin_memory)
    placement.load()
    stats.module_loads += 1
    try:
        yield module
    finally:
        placement.evict()


class BlockSwap:
    """Sequential offload of `model.transformer_blocks`: the first `resident_blocks` stay on `device`, the rest are
    streamed in one at a time with the next one prefetched. Use as a context manager around the sampling loop: on
    entry the non-block weights and the resident blocks go to the device, on exit everything returns home."""

    def __init__(
        self,
        model: nn.Module,
        device,
        resident_blocks: int = 0,
        stats: OffloadStats | None = None,
        prefetch: bool = True,
        pin_memory: bool = True,
    ):
        self.model, self.device = model, torch.device(device)
        self.stats = stats if stats is not None else OffloadStats()
        blocks = model.transformer_blocks
        self.resident_blocks = max(0, min(int(resident_blocks), len(blocks)))
        self.prefetch = prefetch
        self.stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" and prefetch else None
        # one arena for all blocks: chunks are filled across block boundaries
        arena = PinnedArena.for_modules(blocks) if pin_memory and self.device.type == "cuda" else None
        self.blocks = [Placement(b, self.device, self.stats, pin_memory, arena=arena) for b in blocks]
        block_ids = {id(m) for b in blocks for m in b.modules()}
        rest = nn.Module()  # every tensor outside the blocks (embeddings, norms, projections): always resident
        rest.parts = nn.ModuleList(m for m in model.children() if id(m) not in block_ids and m is not blocks)
        self.rest = Placement(rest, self.device, self.stats, pin_memory=False)
        self.streamed = list(range(self.resident_blocks, len(blocks)))
        self.handles = []

    @property
    def streamed_bytes(self) -> int:
        return sum(self.blocks[i].nbytes for i in self.streamed)

    def __enter__(self) -> "BlockSwap":
        self.rest.load()
        for i in range(self.resident_blocks):
            self.blocks[i].load()
        for i in self.streamed:
            block = self.model.transformer_blocks[i]
            self.handles.append(block.register_forward_pre_hook(lambda module, args, i=i: self._before(i)))
            self.handles.append(block.register_forward_hook(lambda module, args, out, i=i: self._after(i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        for placement in self.blocks:
            placement.evict()
        self.rest.evict()

    def _before(self, i: int) -> None:
        placement = self.blocks[i]
        if placement.loaded:
            self.stats.prefetch_hits += 1
        else:
            placement.load()
            self.stats.block_loads += 1
        placement.wait()
        position = self.streamed.index(i)
        if self.prefetch and position + 1 < len(self.streamed):
            upcoming = self.blocks[self.streamed[position + 1]]
            if not upcoming.loaded:
                upcoming.load(self.stream)
                self.stats.block_loads += 1
                self.stats.prefetches += 1

    def _after(self, i: int) -> None:
        self.blocks[i].evict()
        self.stats.block_evictions += 1


def transformer_placement(
    model: nn.Module, mode: str, device, resident_blocks: int = 0, stats: OffloadStats | None = None
):
    """The context manager that puts the transformer where `mode` wants it for one sampling run."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory mode must be one of {MEMORY_MODES}, got {mode!r}")
    if mode == "gpu":
        return contextlib.nullcontext(model)
    if mode == "model_cpu_offload":
        return on_device(model, device, stats)
    return BlockSwap(model, device, resident_blocks, stats)
