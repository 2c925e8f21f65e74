"""The causal building blocks of the VAE (resnets, samplers, per-frame attention, encoder, decoder) and the
`CausalState` one streamed pass carries between temporal chunks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .. import ops as default_ops
from .config import NORM_EPS, SPATIOTEMPORAL_DOWN, SPATIOTEMPORAL_UP, VAEConfig, VAEInputError

# --------------------------------------------------------------------------------------------------------------------
# Streaming state and the causal building blocks
# --------------------------------------------------------------------------------------------------------------------


class CausalState:
    """What one streamed pass carries from a temporal chunk to the next (docs/memory.md, VAE): each causal conv's
    not-yet-consumed input frames, and which temporal up-samplers have already emitted the clip's first frame. A fresh
    state means "this chunk starts the clip". One per encode/decode call and tile, so the model itself stays
    re-entrant."""

    def __init__(self) -> None:
        self.conv_history: dict[nn.Module, torch.Tensor] = {}
        self.upsamplers_started: set[nn.Module] = set()


def causal_conv(conv: nn.Conv3d, x: torch.Tensor, state: CausalState) -> torch.Tensor:
    """A 3D conv that is causal in time: output frame t sees input frames <= t. The clip start is padded by
    replicating its first frame (kernel-1) times; later chunks continue from the frames the previous chunk left
    unconsumed, which makes chunked == whole-clip for any chunking (docs/faithfulness.md, VAE)."""
    reach = conv.kernel_size[0] - 1
    stride = conv.stride[0]
    history = state.conv_history.pop(conv, None)
    if history is None:
        history = x[:, :, :1].expand(-1, -1, reach, -1, -1)
    padded = torch.cat([history, x], dim=2)
    windows = max(0, (padded.shape[2] - reach - 1) // stride + 1)
    # keep the frames the next window starts from (2 frames for stride 1; 1 for a stride-2 conv after a full window)
    state.conv_history[conv] = padded[:, :, windows * stride :].clone()
    if windows == 0:
        raise VAEInputError(
            "internal: a temporal chunk is too short for a strided causal conv; chunk sizes must be "
            "multiples of the VAE's temporal ratio"
        )
    return conv(padded)


def frame_group_norm(norm: nn.GroupNorm, x: torch.Tensor, silu: bool) -> torch.Tensor:
    """GroupNorm over (C/G, H, W) of every frame separately (`spatial_group_norm: true`, docs/faithfulness.md, VAE),
    optionally fused with the SiLU that always follows it in the resnets and output heads."""
    batch = x.shape[0]
    frames = rearrange(x, "b c t h w -> (b t) c h w")
    frames = norm(frames)
    if silu:
        frames = F.silu(frames, inplace=True)
    return rearrange(frames, "(b t) c h w -> b c t h w", b=batch)


def _causal_conv3d(
    ops, in_channels: int, out_channels: int, stride: tuple[int, int, int] = (1, 1, 1), spatial_padding: int = 1
) -> nn.Conv3d:
    # temporal padding is never done by the conv itself: causal_conv prepends history / replicated frames
    return ops.Conv3d(
        in_channels, out_channels, kernel_size=3, stride=stride, padding=(0, spatial_padding, spatial_padding)
    )


class ResnetBlock(nn.Module):
    """out = conv2(silu(GN2(conv1(silu(GN1(x)))))) + shortcut(x), per-frame norms, causal convs (docs/faithfulness.md,
    VAE)."""

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
    """Zero-pad right/bottom by 1, then a stride-(t,2,2) causal conv with no spatial padding (docs/faithfulness.md,
    VAE)."""

    def __init__(self, channels: int, temporal: bool, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.conv = _causal_conv3d(ops, channels, channels, stride=(2 if temporal else 1, 2, 2), spatial_padding=0)

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        return causal_conv(self.conv, F.pad(x, (0, 1, 0, 1)), state)


class Upsampler(nn.Module):
    """Nearest x2 on H, W -> causal conv -> (temporal blocks) nearest x2 in time, except the clip's first frame,
    which is never duplicated (docs/faithfulness.md, VAE)."""

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
    """V5 mid-block attention within each frame (docs/faithfulness.md, VAE): tokens = the H*W positions of a frame;
    GroupNorm over channels, q/k/v/out linears, softmax(q k^T / sqrt(head_dim)) v, residual from the un-normalised
    input."""

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
        q, k, v = (
            rearrange(proj(tokens), "n s (heads d) -> n heads s d", heads=self.heads)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        attended = rearrange(F.scaled_dot_product_attention(q, k, v), "n heads s d -> n s (heads d)")
        out = self.to_out(attended) + rearrange(frames, "n c s -> n s c")
        return rearrange(out, "(b t) (h w) c -> b c t h w", b=batch, h=height)


class MidBlock(nn.Module):
    """resnet, then (attention?, resnet) x (layers-1); attention only in V5 weights (docs/faithfulness.md, VAE)."""

    def __init__(self, channels: int, layers: int, groups: int, attention_heads: int | None, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.convs = nn.ModuleList(ResnetBlock(channels, channels, groups, ops) for _ in range(layers))
        if attention_heads:
            self.attentions = nn.ModuleList(
                SpatialSelfAttention(channels, attention_heads, groups, ops) for _ in range(layers - 1)
            )
        else:
            self.attentions = None

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        x = self.convs[0](x, state)
        for index, resnet in enumerate(self.convs[1:]):
            if self.attentions is not None:
                x = self.attentions[index](x)
            x = resnet(x, state)
        return x


class _ResnetStage(nn.Module):
    """One level of the encoder or decoder: `layers` resnets (the first changes the width in_channels ->
    out_channels), then a resampler, spatio-temporal when `kind` says so. The final level has none, so V5's three
    "Temporal" levels compress time only 4x (docs/faithfulness.md, VAE). The resampler is kept under the attribute
    name the released weights use (`resampler_name`)."""

    resampler_name: str
    resampler_class: type
    spatiotemporal_kind: str

    def __init__(
        self, in_channels: int, out_channels: int, layers: int, groups: int, kind: str, final: bool, ops=None
    ) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        self.convs = nn.ModuleList(
            ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups, ops) for i in range(layers)
        )
        temporal = kind == self.spatiotemporal_kind
        setattr(self, self.resampler_name, None if final else self.resampler_class(out_channels, temporal, ops))

    def forward(self, x: torch.Tensor, state: CausalState) -> torch.Tensor:
        for resnet in self.convs:
            x = resnet(x, state)
        resampler = getattr(self, self.resampler_name)
        return x if resampler is None else resampler(x, state)


class DownBlock(_ResnetStage):
    resampler_name, resampler_class, spatiotemporal_kind = "downsampler", Downsampler, SPATIOTEMPORAL_DOWN


class UpBlock(_ResnetStage):
    resampler_name, resampler_class, spatiotemporal_kind = "upsampler", Upsampler, SPATIOTEMPORAL_UP


class Encoder(nn.Module):
    """[B, 3, T, H, W] -> [B, 2*latent, T_lat, H/8, W/8] (mean and log-variance), docs/faithfulness.md, VAE."""

    def __init__(self, config: VAEConfig, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        widths, groups = config.block_out_channels, config.norm_num_groups
        heads = config.mid_block_num_attention_heads if config.mid_block_use_attention else None
        self.conv_in = _causal_conv3d(ops, config.in_channels, widths[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(
                widths[max(i - 1, 0)],
                widths[i],
                config.layers_per_block,
                groups,
                kind,
                final=i == len(widths) - 1,
                ops=ops,
            )
            for i, kind in enumerate(config.down_block_types)
        )
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
    """[B, latent, T_lat, h, w] -> [B, 3, T, 8h, 8w], docs/faithfulness.md, VAE. Up blocks have layers_per_block + 1
    resnets."""

    def __init__(self, config: VAEConfig, ops=None) -> None:
        super().__init__()
        ops = default_ops.resolve(ops)
        widths, groups = tuple(reversed(config.block_out_channels)), config.norm_num_groups
        heads = config.mid_block_num_attention_heads if config.mid_block_use_attention else None
        self.conv_in = _causal_conv3d(ops, config.latent_channels, widths[0])
        self.mid_block = MidBlock(widths[0], config.layers_per_block, groups, heads, ops)
        self.up_blocks = nn.ModuleList(
            UpBlock(
                widths[max(i - 1, 0)],
                widths[i],
                config.layers_per_block + 1,
                groups,
                kind,
                final=i == len(widths) - 1,
                ops=ops,
            )
            for i, kind in enumerate(config.up_block_types)
        )
        self.conv_norm_out = ops.GroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = _causal_conv3d(ops, widths[-1], config.out_channels)

    def forward(self, z: torch.Tensor, state: CausalState) -> torch.Tensor:
        x = causal_conv(self.conv_in, z, state)
        x = self.mid_block(x, state)
        for block in self.up_blocks:
            x = block(x, state)
        return causal_conv(self.conv_out, frame_group_norm(self.conv_norm_out, x, silu=True), state)
