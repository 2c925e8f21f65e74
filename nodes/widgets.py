"""Widget specs several nodes share, so that their limits and defaults come from the registry in one place."""

from __future__ import annotations

from ..models.defaults import (
    DEFAULT_FRAMES,
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    FRAME_STEP,
    MAX_FRAMES,
    MAX_SIDE,
    MIN_FRAMES,
    MIN_SIDE,
    SIDE_MULTIPLE,
)


def size_inputs(frames_tooltip: str) -> dict:
    """The width, height and frames widgets of the sampler (and of nodes whose output must match its size)."""
    side = {"min": MIN_SIDE, "max": MAX_SIDE, "step": SIDE_MULTIPLE}
    return {
        "width": ("INT", {"default": DEFAULT_WIDTH, **side}),
        "height": ("INT", {"default": DEFAULT_HEIGHT, **side}),
        "frames": (
            "INT",
            {
                "default": DEFAULT_FRAMES,
                "min": MIN_FRAMES,
                "max": MAX_FRAMES,
                "step": FRAME_STEP,
                "tooltip": frames_tooltip,
            },
        ),
    }
