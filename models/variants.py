"""The one registry of released EasyAnimate V5 / V5.1 transformer variants.

Detection, validation, loader defaults and sampler defaults all read this file; nothing else hard-codes a layer count,
a channel count or a text width. Values are the RELEASED ones (HF config.json files), not the reference class defaults
— see docs/checkpoints.md, transformer config. Released scheduler and VAE configs live here too (docs/checkpoints.md,
VAE config / folder layouts).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

# Names and numbers (versions, defaults, limits, dropdowns) live in models/defaults.py; re-exported here for the
# modules that read them with the variants.
from .defaults import (  # noqa: F401
    DEFAULT_FRAMES,
    DEFAULT_GUIDANCE,
    DEFAULT_HEIGHT,
    DEFAULT_NEGATIVE_PROMPT,
    DEFAULT_SCHEDULER,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_TEACACHE_THRESHOLD,
    DEFAULT_WIDTH,
    FRAME_STEP,
    KINDS,
    MAX_FRAMES,
    MAX_PROMPT_TOKENS,
    MAX_SIDE,
    MIN_FRAMES,
    MIN_SIDE,
    SIDE_MULTIPLE,
    SIZES,
    V5,
    V5_1,
    VAE_SCALING_FACTOR,
    VERSIONS,
)

# Transformer in_channels per (version, kind): the channel layouts of docs/checkpoints.md, variants (noisy 16 | mask 1 |
# masked latent 16 | control 16 | Plücker 6 | ref 16).
IN_CHANNELS = {
    (V5, "t2v"): 16,
    (V5, "inp"): 33,
    (V5, "control"): 32,
    (V5_1, "t2v"): 16,
    (V5_1, "inp"): 33,
    (V5_1, "control"): 48,
    (V5_1, "control_camera"): 38,
}

# Name suffix of the released HF folders per kind (e.g. "EasyAnimateV5.1-12b-zh-Control-Camera").
KIND_SUFFIX = {"t2v": "", "inp": "-InP", "control": "-Control", "control_camera": "-Control-Camera"}

# TeaCache rescale polynomials (highest power first), fitted on the V5.1 InP models (docs/faithfulness.md, TeaCache). V5
# has none.
TEACACHE_COEFFICIENTS = {
    (V5_1, "7b"): (1.07862322, -4.19362456, 3.06725828, 0.33161686, 0.02374758),
    (V5_1, "12b"): (-10.47857366, 8.33844143, -0.78477557, 0.68798618, 0.0136149),
}

# docs/checkpoints.md, transformer config: fields shared by every released V5 / V5.1 transformer config.json.
_COMMON_TRANSFORMER_FIELDS = {
    "_class_name": "EasyAnimateTransformer3DModel",
    "activation_fn": "gelu-approximate",
    "after_norm": False,
    "attention_head_dim": 64,
    "clip_channels": None,
    "dropout": 0.0,
    "enable_clip_in_inpaint": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_elementwise_affine": True,
    "norm_eps": 1e-5,
    "num_attention_heads": 48,
    "out_channels": 16,
    "patch_size": 2,
    "ref_channels": None,
    "resize_inpaint_mask_directly": True,
    "sample_height": 60,
    "sample_width": 90,
    "swa_layers": None,
    "time_embed_dim": 512,
    "time_position_encoding_type": "3d_rope",
    "timestep_activation_fn": "silu",
}
_DIFFUSERS_VERSION = {V5: "0.30.1", V5_1: "0.31.0"}


@dataclass(frozen=True)
class Variant:
    """One released transformer checkpoint (HF `alibaba-pai/<name>`), with its config and sampling defaults."""

    name: str  # released HF folder name, e.g. "EasyAnimateV5.1-12b-zh-InP"
    version: str  # "v5" | "v5.1"
    size: str  # "7b" | "12b"
    kind: str  # "t2v" | "inp" | "control" | "control_camera"
    num_layers: int
    mmdit_layers: int  # blocks [0, mmdit_layers) carry separate text weights (attn2, txt_ff)
    in_channels: int
    text_embed_dim: int
    text_embed_dim_t5: int | None  # None for V5.1 (no mT5 stream)
    add_norm_text_encoder: bool
    enable_text_attention_mask: bool
    add_noise_in_inpaint_model: bool
    add_ref_latent_in_control_model: bool
    # exact transformer parameter count (docs/checkpoints.md, variants); None only for an unreleased combination
    param_count: int | None
    released: bool = True

    @property
    def repo_id(self) -> str:
        return f"alibaba-pai/{self.name}"

    @property
    def diffusers_name(self) -> str | None:
        """Name of the separately published diffusers-layout copy (V5.1 only, docs/checkpoints.md, folder layouts)."""
        return f"{self.name}-diffusers" if self.version == V5_1 else None

    @property
    def text_encoders(self) -> str:
        return "bert+mt5" if self.version == V5 else "qwen2-vl"

    @property
    def default_scheduler(self) -> str:
        return DEFAULT_SCHEDULER[self.version]

    @property
    def default_steps(self) -> int:
        return DEFAULT_STEPS

    @property
    def default_guidance(self) -> float:
        return DEFAULT_GUIDANCE

    @property
    def default_height(self) -> int:
        return DEFAULT_HEIGHT

    @property
    def default_width(self) -> int:
        return DEFAULT_WIDTH

    @property
    def default_frames(self) -> int:
        return DEFAULT_FRAMES

    @property
    def teacache_coefficients(self) -> tuple[float, ...] | None:
        return TEACACHE_COEFFICIENTS.get((self.version, self.size))

    def transformer_config(self) -> dict:
        """The full released `transformer/config.json` content of this variant (a fresh dict each call)."""
        config = dict(_COMMON_TRANSFORMER_FIELDS)
        config.update(
            _diffusers_version=_DIFFUSERS_VERSION[self.version],
            num_layers=self.num_layers,
            mmdit_layers=self.mmdit_layers,
            in_channels=self.in_channels,
            text_embed_dim=self.text_embed_dim,
            text_embed_dim_t5=self.text_embed_dim_t5,
            add_norm_text_encoder=self.add_norm_text_encoder,
            enable_text_attention_mask=self.enable_text_attention_mask,
            add_noise_in_inpaint_model=self.add_noise_in_inpaint_model,
            add_ref_latent_in_control_model=self.add_ref_latent_in_control_model,
        )
        return dict(sorted(config.items()))

    def vae_config(self) -> dict:
        return released_vae_config(self.version)

    def scheduler_config(self) -> dict:
        return released_scheduler_config(self.version)


def _variant(version: str, size: str, kind: str, param_count: int) -> Variant:
    v51 = version == V5_1
    return Variant(
        name=f"EasyAnimate{'V5.1' if v51 else 'V5'}-{size}-zh{KIND_SUFFIX[kind]}",
        version=version,
        size=size,
        kind=kind,
        num_layers=36 if size == "7b" else 48,
        # 7B: unique solution of the parameter count, docs/checkpoints.md, transformer config
        mmdit_layers=18 if size == "7b" else 48,
        in_channels=IN_CHANNELS[(version, kind)],
        text_embed_dim=3584 if v51 else 1024,
        text_embed_dim_t5=None if v51 else 2048,
        add_norm_text_encoder=v51,
        # V5 runs Bert/mT5 without masks; V5.1 requires one (docs/checkpoints.md, transformer config)
        enable_text_attention_mask=v51,
        # V5-12B-Control's updated config says true (docs/faithfulness.md, open questions); irrelevant for T2V, where V5
        # keeps the class default
        add_noise_in_inpaint_model=v51 or kind != "t2v",
        add_ref_latent_in_control_model=v51,
        param_count=param_count,
    )


# docs/checkpoints.md, variants, in the table's order. There is no released V5-7B Control (README model zoo).
_RELEASED = [
    _variant(V5, "7b", "t2v", 6_812_888_640),
    _variant(V5, "7b", "inp", 6_813_097_536),
    _variant(V5, "12b", "t2v", 11_797_483_584),
    _variant(V5, "12b", "inp", 11_797_692_480),
    _variant(V5, "12b", "control", 11_797_680_192),
    _variant(V5_1, "7b", "t2v", 6_814_462_016),
    _variant(V5_1, "7b", "inp", 6_814_670_912),
    _variant(V5_1, "7b", "control", 6_814_855_232),
    _variant(V5_1, "7b", "control_camera", 6_814_732_352),
    _variant(V5_1, "12b", "t2v", 11_799_056_960),
    _variant(V5_1, "12b", "inp", 11_799_265_856),
    _variant(V5_1, "12b", "control", 11_799_450_176),
    _variant(V5_1, "12b", "control_camera", 11_799_327_296),
]
VARIANTS: dict[str, Variant] = {v.name: v for v in _RELEASED}


def find_variant(version: str, size: str, kind: str) -> Variant:
    """The released variant of that version/size/kind; KeyError (listing what exists) when none was released."""
    for variant in _RELEASED:
        if (variant.version, variant.size, variant.kind) == (version, size, kind):
            return variant
    released = ", ".join(f"{v.version}/{v.size}/{v.kind}" for v in _RELEASED)
    raise KeyError(f"no released EasyAnimate variant {version}/{size}/{kind}; released: {released}")


def transformer_size_hint(size: str | None) -> str:
    """The bf16 size of a transformer download ("≈13.6 GB"), from the released parameter counts; both sizes when
    `size` is unknown. Used by the 'missing file' messages (docs/checkpoints.md, folder layouts)."""

    def gigabytes(of: str) -> str:
        return f"{find_variant(V5_1, of, 't2v').param_count * 2 / 1e9:.1f} GB"

    if size in SIZES:
        return f"≈{gigabytes(size)}"
    return ", ".join(f"{gigabytes(s)} for {s.upper()}" for s in SIZES)


def variant_for(version: str, size: str, kind: str) -> Variant:
    """Like `find_variant`, but an unreleased combination (e.g. a V5-7B Control fine-tune) gets a derived Variant
    (released=False, param_count None) built from its released sibling of the same version and size."""
    try:
        return find_variant(version, size, kind)
    except KeyError:
        if (version, kind) not in IN_CHANNELS or size not in SIZES:
            raise
    sibling = find_variant(version, size, "inp")
    return replace(
        sibling,
        name=f"EasyAnimate{'V5.1' if version == V5_1 else 'V5'}-{size}-zh{KIND_SUFFIX[kind]}",
        kind=kind,
        in_channels=IN_CHANNELS[(version, kind)],
        param_count=None,
        released=False,
    )


def kind_for_in_channels(version: str, in_channels: int) -> str:
    """Model kind from the transformer's input channel count (16 t2v, 33 inp, 32 V5 control, 48 V5.1 control,
    38 V5.1 control_camera)."""
    for (known_version, kind), channels in IN_CHANNELS.items():
        if known_version == version and channels == in_channels:
            return kind
    expected = ", ".join(f"{c} ({k})" for (v, k), c in IN_CHANNELS.items() if v == version)
    raise ValueError(
        f"a {version} EasyAnimate transformer with in_channels={in_channels} is not a known model kind; "
        f"expected one of: {expected or 'none (unknown version ' + repr(version) + ')'}"
    )


# --- released scheduler configs (scheduler/scheduler_config.json) -------------------------------------------------

_SCHEDULER_CONFIGS = {
    # docs/checkpoints.md, folder layouts / docs/faithfulness.md, schedulers. Quoted keys: class, betas, schedule, 1000
    # steps, v_prediction, zero-SNR, trailing. The remaining keys were not read from the released file
    # (docs/faithfulness.md, open questions) [inferred]: the released file is 473 bytes, exactly CogVideoX's DDIM config
    # (same betas / zero-SNR / trailing / v-prediction recipe) renamed to DDIMScheduler, so its values are used: no x0
    # clipping, set_alpha_to_one true, offset 0. Only used when a checkpoint lacks scheduler/scheduler_config.json; the
    # pipeline passes the file when present.
    V5: {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.31.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "clip_sample_range": 1.0,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "sample_max_value": 1.0,
        "set_alpha_to_one": True,
        "snr_shift_scale": 3.0,
        "steps_offset": 0,
        "timestep_spacing": "trailing",
        "trained_betas": None,
    },
    # docs/faithfulness.md, schedulers: pipelines call set_timesteps(N, mu=1), so `shift` is ignored (effective shift
    # e).
    V5_1: {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "_diffusers_version": "0.31.0.dev0",
        "base_image_seq_len": 256,
        "base_shift": 0.5,
        "max_image_seq_len": 4096,
        "max_shift": 1.15,
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
    },
}


def released_scheduler_config(version: str) -> dict:
    return copy.deepcopy(_SCHEDULER_CONFIGS[version])


# --- released VAE configs (vae/config.json), docs/checkpoints.md, VAE config ---------------------------------------

_VAE_V5 = {
    "_class_name": "AutoencoderKLMagvit",
    "_diffusers_version": "0.30.1",
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "cache_compression_vae": False,
    "cache_mag_vae": True,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "down_block_types": [
        "SpatialDownBlock3D",
        "SpatialTemporalDownBlock3D",
        "SpatialTemporalDownBlock3D",
        "SpatialTemporalDownBlock3D",
    ],
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 16,
    "layers_per_block": 2,
    "mid_block_attention_type": "spatial",
    "mid_block_num_attention_heads": 1,
    "mid_block_type": "MidBlock3D",
    "mid_block_use_attention": True,  # V5 only: spatial self-attention in both mid blocks
    "mini_batch_decoder": 1,
    "mini_batch_encoder": 4,
    "norm_num_groups": 32,
    "num_attention_heads": 1,
    "out_channels": 3,
    "sample_size": 256,
    "scaling_factor": VAE_SCALING_FACTOR,
    "slice_compression_vae": False,
    "slice_mag_vae": False,
    "spatial_group_norm": True,
    "tile_overlap_factor": 0.25,
    "tile_sample_min_size": 384,
    "up_block_types": [
        "SpatialUpBlock3D",
        "SpatialTemporalUpBlock3D",
        "SpatialTemporalUpBlock3D",
        "SpatialTemporalUpBlock3D",
    ],
    "upcast_vae": False,
    "use_gc_blocks": None,
    "use_tiling": False,
    "use_tiling_decoder": False,
    "use_tiling_encoder": False,
}
# V5.1: the published copy differs only by no mid attention and an extra `norm_type` (docs/checkpoints.md, VAE config;
# the non-diffusers V5.1 file itself was not found, docs/faithfulness.md, open questions).
_VAE_V5_1 = dict(_VAE_V5, _diffusers_version="0.31.0.dev0", mid_block_use_attention=False, norm_type=None)
_VAE_CONFIGS = {V5: _VAE_V5, V5_1: dict(sorted(_VAE_V5_1.items()))}


def released_vae_config(version: str) -> dict:
    return copy.deepcopy(_VAE_CONFIGS[version])
