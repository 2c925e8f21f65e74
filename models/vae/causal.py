"""The VAE module: encode / decode run the blocks chunk by chunk in time (causal executor) and tile by tile in space."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .. import ops as default_ops
from .blocks import CausalState, Decoder, Encoder
from .config import Interrupt, Progress, VAEConfig, VAEConfigError, VAEInputError
from .memory import MIN_TILE_LATENT, estimate_working_bytes
from .tiling import latent_frame_count, pixel_frame_count, plan_tiles

# --------------------------------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VAEPass:
    """How one encode or decode pass is cut and where it runs; `encode` and `decode` take these as keywords.

    tile_size / tile_overlap: spatial tiles in (output) pixels, overlap default tile/4, blended linearly; None: no
    tiling, unless memory_budget (bytes of working memory) picks a tile size. chunk_frames: frames per chunk after the
    first (encode: pixel frames, a multiple of 4, default config mini_batch_encoder = 4; decode: latent frames, default
    config mini_batch_decoder = 1), or "whole" for one pass over the clip. device: where to compute (default: the
    weights'). out_dtype: the result's dtype (it stays on the input's device). `interrupt()` runs before and
    `progress(done, total)` after every chunk of every tile."""

    tile_size: int | None = None
    tile_overlap: int | None = None
    memory_budget: int | None = None
    chunk_frames: int | Literal["whole"] | None = None
    device: torch.device | str | None = None
    out_dtype: torch.dtype = torch.float32
    progress: Progress | None = None
    interrupt: Interrupt | None = None


def _checked_shape(tensor: torch.Tensor, call: str, noun: str, channels: int, kind: str) -> torch.Size:
    """The [B, C, T, H, W] shape of an encode / decode input, or a VAEInputError saying what was expected."""
    if tensor.ndim != 5:
        raise VAEInputError(
            f"{call} expects {noun} [batch, channels, frames, height, width]; got shape {tuple(tensor.shape)}"
        )
    if tensor.shape[1] != channels:
        raise VAEInputError(
            f"{call} expects {channels} {kind} channels in dim 1 of [B, C, T, H, W]; got {tensor.shape[1]} "
            f"(shape {tuple(tensor.shape)})"
        )
    return tensor.shape


def frame_chunks(frames: int, chunk_frames, default: int, multiple: int) -> list[tuple[int, int]]:
    """[(t0, t1)] the causal VAE runs over: the first frame alone, then `chunk_frames` (default `default`, a positive
    multiple of `multiple`) at a time; "whole": one pass over all frames."""
    if chunk_frames == "whole":
        return [(0, frames)]
    step = chunk_frames or default
    if step < 1 or step % multiple:
        raise ValueError(f"chunk_frames must be a positive multiple of {multiple}, got {step}")
    return [(0, 1)] + [(t, min(t + step, frames)) for t in range(1, frames, step)]


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
        return torch.device(device) if device is not None else weight.device, dtype

    def _choose_tile(
        self, run: VAEPass, pixels: tuple[int, int, int], element_size: int, direction: str
    ) -> tuple[int | None, int]:
        """(tile edge, overlap) in latent pixels for a [batch, height, width] pixel extent; tile None = no tiling."""
        ratio = self.config.spatial_ratio
        tile_size, tile_overlap = run.tile_size, run.tile_overlap
        if tile_size is None and run.memory_budget is not None:
            batch, height, width = pixels
            chunk = None if run.chunk_frames == "whole" else run.chunk_frames
            tile_size = self.auto_tile_size(height, width, run.memory_budget, batch, element_size, direction, chunk)
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

    def auto_tile_size(
        self,
        height: int,
        width: int,
        memory_budget: int,
        batch: int = 1,
        element_size: int = 4,
        direction: Literal["decode", "encode"] = "decode",
        chunk_frames: int | None = None,
    ) -> int | None:
        """Largest square tile (pixels, in steps of 8 latent pixels) whose estimated working memory fits
        `memory_budget` bytes; None when the whole frame fits (no tiling). Never below 16 latent pixels."""

        def fits(h: int, w: int) -> bool:
            return (
                estimate_working_bytes(self.config, h, w, batch, element_size, direction, chunk_frames) <= memory_budget
            )

        if fits(height, width):
            return None
        step, smallest = 8 * self.config.spatial_ratio, MIN_TILE_LATENT * self.config.spatial_ratio
        tile = max(height, width) // step * step
        while tile > smallest and not fits(min(tile, height), min(tile, width)):
            tile -= step
        return max(tile, smallest)

    # -- encode ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, video: torch.Tensor, **options) -> torch.Tensor:
        """Video [B, 3, T, H, W] in [-1, 1] (T = 1 or 4k+1, H and W multiples of 8) -> latents
        [B, 16, 1+k, H/8, W/8] = posterior mode x scaling_factor (docs/faithfulness.md, VAE), in `out_dtype` on the
        video's device. `options`: the fields of VAEPass (tiles blend in latent space here)."""
        run, config = VAEPass(**options), self.config
        batch, _, frames, height, width = _checked_shape(video, "encode", "a video tensor", config.in_channels, "(RGB)")
        latent_frames = latent_frame_count(frames, config.temporal_ratio)
        ratio = config.spatial_ratio
        if height % ratio or width % ratio:
            raise VAEInputError(
                f"encode needs height and width divisible by {ratio}; got {height}x{width}. Resize "
                f"or crop to e.g. {height // ratio * ratio}x{width // ratio * ratio}."
            )
        chunks = frame_chunks(frames, run.chunk_frames, config.mini_batch_encoder, config.temporal_ratio)
        compute_device, dtype = self._compute_placement(run.device)
        tile_latent, overlap_latent = self._choose_tile(run, (batch, height, width), dtype.itemsize, "encode")
        tiles = plan_tiles(height // ratio, width // ratio, tile_latent, overlap_latent, out_scale=1)

        out = torch.zeros(
            batch,
            config.latent_channels,
            latent_frames,
            height // ratio,
            width // ratio,
            dtype=run.out_dtype,
            device=video.device,
        )
        total, done = len(tiles) * len(chunks), 0
        for tile in tiles:
            state = CausalState()
            latent_t = 0
            for t0, t1 in chunks:
                if run.interrupt is not None:
                    run.interrupt()
                x = video[:, :, t0:t1, tile.y0 * ratio : tile.y1 * ratio, tile.x0 * ratio : tile.x1 * ratio]
                x = x.to(device=compute_device, dtype=dtype)
                mean = self.quant_conv(self.encoder(x, state))[:, : config.latent_channels]  # posterior mode
                target = out[:, :, latent_t : latent_t + mean.shape[2], tile.y0 : tile.y1, tile.x0 : tile.x1]
                mean = mean.to(device=out.device, dtype=run.out_dtype)
                if tile.weight is None:
                    target.copy_(mean)
                else:
                    target.addcmul_(mean, tile.weight.to(device=out.device, dtype=run.out_dtype))
                latent_t += mean.shape[2]
                del x, mean
                done += 1
                if run.progress is not None:
                    run.progress(done, total)
        return out.mul_(config.scaling_factor)

    # -- decode ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, *, postprocess: bool = True, **options) -> torch.Tensor:
        """Latents [B, 16, 1+k, h, w] (scaled, as `encode` returns) -> video [B, 3, 4k+1, 8h, 8w] in [0, 1], i.e.
        `(decoder(latents / scaling_factor).clamp(-1, 1) + 1) / 2` (docs/faithfulness.md, VAE), in `out_dtype` on the
        latents' device. postprocess=False returns the raw decoder output instead (about [-1, 1], unclamped).
        `options`: the fields of VAEPass (tiles blend in pixel space here). Decoded frames are written straight into
        one preallocated output, so working memory does not grow with T."""
        run, config = VAEPass(**options), self.config
        batch, _, latent_frames, latent_height, latent_width = _checked_shape(
            latents, "decode", "latents", config.latent_channels, "latent"
        )
        if latent_frames < 1:
            raise VAEInputError("decode got latents with 0 frames; at least 1 latent frame is needed")
        chunks = frame_chunks(latent_frames, run.chunk_frames, config.mini_batch_decoder, 1)
        ratio = config.spatial_ratio
        frames = pixel_frame_count(latent_frames, config.temporal_ratio)
        height, width = latent_height * ratio, latent_width * ratio
        compute_device, dtype = self._compute_placement(run.device)
        tile_latent, overlap_latent = self._choose_tile(run, (batch, height, width), dtype.itemsize, "decode")
        tiles = plan_tiles(latent_height, latent_width, tile_latent, overlap_latent, out_scale=ratio)

        out = torch.empty if len(tiles) == 1 else torch.zeros
        video = out(batch, config.out_channels, frames, height, width, dtype=run.out_dtype, device=latents.device)
        total, done = len(tiles) * len(chunks), 0
        for tile in tiles:
            state = CausalState()
            weight = None if tile.weight is None else tile.weight.to(device=video.device, dtype=run.out_dtype)
            pixel_t = 0
            for t0, t1 in chunks:
                if run.interrupt is not None:
                    run.interrupt()
                z = latents[:, :, t0:t1, tile.y0 : tile.y1, tile.x0 : tile.x1]
                z = z.to(device=compute_device, dtype=dtype) / config.scaling_factor
                decoded = self.decoder(self.post_quant_conv(z), state).to(device=video.device, dtype=run.out_dtype)
                target = video[
                    :,
                    :,
                    pixel_t : pixel_t + decoded.shape[2],
                    tile.y0 * ratio : tile.y1 * ratio,
                    tile.x0 * ratio : tile.x1 * ratio,
                ]
                if weight is None:
                    target.copy_(decoded)
                else:
                    target.addcmul_(decoded, weight)
                pixel_t += decoded.shape[2]
                del z, decoded
                done += 1
                if run.progress is not None:
                    run.progress(done, total)
        if postprocess:
            video.clamp_(-1.0, 1.0).add_(1.0).mul_(0.5)
        return video
