"""How much working memory one streamed VAE chunk needs: the estimate the tile planner sizes tiles from."""

from __future__ import annotations

from typing import Literal

from .config import VAEConfig

# Working memory per chunk ~ FACTOR x (one full-resolution activation of a chunk): peak RSS growth measured on CPU,
# fp32, released widths (benchmarks/vae.py: decode 6.9x at 80 px tiles, up to 8.2x with glibc's default heap
# caching; encode 5.8x at 96 px), rounded up; weights and the output are extra.
DECODE_MEMORY_FACTOR = 9.0
ENCODE_MEMORY_FACTOR = 7.0


# The tile planner's smallest tile, in latent pixels (models/vae/causal.py, auto_tile_size).
MIN_TILE_LATENT = 16


def smallest_tile_working_bytes(config: VAEConfig, height: int, width: int, element_size: int = 4) -> int:
    """The least working memory a decode of a height x width video can run in: one chunk over the smallest tile (or
    the whole frame when it is smaller than that tile)."""
    tile = MIN_TILE_LATENT * config.spatial_ratio
    return estimate_working_bytes(config, min(height, tile), min(width, tile), 1, element_size, "decode")


def estimate_working_bytes(
    config: VAEConfig,
    height: int,
    width: int,
    batch: int = 1,
    element_size: int = 4,
    direction: Literal["decode", "encode"] = "decode",
    chunk_frames: int | None = None,
) -> int:
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
