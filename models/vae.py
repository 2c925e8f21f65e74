"""EasyAnimate V5 / V5.1 causal 3D VAE (`AutoencoderKLMagvit`): video <-> latents, weight-compatible with the releases.

Architecture and numerics follow reference/vae_and_text.md §1 (section numbers below refer to that file). Module
names equal the released state-dict keys (Appendix A), so loading is a plain key-for-key assignment for both the
original and the `-diffusers` layout.

Memory stays flat in the number of frames: every temporal op is causal (a 3-frame conv whose history is the previous
input frames; nearest temporal up-sampling) and every normalisation / attention works per frame, so a clip can be
streamed chunk by chunk — first frame alone, then 4 frames (encoder) / 1 latent frame (decoder) — with a small
`CausalState` carried between chunks, and the result equals one pass over the whole clip (§1.4). Frames go straight
into a preallocated output. On top of that, overlapping spatial tiles with linear blending bound the per-chunk memory
for large frames. The modules themselves hold no state between calls (each call owns its `CausalState`).

Layers come from an injected `ops` namespace (models/ops.py); this file never decides storage dtype or device.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from . import ops as default_ops
from .variants import V5, V5_1, released_vae_config

SPATIAL_DOWN = "SpatialDownBlock3D"
SPATIOTEMPORAL_DOWN = "SpatialTemporalDownBlock3D"
SPATIAL_UP = "SpatialUpBlock3D"
SPATIOTEMPORAL_UP = "SpatialTemporalUpBlock3D"
NORM_EPS = 1e-6  # hard-coded in every GroupNorm of the reference (§1.1)
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
    """The `vae/config.json` fields that shape the network (§1.1). Defaults are the RELEASED V5 values, never the
    reference class defaults; `mid_block_use_attention=None` means "decide from the weights" (diffusers configs)."""

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
    scaling_factor: float = 0.7125
    mini_batch_encoder: int = 4  # pixel frames per encoder chunk after the first frame (cache_mag_vae)
    mini_batch_decoder: int = 1  # latent frames per decoder chunk after the first one

    @property
    def spatial_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)  # every level but the last halves H and W

    @property
    def temporal_ratio(self) -> int:
        # the final block never down-samples, so only the "Temporal" blocks before it count (§1.3.6)
        return 2 ** sum(1 for kind in self.down_block_types[:-1] if kind == SPATIOTEMPORAL_DOWN)

    @classmethod
    def from_dict(cls, raw: dict, source: str = "config") -> VAEConfig:
        """Read a released / diffusers `vae/config.json` dict. Keys that only steer the reference's chunking or
        tiling modes (cache_mag_vae, use_tiling, sample_size, ...) are ignored: chunked and whole-clip passes are
        equal here. Anything that would change the network beyond what the releases use is refused."""

        def refuse(what: str) -> VAEConfigError:
            return VAEConfigError(f"{source}: {what}. This loader builds the EasyAnimate V5/V5.1 VAE "
                                  "(AutoencoderKLMagvit) as released; use the vae/config.json shipped with the model.")

        if raw.get("_class_name", "AutoencoderKLMagvit") != "AutoencoderKLMagvit":
            raise refuse(f"_class_name is {raw['_class_name']!r}, expected 'AutoencoderKLMagvit'")
        for key, wanted in (("act_fn", "silu"), ("mid_block_type", "MidBlock3D"), ("spatial_group_norm", True)):
            if key in raw and raw[key] != wanted:
                raise refuse(f"{key} is {raw[key]!r}, only {wanted!r} is supported")
        if raw.get("use_gc_blocks"):
            raise refuse("use_gc_blocks is set; no released VAE uses global-context blocks")
        attention = raw.get("mid_block_use_attention")
        if attention and raw.get("mid_block_attention_type", "spatial") != "spatial":
            raise refuse(f"mid_block_attention_type is {raw['mid_block_attention_type']!r}, only 'spatial' is "
                         "supported")
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
            raise VAEConfigError(f"{source}: block_out_channels, down_block_types and up_block_types must have the "
                                 f"same length (>= 2); got {levels}, {len(self.down_block_types)}, "
                                 f"{len(self.up_block_types)}")
        for kind in self.down_block_types:
            if kind not in (SPATIAL_DOWN, SPATIOTEMPORAL_DOWN):
                raise VAEConfigError(f"{source}: down block type {kind!r} is not supported; expected "
                                     f"{SPATIAL_DOWN!r} or {SPATIOTEMPORAL_DOWN!r}")
        for kind in self.up_block_types:
            if kind not in (SPATIAL_UP, SPATIOTEMPORAL_UP):
                raise VAEConfigError(f"{source}: up block type {kind!r} is not supported; expected "
                                     f"{SPATIAL_UP!r} or {SPATIOTEMPORAL_UP!r}")
        for channels in self.block_out_channels:
            if channels % self.norm_num_groups:
                raise VAEConfigError(f"{source}: norm_num_groups {self.norm_num_groups} does not divide block width "
                                     f"{channels} (block_out_channels {list(self.block_out_channels)})")
        if self.layers_per_block < 1:
            raise VAEConfigError(f"{source}: layers_per_block must be >= 1, got {self.layers_per_block}")
        heads = self.mid_block_num_attention_heads
        if self.mid_block_use_attention and (heads < 1 or self.block_out_channels[-1] % heads):
            raise VAEConfigError(f"{source}: mid_block_num_attention_heads {heads} does not divide "
                                 f"{self.block_out_channels[-1]}")
        if self.mini_batch_encoder < 1 or self.mini_batch_encoder % self.temporal_ratio:
            raise VAEConfigError(f"{source}: mini_batch_encoder must be a positive multiple of the temporal ratio "
                                 f"{self.temporal_ratio}, got {self.mini_batch_encoder}")
        if self.mini_batch_decoder < 1:
            raise VAEConfigError(f"{source}: mini_batch_decoder must be >= 1, got {self.mini_batch_decoder}")


# --------------------------------------------------------------------------------------------------------------------
# Streaming state and the causal building blocks
# --------------------------------------------------------------------------------------------------------------------


class CausalState:
    """What one streamed pass carries from a temporal chunk to the next (§1.4): each causal conv's not-yet-consumed
    input frames, and which temporal up-samplers have already emitted the clip's first frame. A fresh state means
    "this chunk starts the clip". One per encode/decode call and tile, so the model itself stays re-entrant."""

    def __init__(self) -> None:
        self.conv_history: dict[nn.Module, torch.Tensor] = {}
        self.upsamplers_started: set[nn.Module] = set()


def causal_conv(conv: nn.Conv3d, x: torch.Tensor, state: CausalState) -> torch.Tensor:
    """A 3D conv that is causal in time: output frame t sees input frames <= t. The clip start is padded by
    replicating its first frame (kernel-1) times; later chunks continue from the frames the previous chunk left
    unconsumed, which makes chunked == whole-clip for any chunking (§1.3.1, pitfalls §5.2/§5.3)."""
    reach = conv.kernel_size[0] - 1
    stride = conv.stride[0]
    history = state.conv_history.pop(conv, None)
    if history is None:
        history = x[:, :, :1].expand(-1, -1, reach, -1, -1)
    padded = torch.cat([history, x], dim=2)
    windows = max(0, (padded.shape[2] - reach - 1) // stride + 1)
    # keep the frames the next window starts from (2 frames for stride 1; 1 for a stride-2 conv after a full window)
    state.conv_history[conv] = padded[:, :, windows * stride:].clone()
    if windows == 0:
        raise VAEInputError("internal: a temporal chunk is too short for a strided causal conv; chunk sizes must be "
                            "multiples of the VAE's temporal ratio")
    return conv(padded)


def frame_group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool) -> torch.Tensor:
    """GroupNorm over (C/G, H, W) of every frame separately (`spatial_group_norm: true`, §1.3.2), optionally fused
    with the SiLU that always follows it in the resnets and output heads."""
    batch = x.shape[0]
    frames = rearrange(x, "b c t h w -> (b t) c h w")
    frames = norm(frames)
    if silu:
        frames = F.silu(frames, inplace=True)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=batch)


def _causal_conv3d(ops, in_channels: int, out_channels: int, stride: tuple[int, int, int] = (1, 1, 1),
                   spatial_padding: int = 1) -> nn.Conv3d:
    # temporal padding is never done by the conv itself: causal_conv prepends history / replicated frames
    return ops.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride,
                      padding=(0, spatial_padding, spatial_padding))


class ResnetBlock(nn.Module):
    """out = conv2(silu(GN2(conv1(silu(GN1(x)))))) + shortcut(x), per-frame norms, causal convs (§1.3.2)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.norm1 = ops.GroupNorm(groups, in_channels, eps=NORM_EPS)
        self.conv1 = _causal_conv3d(ops, in_channels, out_channels)
        self.norm2 = ops.GroupNorm(groups, out_channels, eps=NORM_EPS)
        self.conv2 = _causal_conv3d(ops, out_channels, out_channels)
        # plain 1x1x1 conv only when the width changes; identity otherwise (no keys)
        self.shortcut = ops.Conv3d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        skip = x if self.shortcut is None else self.shortcut(x)
        h = causal_conv(self.conv1, frame_group_norm(self.norm1, x, silu=True), state)
        h = causal_conv(self.conv2, frame_group_norm(self.norm2, h, silu=True), state)
        return h.add_(skip)


class Downsampler(nn.Module):
    """Zero-pad right/bottom by 1, then a stride-(t,2,2) causal conv with no spatial padding (§1.3.3, §5.4)."""

    def __init__(self, channels: int, temporal: bool, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.conv = _causal_conv3d(ops, channels, channels, stride=(2 if temporal else 1, 2, 2), spatial_padding=0)

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        return causal_conv(self.conv, F.pad(x, (0, 1, 0, 1)), state)


class Upsampler(nn.Module):
    """Nearest x2 on H, W -> causal conv -> (temporal blocks) nearest x2 in time, except the clip's first frame,
    which is never duplicated (§1.3.4, §5.5, §5.6)."""

    def __init__(self, channels: int, temporal: bool, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.conv = _causal_conv3d(ops, channels, channels)
        self.temporal = temporal

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1.0, 2.0, 2.0), mode="nearest")
        x = causal_conv(self.conv, x, state)
        if not self.temporal:
            return x
        if self in state.upsamplers_started:
            return x.repeat_interleave(2, dim=2)
        state.upsamplers_started.add(self)
        return torch.cat([x[:, :, :1], x[:, :, 1:].repeat_interleave(2, dim=2)], dim=2)


class SpatialSelfAttention(nn.Module):
    """V5 mid-block attention within each frame (§1.3.5): tokens = the H*W positions of a frame; GroupNorm over
    channels, q/k/v/out linears, softmax(q k^T / sqrt(head_dim)) v, residual from the un-normalised input."""

    def __init__(self, channels: int, heads: int, groups: int, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.heads = heads
        self.group_norm = ops.GroupNorm(groups, channels, eps=NORM_EPS)
        self.to_q = ops.Linear(channels, channels)
        self.to_k = ops.Linear(channels, channels)
        self.to_v = ops.Linear(channels, channels)
        self.to_out = ops.Linear(channels, channels)  # plain Linear: key `to_out.weight`, not `to_out.0.weight`

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, _, height, _ = x.shape
        frames = rearrange(x, "b c t h w -> (b t) c (h w)")
        tokens = rearrange(self.group_norm(frames), "n c s -> n s c")
        q, k, v = (rearrange(proj(tokens), "n s (heads d) -> n heads s d", heads=self.heads)
                   for proj in (self.to_q, self.to_k, self.to_v))
        attended = rearrange(F.scaled_dot_product_attention(q, k, v), "n heads s d -> n s (heads d)")
        out = self.to_out(attended) + rearrange(frames, "n c s -> n s c")
        return rearrange(out, "(b t) (h w) c -> b c t h w", b=batch, h=height)


class MidBlock(nn.Module):
    """resnet, then (attention?, resnet) x (layers-1); attention only in V5 weights (§1.3.5)."""

    def __init__(self, channels: int, layers: int, groups: int, attention_heads: int | None, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.convs = nn.ModuleList(ResnetBlock(channels, channels, groups, ops) for _ in range(layers))
        if attention_heads:
            self.attentions = nn.ModuleList(
                SpatialSelfAttention(channels, attention_heads, groups, ops) for _ in range(layers - 1))
        else:
            self.attentions = None

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        x = self.convs[0](x, state)
        for index, resnet in enumerate(self.convs[1:]):
            if self.attentions is not None:
                x = self.attentions[index](x)
            x = resnet(x, state)
        return x


class DownBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, kind: str, final: bool,
                 ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.convs = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, ops) for i in range(layers))
        # the final level never down-samples, so V5's three "Temporal" levels compress time only 4x (§1.3.6)
        self.downsampler = None if final else Downsampler(out_channels, kind == SPATIOTEMPORAL_DOWN, ops)

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        for resnet in self.convs:
            x = resnet(x, state)
        return x if self.downsampler is None else self.downsampler(x, state)


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, layers: int, groups: int, kind: str, final: bool,
                 ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.convs = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, ops) for i in range(layers))
        self.upsampler = None if final else Upsampler(out_channels, kind == SPATIOTEMPORAL_UP, ops)

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        for resnet in self.convs:
            x = resnet(x, state)
        return x if self.upsampler is None else self.upsampler(x, state)


class Encoder(nn.Module):
    """[B, 3, T, H, W] -> [B, 2*latent, T_lat, H/8, W/8] (mean and log-variance), §1.3.6."""

    def __init__(self, config: VAEConfig, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        widths, groups = config.block_out_channels, config.norm_num_groups
        heads = config.mid_block_num_attention_heads if config.mid_block_use_attention else None
        self.conv_in = _causal_conv3d(ops, config.in_channels, widths[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(widths[max(i - 1, 0)], widths[i], config.layers_per_block, groups, kind,
                      final=i == len(widths) - 1, ops=ops)
            for i, kind in enumerate(config.down_block_types))
        self.mid_block = MidBlock(widths[-1], config.layers_per_block, groups, heads, ops)
        self.conv_norm_out = ops.GroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = _causal_conv3d(ops, widths[-1], 2 * config.latent_channels)

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        x = causal_conv(self.conv_in, x, state)
        for block in self.down_blocks:
            x = block(x, state)
        x = self.mid_block(x, state)
        return causal_conv(self.conv_out, frame_group_norm(self.conv_norm_out, x, silu=True), state)


class Decoder(nn.Module):
    """[B, latent, T_lat, h, w] -> [B, 3, T, 8h, 8w], §1.3.7. Up blocks have layers_per_block + 1 resnets."""

    def __init__(self, config: VAEConfig, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        widths, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        heads = config.mid_block_num_attention_heads if config.mid_block_use_attention else None
        self.conv_in = _causal_conv3d(ops, config.latent_channels, widths[0])
        self.mid_block = MidBlock(widths[0], config.layers_per_block, groups, heads, ops)
        self.up_blocks = nn.ModuleList(
            UpBlock(widths[max(i - 1, 0)], widths[i], config.layers_per_block + 1, groups, kind,
                    final=i == len(widths) - 1, ops=ops)
            for i, kind in enumerate(config.up_block_types))
        self.conv_norm_out = ops.GroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = _causal_conv3d(ops, widths[-1], config.out_channels)

    def forward(self, z: torch.Tensor, state: CausalState) -> torch.Tensor:
        x = causal_conv(self.conv_in, z, state)
        x = self.mid_block(x, state)
        for block in self.up_blocks:
            x = block(x, state)
        return causal_conv(self.conv_out, frame_group_norm(self.conv_norm_out, x, silu=True), state)


# --------------------------------------------------------------------------------------------------------------------
# Frame rule, tiling plan, memory estimate
# --------------------------------------------------------------------------------------------------------------------


def latent_frame_count(pixel_frames: int, temporal_ratio: int = 4) -> int:
    """1 or 1 + 4k pixel frames -> 1 + k latent frames (§1.2); anything else raises with the nearest valid counts."""
    if pixel_frames < 1 or (pixel_frames - 1) % temporal_ratio:
        below = 1 + max(0, (pixel_frames - 1) // temporal_ratio) * temporal_ratio
        above = below + temporal_ratio if pixel_frames > below else below
        nearest = f"{below} or {above}" if above != below else f"{below}"
        raise VAEInputError(
            f"the video has {pixel_frames} frames, but the EasyAnimate VAE takes 1 or {temporal_ratio}k+1 frames "
            f"(1, {1 + temporal_ratio}, {1 + 2 * temporal_ratio}, ..., 49); the nearest valid counts are {nearest}. "
            "Trim or pad the clip to one of them.")
    return 1 + (pixel_frames - 1) // temporal_ratio


def pixel_frame_count(latent_frames: int, temporal_ratio: int = 4) -> int:
    """k + 1 latent frames -> 4k + 1 pixel frames."""
    return 1 + (latent_frames - 1) * temporal_ratio


def tile_spans(length: int, tile: int, overlap: int) -> list[tuple[int, int]]:
    """Start/end of overlapping tiles covering [0, length): as few tiles of size `tile` as keep every overlap >=
    `overlap`, spread evenly so the first starts at 0 and the last ends at `length`."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    starts = [round(i * (length - tile) / (count - 1)) for i in range(count)]
    return [(start, start + tile) for start in starts]


def blend_ramps(spans: list[tuple[int, int]], scale: int) -> list[torch.Tensor]:
    """Per-tile 1D blending weights in output units (span * scale). Across each overlap with a neighbour the weight
    cross-fades linearly over the middle half and is ~0 over the outer quarter next to the tile's own edge, where
    its missing context (zero padding instead of the neighbour's pixels) spoils it most; 1 elsewhere. Two
    overlapping tiles' weights sum to 1 (`plan_tiles` normalises whatever else remains)."""
    ramps = []
    for index, (start, end) in enumerate(spans):
        start, end = start * scale, end * scale
        centres = torch.arange(start, end, dtype=torch.float64) + 0.5
        weight = torch.ones(end - start, dtype=torch.float64)
        neighbours = []
        if index > 0:
            neighbours.append((spans[index - 1][1] * scale - start, centres - start))  # (overlap, distance to edge)
        if index < len(spans) - 1:
            neighbours.append((end - spans[index + 1][0] * scale, end - centres))
        for overlap, distance in neighbours:
            if overlap > 0:
                margin = overlap / 4
                weight = torch.minimum(weight, ((distance - margin) / (overlap - 2 * margin)).clamp(1e-6, 1.0))
        ramps.append(weight)
    return ramps


@dataclass(frozen=True)
class Tile:
    """One spatial tile: latent rows/cols [y0, y1) x [x0, x1) and its normalised blend weight in output units."""

    y0: int
    y1: int
    x0: int
    x1: int
    weight: torch.Tensor | None  # [H_out, W_out] float32; None when there is a single tile


def plan_tiles(latent_height: int, latent_width: int, tile_latent: int | None, overlap_latent: int,
               out_scale: int) -> list[Tile]:
    """Tiles over a latent grid; blend weights live in output units (`out_scale` = 8 for decode, 1 for encode)."""
    if tile_latent is None or (latent_height <= tile_latent and latent_width <= tile_latent):
        return [Tile(0, latent_height, 0, latent_width, None)]
    rows = tile_spans(latent_height, tile_latent, overlap_latent)
    cols = tile_spans(latent_width, tile_latent, overlap_latent)
    row_ramps, col_ramps = blend_ramps(rows, out_scale), blend_ramps(cols, out_scale)
    total = torch.zeros(latent_height * out_scale, latent_width * out_scale, dtype=torch.float64)
    for (y0, y1), wy in zip(rows, row_ramps):
        for (x0, x1), wx in zip(cols, col_ramps):
            total[y0 * out_scale:y1 * out_scale, x0 * out_scale:x1 * out_scale] += wy[:, None] * wx[None, :]
    tiles = []
    for (y0, y1), wy in zip(rows, row_ramps):
        for (x0, x1), wx in zip(cols, col_ramps):
            local = total[y0 * out_scale:y1 * out_scale, x0 * out_scale:x1 * out_scale]
            tiles.append(Tile(y0, y1, x0, x1, (wy[:, None] * wx[None, :] / local).float()))
    return tiles


# Working memory per chunk ~ FACTOR x (one full-resolution activation of a chunk): peak RSS growth measured on CPU,
# fp32, released widths (benchmarks/vae.py: decode 6.9x at 80 px tiles, up to 8.2x with glibc's default heap
# caching; encode 5.8x at 96 px), rounded up; weights and the output are extra.
DECODE_MEMORY_FACTOR = 9.0
ENCODE_MEMORY_FACTOR = 7.0


def estimate_working_bytes(config: VAEConfig, height: int, width: int, batch: int = 1, element_size: int = 4,
                           direction: Literal["decode", "encode"] = "decode", chunk_frames: int | None = None) -> int:
    """Rough peak working memory (bytes) of one chunk over a height x width pixel tile, used to pick a tile size from
    a budget. Decode: the last up block sees block_out_channels[1] channels at full resolution over 4*chunk pixel
    frames plus 2 history frames; encode: block_out_channels[0] channels over chunk + 2 frames."""
    if direction == "decode":
        frames = config.temporal_ratio * (chunk_frames or config.mini_batch_decoder) + 2
        channels = config.block_out_channels[1]
        factor = DECODE_MEMORY_FACTOR
    else:
        frames = (chunk_frames or config.mini_batch_encoder) + 2
        channels = config.block_out_channels[0]
        factor = ENCODE_MEMORY_FACTOR
    return int(factor * batch * channels * frames * height * width * element_size)


# --------------------------------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------------------------------


class VAE(nn.Module):
    """EasyAnimate causal 3D VAE. `encode` maps [B, 3, T, H, W] video in [-1, 1] to scaled latents
    [B, 16, T_lat, H/8, W/8] (posterior mode x scaling_factor); `decode` maps them back to [B, 3, T, H, W] in [0, 1].

    Both stream the clip in temporal chunks (released schedule: first frame alone, then 4 frames / 1 latent frame)
    and optionally in overlapping spatial tiles; see `encode` / `decode` for the knobs."""

    def __init__(self, config: VAEConfig, ops=None, compute_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if config.mid_block_use_attention is None:
            raise VAEConfigError("mid_block_use_attention is undecided; load_vae resolves it from the weights")
        config.validate()
        ops = default_ops.resolve(ops)
        self.config = config
        self.compute_dtype = compute_dtype  # None: the dtype the weights are stored in
        self.encoder = Encoder(config, ops)
        self.decoder = Decoder(config, ops)
        self.quant_conv = ops.Conv3d(2 * config.latent_channels, 2 * config.latent_channels, kernel_size=1)
        self.post_quant_conv = ops.Conv3d(config.latent_channels, config.latent_channels, kernel_size=1)

    # -- placement -----------------------------------------------------------------------------------------------

    def _compute_placement(self, device: torch.device | str | None) -> tuple[torch.device, torch.dtype]:
        weight = self.post_quant_conv.weight
        dtype = self.compute_dtype or weight.dtype
        if not dtype.is_floating_point or dtype.itemsize < 2:  # fp8 storage computes in bf16 (ops upcasts)
            dtype = torch.bfloat16
        return torch.device(device) if device is not None else weight.device, dtype

    def _choose_tile(self, tile_size: int | None, tile_overlap: int | None, memory_budget: int | None,
                     height: int, width: int, batch: int, element_size: int, direction: str,
                     chunk_frames: int | None) -> tuple[int | None, int]:
        """(tile edge, overlap) in latent pixels; tile None = no tiling."""
        ratio = self.config.spatial_ratio
        if tile_size is None and memory_budget is not None:
            tile_size = self.auto_tile_size(height, width, memory_budget, batch, element_size, direction,
                                            chunk_frames)
        if tile_size is None:
            return None, 0
        tile_latent = tile_size // ratio
        if tile_latent < 2:
            raise ValueError(f"tile_size {tile_size} px is too small: tiles must be at least {2 * ratio} px")
        overlap = tile_overlap if tile_overlap is not None else tile_size // 4
        overlap_latent = overlap // ratio
        if not 0 <= overlap_latent < tile_latent:
            raise ValueError(f"tile_overlap {overlap} px must be >= 0 and smaller than tile_size {tile_size} px")
        return tile_latent, overlap_latent

    def auto_tile_size(self, height: int, width: int, memory_budget: int, batch: int = 1, element_size: int = 4,
                       direction: Literal["decode", "encode"] = "decode", chunk_frames: int | None = None
                       ) -> int | None:
        """Largest square tile (pixels, in steps of 8 latent pixels) whose estimated working memory fits
        `memory_budget` bytes; None when the whole frame fits (no tiling). Never below 16 latent pixels."""
        def fits(h: int, w: int) -> bool:
            return estimate_working_bytes(self.config, h, w, batch, element_size, direction,
                                          chunk_frames) <= memory_budget

        if fits(height, width):
            return None
        step = 8 * self.config.spatial_ratio
        tile = max(height, width) // step * step
        while tile > 2 * step and not fits(min(tile, height), min(tile, width)):
            tile -= step
        return max(tile, 2 * step)

    # -- encode ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, *, tile_size: int | None = None, tile_overlap: int | None = None,
               memory_budget: int | None = None, chunk_frames: int | Literal["whole"] | None = None,
               device: torch.device | str | None = None, out_dtype: torch.dtype = torch.float32,
               progress: Progress | None = None, interrupt: Interrupt | None = None) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] (T = 1 or 4k+1, H and W multiples of 8) -> latents
        [B, 16, 1+k, H/8, W/8] = posterior mode x scaling_factor (§1.2), in `out_dtype` on the video's device.

        tile_size / tile_overlap: spatial tiles in pixels (overlap default tile/4), blended linearly in latent space;
        memory_budget: bytes of working memory to pick a tile size automatically (ignored when tile_size is given);
        chunk_frames: pixel frames per chunk after the first frame (default config mini_batch_encoder = 4; a
        multiple of 4), or "whole" for a single pass over the clip; device: where to compute (default: the weights').
        `interrupt()` runs before and `progress(done, total)` after every chunk of every tile."""
        config = self.config
        if video.ndim != 5:
            raise VAEInputError(f"encode expects a video tensor [batch, channels, frames, height, width]; got shape "
                                f"{tuple(video.shape)}")
        batch, channels, frames, height, width = video.shape
        if channels != config.in_channels:
            raise VAEInputError(f"encode expects {config.in_channels} (RGB) channels in dim 1 of [B, C, T, H, W]; "
                                f"got {channels} (shape {tuple(video.shape)})")
        latent_frames = latent_frame_count(frames, config.temporal_ratio)
        ratio = config.spatial_ratio
        if height % ratio or width % ratio:
            raise VAEInputError(f"encode needs height and width divisible by {ratio}; got {height}x{width}. Resize "
                                f"or crop to e.g. {height // ratio * ratio}x{width // ratio * ratio}.")
        if chunk_frames == "whole":
            chunks = [(0, frames)]
        else:
            step = chunk_frames or config.mini_batch_encoder
            if step < 1 or step % config.temporal_ratio:
                raise ValueError(f"chunk_frames must be a positive multiple of {config.temporal_ratio}, got {step}")
            chunks = [(0, 1)] + [(t, min(t + step, frames)) for t in range(1, frames, step)]
        compute_device, dtype = self._compute_placement(device)
        tile_latent, overlap_latent = self._choose_tile(
            tile_size, tile_overlap, memory_budget, height, width, batch, dtype.itemsize, "encode",
            None if chunk_frames == "whole" else chunk_frames)
        tiles = plan_tiles(height // ratio, width // ratio, tile_latent, overlap_latent, out_scale=1)

        out = torch.zeros(batch, config.latent_channels, latent_frames, height // ratio, width // ratio,
                          dtype=out_dtype, device=video.device)
        total, done = len(tiles) * len(chunks), 0
        for tile in tiles:
            state = CausalState()
            latent_t = 0
            for t0, t1 in chunks:
                if interrupt is not None:
                    interrupt()
                x = video[:, :, t0:t1, tile.y0 * ratio:tile.y1 * ratio, tile.x0 * ratio:tile.x1 * ratio]
                x = x.to(device=compute_device, dtype=dtype)
                mean = self.quant_conv(self.encoder(x, state))[:, :config.latent_channels]  # posterior mode
                target = out[:, :, latent_t:latent_t + mean.shape[2], tile.y0:tile.y1, tile.x0:tile.x1]
                mean = mean.to(device=out.device, dtype=out_dtype)
                if tile.weight is None:
                    target.copy_(mean)
                else:
                    target.addcmul_(mean, tile.weight.to(device=out.device, dtype=out_dtype))
                latent_t += mean.shape[2]
                del x, mean
                done += 1
                if progress is not None:
                    progress(done, total)
        return out.mul_(config.scaling_factor)

    # -- decode ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, tile_size: int | None = None, tile_overlap: int | None = None,
               memory_budget: int | None = None, chunk_frames: int | Literal["whole"] | None = None,
               device: torch.device | str | None = None, out_dtype: torch.dtype = torch.float32,
               postprocess: bool = True, progress: Progress | None = None,
               interrupt: Interrupt | None = None) -> torch.Tensor:
        """Latents [B, 16, 1+k, h, w] (scaled, as `encode` returns) -> video [B, 3, 4k+1, 8h, 8w] in [0, 1], i.e.
        `(decoder(latents / scaling_factor).clamp(-1, 1) + 1) / 2` (§1.2), in `out_dtype` on the latents' device.
        postprocess=False returns the raw decoder output instead (about [-1, 1], unclamped).

        tile_size / tile_overlap: spatial tiles in output pixels (overlap default tile/4), blended linearly in pixel
        space; memory_budget: bytes of working memory to pick a tile size automatically; chunk_frames: latent frames
        per chunk after the first (default config mini_batch_decoder = 1) or "whole"; device: where to compute.
        Decoded frames are written straight into one preallocated output, so working memory does not grow with T.
        `interrupt()` runs before and `progress(done, total)` after every chunk of every tile."""
        config = self.config
        if latents.ndim != 5:
            raise VAEInputError(f"decode expects latents [batch, channels, frames, height, width]; got shape "
                                f"{tuple(latents.shape)}")
        batch, channels, latent_frames, latent_height, latent_width = latents.shape
        if channels != config.latent_channels:
            raise VAEInputError(f"decode expects {config.latent_channels} latent channels in dim 1 of "
                                f"[B, C, T, H, W]; got {channels} (shape {tuple(latents.shape)})")
        if latent_frames < 1:
            raise VAEInputError("decode got latents with 0 frames; at least 1 latent frame is needed")
        if chunk_frames == "whole":
            chunks = [(0, latent_frames)]
        else:
            step = chunk_frames or config.mini_batch_decoder
            if step < 1:
                raise ValueError(f"chunk_frames must be >= 1, got {step}")
            chunks = [(0, 1)] + [(t, min(t + step, latent_frames)) for t in range(1, latent_frames, step)]
        ratio = config.spatial_ratio
        frames = pixel_frame_count(latent_frames, config.temporal_ratio)
        height, width = latent_height * ratio, latent_width * ratio
        compute_device, dtype = self._compute_placement(device)
        tile_latent, overlap_latent = self._choose_tile(
            tile_size, tile_overlap, memory_budget, height, width, batch, dtype.itemsize, "decode",
            None if chunk_frames == "whole" else chunk_frames)
        tiles = plan_tiles(latent_height, latent_width, tile_latent, overlap_latent, out_scale=ratio)

        out = torch.empty if len(tiles) == 1 else torch.zeros
        video = out(batch, config.out_channels, frames, height, width, dtype=out_dtype, device=latents.device)
        total, done = len(tiles) * len(chunks), 0
        for tile in tiles:
            state = CausalState()
            weight = None if tile.weight is None else tile.weight.to(device=video.device, dtype=out_dtype)
            pixel_t = 0
            for t0, t1 in chunks:
                if interrupt is not None:
                    interrupt()
                z = latents[:, :, t0:t1, tile.y0:tile.y1, tile.x0:tile.x1]
                z = z.to(device=compute_device, dtype=dtype) / config.scaling_factor
                decoded = self.decoder(self.post_quant_conv(z), state).to(device=video.device, dtype=out_dtype)
                target = video[:, :, pixel_t:pixel_t + decoded.shape[2],
                               tile.y0 * ratio:tile.y1 * ratio, tile.x0 * ratio:tile.x1 * ratio]
                if weight is None:
                    target.copy_(decoded)
                else:
                    target.addcmul_(decoded, weight)
                pixel_t += decoded.shape[2]
                del z, decoded
                done += 1
                if progress is not None:
                    progress(done, total)
        if postprocess:
            video.clamp_(-1.0, 1.0).add_(1.0).mul_(0.5)
        return video


# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _attention_in_keys(keys) -> bool:
    return any(".mid_block.attentions." in key for key in keys)


def _config_from_shapes(shapes: dict[str, tuple[int, ...]], overrides: dict | None, source: str) -> VAEConfig:
    """Config of a bare .safetensors VAE: the released V5 (attention keys present) or V5.1 config, with the widths
    read from the tensor shapes so that re-trained / reduced copies load too; `overrides` wins over both."""
    version = V5 if _attention_in_keys(shapes) else V5_1
    raw = released_vae_config(version)
    try:
        levels = sorted({int(key.split(".")[2]) for key in shapes if key.startswith("encoder.down_blocks.")})
        raw["block_out_channels"] = [shapes[f"encoder.down_blocks.{i}.convs.0.conv1.weight"][0] for i in levels]
        raw["layers_per_block"] = len({key.split(".")[4] for key in shapes
                                       if key.startswith("encoder.down_blocks.0.convs.")})
        raw["latent_channels"] = shapes["post_quant_conv.weight"][0]
        raw["in_channels"] = shapes["encoder.conv_in.weight"][1]
        raw["out_channels"] = shapes["decoder.conv_out.weight"][0]
    except (KeyError, IndexError, ValueError) as error:
        raise VAEConfigError(f"{source} does not look like an EasyAnimate VAE (AutoencoderKLMagvit) checkpoint: "
                             f"missing or malformed tensor {error}. Expected keys like encoder.conv_in.weight, "
                             "decoder.conv_out.weight, post_quant_conv.weight.") from None
    if len(raw["block_out_channels"]) != len(raw["down_block_types"]):
        raise VAEConfigError(f"{source}: found {len(raw['block_out_channels'])} encoder levels, the released VAE "
                             f"has {len(raw['down_block_types'])}; put its vae/config.json next to it as a folder")
    raw.update(overrides or {})
    try:
        return VAEConfig.from_dict(raw, source=source)
    except VAEConfigError as error:
        raise VAEConfigError(f"{error}. A bare .safetensors file does not record norm_num_groups and friends: pass "
                             "them as load_vae(..., config={...}) or load the folder with its config.json") from None


def _find_vae_folder(path: Path) -> Path:
    """The folder holding config.json + weights: `path` itself, or `path/vae` for a model root."""
    if (path / CONFIG_NAME).is_file() and not (path / "vae").is_dir():
        return path
    if (path / "vae" / CONFIG_NAME).is_file():
        return path / "vae"
    raise FileNotFoundError(
        f"no VAE config found under {path}: expected {path / 'vae' / CONFIG_NAME} (model folder, as released) or "
        f"{path / CONFIG_NAME} (the vae folder itself), next to diffusion_pytorch_model.safetensors. Download the "
        "model's vae/ folder from Hugging Face (alibaba-pai/EasyAnimateV5*) into ComfyUI/models/EasyAnimate/<name>/.")


def load_vae(path: str | Path, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu", *,
             ops=None, compute_dtype: torch.dtype | None = None, config: dict | None = None) -> VAE:
    """Load the EasyAnimate VAE from a model folder (`<model>/vae/`), a vae folder, or a single `.safetensors` file.

    Folders: `config.json` + `diffusion_pytorch_model.safetensors` (original and `-diffusers` layouts; keys are the
    same, §1.6). Mid attention is built iff the config says so; a diffusers config (no such key) defers to the
    weights. Single files: the released V5 config when their mid-attention keys are present, else V5.1, widths read
    from the tensor shapes; `config` overrides fields in both cases. Weights stream into a meta-built model in
    `dtype` on `device` with strict key checks (models/checkpoint.py). compute_dtype defaults to `dtype`, except
    fp16 with V5 weights, which the reference always runs in fp32 (`upcast_vae`, §1.8)."""
    from .checkpoint import UnsafeCheckpointError, load_state_streaming, read_headers, weight_files

    path = Path(path).expanduser().absolute()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run code when opened. "
            "Use the model's vae/diffusion_pytorch_model.safetensors instead.")
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file; the VAE loads from safetensors only")
        files = [path]
        shapes = {key: info.shape for key, (info, _) in read_headers(files).items()}
        vae_config = _config_from_shapes(shapes, config, str(path))
    elif path.is_dir():
        folder = _find_vae_folder(path)
        config_file = folder / CONFIG_NAME
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise VAEConfigError(f"cannot read {config_file}: {error}. Restore the file from the model "
                                 "download.") from None
        if not isinstance(raw, dict):
            raise VAEConfigError(f"{config_file} is not a JSON object. Restore the file from the model download.")
        raw.update(config or {})
        vae_config = VAEConfig.from_dict(raw, source=str(config_file))
        files = weight_files(folder, describe="the causal 3D VAE weights")
        has_attention = _attention_in_keys(read_headers(files))
        if vae_config.mid_block_use_attention is None:
            vae_config = replace(vae_config, mid_block_use_attention=has_attention)
        elif vae_config.mid_block_use_attention != has_attention:
            raise VAEConfigError(
                f"{config_file} says mid_block_use_attention={vae_config.mid_block_use_attention}, but the weights "
                f"in {folder} {'contain' if has_attention else 'lack'} the mid-block attention tensors "
                "(encoder/decoder.mid_block.attentions.0.*). The config and weights come from different models "
                "(V5 has the attention, V5.1 does not); use the vae/ folder of one download.")
    else:
        raise FileNotFoundError(f"VAE not found: {path} does not exist. Expected a model folder containing "
                                "vae/config.json and vae/diffusion_pytorch_model.safetensors, or a .safetensors file.")

    if compute_dtype is None and dtype == torch.float16 and vae_config.mid_block_use_attention:
        compute_dtype = torch.float32  # V5 + fp16: reference upcasts the VAE to fp32 (§1.8, pitfall §5.11)
    with torch.device("meta"):
        vae = VAE(vae_config, ops=ops, compute_dtype=compute_dtype)
    load_state_streaming(vae, files, dtype, device=device)
    return vae.eval()
