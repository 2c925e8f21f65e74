"""Canny edges: plain OpenCV at the input's own resolution; no controlnet-aux, no weights."""

from __future__ import annotations

import numpy as np

from .frames import Interrupt, Progress, _run_frames


def canny_maps(
    rgb: np.ndarray, low_threshold: int, high_threshold: int, progress: Progress | None, interrupt: Interrupt | None
) -> list[np.ndarray]:
    """[T, H, W, 3] uint8 RGB -> T edge maps [H, W] uint8 (cv2.Canny hysteresis thresholds)."""
    import cv2

    return _run_frames(rgb, lambda frame: cv2.Canny(frame, low_threshold, high_threshold), progress, interrupt)
