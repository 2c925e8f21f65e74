"""The VAE's `config.json` as a frozen dataclass, its validation, and the errors every VAE module raises."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..defaults import VAE_SCALING_FACTOR

SPATIAL_DOWN = "SpatialDownBlock3D"
SPATIOTEMPORAL_DOWN = "SpatialTemporalDownBlock3D"
SPATIAL_UP = "SpatialUpBlock3D"
SPATIOTEMPORAL_UP = "SpatialTemporalUpBlock3D"
NORM_EPS = 1e-6  # hard-coded in every GroupNorm of the reference (docs/checkpoints.md, VAE config)
CONFIG_NAME = "config.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]


class VAEConfigError(ValueError):
    """A vae/config.json (or a single-file checkpoint) describes a network this implementation does not build."""


class VAEInputError(ValueError):
    """A video or latent tensor handed to encode/decode has the wrong shape, channel count or frame count."""


# --------------------------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEConfig:
    """The `vae/config.json` fields that shape the network (docs/checkpoints.md, VAE config). Defaults are the RELEASED
    V5 values, never the reference class defaults; `mid_block_use_attention=None` means "decide from the weights"
    (diffusers configs)."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    down_block_types: tuple[str, ...] = (SPATIAL_DOWN, SPATIOTEMPORAL_DOWN, SPATIOTEMPORAL_DOWN, SPATIOTEMPORAL_DOWN)
    up_block_types: tuple[str, ...] = (SPATIAL_UP, SPATIOTEMPORAL_UP, SPATIOTEMPORAL_UP, SPATIOTEMPORAL_UP)
    layers_per_block: int = 2
    norm_num_groups: int = 32
    mid_block_use_attention: bool | None = True
    mid_block_num_attention_heads: int = 1
    scaling_factor: float = VAE_SCALING_FACTOR
    mini_batch_encoder: int = 4  # pixel frames per encoder chunk after the first frame (cache_mag_vae)
    mini_batch_decoder: int = 1  # latent frames per decoder chunk after the first one

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)  # every level but the last halves H and W

    @property
    def temporal_ratio(self) -> int:
        # the final block never down-samples, so only the "Temporal" blocks before it count (docs/faithfulness.md, VAE)
        return 2 ** sum(1 for kind in self.down_block_types[:-1] if kind == SPATIOTEMPORAL_DOWN)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> VAEConfig:
        """Read a released / diffusers `vae/config.json` dict. Keys that only steer the reference's chunking or
        tiling modes (cache_mag_vae, use_tiling, sample_size, ...) are ignored: chunked and whole-clip passes are
        equal here. Anything that would change the network beyond what the releases use is refused."""

        def refuse(what: str) -> VAEConfigError:
            return VAEConfigError(
                f"{source}: {what}. This loader builds the EasyAnimate V5/V5.1 VAE "
                "(AutoencoderKLMagvit) as released; use the vae/config.json shipped with the model."
            )

        if raw.get("_class_name", "AutoencoderKLMagvit") != "AutoencoderKLMagvit":
            raise refuse(f"_class_name is {raw['_class_name']!r}, expected 'AutoencoderKLMagvit'")
        for key, wanted in (("act_fn", "silu"), ("mid_block_type", "MidBlock3D"), ("spatial_group_norm", True)):
            if key in raw and raw[key] != wanted:
                raise refuse(f"{key} is {raw[key]!r}, only {wanted!r} is supported")
        if raw.get("use_gc_blocks"):
            raise refuse("use_gc_blocks is set; no released VAE uses global-context blocks")
        attention = raw.get("mid_block_use_attention")
        if attention and raw.get("mid_block_attention_type", "spatial") != "spatial":
            raise refuse(
                f"mid_block_attention_type is {raw['mid_block_attention_type']!r}, only 'spatial' is supported"
            )
        block_out = raw.get("block_out_channels")
        if block_out is None and "ch" in raw and "ch_mult" in raw:
            block_out = [raw["ch"] * mult for mult in raw["ch_mult"]]
        defaults = cls()
        config = cls(
            in_channels=int(raw.get("in_channels", defaults.in_channels)),
            out_channels=int(raw.get("out_channels", defaults.out_channels)),
            latent_channels=int(raw.get("latent_channels", defaults.latent_channels)),
            block_out_channels=tuple(int(c) for c in (block_out or defaults.block_out_channels)),
            down_block_types=tuple(raw.get("down_block_types", defaults.down_block_types)),
            up_block_types=tuple(raw.get("up_block_types", defaults.up_block_types)),
            layers_per_block=int(raw.get("layers_per_block", defaults.layers_per_block)),
            norm_num_groups=int(raw.get("norm_num_groups", defaults.norm_num_groups)),
            mid_block_use_attention=None if attention is None else bool(attention),
            mid_block_num_attention_heads=int(raw.get("mid_block_num_attention_heads", 1)),
            scaling_factor=float(raw.get("scaling_factor", defaults.scaling_factor)),
            mini_batch_encoder=int(raw.get("mini_batch_encoder", defaults.mini_batch_encoder)),
            mini_batch_decoder=int(raw.get("mini_batch_decoder", defaults.mini_batch_decoder)),
        )
        config.validate(source)
        return config

    def validate(self, source: str = "config") -> None:
        levels = len(self.block_out_channels)
        if levels < 2 or len(self.down_block_types) != levels or len(self.up_block_types) != levels:
            raise VAEConfigError(
                f"{source}: block_out_channels, down_block_types and up_block_types must have the "
                f"same length (>= 2); got {levels}, {len(self.down_block_types)}, "
                f"{len(self.up_block_types)}"
            )
        for kind in self.down_block_types:
            if kind not in (SPATIAL_DOWN, SPATIOTEMPORAL_DOWN):
                raise VAEConfigError(
                    f"{source}: down block type {kind!r} is not supported; expected "
                    f"{SPATIAL_DOWN!r} or {SPATIOTEMPORAL_DOWN!r}"
                )
        for kind in self.up_block_types:
            if kind not in (SPATIAL_UP, SPATIOTEMPORAL_UP):
                raise VAEConfigError(
                    f"{source}: up block type {kind!r} is not supported; expected "
                    f"{SPATIAL_UP!r} or {SPATIOTEMPORAL_UP!r}"
                )
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise VAEConfigError(
                    f"{source}: norm_num_groups {self.norm_num_groups} does not divide block width "
                    f"{channels} (block_out_channels {list(self.block_out_channels)})"
                )
        if self.layers_per_block < 1:
            raise VAEConfigError(f"{source}: layers_per_block must be >= 1, got {self.layers_per_block}")
        heads = self.mid_block_num_attention_heads
        if self.mid_block_use_attention and (heads < 1 or self.block_out_channels[-1] % heads):
            raise VAEConfigError(
                f"{source}: mid_block_num_attention_heads {heads} does not divide {self.block_out_channels[-1]}"
            )
        if self.mini_batch_encoder < 1 or self.mini_batch_encoder % self.temporal_ratio:
            raise VAEConfigError(
                f"{source}: mini_batch_encoder must be a positive multiple of the temporal ratio "
                f"{self.temporal_ratio}, got {self.mini_batch_encoder}"
            )
        if self.mini_batch_decoder < 1:
            raise VAEConfigError(f"{source}: mini_batch_decoder must be >= 1, got {self.mini_batch_decoder}")
