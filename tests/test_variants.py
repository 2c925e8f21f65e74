"""Specification of models/variants.py: the registry of released EasyAnimate V5/V5.1 variants.

Expected values are copied from docs/checkpoints.md, transformer config / variants; docs/faithfulness.md, schedulers /
TeaCache and docs/checkpoints.md, VAE config / folder layouts.
"""

from __future__ import annotations

import math

import pytest

from models.variants import (
    VARIANTS,
    find_variant,
    kind_for_in_channels,
    released_scheduler_config,
    released_vae_config,
    variant_for,
)

# name: (version, size, kind, layers, mmdit, in_channels, text_dim, t5_dim, norm, mask, ref, params) —
# docs/checkpoints.md, variants
RELEASED = {
    "EasyAnimateV5-7b-zh": ("v5", "7b", "t2v", 36, 18, 16, 1024, 2048, False, False, False, 6_812_888_640),
    "EasyAnimateV5-7b-zh-InP": ("v5", "7b", "inp", 36, 18, 33, 1024, 2048, False, False, False, 6_813_097_536),
    "EasyAnimateV5-12b-zh": ("v5", "12b", "t2v", 48, 48, 16, 1024, 2048, False, False, False, 11_797_483_584),
    "EasyAnimateV5-12b-zh-InP": ("v5", "12b", "inp", 48, 48, 33, 1024, 2048, False, False, False, 11_797_692_480),
    "EasyAnimateV5-12b-zh-Control": (
        "v5",
        "12b",
        "control",
        48,
        48,
        32,
        1024,
        2048,
        False,
        False,
        False,
        11_797_680_192,
    ),
    "EasyAnimateV5.1-7b-zh": ("v5.1", "7b", "t2v", 36, 18, 16, 3584, None, True, True, True, 6_814_462_016),
    "EasyAnimateV5.1-7b-zh-InP": ("v5.1", "7b", "inp", 36, 18, 33, 3584, None, True, True, True, 6_814_670_912),
    "EasyAnimateV5.1-7b-zh-Control": ("v5.1", "7b", "control", 36, 18, 48, 3584, None, True, True, True, 6_814_855_232),
    "EasyAnimateV5.1-7b-zh-Control-Camera": (
        "v5.1",
        "7b",
        "control_camera",
        36,
        18,
        38,
        3584,
        None,
        True,
        True,
        True,
        6_814_732_352,
    ),
    "EasyAnimateV5.1-12b-zh": ("v5.1", "12b", "t2v", 48, 48, 16, 3584, None, True, True, True, 11_799_056_960),
    "EasyAnimateV5.1-12b-zh-InP": ("v5.1", "12b", "inp", 48, 48, 33, 3584, None, True, True, True, 11_799_265_856),
    "EasyAnimateV5.1-12b-zh-Control": (
        "v5.1",
        "12b",
        "control",
        48,
        48,
        48,
        3584,
        None,
        True,
        True,
        True,
        11_799_450_176,
    ),
    "EasyAnimateV5.1-12b-zh-Control-Camera": (
        "v5.1",
        "12b",
        "control_camera",
        48,
        48,
        38,
        3584,
        None,
        True,
        True,
        True,
        11_799_327_296,
    ),
}

# docs/checkpoints.md, transformer config: identical in every released transformer config.json.
COMMON_FIELDS = {
    "_class_name": "EasyAnimateTransformer3DModel",
    "num_attention_heads": 48,
    "attention_head_dim": 64,
    "patch_size": 2,
    "out_channels": 16,
    "time_embed_dim": 512,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "timestep_activation_fn": "silu",
    "activation_fn": "gelu-approximate",
    "norm_eps": 1e-5,
    "norm_elementwise_affine": True,
    "after_norm": False,
    "time_position_encoding_type": "3d_rope",
    "sample_height": 60,
    "sample_width": 90,
    "ref_channels": None,
    "clip_channels": None,
    "swa_layers": None,
    "enable_clip_in_inpaint": False,
    "resize_inpaint_mask_directly": True,
    "dropout": 0.0,
}


def parameter_count(config: dict) -> int:
    """Parameters of the transformer a config describes, from the tensor shapes of docs/checkpoints.md, transformer
    keys."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    time_dim, head_dim, patch = config["time_embed_dim"], config["attention_head_dim"], config["patch_size"]
    linear = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731 — weight + bias
    ada_ln = linear(time_dim, 6 * inner) + 2 * inner  # norm{1,2}: linear + shared LayerNorm affine
    attention = 4 * linear(inner, inner) + 2 * 2 * head_dim  # q, k, v, out + norm_q/norm_k affine
    feed_forward = linear(inner, 4 * inner) + linear(4 * inner, inner)
    per_block = 2 * ada_ln + attention + feed_forward
    per_mmdit_extra = attention + feed_forward  # attn2 + txt_ff
    head = (
        linear(inner, time_dim)
        + linear(time_dim, time_dim)  # time embedding
        + config["in_channels"] * patch * patch * inner
        + inner  # proj (Conv2d)
        + 2 * inner  # norm_final
        + linear(time_dim, 2 * inner)
        + 2 * inner  # norm_out
        + linear(inner, patch * patch * config["out_channels"])
    )  # proj_out
    if config["text_embed_dim_t5"] is None:
        text = config["text_embed_dim"] + linear(config["text_embed_dim"], inner)  # RMSNorm + Linear
    else:
        text = linear(config["text_embed_dim"], inner) + linear(config["text_embed_dim_t5"], inner)
    return config["num_layers"] * per_block + config["mmdit_layers"] * per_mmdit_extra + head + text


def test_registry_holds_exactly_the_13_released_variants():
    assert sorted(VARIANTS) == sorted(RELEASED)
    assert len(VARIANTS) == 13


@pytest.mark.parametrize("name", list(RELEASED))
def test_variant_fields_match_the_released_table(name):
    v = VARIANTS[name]
    actual = (
        v.version,
        v.size,
        v.kind,
        v.num_layers,
        v.mmdit_layers,
        v.in_channels,
        v.text_embed_dim,
        v.text_embed_dim_t5,
        v.add_norm_text_encoder,
        v.enable_text_attention_mask,
        v.add_ref_latent_in_control_model,
        v.param_count,
    )
    assert actual == RELEASED[name]
    assert v.name == name and v.released and v.repo_id == f"alibaba-pai/{name}"


@pytest.mark.parametrize("name", list(RELEASED))
def test_parameter_count_follows_from_the_config_tensor_shapes(name):
    variant = VARIANTS[name]
    assert parameter_count(variant.transformer_config()) == variant.param_count


@pytest.mark.parametrize("name", list(RELEASED))
def test_transformer_config_holds_every_common_field_with_released_values(name):
    config = VARIANTS[name].transformer_config()
    assert {k: config[k] for k in COMMON_FIELDS} == COMMON_FIELDS
    v = VARIANTS[name]
    assert config["num_layers"] == v.num_layers and config["mmdit_layers"] == v.mmdit_layers
    assert config["in_channels"] == v.in_channels and config["text_embed_dim_t5"] == v.text_embed_dim_t5
    assert config["_diffusers_version"] == ("0.30.1" if v.version == "v5" else "0.31.0")


def test_configs_use_released_values_not_the_reference_class_defaults():
    # class defaults (docs/checkpoints.md, transformer config): mmdit_layers 10000, text_embed_dim(_t5) 4096, num_layers
    # 30, heads 30, resize_inpaint_mask_directly False, enable_text_attention_mask True
    v5_7b = VARIANTS["EasyAnimateV5-7b-zh-InP"].transformer_config()
    assert (v5_7b["mmdit_layers"], v5_7b["num_layers"], v5_7b["num_attention_heads"]) == (18, 36, 48)
    assert (v5_7b["text_embed_dim"], v5_7b["text_embed_dim_t5"]) == (1024, 2048)
    assert v5_7b["resize_inpaint_mask_directly"] is True and v5_7b["enable_text_attention_mask"] is False
    assert v5_7b["add_noise_in_inpaint_model"] is True
    v51 = VARIANTS["EasyAnimateV5.1-12b-zh-InP"].transformer_config()
    assert (v51["text_embed_dim"], v51["text_embed_dim_t5"], v51["add_norm_text_encoder"]) == (3584, None, True)
    assert v51["enable_text_attention_mask"] is True and v51["add_ref_latent_in_control_model"] is True


def test_transformer_config_is_a_fresh_dict_each_call():
    variant = VARIANTS["EasyAnimateV5.1-12b-zh"]
    variant.transformer_config()["num_layers"] = 1
    assert variant.transformer_config()["num_layers"] == 48


def test_find_variant_returns_the_registry_entry():
    assert find_variant("v5.1", "7b", "control_camera") is VARIANTS["EasyAnimateV5.1-7b-zh-Control-Camera"]
    assert find_variant("v5", "12b", "control") is VARIANTS["EasyAnimateV5-12b-zh-Control"]


def test_find_variant_refuses_a_combination_that_was_never_released():
    with pytest.raises(KeyError, match="v5/7b/control"):
        find_variant("v5", "7b", "control")  # no V5-7B Control in the model zoo


def test_variant_for_derives_an_unreleased_combination_from_its_sibling():
    derived = variant_for("v5", "7b", "control")
    assert (derived.name, derived.released, derived.param_count) == ("EasyAnimateV5-7b-zh-Control", False, None)
    assert (derived.in_channels, derived.num_layers, derived.mmdit_layers, derived.text_embed_dim_t5) == (
        32,
        36,
        18,
        2048,
    )
    assert variant_for("v5.1", "12b", "inp") is VARIANTS["EasyAnimateV5.1-12b-zh-InP"]


@pytest.mark.parametrize(
    "version, in_channels, kind",
    [
        ("v5", 16, "t2v"),
        ("v5", 33, "inp"),
        ("v5", 32, "control"),
        ("v5.1", 16, "t2v"),
        ("v5.1", 33, "inp"),
        ("v5.1", 48, "control"),
        ("v5.1", 38, "control_camera"),
    ],
)
def test_kind_follows_from_in_channels(version, in_channels, kind):
    assert kind_for_in_channels(version, in_channels) == kind


@pytest.mark.parametrize("version, in_channels", [("v5", 48), ("v5", 38), ("v5.1", 32), ("v5.1", 17), ("v6", 16)])
def test_unknown_in_channels_raise_and_list_the_expected_counts(version, in_channels):
    with pytest.raises(ValueError, match=f"in_channels={in_channels}"):
        kind_for_in_channels(version, in_channels)


@pytest.mark.parametrize("name", list(RELEASED))
def test_sampling_defaults_follow_the_predict_scripts(name):
    v = VARIANTS[name]
    assert v.default_scheduler == ("DDIM" if v.version == "v5" else "Flow")
    assert (v.default_steps, v.default_guidance, v.default_height, v.default_width, v.default_frames) == (
        50,
        6.0,
        384,
        672,
        49,
    )


def test_teacache_coefficients_exist_for_v51_only():
    assert VARIANTS["EasyAnimateV5.1-7b-zh-Control"].teacache_coefficients == (
        1.07862322,
        -4.19362456,
        3.06725828,
        0.33161686,
        0.02374758,
    )
    assert VARIANTS["EasyAnimateV5.1-12b-zh"].teacache_coefficients == (
        -10.47857366,
        8.33844143,
        -0.78477557,
        0.68798618,
        0.0136149,
    )
    assert all(v.teacache_coefficients is None for v in VARIANTS.values() if v.version == "v5")


def test_v5_scheduler_config_is_ddim_v_prediction_zero_snr_trailing():
    config = released_scheduler_config("v5")
    assert {
        k: config[k]
        for k in (
            "_class_name",
            "beta_start",
            "beta_end",
            "beta_schedule",
            "num_train_timesteps",
            "prediction_type",
            "rescale_betas_zero_snr",
            "timestep_spacing",
        )
    } == {
        "_class_name": "DDIMScheduler",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
    }


def test_v51_scheduler_config_is_flow_matching_with_dynamic_shift():
    assert released_scheduler_config("v5.1") == {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.31.0.dev0",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
        "base_image_seq_len": 256,
        "max_image_seq_len": 4096,
    }


def test_released_scheduler_configs_give_the_documented_schedules():
    from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler

    ddim = DDIMScheduler.from_config(released_scheduler_config("v5"))
    ddim.set_timesteps(50)
    assert ddim.timesteps.tolist() == list(range(999, 0, -20))  # 999, 979, ..., 19 (docs/faithfulness.md, schedulers)
    assert float(ddim.alphas_cumprod[-1]) == 0.0  # zero terminal SNR
    flow = FlowMatchEulerDiscreteScheduler.from_config(released_scheduler_config("v5.1"))
    flow.set_timesteps(50, mu=1)
    sigmas = flow.sigmas.tolist()
    # docs/faithfulness.md, schedulers, shift e
    expected = [math.e * s / (1 + (math.e - 1) * s) for s in (1.0, 1 - 0.999 / 49, 0.001)]
    assert abs(sigmas[0] - expected[0]) <= 1e-6 and abs(sigmas[1] - expected[1]) <= 1e-6
    assert abs(sigmas[-2] - expected[2]) <= 1e-6 and sigmas[-1] == 0.0


def test_v5_vae_config_has_the_spatial_mid_attention_and_v51_does_not():
    v5, v51 = released_vae_config("v5"), released_vae_config("v5.1")
    assert (v5["mid_block_use_attention"], v5["mid_block_attention_type"], v5["mid_block_num_attention_heads"]) == (
        True,
        "spatial",
        1,
    )
    assert v51["mid_block_use_attention"] is False and v51["norm_type"] is None and "norm_type" not in v5
    assert {
        k: v for k, v in v51.items() if k not in ("mid_block_use_attention", "norm_type", "_diffusers_version")
    } == {k: v for k, v in v5.items() if k not in ("mid_block_use_attention", "_diffusers_version")}


def test_vae_configs_carry_the_released_values():
    config = released_vae_config("v5")
    assert config["block_out_channels"] == [128, 256, 512, 512] and config["latent_channels"] == 16
    assert (config["scaling_factor"], config["spatial_group_norm"], config["cache_mag_vae"]) == (0.7125, True, True)
    assert (config["mini_batch_encoder"], config["mini_batch_decoder"], config["norm_num_groups"]) == (4, 1, 32)
    assert config["down_block_types"] == ["SpatialDownBlock3D"] + ["SpatialTemporalDownBlock3D"] * 3
    assert config["up_block_types"] == ["SpatialUpBlock3D"] + ["SpatialTemporalUpBlock3D"] * 3
    config["scaling_factor"] = 1.0
    assert released_vae_config("v5")["scaling_factor"] == 0.7125  # a fresh copy each call
