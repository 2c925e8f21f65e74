"""The CUDA-only paths, run on a real GPU and skipped only where no CUDA device exists: attention backends against
SDPA, pinned host memory of block swap, prefetch overlap, out-of-memory and interrupt recovery in the sampler node.
docs/gpu.md explains the tolerances."""

import gc
import importlib
import threading

import pytest
import torch

from models import attention as attn
from models.offload import BlockSwap, OffloadStats, Placement
from models.transformer import EasyAnimateTransformer, TransformerParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
MIB = 1024**2
MODEL = "tiny-EasyAnimateV5.1-12b-zh"


def _qkv(tokens=4096, heads=8, dtype=torch.bfloat16, seed=0):
    g = torch.Generator(CUDA).manual_seed(seed)
    return [torch.randn(2, heads, tokens, 64, generator=g, device=CUDA).to(dtype) for _ in range(3)]


def _exact(q, k, v):
    return torch.softmax((q.float() @ k.float().transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1) @ v.float()


def test_sdpa_on_cuda_is_attention_within_bf16_rounding():
    q, k, v = _qkv()
    error = (attn.sdpa(q, k, v).float() - _exact(q, k, v)).abs().max()
    assert error < 2e-2


def test_flash_attn_is_within_twice_the_error_of_sdpa():
    pytest.importorskip("flash_attn", reason="flash-attn is not installed (optional backend)")
    q, k, v = _qkv()
    exact = _exact(q, k, v)
    sdpa_error = (attn.sdpa(q, k, v).float() - exact).abs().max()
    flash_error = (attn.flash(q, k, v).float() - exact).abs().max()
    assert flash_error <= 2 * sdpa_error + 1e-5  # flash-attn's own acceptance rule against the fp32 reference


def test_sage_attention_keeps_cosine_similarity_with_sdpa():
    pytest.importorskip("sageattention", reason="SageAttention is not installed (optional backend)")
    q, k, v = _qkv()
    reference, sage = attn.sdpa(q, k, v).float(), attn.sage(q, k, v).float()
    cosine = torch.nn.functional.cosine_similarity(sage.flatten(), reference.flatten(), dim=0)
    relative_l1 = (sage - reference).abs().sum() / reference.abs().sum()
    assert cosine > 0.99 and relative_l1 < 0.1  # int8 Q/K: close, not equal (docs/gpu.md)


# -- block swap on a real GPU -------------------------------------------------------------------------------------


def _rss() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _full_width_model(blocks: int) -> EasyAnimateTransformer:
    params = TransformerParams(
        in_channels=16,
        num_layers=blocks,
        mmdit_layers=blocks,
        text_embed_dim=3584,
        text_embed_dim_t5=None,
        add_norm_text_encoder=True,
    )  # 48 heads x 64 = 3072 wide
    torch.manual_seed(0)
    with torch.device("meta"):
        model = EasyAnimateTransformer(params)
    model.to_empty(device="cpu")
    for tensor in model.parameters():
        tensor.data = torch.randn_like(tensor, dtype=torch.bfloat16) * 0.02
    return model.eval().requires_grad_(False)


def test_block_swap_pins_home_weights_one_block_at_a_time_without_keeping_both_copies():
    model = _full_width_model(4)
    block_bytes = sum(p.numel() * p.element_size() for p in model.transformer_blocks[0].parameters())
    torch.zeros(1).pin_memory()  # CUDA context and the pinned allocator exist before the measurement
    torch.cuda.synchronize()
    gc.collect()
    before, peak, stop = _rss(), [_rss()], threading.Event()

    def sample():
        while not stop.wait(0.002):
            peak[0] = max(peak[0], _rss())

    sampler = threading.Thread(target=sample)
    sampler.start()
    swap = BlockSwap(model, CUDA, resident_blocks=1)  # pins blocks 1..3 (and 0) in host memory
    stop.set()
    sampler.join()
    after = _rss()
    assert all(p.is_pinned() for b in model.transformer_blocks for p in b.parameters())
    assert peak[0] - before <= 1.25 * block_bytes + 64 * MIB  # one block's pinned copy beside its original
    assert after - before <= 0.25 * block_bytes + 64 * MIB  # originals released: pinned replaces, not adds
    del swap


def test_prefetch_copy_is_hidden_behind_the_previous_blocks_compute():
    model = _full_width_model(4)
    loads, computes = [], {}
    original_load = Placement.load

    def timed_load(self, stream=None):
        if stream is None or self.loaded:
            return original_load(self, stream)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record(stream)
        original_load(self, stream)
        end.record(stream)
        loads.append((start, end))

    latents = torch.randn(2, 16, 13, 48, 84, device=CUDA, dtype=torch.bfloat16)  # 384x672x49, CFG batch
    text = torch.randn(2, 256, 3584, device=CUDA, dtype=torch.bfloat16)
    stats = OffloadStats()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Placement, "load", timed_load)
        with BlockSwap(model, CUDA, resident_blocks=0, stats=stats), torch.inference_mode():
            for i, block in enumerate(model.transformer_blocks):
                # hooks return None (a pre-hook's return value would replace the block's arguments)
                block.register_forward_pre_hook(lambda m, a, i=i: computes.setdefault(i, [_event()]) and None)
                block.register_forward_hook(lambda m, a, o, i=i: computes[i].append(_event()))
            model(latents, torch.tensor([500.0, 500.0], device=CUDA), text)
            torch.cuda.synchronize()
    assert stats.prefetches == 3 and len(loads) == 3
    origin = computes[0][0]
    ms = [(origin.elapsed_time(start), origin.elapsed_time(end)) for start, end in computes.values()]
    copy_ms = hidden_ms = 0.0
    for copy_start, copy_end in loads:  # time of each side-stream copy that some block's compute covers
        # From the first compute on: before it, the first prefetch queues behind block 0's on-demand load on the one
        # copy engine, with nothing yet to hide behind (on an H200 that queueing was one block copy of the three).
        start, end = max(0.0, origin.elapsed_time(copy_start)), origin.elapsed_time(copy_end)
        copy_ms += max(0.0, end - start)
        hidden_ms += sum(max(0.0, min(end, c_end) - max(start, c_start)) for c_start, c_end in ms)
    assert copy_ms > 0
    print(f"prefetch: {hidden_ms:.2f} of {copy_ms:.2f} ms of copies hidden behind compute")
    assert hidden_ms / copy_ms > 0.8


def _event():
    event = torch.cuda.Event(enable_timing=True)
    event.record()
    return event


# -- the sampler node on CUDA ------------------------------------------------------------------------------------


def _node_setup(pack, tiny_root, monkeypatch):
    sampler = importlib.import_module(f"{pack.__name__}.nodes.sampler")
    components = importlib.import_module(f"{pack.__name__}.models.components")
    text = importlib.import_module(f"{pack.__name__}.models.text")
    monkeypatch.setattr(sampler, "torch_device", lambda: CUDA)
    model = components.open_model(tiny_root / MODEL, "bf16", memory_mode="gpu")
    g = torch.Generator().manual_seed(0)
    hidden, mask = torch.randn(1, 8, 64, generator=g), torch.ones(1, 8, dtype=torch.long)
    embeddings = text.PromptEmbeddings(
        "v5.1", ("qwen",), (hidden,), (hidden * 0.5,), (mask,), (mask,), ("a",), ("",), "test"
    )
    node = sampler.EasyAnimateVideoSampler()
    return sampler, node, model, embeddings


def _sample(node, model, embeddings, width, height, frames, steps=2):
    return node.sample(model, embeddings, width, height, frames, steps, 6.0, 0, "Flow", 0.0, 0)


def test_out_of_memory_in_the_sampler_names_the_fix_and_frees_vram(pack, tiny_root, monkeypatch):
    _, node, model, embeddings = _node_setup(pack, tiny_root, monkeypatch)
    _sample(node, model, embeddings, 64, 64, 5)  # weights now resident: the baseline
    gc.collect()
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    total = torch.cuda.get_device_properties(CUDA).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, (resident + 1024 * MIB) / total))
    try:
        with pytest.raises(RuntimeError, match="ran out of GPU memory") as raised:
            _sample(node, model, embeddings, 2048, 2048, 253, steps=1)  # ~1 M tokens: far above 1 GiB
        assert "memory_mode" in str(raised.value) and "freed" in str(raised.value)
        # while ComfyUI still holds the error: nothing of the failed step is allocated or cached
        assert torch.cuda.memory_allocated() <= resident + MIB
        assert torch.cuda.memory_reserved() <= resident + 256 * MIB
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)


def test_interrupt_mid_step_frees_vram(pack, tiny_root, monkeypatch):
    sampler, node, model, embeddings = _node_setup(pack, tiny_root, monkeypatch)
    _sample(node, model, embeddings, 64, 64, 5)
    gc.collect()
    torch.cuda.empty_cache()
    resident = torch.cuda.memory_allocated()
    calls = []

    class Interrupted(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) == 3:  # step 1: before the step, before block 0, before block 1 -> mid-step
            raise Interrupted()

    monkeypatch.setattr(sampler, "check_interrupt", interrupt)
    with pytest.raises(Interrupted):
        _sample(node, model, embeddings, 1024, 1024, 49)
    gc.collect()
    assert torch.cuda.memory_allocated() <= resident + MIB
