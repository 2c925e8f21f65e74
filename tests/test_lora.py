"""Specification of models/lora.py: LoRAs applied as a delta in the injected Linear's forward.

Oracle (tests/tiny_loras.py): the checkpoint file with every LoRA merged by the original formula
`W + m · alpha / rank · up @ down` in the file's own key names, loaded as a plain model. Nothing in the oracle goes
through the pack's LoRA code.
"""

from __future__ import annotations

import pytest
import torch
from tiny_loras import linear_shapes, make_lora, merged_transformer, model_inputs

from models import lora as lora_module
from models.loading.transformer import load_transformer
from models.lora import LoraError, attach_loras, detach_loras, load_lora_file, loras_attached, match_lora
from models.ops import LoraLinear

PARITY_MODELS = [
    "tiny-EasyAnimateV5.1-12b-zh",
    "tiny-EasyAnimateV5.1-7b-zh",
    "tiny-EasyAnimateV5.1-12b-zh-diffusers",
    "tiny-EasyAnimateV5.1-7b-zh-diffusers",
    "tiny-EasyAnimateV5-12b-zh",
]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def forward(model, model_dir) -> torch.Tensor:
    latents, timestep, text, text_t5 = model_inputs(model_dir)
    with torch.no_grad():
        return model(latents, timestep, text, text_t5)


def saved(lora, tmp_path, name):
    return load_lora_file(lora.save(tmp_path / f"{name}.safetensors"))


@pytest.mark.parametrize("file_format", ["kohya", "peft"])
@pytest.mark.parametrize("strengths", [(1.0,), (0.8, -0.6)], ids=["one", "two_opposite_signs"])
@pytest.mark.parametrize("model_name", PARITY_MODELS)
def test_forward_delta_equals_forward_on_weights_merged_by_the_original_formula(
    tiny_root, tmp_path, model_name, strengths, file_format
):
    model_dir = tiny_root / model_name
    loras = [
        make_lora(model_dir, file_format, rank=4 + 2 * i, alpha=[2.0, None][i], seed=i) for i in range(len(strengths))
    ]  # the second one has no alpha
    stack = list(zip(loras, strengths))
    merged = load_transformer(merged_transformer(model_dir, tmp_path / "merged", stack), dtype=torch.float32)
    expected = forward(merged, model_dir)
    model = load_transformer(model_dir, dtype=torch.float32)
    base = forward(model, model_dir)
    with loras_attached(model, [(saved(lo, tmp_path, f"l{i}"), s) for i, (lo, s) in enumerate(stack)]):
        actual = forward(model, model_dir)
    assert relative_error(actual, expected) <= 1e-5
    assert relative_error(base, expected) > 1e-2  # the LoRA really changes the output


def test_every_linear_of_the_transformer_is_a_lora_target(tiny_root, tmp_path):
    """adaLN modulation, time embedding, text projection and proj_out included (V5: both text projections)."""
    for model_name in ("tiny-EasyAnimateV5-7b-zh", "tiny-EasyAnimateV5.1-7b-zh-diffusers"):
        model_dir = tiny_root / model_name
        weights = saved(make_lora(model_dir), tmp_path, model_name)
        model = load_transformer(model_dir, dtype=torch.float32)
        matched = match_lora(weights, model, log=pytest.fail)
        linears = {name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
        assert set(matched) == linears and len(linears) == len(linear_shapes(model_dir))
        for name in ("time_embedding.linear_1", "transformer_blocks.0.norm1.linear", "norm_out.linear", "proj_out"):
            assert name in matched


@pytest.mark.parametrize(
    "underscored,dotted",
    [
        ("transformer_blocks_0_ff_net_0_proj", "transformer_blocks.0.ff.net.0.proj"),
        ("transformer_blocks_1_txt_ff_net_2", "transformer_blocks.1.txt_ff.net.2"),
        ("transformer_blocks_0_attn2_to_out_0", "transformer_blocks.0.attn2.to_out.0"),
        ("time_embedding_linear_2", "time_embedding.linear_2"),
        ("text_proj_1", "text_proj.1"),
        ("norm_out_linear", "norm_out.linear"),
        ("proj_out", "proj_out"),
    ],
)
def test_kohya_names_resolve_greedily_to_module_paths(tiny_root, underscored, dotted):
    model = lora_module.meta_transformer(_detection(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"))
    assert lora_module.resolve_kohya_name(model, underscored) == dotted


def _detection(path):
    from models.loading.detect import detect

    return detect(path)


def test_diffusers_layout_kohya_names_map_to_the_text_stream_attention(tiny_root):
    model = lora_module.meta_transformer(_detection(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"))
    cases = {
        "attn1_add_q_proj": "attn2.to_q",
        "attn1_add_k_proj": "attn2.to_k",
        "attn1_add_v_proj": "attn2.to_v",
        "attn1_to_add_out": "attn2.to_out.0",
        "attn1_to_q": "attn1.to_q",
    }
    for diffusers_name, ours in cases.items():
        entry = lora_module.LoraModule(f"lora_unet__transformer_blocks_1_{diffusers_name}")
        assert lora_module.target_name(entry, model) == f"transformer_blocks.1.{ours}"
        peft = lora_module.LoraModule(
            f"transformer.transformer_blocks.1.{diffusers_name.replace('_', '.', 1)}", file_format="peft"
        )
        assert lora_module.target_name(peft, model) == f"transformer_blocks.1.{ours}"


def test_a_lora_matching_nothing_is_an_error_naming_the_first_unmatched_keys(tiny_root):
    stem = "lora_unet__unet_down_blocks_0_proj"  # an SD-style name
    tensors = {f"{stem}.lora_down.weight": torch.zeros(2, 4), f"{stem}.lora_up.weight": torch.zeros(4, 2)}
    weights = lora_module.parse_lora(tensors, "sdxl.safetensors")
    model = lora_module.meta_transformer(_detection(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"))
    with pytest.raises(LoraError, match=r"sdxl.safetensors.*lora_unet__unet_down_blocks_0_proj"):
        match_lora(weights, model)


def test_a_partial_match_warns_with_counts(tiny_root, tmp_path):
    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    tensors = make_lora(model_dir, only=lambda path: path.startswith("transformer_blocks.0.attn1")).tensors()
    tensors.update(
        {
            "lora_unet__not_a_layer.lora_down.weight": torch.zeros(4, 8),
            "lora_unet__not_a_layer.lora_up.weight": torch.zeros(8, 4),
        }
    )
    messages = []
    model = lora_module.meta_transformer(_detection(model_dir))
    matched = match_lora(lora_module.parse_lora(tensors, "partial"), model, log=messages.append)
    assert len(matched) == 4
    assert len(messages) == 1 and "4 of 5 entries applied; 1 unmatched" in messages[0]
    assert "lora_unet__not_a_layer" in messages[0]


def test_a_lora_for_another_width_is_an_error_naming_the_shape_mismatch(tiny_root, tmp_path):
    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    wider = make_lora(model_dir)
    wider.pairs = {
        path: (torch.zeros(4, 2 * down.shape[1]), torch.zeros(2 * up.shape[0], 4), None)
        for path, (down, up, _) in wider.pairs.items()
    }
    model = lora_module.meta_transformer(_detection(model_dir))
    shapes = r"(?s)proj_out: the model's layer is \[64, 32\].*LoRA's up @ down is \[128, 64\]"
    with pytest.raises(LoraError, match=shapes):
        match_lora(saved(wider, tmp_path, "wide"), model)


def test_a_lora_for_the_other_version_is_an_error_naming_the_text_projection(tiny_root, tmp_path):
    v5_lora = saved(make_lora(tiny_root / "tiny-EasyAnimateV5-12b-zh"), tmp_path, "v5")  # Bert + mT5 projections
    v51_model = lora_module.meta_transformer(_detection(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"))
    with pytest.raises(LoraError, match=r"(?s)another EasyAnimate size or version.*lora_unet__text_proj: a V5 \(Bert"):
        match_lora(v5_lora, v51_model)


def test_a_lora_for_the_other_size_is_an_error_naming_the_missing_blocks(tiny_root, tmp_path):
    lora_7b = saved(make_lora(tiny_root / "tiny-EasyAnimateV5.1-7b-zh"), tmp_path, "7b")  # 4 blocks, last 2 shared
    model_12b = lora_module.meta_transformer(_detection(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"))  # 2 blocks
    with pytest.raises(LoraError, match=r"targets transformer block 2, this model has 2 blocks"):
        match_lora(lora_7b, model_12b)
    lora_12b = saved(make_lora(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"), tmp_path, "12b")
    model_7b = lora_module.meta_transformer(_detection(tiny_root / "tiny-EasyAnimateV5.1-7b-zh"))
    lora_12b.transformer = {k: v for k, v in lora_12b.transformer.items() if "blocks_0" in k or "blocks_1" in k}
    match_lora(lora_12b, model_7b, log=pytest.fail)  # blocks 0-1 are MMDiT in both: a clean match


def test_pickle_lora_files_are_refused(tmp_path):
    path = tmp_path / "style.pt"
    torch.save({"a": torch.zeros(1)}, path)
    with pytest.raises(LoraError, match="only .safetensors"):
        load_lora_file(path)


def test_detaching_restores_every_layer_and_leaves_no_lora_tensor(tiny_root, tmp_path):
    model_dir = tiny_root / "tiny-EasyAnimateV5.1-7b-zh"
    model = load_transformer(model_dir, dtype=torch.float32)
    before = {name: (type(m), sorted(m._buffers)) for name, m in model.named_modules()}
    pointers = {name: t.data_ptr() for name, t in model.state_dict().items()}
    assert attach_loras(model, [(saved(make_lora(model_dir), tmp_path, "a"), 1.0)]) == len(linear_shapes(model_dir))
    assert detach_loras(model) == len(linear_shapes(model_dir))
    assert {name: (type(m), sorted(m._buffers)) for name, m in model.named_modules()} == before
    assert {name: t.data_ptr() for name, t in model.state_dict().items()} == pointers
    assert not any(isinstance(m, LoraLinear) for m in model.modules())


# -- fp8 storage --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fp8_mode", ["reference exact", "quality"])
@pytest.mark.parametrize("model_name", ["tiny-EasyAnimateV5.1-12b-zh", "tiny-EasyAnimateV5.1-7b-zh"])
def test_fp8_storage_error_with_a_lora_is_no_larger_than_without(tiny_root, tmp_path, model_name, fp8_mode):
    """Realistic LoRA size (|ΔW| ≈ 4 % of |W|). References: bf16-stored weights, base and merged (fp32 merge)."""

    model_dir = tiny_root / model_name
    lora = make_lora(model_dir, magnitude=0.2)
    reference_base = forward(load_transformer(model_dir, dtype=torch.float32), model_dir)  # the file is bf16
    merged = merged_transformer(model_dir, tmp_path / "merged", [(lora, 1.0)], dtype=torch.bfloat16)
    reference_lora = forward(load_transformer(merged, dtype=torch.float32), model_dir)
    fp8 = load_transformer(model_dir, dtype=torch.float32, storage_dtype=torch.float8_e4m3fn, fp8_mode=fp8_mode)
    error_without = relative_error(forward(fp8, model_dir), reference_base)
    with loras_attached(fp8, [(saved(lora, tmp_path, "a"), 1.0)]):
        error_with = relative_error(forward(fp8, model_dir), reference_lora)
    assert error_with <= 1.05 * error_without, (error_with, error_without)  # 5 %: the network's own sensitivity


def test_on_an_fp8_layer_the_delta_is_computed_unquantized(tiny_root, tmp_path):
    """Layer level, exact: fp8 layer + LoRA - fp8 layer == x @ (s · alpha/rank · up @ down)ᵀ in fp32."""

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    lora = make_lora(model_dir, rank=4, alpha=2.0)
    fp8 = load_transformer(
        model_dir, dtype=torch.float32, storage_dtype=torch.float8_e4m3fn, fp8_mode="reference exact"
    )
    layer = fp8.get_submodule("transformer_blocks.0.attn1.to_q")
    assert layer.weight.dtype == torch.float8_e4m3fn
    x = torch.randn(3, 7, layer.in_features, generator=torch.Generator().manual_seed(0))
    base = layer(x)
    with loras_attached(fp8, [(saved(lora, tmp_path, "a"), -1.5)]):
        delta = layer(x) - base
    down, up, _ = lora.pairs["transformer_blocks.0.attn1.to_q"]
    expected = x @ (-1.5 * 2.0 / 4 * up @ down).T
    assert relative_error(delta, expected) <= 1e-5


# -- memory modes, merge mode, switching ----------------------------------------------------------------------------

GENERATE_MODEL = "tiny-EasyAnimateV5.1-7b-zh"  # 4 blocks: 2 MMDiT + 2 shared-weight


def _generate(components, stack_model, merge=False):
    """One short sampling run through the sampler's path: transformer() then placement() around generate()."""
    from models import pipeline

    transformer = components.transformer(device="cpu")
    request = pipeline.Request(width=32, height=32, frames=5, steps=2, guidance_scale=6.0, seed=5, scheduler="Flow")
    text = (torch.randn(2, 8, 64, generator=torch.Generator().manual_seed(2)),)
    with stack_model.placement(transformer, torch.device("cpu")):
        return pipeline.generate(transformer, None, text, request, variant=components.variant, dtype=torch.float32)


def _components(tiny_root, memory_mode="gpu", storage=None, resident_blocks=0):
    from models.components import open_model

    components = open_model(tiny_root / GENERATE_MODEL, "fp32", storage, memory_mode, resident_blocks)
    components.release()  # a fresh load for this test (open_model shares objects per settings)
    components.offload_on_cpu = memory_mode != "gpu"  # stream on the CPU as a GPU would
    return components


@pytest.mark.parametrize("storage", [None, "fp8_e4m3fn"], ids=["fp32", "fp8"])
@pytest.mark.parametrize("mode,resident", [("model_cpu_offload", 0), ("sequential", 0), ("sequential", 3)])
def test_every_memory_mode_gives_the_gpu_mode_output_with_loras(tiny_root, tmp_path, storage, mode, resident):
    from models.lora_model import LoraModel

    model_dir = tiny_root / GENERATE_MODEL
    stack = [
        (saved(make_lora(model_dir, seed=1), tmp_path, "a"), 0.7),
        (saved(make_lora(model_dir, "peft", seed=2), tmp_path, "b"), -0.4),
    ]
    gpu = _components(tiny_root, "gpu", storage)
    expected = _generate(gpu, LoraModel(gpu, stack))
    offloaded = _components(tiny_root, mode, storage, resident)
    assert torch.equal(_generate(offloaded, LoraModel(offloaded, stack)), expected)
    assert not torch.equal(_generate(gpu, gpu), expected)  # the LoRAs took part


def test_lora_tensors_stream_with_their_block_under_block_swap(tiny_root, tmp_path):
    from models.offload import BlockSwap

    model_dir = tiny_root / GENERATE_MODEL
    model = load_transformer(model_dir, dtype=torch.float32)
    plain = BlockSwap(model, "cpu").streamed_bytes
    weights = saved(make_lora(model_dir, rank=4), tmp_path, "a")
    with loras_attached(model, [(weights, 1.0)]):
        swap = BlockSwap(model, "cpu")
        with_lora = swap.streamed_bytes
        with swap:
            forward(model, model_dir)
            layer = model.get_submodule("transformer_blocks.3.ff.net.2")
            home = swap.blocks[3].home[_slot(swap.blocks[3], layer, "lora_down")]
            assert layer.lora_down.data_ptr() == home.data_ptr()  # a streamed block is back home after its forward
    block_lora_bytes = sum(e.down.numel() + e.up.numel() for k, e in weights.transformer.items() if "blocks_" in k) * 4
    assert with_lora - plain == block_lora_bytes


def _slot(placement, module, name):
    return next(i for i, (owner, attr, _) in enumerate(placement.slots) if owner is module and attr == name)


def test_merge_mode_matches_the_original_formula_and_leaves_the_stored_weights_untouched(tiny_root, tmp_path):
    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    lora = make_lora(model_dir)
    merged = load_transformer(merged_transformer(model_dir, tmp_path / "m", [(lora, 0.9)]), dtype=torch.float32)
    expected = forward(merged, model_dir)
    model = load_transformer(model_dir, dtype=torch.float32)
    pristine = {k: v.clone() for k, v in model.state_dict().items()}
    with loras_attached(model, [(saved(lora, tmp_path, "a"), 0.9)], merge=True):
        assert "lora_merged_weight" in model.proj_out._buffers and "lora_down" not in model.proj_out._buffers
        actual = forward(model, model_dir)
    assert relative_error(actual, expected) <= 1e-6
    assert all(torch.equal(v, pristine[k]) for k, v in model.state_dict().items())


def test_changing_strength_or_removing_the_lora_never_reloads_and_matches_a_fresh_load(tiny_root, tmp_path):
    from models.lora_model import LoraModel

    model_dir = tiny_root / GENERATE_MODEL
    weights = saved(make_lora(model_dir), tmp_path, "a")
    fresh = {}
    for strength in (1.0, -0.5, None):
        loaded = _components(tiny_root)  # released first: a fresh load each
        fresh[strength] = _generate(loaded, loaded if strength is None else LoraModel(loaded, [(weights, strength)]))
    components = _components(tiny_root)
    transformer = components.transformer()
    for strength in (1.0, -0.5, None, 1.0, None, -0.5):
        stacked = components if strength is None else LoraModel(components, [(weights, strength)])
        assert torch.equal(_generate(components, stacked), fresh[strength])
        assert components.transformer() is transformer  # never reloaded


@pytest.mark.parametrize("mode,resident", [("model_cpu_offload", 0), ("sequential", 1)])
def test_merge_mode_gives_the_gpu_mode_output_in_offload_modes(tiny_root, tmp_path, mode, resident):
    from models.lora_model import LoraModel

    stack = [(saved(make_lora(tiny_root / GENERATE_MODEL, seed=4), tmp_path, "a"), 0.6)]
    gpu = _components(tiny_root, "gpu")
    expected = _generate(gpu, LoraModel(gpu, stack, merge=True))
    offloaded = _components(tiny_root, mode, resident_blocks=resident)
    assert torch.equal(_generate(offloaded, LoraModel(offloaded, stack, merge=True)), expected)
    unmerged = _generate(gpu, LoraModel(gpu, stack))
    assert relative_error(expected, unmerged) <= 1e-5  # merged == delta in the forward, up to fp32 rounding


def test_an_error_during_the_run_leaves_no_lora_attached(tiny_root, tmp_path):
    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    model = load_transformer(model_dir, dtype=torch.float32)
    with pytest.raises(KeyboardInterrupt):
        with loras_attached(model, [(saved(make_lora(model_dir), tmp_path, "a"), 1.0)]):
            assert isinstance(model.proj_out, LoraLinear)
            raise KeyboardInterrupt  # what Cancel looks like from inside the sampler
    assert not any(isinstance(m, LoraLinear) or "lora_down" in m._buffers for m in model.modules())


def test_stacked_lora_models_share_the_loaded_components(tiny_root, tmp_path):
    from models.lora_model import LoraModel, with_lora

    components = _components(tiny_root)
    weights = saved(make_lora(tiny_root / GENERATE_MODEL), tmp_path, "a")
    first = with_lora(components, weights, 0.5)
    second = with_lora(first, weights, -0.25, merge=True)
    assert isinstance(second, LoraModel) and second.base_components is components
    assert [s for _, s in second.loras] == [0.5, -0.25] and second.merge and not first.merge
    assert second.transformer() is components.transformer() and second.variant is components.variant


def test_the_lora_model_attaches_before_the_block_swap_takes_its_inventory(tiny_root, tmp_path):
    """Under `sequential`, the bytes streamed per run grow by the blocks' LoRA bytes × block loads."""
    from models import pipeline
    from models.lora_model import LoraModel
    from models.offload import OffloadStats

    weights = saved(make_lora(tiny_root / GENERATE_MODEL, rank=4), tmp_path, "a")
    components = _components(tiny_root, "sequential", resident_blocks=1)
    transformer = components.transformer(device="cpu")
    request = pipeline.Request(width=32, height=32, frames=5, steps=1, guidance_scale=1.0, seed=5, scheduler="Flow")
    moved = {}
    for name, model in (("plain", components), ("lora", LoraModel(components, [(weights, 1.0)]))):
        stats = OffloadStats()
        with model.placement(transformer, torch.device("cpu"), stats):
            pipeline.generate(
                transformer, None, (torch.randn(1, 8, 64),), request, variant=components.variant, dtype=torch.float32
            )
        moved[name] = (stats.bytes_moved, stats.block_loads)
    lora_bytes = {
        i: sum(e.down.numel() + e.up.numel() for k, e in weights.transformer.items() if f"blocks_{i}_" in k) * 4
        for i in range(4)
    }
    non_block = sum(e.down.numel() + e.up.numel() for k, e in weights.transformer.items() if "blocks_" not in k) * 4
    streamed = sum(lora_bytes[i] for i in (1, 2, 3))  # one step: blocks 1-3 streamed once each
    assert moved["lora"][1] == moved["plain"][1] == 3
    assert moved["lora"][0] - moved["plain"][0] == non_block + lora_bytes[0] + streamed


def test_text_encoder_entries_are_not_counted_as_unmatched_transformer_entries(tiny_root):
    model_dir = tiny_root / "tiny-EasyAnimateV5-12b-zh"
    tensors = make_lora(model_dir, only=lambda path: path == "proj_out").tensors()
    tensors.update(make_lora(model_dir, "kohya_te").tensors())
    matched = match_lora(
        lora_module.parse_lora(tensors, "te"), lora_module.meta_transformer(_detection(model_dir)), log=pytest.fail
    )
    assert list(matched) == ["proj_out"]


@pytest.mark.parametrize("file_format", ["kohya", "peft"])
def test_without_alpha_the_delta_is_strength_times_up_at_down(tiny_root, tmp_path, file_format):
    """The original loader's `alpha = 1.0` when the file has none is the factor alpha/rank itself (docs/lora.md,
    missing alpha); PEFT's default lora_alpha = r gives the same. Hand computation on one layer, rank 4."""
    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    lora = make_lora(model_dir, file_format, rank=4, alpha=None, only=lambda path: path == "proj_out")
    model = load_transformer(model_dir, dtype=torch.float32)
    x = torch.randn(5, model.proj_out.in_features, generator=torch.Generator().manual_seed(1))
    base = model.proj_out(x)
    with loras_attached(model, [(saved(lora, tmp_path, "a"), 0.7)]):
        delta = model.proj_out(x) - base
    down, up, _ = lora.pairs["proj_out"]
    assert relative_error(delta, x @ (0.7 * up @ down).T) <= 1e-5


def test_each_copy_of_the_package_gets_lora_classes_of_its_own_mixin(pack):
    """The tests import the pack twice (as `models` and under the pack's folder name). The LoRA subclass of a layer
    class is kept on that class, so both copies must find their own there: a class made by the other copy does not
    count as a LoraLinear here, and detaching would leave it in place (seen as "'LoraLinear' object has no
    attribute 'lora_down'" in Bert after a text-encoder LoRA, in one random order)."""
    import importlib

    from torch import nn

    from models import ops

    other = importlib.import_module(f"{pack.__name__}.models.ops")
    assert other is not ops and other.LoraLinear is not ops.LoraLinear
    for first, second in ((ops, other), (other, ops)):
        made = first.lora_class(nn.Linear), second.lora_class(nn.Linear)
        assert issubclass(made[0], first.LoraLinear) and issubclass(made[1], second.LoraLinear)
        assert first.lora_class(nn.Linear) is made[0]  # one class per copy, not one per call
