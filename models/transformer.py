"""EasyAnimate V5 / V5.1 MMDiT video transformer (`EasyAnimateTransformer3DModel`), weight-compatible with the
released checkpoints: module names equal the original state-dict keys (docs/checkpoints.md, transformer keys), so
loading is a plain state-dict assignment. Forward semantics follow the original EasyAnimate code (docs/faithfulness.md,
MMDiT blocks), not the diffusers port (docs/faithfulness.md, summary of differences): the 7B's trailing non-MMDiT blocks
apply the shared out-projection to the text tokens too.

Layers come from an injected `ops` namespace (models/ops.py); this file never decides storage dtype or device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .ops import resolve as resolve_ops
from .rope import apply_rope, video_rope
from .transformer_options import NO_OPTIONS, TransformerOptions


@dataclass(frozen=True)
class TransformerParams:
    """The released `transformer/config.json` fields that shape the network (docs/checkpoints.md, transformer
    config)."""

    in_channels: int
    num_layers: int
    mmdit_layers: int
    text_embed_dim: int
    text_embed_dim_t5: int | None
    add_norm_text_encoder: bool
    out_channels: int = 16
    num_attention_heads: int = 48
    attention_head_dim: int = 64
    patch_size: int = 2
    time_embed_dim: int = 512
    norm_eps: float = 1e-5
    flip_sin_to_cos: bool = True
    freq_shift: int = 0

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @classmethod
    def from_config(cls, config: dict) -> "TransformerParams":
        """Build from a config.json dict; keys must be present for the first six fields (no class defaults: the
        loader fills absent keys from the variant registry, docs/checkpoints.md, transformer config)."""
        required = [f.name for f in fields(cls)][:6]
        missing = [k for k in required if k not in config]
        if missing:
            raise ValueError(f"transformer config lacks {missing}; expected the released config.json fields")
        unsupported = {  # options of the reference class that no released V5/V5.1 model turns on
            "after_norm": False,
            "time_position_encoding_type": "3d_rope",
            "ref_channels": None,
            "clip_channels": None,
            "swa_layers": None,
            "activation_fn": "gelu-approximate",
            "timestep_activation_fn": "silu",
            "norm_elementwise_affine": True,
        }
        for key, released in unsupported.items():
            if config.get(key, released) != released:
                raise ValueError(
                    f"transformer config {key}={config[key]!r} is not supported (released value {released!r})"
                )
        values = {f.name: config[f.name] for f in fields(cls) if f.name in config}
        if values["text_embed_dim_t5"] is not None and values["add_norm_text_encoder"]:
            raise ValueError("text_embed_dim_t5 with add_norm_text_encoder is not a released combination")
        return cls(**values)

    def to_config(self) -> dict:
        return asdict(self)


class TimestepEmbedding(nn.Module):
    def __init__(self, width: int, dim: int, ops):
        super().__init__()
        self.linear_1, self.linear_2 = ops.Linear(width, dim), ops.Linear(dim, dim)

    def forward(self, t_freq: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(t_freq)))


def timestep_sinusoid(timestep: torch.Tensor, width: int, flip_sin_to_cos: bool, shift: float) -> torch.Tensor:
    """[B, width] fp32 sinusoid, [cos | sin] when flipped (docs/faithfulness.md, timestep embedding)."""
    half = width // 2
    exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timestep.device) / (half - shift)
    angles = timestep.float()[:, None] * torch.exp(exponent)[None]
    parts = [angles.cos(), angles.sin()] if flip_sin_to_cos else [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=-1)


class AdaNormZero(nn.Module):
    """Shared fp32 LayerNorm for both streams + 6-way modulation (shift, scale, gate, enc_shift, enc_scale, enc_gate)."""

    def __init__(self, dim: int, cond_dim: int, eps: float, ops):
        super().__init__()
        self.linear = ops.Linear(cond_dim, 6 * dim)
        self.norm = ops.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, text: torch.Tensor, emb: torch.Tensor):
        """emb = SiLU(temb). Returns (modulated x, modulated text, gate [B,1,D], text gate [B,1,D])."""
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(emb)[:, None].chunk(6, dim=-1)
        # FP32LayerNorm, docs/faithfulness.md, MMDiT blocks
        x = torch.addcmul(shift, self.norm(x.float()).to(x.dtype), 1 + scale)
        text = torch.addcmul(t_shift, self.norm(text.float()).to(text.dtype), 1 + t_scale)
        return x, text, gate, t_gate


class Attention(nn.Module):
    """q/k/v/out projections of one stream with per-head LayerNorm qk-norm (eps 1e-6)."""

    def __init__(self, dim: int, heads: int, ops):
        super().__init__()
        self.heads = heads
        self.to_q, self.to_k, self.to_v = ops.Linear(dim, dim), ops.Linear(dim, dim), ops.Linear(dim, dim)
        self.norm_q = ops.LayerNorm(dim // heads, eps=1e-6)
        self.norm_k = ops.LayerNorm(dim // heads, eps=1e-6)
        self.to_out = nn.ModuleList([ops.Linear(dim, dim)])

    def qkv(self, x: torch.Tensor):
        """[B, N, dim] -> q, k, v [B, heads, N, head_dim]. The qk-norm runs on the projections as they come out,
        [B, N, heads, head_dim] (the same rows, so the same numbers, without a transposed copy first)."""
        q, k, v = (p(x).unflatten(-1, (self.heads, -1)) for p in (self.to_q, self.to_k, self.to_v))
        return tuple(rearrange(t, "b n h d -> b h n d") for t in (self.norm_q(q), self.norm_k(k), v))


class FeedForward(nn.Module):
    """Linear -> GELU(tanh) -> Linear; keys `net.0.proj`, `net.2` (net.1 / net.3 were parameter-free dropouts)."""

    def __init__(self, dim: int, ops):
        super().__init__()
        up = nn.Module()
        up.proj = ops.Linear(dim, 4 * dim)
        self.net = nn.ModuleList([up, nn.Identity(), ops.Linear(4 * dim, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.net[0].proj(x)
        if torch.is_grad_enabled():
            hidden = F.gelu(hidden, approximate="tanh")
        else:  # in place on our own temporary: saves allocating (and page-faulting) a [tokens, 4*dim] buffer
            hidden = torch.ops.aten.gelu_(hidden, approximate="tanh")
        return self.net[2](hidden)


class Block(nn.Module):
    """MMDiT block (separate text weights in attn2 / txt_ff) or, when `mmdit=False`, one set of weights for both
    streams — the shared out-projection is then applied to the text tokens too (docs/faithfulness.md, MMDiT blocks)."""

    def __init__(self, p: TransformerParams, mmdit: bool, ops=None):
        super().__init__()
        ops = resolve_ops(ops)
        dim, heads = p.inner_dim, p.num_attention_heads
        self.norm1 = AdaNormZero(dim, p.time_embed_dim, p.norm_eps, ops)
        self.attn1 = Attention(dim, heads, ops)
        self.attn2 = Attention(dim, heads, ops) if mmdit else None
        self.norm2 = AdaNormZero(dim, p.time_embed_dim, p.norm_eps, ops)
        self.ff = FeedForward(dim, ops)
        self.txt_ff = FeedForward(dim, ops) if mmdit else None
        self.attention = ops.attention  # q,k,v [B,H,N,D]; models/attention.py

    def forward(self, x: torch.Tensor, text: torch.Tensor, emb: torch.Tensor, rope, attention=None):
        text_attn, text_ff = self.attn2 or self.attn1, self.txt_ff or self.ff
        x_mod, text_mod, gate, text_gate = self.norm1(x, text, emb)
        xq, xk, xv = self.attn1.qkv(x_mod)
        tq, tk, tv = text_attn.qkv(text_mod)
        # video tokens only, after qk-norm (docs/faithfulness.md, MMDiT blocks)
        xq, xk = apply_rope(xq, *rope), apply_rope(xk, *rope)
        attention = attention or self.attention  # a sequence-parallel wrapper of it when sharded
        out = attention(torch.cat([tq, xq], 2), torch.cat([tk, xk], 2), torch.cat([tv, xv], 2))
        out = rearrange(out, "b h n d -> b n (h d)")  # sequence order [text, video]
        text_len = text.shape[1]
        x = torch.addcmul(x, gate, self.attn1.to_out[0](out[:, text_len:]))
        text = torch.addcmul(text, text_gate, text_attn.to_out[0](out[:, :text_len]))

        x_mod, text_mod, gate, text_gate = self.norm2(x, text, emb)
        return torch.addcmul(x, gate, self.ff(x_mod)), torch.addcmul(text, text_gate, text_ff(text_mod))


class OutputNorm(nn.Module):
    """AdaLayerNorm with (shift, scale) order (docs/faithfulness.md, MMDiT blocks)."""

    def __init__(self, dim: int, cond_dim: int, eps: float, ops):
        super().__init__()
        self.linear = ops.Linear(cond_dim, 2 * dim)
        self.norm = ops.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(emb)[:, None].chunk(2, dim=-1)
        return torch.addcmul(shift, self.norm(x), 1 + scale)


class EasyAnimateTransformer(nn.Module):
    def __init__(self, params: TransformerParams, ops=None):
        super().__init__()
        ops = resolve_ops(ops)
        p = self.params = params
        dim = p.inner_dim
        self.time_embedding = TimestepEmbedding(dim, p.time_embed_dim, ops)
        self.proj = ops.Conv2d(p.in_channels, dim, kernel_size=p.patch_size, stride=p.patch_size)
        if p.add_norm_text_encoder:  # V5.1: Qwen2-VL features
            self.text_proj = nn.Sequential(ops.RMSNorm(p.text_embed_dim), ops.Linear(p.text_embed_dim, dim))
        else:  # V5: Bert stream (+ mT5 stream)
            self.text_proj = ops.Linear(p.text_embed_dim, dim)
        self.text_proj_t5 = ops.Linear(p.text_embed_dim_t5, dim) if p.text_embed_dim_t5 else None
        self.transformer_blocks = nn.ModuleList(Block(p, i < p.mmdit_layers, ops) for i in range(p.num_layers))
        self.norm_final = ops.LayerNorm(dim, eps=p.norm_eps)
        self.norm_out = OutputNorm(dim, p.time_embed_dim, p.norm_eps, ops)
        self.proj_out = ops.Linear(dim, p.patch_size**2 * p.out_channels)

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor | float,
        text: torch.Tensor,
        text_t5: torch.Tensor | None = None,
        inpaint_latents: torch.Tensor | None = None,
        control_latents: torch.Tensor | None = None,
        ref_latents: torch.Tensor | None = None,
        options: TransformerOptions | None = None,
    ) -> torch.Tensor:
        """Predict [B, out_channels, F, H, W] in `latents.dtype` (the compute dtype).

        latents: [B, C, F, H, W] noisy latent; the conditions are concatenated after it on C in the order
          [latents | inpaint (mask 1 + masked video 16) | control (16, or Plücker 6) | ref (16)] (docs/checkpoints.md,
          variants), so a caller may equally pass all channels pre-concatenated in `latents` and leave the condition
          arguments None.
        timestep: [B] or scalar; rounded to the latent dtype first, as the reference pipeline does
        (docs/faithfulness.md, timestep embedding).
        text: [B, S, text_embed_dim] (V5: Bert features; V5.1: Qwen2-VL features); text_t5: [B, S5, text_embed_dim_t5]
          mT5 features, V5 only. No text mask: padded tokens take part as real tokens (docs/faithfulness.md, text
          streams).
        options: the run's hooks — step index, TeaCache, interrupt, parallel layout (models/transformer_options.py);
          None is a plain call.
        """
        p = self.params
        batch, _, frames, height, width = latents.shape
        dtype = latents.dtype
        x = torch.cat([t for t in (latents, inpaint_latents, control_latents, ref_latents) if t is not None], dim=1)
        if x.shape[1] != p.in_channels:
            raise ValueError(
                f"transformer input has {x.shape[1]} channels (latents + inpaint/control/ref); this model expects "
                f"in_channels={p.in_channels} (16 T2V, 33 InP, 32 V5 Control, 48 V5.1 Control, 38 Camera)"
            )
        if height % p.patch_size or width % p.patch_size:
            raise ValueError(f"latent height/width {height}x{width} must be multiples of patch size {p.patch_size}")
        grid_h, grid_w = height // p.patch_size, width // p.patch_size

        timestep = torch.as_tensor(timestep, device=latents.device).reshape(-1).to(dtype).expand(batch)
        t_freq = timestep_sinusoid(timestep, p.inner_dim, p.flip_sin_to_cos, p.freq_shift).to(dtype)
        emb = F.silu(self.time_embedding(t_freq))  # every modulation takes SiLU(temb)

        x = self.proj(rearrange(x, "b c f h w -> (b f) c h w"))
        x = rearrange(x, "(b f) d h w -> b (f h w) d", b=batch)  # token n = (frame, row, col)
        text = self._embed_text(text.to(dtype), None if text_t5 is None else text_t5.to(dtype))
        rope = video_rope(frames, grid_h, grid_w, p.attention_head_dim, device=latents.device)
        attention = None  # each block's injected attention
        options = NO_OPTIONS if options is None else options
        shard = options.sequence_shard(x.shape[1])
        if shard is not None:  # this rank's video tokens and their RoPE rows (docs/parallel.md)
            x, rope = shard.split(x), tuple(shard.split(t, dim=0) for t in rope)
            inner = self.transformer_blocks[0].attention
            attention = shard.attention(text.shape[1], p.num_attention_heads, inner)

        teacache = options.teacache
        if teacache is not None and not teacache.should_compute(
            options.step_index, self.transformer_blocks[0].norm1(x, text, emb)[0]
        ):
            x = teacache.apply(x)  # patch-embedded tokens + cached (blocks + output norms) residual
        else:
            tokens = x
            for block in self.transformer_blocks:
                options.check_interrupt()
                x, text = block(x, text, emb, rope, attention)
            x = self.norm_out(self.norm_final(x), emb)  # two LayerNorms in a row (docs/faithfulness.md, MMDiT blocks)
            if teacache is not None:
                teacache.store(x - tokens)
        x = self.proj_out(x)
        if shard is not None:
            x = shard.gather(x)
        return rearrange(
            x, "b (f h w) (c p q) -> b c f (h p) (w q)", f=frames, h=grid_h, p=p.patch_size, q=p.patch_size
        )

    def _embed_text(self, text: torch.Tensor, text_t5: torch.Tensor | None) -> torch.Tensor:
        if (text_t5 is None) != (self.text_proj_t5 is None):
            expected = "Bert and mT5 features (V5)" if self.text_proj_t5 is not None else "one text stream (V5.1)"
            raise ValueError(
                f"this transformer expects {expected}; got text_t5={'None' if text_t5 is None else 'a tensor'}"
            )
        tokens = self.text_proj(text)
        if text_t5 is not None:  # V5: Bert tokens first, then mT5 tokens (docs/faithfulness.md, text streams)
            tokens = torch.cat([tokens, self.text_proj_t5(text_t5)], dim=1)
        return tokens
