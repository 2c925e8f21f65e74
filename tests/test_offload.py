"""Offload modes (models/offload.py) give the `gpu` mode's output exactly, and really move weights.

On this CPU-only machine the "device" is a second CPU placement: each load is a real copy (a different storage), so
the counters and storage pointers below prove blocks were streamed in, prefetched and dropped.
"""

import pytest
import torch

from models import pipeline
from models.loading.detect import detect
from models.loading.transformer import load_transformer
from models.offload import BlockSwap, OffloadStats, PinnedArena, Placement, on_device, transformer_placement

MODEL = "tiny-EasyAnimateV5.1-7b-zh"  # 4 blocks (2 MMDiT + 2 shared-weight)
WIDTH, HEIGHT, FRAMES, STEPS, CFG = 32, 32, 5, 3, 6.0
DEVICE = torch.device("cpu")


def _request():
    return pipeline.Request(
        width=WIDTH, height=HEIGHT, frames=FRAMES, steps=STEPS, guidance_scale=CFG, seed=5, scheduler="Flow"
    )


def _text():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(2, 8, 64, generator=g),)  # [negative; positive], Qwen2-VL width 64


def _generate(model, variant):
    return pipeline.generate(model, None, _text(), _request(), variant=variant, dtype=torch.float32)


def _load(tiny_root, storage):
    path = tiny_root / MODEL
    if storage is None:
        return load_transformer(path, dtype=torch.float32)
    return load_transformer(path, dtype=torch.float32, storage_dtype=storage, fp8_mode="reference exact")


@pytest.mark.parametrize("storage", [None, torch.float8_e4m3fn], ids=["fp32", "fp8"])
@pytest.mark.parametrize(
    "mode,resident", [("model_cpu_offload", 0), ("sequential", 0), ("sequential", 1), ("sequential", 4)]
)
def test_offload_mode_output_is_identical_to_gpu_mode(tiny_root, storage, mode, resident):
    variant = detect(tiny_root / MODEL).variant
    model = _load(tiny_root, storage)
    reference = _generate(model, variant)
    stats = OffloadStats()
    with transformer_placement(model, mode, DEVICE, resident, stats):
        offloaded = _generate(model, variant)
    assert torch.equal(offloaded, reference)
    if mode == "model_cpu_offload":
        assert stats.module_loads == 1
    else:
        assert stats.block_loads == STEPS * (4 - resident)


def test_block_swap_streams_prefetches_and_evicts_every_non_resident_block(tiny_root):
    model = _load(tiny_root, None)
    blocks = model.transformer_blocks
    home = [b.attn1.to_q.weight.data_ptr() for b in blocks]
    seen = {i: [] for i in range(len(blocks))}
    stats = OffloadStats()
    swap = BlockSwap(model, DEVICE, resident_blocks=1, stats=stats)
    with swap:
        for i, block in enumerate(blocks):  # registered after the swap's hooks: sees the weights the block runs with
            block.register_forward_pre_hook(lambda m, a, i=i: seen[i].append(m.attn1.to_q.weight.data_ptr()))
        _generate(model, detect(tiny_root / MODEL).variant)
        streamed_now = [blocks[i].attn1.to_q.weight.data_ptr() for i in (1, 2, 3)]
    calls = STEPS  # one transformer call per step (CFG batched)
    assert stats.block_loads == 3 * calls  # blocks 1..3 each pass
    assert stats.prefetches == 2 * calls  # blocks 2 and 3 prefetched while the previous one runs
    assert stats.prefetch_hits == 2 * calls
    assert stats.block_evictions == 3 * calls
    assert stats.bytes_moved == swap.rest.nbytes + sum(p.nbytes for p in swap.blocks[:1]) + calls * swap.streamed_bytes
    for i in (1, 2, 3):  # a fresh device copy each pass, never the home tensor
        assert len(seen[i]) == calls and home[i] not in seen[i]
    assert streamed_now == [home[i] for i in (1, 2, 3)]  # dropped after their forward, inside the session
    assert [b.attn1.to_q.weight.data_ptr() for b in blocks] == home  # everything home after the session


def test_model_offload_runs_on_a_device_copy_and_returns_home(tiny_root):
    model = _load(tiny_root, None)
    home = model.proj_out.weight.data_ptr()
    stats = OffloadStats()
    with on_device(model, DEVICE, stats):
        during = model.proj_out.weight.data_ptr()
    assert during != home
    assert model.proj_out.weight.data_ptr() == home
    assert stats.module_loads == 1
    assert stats.bytes_moved == sum(t.numel() * t.element_size() for t in model.state_dict().values())


# -- pinned arena: pinning costs the weights, not the allocator's power-of-two rounding ----------------------------


def _recording_allocator(sizes):
    def allocate(nbytes):
        sizes.append(nbytes)
        return torch.empty(nbytes, dtype=torch.uint8)  # a CPU stand-in for pinned memory

    return allocate


def test_arena_packs_tensors_into_power_of_two_chunks_and_keeps_values():
    g = torch.Generator().manual_seed(0)
    # the 12B's shapes scaled down: one big feed-forward weight per block, several square ones, vectors, fp8 and bf16
    tensors = [
        torch.randn(96, 384, generator=g).to(torch.bfloat16),
        torch.randn(96, 96, generator=g),
        torch.randn(96, generator=g).to(torch.bfloat16),
        torch.randn(384, 96, generator=g).to(torch.float8_e4m3fn),
        torch.randn(7, generator=g),
    ] * 6
    sizes = []
    arena = PinnedArena(max(t.numel() * t.element_size() for t in tensors), _recording_allocator(sizes))
    placed = [arena.place(t) for t in tensors]
    for original, copy in zip(tensors, placed):
        assert copy.dtype == original.dtype and copy.shape == original.shape
        assert torch.equal(copy.view(torch.uint8), original.view(torch.uint8))  # bit-exact, fp8 included
        base = next(
            c.data_ptr() for c, _ in arena.chunks if c.untyped_storage().data_ptr() == copy.untyped_storage().data_ptr()
        )
        assert (copy.data_ptr() - base) % PinnedArena.ALIGN == 0
    assert all(size & (size - 1) == 0 for size in sizes)  # nothing for the pinned allocator to round up
    weights = sum(t.numel() * t.element_size() for t in tensors)
    # every chunk but the last is filled: the waste is below one chunk (plus alignment of each piece)
    assert arena.allocated_bytes <= weights + arena.chunk_bytes + PinnedArena.ALIGN * len(tensors)
    offsets = sorted((c.data_ptr(), c.data_ptr() + c.numel() * c.element_size()) for c in placed)
    assert all(end <= start for (_, end), (start, _) in zip(offsets, offsets[1:]))  # no two pieces overlap


def test_placement_pins_through_one_arena_shared_by_the_blocks(tiny_root):
    model = _load(tiny_root, None)
    sizes = []
    arena = PinnedArena.for_modules(model.transformer_blocks, _recording_allocator(sizes))
    before = [p.clone() for p in model.transformer_blocks.parameters()]
    for block in model.transformer_blocks:
        Placement(block, "cpu", OffloadStats(), pin_memory=True, arena=arena)
    after = list(model.transformer_blocks.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, after))
    weights = sum(p.numel() * p.element_size() for p in after)
    assert len(sizes) == len(arena.chunks) and arena.allocated_bytes < weights + arena.chunk_bytes + 512 * len(after)
    chunk_storages = {c.untyped_storage().data_ptr() for c, _ in arena.chunks}
    assert all(p.untyped_storage().data_ptr() in chunk_storages for p in after)  # the parameters ARE arena pieces


# -- every tensor a forward needs reaches the device ----------------------------------------------------------------
# The meta device stands in for a GPU: a weight or LoRA tensor that offload left at home (on the CPU) meets a meta
# input and raises MisplacedWeightError, exactly as it would on CUDA, where it used to become a silent per-call copy.


@pytest.mark.parametrize("lora", [None, "delta", "merged"])
@pytest.mark.parametrize("storage", [None, torch.float8_e4m3fn], ids=["fp32", "fp8"])
@pytest.mark.parametrize("mode", ["model_cpu_offload", "sequential"])
def test_offload_puts_every_tensor_of_the_forward_on_the_device(tiny_root, tmp_path, mode, storage, lora):
    from tiny_loras import make_lora

    from models.lora import load_lora_file, loras_attached

    model = _load(tiny_root, storage)
    lora_file = make_lora(tiny_root / MODEL, "kohya", seed=3).save(tmp_path / "lora.safetensors")
    stack = [(load_lora_file(lora_file), 0.8)] if lora else []
    meta = torch.device("meta")
    latents = torch.empty(2, model.params.in_channels, 2, 8, 8, device=meta)
    timestep = torch.full((2,), 500.0, device=meta)
    text = torch.empty(2, 8, model.params.text_embed_dim, device=meta)
    # in the sampler's order (models/lora_model.py LoraModel.placement): LoRAs attached first, then placed
    with loras_attached(model, stack, merge=lora == "merged", log=lambda line: None):
        placement = (
            on_device(model, meta, pin_memory=False) if mode == "model_cpu_offload" else BlockSwap(model, meta, 1)
        )
        with placement, torch.inference_mode():
            out = model(latents, timestep, text)
    assert out.device == meta and out.shape == latents.shape
    assert all(t.device.type == "cpu" for t in (*model.parameters(), *model.buffers()))  # home again afterwards
