"""3D rotary position embedding of EasyAnimate's video tokens (docs/faithfulness.md, RoPE grid).

Spatial positions are rescaled into the 30x45 grid of the 480x720 training resolution (a centred crop region), so
every resolution sees positions in the same range; temporal positions are plain frame indices. Tables are fp32.
"""

from __future__ import annotations

import torch

REFERENCE_GRID = (30, 45)  # (rows, cols) of 480x720 after the 8x VAE and the 2x patch


def crop_region(grid_h: int, grid_w: int, ref_h: int = REFERENCE_GRID[0], ref_w: int = REFERENCE_GRID[1]):
    """((top, left), (bottom, right)) of the grid fitted into the reference grid (Python's half-to-even `round`)."""
    if grid_h / grid_w > ref_h / ref_w:
        rows, cols = ref_h, int(round(ref_h / grid_h * grid_w))
    else:
        rows, cols = int(round(ref_w / grid_w * grid_h)), ref_w
    top, left = int(round((ref_h - rows) / 2.0)), int(round((ref_w - cols) / 2.0))
    return (top, left), (top + rows, left + cols)


def _positions(start: float, stop: float, count: int, device) -> torch.Tensor:
    # numpy.linspace(start, stop, count, endpoint=False, dtype=float32): float64 steps, rounded once to fp32
    steps = torch.arange(count, dtype=torch.float64, device=device)
    return (start + steps * ((stop - start) / count)).to(torch.float32)


def _axis_angles(positions: torch.Tensor, width: int, theta: float) -> torch.Tensor:
    """[len(positions), width // 2] angles pos * theta^(-2j/width), fp32."""
    exponents = torch.arange(0, width, 2, dtype=torch.float32, device=positions.device) / width
    return torch.outer(positions, 1.0 / (theta**exponents))


def video_rope(frames: int, grid_h: int, grid_w: int, head_dim: int, theta: float = 10000.0, device=None):
    """(cos, sin), each [frames * grid_h * grid_w, head_dim // 2] fp32, tokens ordered (frame, row, col).

    Head dims split [t | h | w] = [d/4 | 3d/8 | 3d/8]; each angle covers one adjacent pair of head dims.
    """
    (top, left), (bottom, right) = crop_region(grid_h, grid_w)
    dim_t, dim_hw = head_dim // 4, head_dim // 8 * 3
    angles_t = _axis_angles(_positions(0, frames, frames, device), dim_t, theta)
    angles_h = _axis_angles(_positions(top, bottom, grid_h, device), dim_hw, theta)
    angles_w = _axis_angles(_positions(left, right, grid_w, device), dim_hw, theta)
    angles = torch.cat(
        [
            angles_t[:, None, None].expand(-1, grid_h, grid_w, -1),
            angles_h[None, :, None].expand(frames, -1, grid_w, -1),
            angles_w[None, None, :].expand(frames, grid_h, -1, -1),
        ],
        dim=-1,
    ).flatten(0, 2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin) in fp32; x [..., N, D], cos/sin [N, D/2]."""
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack([even * cos - odd * sin, odd * cos + even * sin], dim=-1)
    return rotated.flatten(-2).to(x.dtype)
