"""Memory model (models/memory.py): exact weight bytes for every tiny variant and storage, plans for full sizes."""

import pytest
import torch

from models.loading.transformer import load_transformer
from models.memory import (
    GIB,
    NotEnoughMemoryError,
    check_ram,
    full_size_model_bytes,
    full_size_transformer,
    module_weight_bytes,
    plan_memory,
    transformer_weight_bytes,
    vae_weight_bytes,
)
from models.quant import allocated_bytes
from models.vae import load_vae

STORAGES = [  # (compute dtype, storage dtype, fp8 mode)
    (torch.bfloat16, None, "quality"),
    (torch.float16, None, "quality"),
    (torch.float32, None, "quality"),
    (torch.bfloat16, torch.float8_e4m3fn, "reference exact"),
    (torch.bfloat16, torch.float8_e4m3fn, "quality"),
    (torch.bfloat16, torch.float8_e5m2, "quality"),
    (torch.float32, torch.float8_e4m3fn, "scaled"),
]


def _tiny_names(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith("tiny-"))


def test_weight_bytes_equal_allocated_bytes_for_every_tiny_variant_and_storage(tiny_root):
    names = _tiny_names(tiny_root)
    assert len(names) == 24  # 6 V5 + 8 V5.1 + 8 V5.1 diffusers folders + 2 single files
    checked = 0
    for name in names:
        for dtype, storage, mode in STORAGES:
            model = load_transformer(tiny_root / name, dtype=dtype, storage_dtype=storage, fp8_mode=mode)
            predicted = transformer_weight_bytes(tiny_root / name, dtype, storage, mode)
            assert predicted == allocated_bytes(model), (name, dtype, storage, mode)
            assert module_weight_bytes(model, dtype, storage, mode) == predicted
            checked += 1
    assert checked == 24 * len(STORAGES)


@pytest.mark.parametrize("name", ["tiny-EasyAnimateV5-12b-zh", "tiny-EasyAnimateV5.1-7b-zh-InP"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_vae_weight_bytes_equal_allocated_bytes(tiny_root, name, dtype):
    assert vae_weight_bytes(tiny_root / name, dtype) == allocated_bytes(load_vae(tiny_root / name, dtype=dtype))


def test_plain_loader_allocates_what_the_memory_model_predicts(tiny_root):
    path = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    model = load_transformer(path, dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
    assert allocated_bytes(model) == transformer_weight_bytes(
        path, torch.bfloat16, torch.float8_e4m3fn, "reference exact"
    )


def test_full_size_12b_on_the_meta_device_has_the_released_parameter_count():
    params = sum(t.numel() for t in full_size_transformer("v5.1", "12b").state_dict().values())
    assert 11.0e9 < params < 12.5e9  # "12B"
    assert module_weight_bytes(full_size_transformer("v5.1", "12b"), torch.bfloat16) == 2 * params


def test_full_size_12b_at_384x672x49_under_24gb_plans_fp8_with_offload():
    plan = plan_memory(full_size_model_bytes("v5.1", "12b"), 672, 384, 49, 24 * GIB)
    assert plan.fits
    assert plan.storage.startswith("fp8")
    assert plan.mode in ("model_cpu_offload", "sequential")
    assert "fp8" in plan.summary() and plan.mode in plan.summary()


def test_full_size_12b_bf16_does_not_fit_24gb_even_alone():
    model = full_size_model_bytes("v5.1", "12b")
    assert model.transformer["bf16"] > 20 * GIB
    plan = plan_memory(model, 672, 384, 49, 24 * GIB, storages=("bf16",), modes=("gpu", "model_cpu_offload"))
    assert not plan.fits


def test_plan_prefers_all_resident_when_the_budget_is_large():
    plan = plan_memory(full_size_model_bytes("v5.1", "7b"), 672, 384, 49, 80 * GIB)
    assert (plan.mode, plan.storage) == ("gpu", "bf16")


def test_block_swap_keeps_as_many_blocks_as_fit_and_its_peak_fits():
    model = full_size_model_bytes("v5.1", "12b")
    plan = plan_memory(model, 1008, 576, 49, 16 * GIB)
    assert plan.mode == "sequential" and plan.storage.startswith("fp8") and plan.fits
    assert 0 < plan.resident_blocks < model.num_blocks
    assert plan.peak_vram <= 16 * GIB


def test_ram_preflight_names_the_need_the_free_ram_and_the_path(tmp_path):
    with pytest.raises(NotEnoughMemoryError) as error:
        check_ram(30 * GIB, "the transformer", tmp_path, "Choose weight_storage fp8_e4m3fn.", available=16 * GIB)
    message = str(error.value)
    assert "30.0 GB" in message and "16.0 GB" in message and str(tmp_path) in message and "fp8_e4m3fn" in message
    check_ram(10 * GIB, "the transformer", tmp_path, "", available=16 * GIB)  # fits: no error


def test_the_plan_reserves_the_vaes_own_estimate_at_its_smallest_tile():
    """One VAE memory figure: the plan's decode term is the VAE tile planner's estimate (decode factor 9 x the last up
    block's 256 channels x (4 + 2) frames x the smallest 128 px tile, bf16) — hand computation."""
    from models.memory import vae_decode_bytes
    from models.vae import VAE, VAEConfig

    assert vae_decode_bytes(672, 384, torch.bfloat16, "v5.1") == 9 * 256 * 6 * 128 * 128 * 2
    assert vae_decode_bytes(64, 96, torch.float32, "v5") == 9 * 256 * 6 * 96 * 64 * 4  # a frame below one tile
    with torch.device("meta"):  # the planner never picks a smaller tile than the one the plan reserves for
        vae = VAE(VAEConfig())
    assert vae.auto_tile_size(2048, 2048, memory_budget=1, element_size=2) == 128
