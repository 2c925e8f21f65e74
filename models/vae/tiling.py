"""The frame-count rule (1 + 4k pixel frames) and the overlapping spatial tile planner with its blend ramps."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .config import VAEInputError

# --------------------------------------------------------------------------------------------------------------------
# Frame rule, tiling plan, memory estimate
# --------------------------------------------------------------------------------------------------------------------


def latent_frame_count(pixel_frames: int, temporal_ratio: int = 4) -> int:
    """1 or 1 + 4k pixel frames -> 1 + k latent frames (docs/faithfulness.md, VAE); anything else raises with the
    nearest valid counts."""
    if pixel_frames < 1 or (pixel_frames - 1) % temporal_ratio:
        below = 1 + max(0, (pixel_frames - 1) // temporal_ratio) * temporal_ratio
        above = below + temporal_ratio if pixel_frames > below else below
        nearest = f"{below} or {above}" if above != below else f"{below}"
        raise VAEInputError(
            f"the video has {pixel_frames} frames, but the EasyAnimate VAE takes 1 or {temporal_ratio}k+1 frames "
            f"(1, {1 + temporal_ratio}, {1 + 2 * temporal_ratio}, ..., 49); the nearest valid counts are {nearest}. "
            "Trim or pad the clip to one of them."
        )
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


def plan_tiles(
    latent_height: int, latent_width: int, tile_latent: int | None, overlap_latent: int, out_scale: int
) -> list[Tile]:
    """Tiles over a latent grid; blend weights live in output units (`out_scale` = 8 for decode, 1 for encode)."""
    if tile_latent is None or (latent_height <= tile_latent and latent_width <= tile_latent):
        return [Tile(0, latent_height, 0, latent_width, None)]
    rows = tile_spans(latent_height, tile_latent, overlap_latent)
    cols = tile_spans(latent_width, tile_latent, overlap_latent)
    row_ramps, col_ramps = blend_ramps(rows, out_scale), blend_ramps(cols, out_scale)
    total = torch.zeros(latent_height * out_scale, latent_width * out_scale, dtype=torch.float64)
    for (y0, y1), wy in zip(rows, row_ramps):
        for (x0, x1), wx in zip(cols, col_ramps):
            total[y0 * out_scale : y1 * out_scale, x0 * out_scale : x1 * out_scale] += wy[:, None] * wx[None, :]
    tiles = []
    for (y0, y1), wy in zip(rows, row_ramps):
        for (x0, x1), wx in zip(cols, col_ramps):
            local = total[y0 * out_scale : y1 * out_scale, x0 * out_scale : x1 * out_scale]
            tiles.append(Tile(y0, y1, x0, x1, (wy[:, None] * wx[None, :] / local).float()))
    return tiles
