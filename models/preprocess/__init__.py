"""Control-video preprocessing (models/control.py re-exports this package): turn RGB frames into the condition maps EasyAnimate Control models were trained on.

EasyAnimate V5 Control was trained on OpenPose, Scribble, Canny, Anime, MLSD, HED and Depth maps, and the pipeline
takes them as an ordinary RGB frame batch that it resizes itself — see docs/faithfulness.md, control preprocessors.

- Canny is plain OpenCV at the input's own resolution: no controlnet-aux, no weights.
- Every other method runs a network from controlnet-aux 0.0.10, imported only when such a method runs (the import
  alone takes ~10 s). Weights come from local folders only (file names as in the lllyasviel/Annotators repository),
  every file checked with torch's weights-only unpickler first; no environment variable or hub
  setting is changed.
- Output frames always have the input's size and count: controlnet-aux rounds sizes to multiples of 64
  (docs/faithfulness.md, control preprocessors), so every map is resized back.
- Video-aware: depth is normalised over the whole clip (per-frame min-max flickers, docs/faithfulness.md, control
  preprocessors); MLSD errors are raised instead of turning into black frames (controlnet-aux swallows them,
  docs/faithfulness.md, control preprocessors); progress per frame, interrupt between frames; the network runs on
  `device` and is released after the batch.

Installing controlnet-aux without letting pip replace the user's torch (its torchvision requirement can pull a
different torch build, docs/architecture.md, control preprocessors): `python -m pip install --no-deps
controlnet-aux==0.0.10`, then its remaining requirements `timm scikit-image scipy huggingface_hub einops filelock
importlib_metadata` into an environment that already has the torchvision matching its torch (ComfyUI installs one).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from .annotators import CONTROLNET_AUX_REQUIREMENT, ControlDependencyError, refuse_pickled_code, run_annotator
from .canny import canny_maps
from .frames import Interrupt, Progress, frames_to_uint8, maps_to_frames, normalize_depth_clip
from .weights import (
    ANNOTATORS_REPO,
    AUX_CKPTS_ENV,
    METHODS,
    WEIGHT_FILES,
    MissingWeightsError,
    _check_method,
    annotator_search_dirs,
    resolve_weights,
    weight_locations,
    weight_url,
)

__all__ = [
    "ANNOTATORS_REPO",
    "AUX_CKPTS_ENV",
    "CONTROLNET_AUX_REQUIREMENT",
    "METHODS",
    "WEIGHT_FILES",
    "ControlDependencyError",
    "Interrupt",
    "MissingWeightsError",
    "Progress",
    "annotator_search_dirs",
    "canny_maps",
    "frames_to_uint8",
    "maps_to_frames",
    "normalize_depth_clip",
    "preprocess",
    "refuse_pickled_code",
    "resolve_weights",
    "weight_locations",
    "weight_url",
]


def preprocess(
    frames: torch.Tensor,
    method: str,
    *,
    detect_resolution: int = 512,
    low_threshold: int = 100,
    high_threshold: int = 200,
    score_threshold: float = 0.1,
    distance_threshold: float = 0.1,
    safe: bool = False,
    include_body: bool = True,
    include_hand: bool = False,
    include_face: bool = False,
    depth_background_threshold: float = 0.1,
    weights_dirs: Sequence[Path] = (),
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
) -> torch.Tensor:
    """Control maps for `frames` (IMAGE [T, H, W, 3] float 0..1) -> IMAGE [T, H, W, 3] float32 0..1 on the CPU.

    Parameters by method (defaults are controlnet-aux's):
      canny          low_threshold, high_threshold (cv2.Canny hysteresis thresholds); runs at the input resolution.
      hed            safe (quantise the soft edges, ControlNet's "safe" mode).
      scribble       safe; HED edges turned into thick binary strokes.
      mlsd           score_threshold (line confidence), distance_threshold (minimum line length, pixels).
      openpose       include_body, include_hand, include_face (what to draw).
      depth          depth_background_threshold: clip-normalised depth below it is set to black; 0 keeps all.
      anime_lineart  nothing beyond detect_resolution.
    Every network method detects at `detect_resolution` (short side, rounded to a multiple of 64 by controlnet-aux)
    and its map is resized back to H x W. `weights_dirs` are searched in order (see `resolve_weights`).
    """
    _check_method(method)
    if int(detect_resolution) < 64:
        raise ValueError(f"detect_resolution must be at least 64 (a multiple of 64); got {detect_resolution}")
    rgb = frames_to_uint8(frames)
    height, width = rgb.shape[1:3]

    if method == "canny":
        return maps_to_frames(canny_maps(rgb, low_threshold, high_threshold, progress, interrupt), height, width)

    weight_paths = resolve_weights(method, weights_dirs)  # fail fast, before the slow import
    maps = run_annotator(
        method,
        weight_paths,
        rgb,
        torch.device(device),
        progress,
        interrupt,
        detect_resolution=int(detect_resolution),
        safe=bool(safe),
        score_threshold=float(score_threshold),
        distance_threshold=float(distance_threshold),
        include_body=bool(include_body),
        include_hand=bool(include_hand),
        include_face=bool(include_face),
    )
    if method == "depth":
        maps = normalize_depth_clip(maps, float(depth_background_threshold))
    return maps_to_frames(maps, height, width)
