"""ComfyUI IMAGE batches in and out of numpy uint8 frames, clip-wide depth normalisation, the per-frame loop."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [T, H, W, 3] float 0..1 -> numpy uint8 [T, H, W, 3] (RGB)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"control frames must be an IMAGE tensor [frames, height, width, 3]; got {shape}")
    as_float = frames.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
    return as_float.mul(255.0).round().to(torch.uint8).contiguous().numpy()


def maps_to_frames(maps: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """uint8 maps (any size, 1 or 3 channels) -> IMAGE [T, height, width, 3] float32 0..1 on the CPU."""
    return torch.from_numpy(np.stack([_to_rgb_of_size(m, height, width) for m in maps])).float().div_(255.0)


def _to_rgb_of_size(condition_map: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if condition_map.shape[:2] != (height, width):
        shrinking = condition_map.shape[0] * condition_map.shape[1] > height * width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        condition_map = cv2.resize(condition_map, (width, height), interpolation=interpolation)
    if condition_map.ndim == 2:
        condition_map = np.repeat(condition_map[:, :, None], 3, axis=2)
    return condition_map


def normalize_depth_clip(raw_depths: Sequence[np.ndarray], background_threshold: float = 0.0) -> list[np.ndarray]:
    """Relative depth maps of one clip -> uint8 maps, min-max normalised over the WHOLE clip (one scale for every
    frame, so brightness does not flicker); normalised values below `background_threshold` become 0."""
    low = min(float(d.min()) for d in raw_depths)
    high = max(float(d.max()) for d in raw_depths)
    scale = max(high - low, 1e-8)
    maps = []
    for depth in raw_depths:
        normalised = (depth.astype(np.float64) - low) / scale
        normalised[normalised < background_threshold] = 0.0
        maps.append(np.round(normalised * 255.0).clip(0, 255).astype(np.uint8))
    return maps


def _run_frames(
    frames: np.ndarray,  # [T, H, W, 3] uint8
    per_frame: Callable[[np.ndarray], np.ndarray],
    progress: Progress | None,
    interrupt: Interrupt | None,
) -> list[np.ndarray]:
    total = len(frames)
    results = []
    for index, frame in enumerate(frames):
        if interrupt is not None:
            interrupt()
        results.append(per_frame(frame))
        if progress is not None:
            progress(index + 1, total)
    return results
