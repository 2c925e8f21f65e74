"""Point tracks → the trajectory control video the V5.1 Control models were trained on (docs/trajectory.md).

Each track point becomes a Gaussian disc (a 200-px isotropic Gaussian, σ = 40 px, cut to a circle, scaled to a
square of half-side 50·√(frame area / 1280·720) px), tracks combine by maximum, values are k/255. Points are
rounded to whole pixels.
"""

from __future__ import annotations

import json
import math

import torch

DISC_SIZE = 200  # px, the rendered Gaussian template
DISC_SIGMA = 40.0  # px, inside the template
DISC_HALF_SIDE_AT_720P = 50  # px, half the side of the drawn square on a 1280×720 frame
REFERENCE_AREA = 1280 * 720


def parse_tracks(text: str) -> list[list[tuple[float, float]]]:
    """JSON tracks: a list of {"x", "y"} points (one track), a list of such lists (several), or [x, y] pairs;
    KJNodes' SplineEditor string (also with single quotes) is accepted as it is."""
    try:
        data = json.loads(text.replace("'", '"'))
    except json.JSONDecodeError as error:
        example = '[{"x": 10, "y": 20}, ...]'
        raise ValueError(f"tracks are not valid JSON ({error}); expected e.g. {example}") from None
    if isinstance(data, list) and data and all(isinstance(item, str) for item in data):
        return [track for item in data for track in parse_tracks(item)]  # a list of SplineEditor strings
    if not isinstance(data, list) or not data:
        raise ValueError("tracks must be a non-empty JSON list of points or of point lists")
    tracks = data if isinstance(data[0], list) and data[0] and not _is_number(data[0][0]) else [data]
    return [[_point(p) for p in track] for track in tracks]


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _point(point) -> tuple[float, float]:
    if isinstance(point, dict) and "x" in point and "y" in point:
        return float(point["x"]), float(point["y"])
    if isinstance(point, (list, tuple)) and len(point) == 2 and all(_is_number(v) for v in point):
        return float(point[0]), float(point[1])
    raise ValueError(f'a track point must be {{"x": .., "y": ..}} or [x, y]; got {point!r}')


def resample_track(track: list[tuple[float, float]], frames: int) -> list[tuple[int, int]]:
    """`frames` whole-pixel points along the track: unchanged when it already has that many, else linearly
    interpolated at evenly spaced positions from its first to its last point."""
    if not track:
        raise ValueError("a track has no points")
    if len(track) != frames:
        points = torch.tensor(track, dtype=torch.float64)
        position = torch.linspace(0, len(track) - 1, frames, dtype=torch.float64)
        low = position.floor().long().clamp(max=len(track) - 1)
        high = (low + 1).clamp(max=len(track) - 1)
        frac = (position - low).unsqueeze(1)
        track = (points[low] * (1 - frac) + points[high] * frac).tolist()
    return [(int(round(x)), int(round(y))) for x, y in track]


def gaussian_disc():
    """The 200×200 uint8 template: Gaussian (σ 40 px) inside a filled circle of radius 99, peak 255 (numpy)."""
    import cv2
    import numpy as np

    circle = cv2.circle(np.zeros((DISC_SIZE, DISC_SIZE), np.float32), (DISC_SIZE // 2,) * 2, DISC_SIZE // 2 - 1, 1, -1)
    offsets = np.arange(DISC_SIZE, dtype=np.float64) - DISC_SIZE / 2
    squared = offsets[:, None] ** 2 / DISC_SIGMA**2 + offsets[None, :] ** 2 / DISC_SIGMA**2
    gaussian = (1 / (2 * np.pi * DISC_SIGMA**2) * np.exp(-0.5 * squared)).astype(np.float32) * circle
    return (gaussian / np.max(gaussian) * 255).astype(np.uint8)


def disc_half_side(width: int, height: int) -> int:
    return int(DISC_HALF_SIDE_AT_720P * math.sqrt(width * height / REFERENCE_AREA))


def render_tracks(tracks: list[list[tuple[float, float]]], width: int, height: int, frames: int) -> torch.Tensor:
    """IMAGE [frames, height, width, 3] float32 in {k/255}: every track's disc per frame, maximum over tracks.

    Near a border the disc's square is clipped to the frame (right/bottom at width−1/height−1) and the template is
    squeezed into what is left, skipped when 3 px or less remain, as the original."""
    import cv2
    import numpy as np

    template = gaussian_disc()
    half = disc_half_side(width, height)
    video = np.zeros((frames, height, width), np.float64)
    for track in tracks:
        for index, (x, y) in enumerate(resample_track(track, frames)):
            y1, y2 = max(y - half, 0), min(y + half, height - 1)
            x1, x2 = max(x - half, 0), min(x + half, width - 1)
            if x2 - x1 > 3 and y2 - y1 > 3:
                patch = cv2.resize(template, (x2 - x1, y2 - y1))
                np.maximum(video[index, y1:y2, x1:x2], patch, out=video[index, y1:y2, x1:x2])
    rgb = torch.from_numpy(video / 255.0).float()
    return rgb.unsqueeze(-1).expand(-1, -1, -1, 3).contiguous()


def video_maximum(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Per-pixel maximum of two IMAGE videos [T, H, W, C]: the second is resized (nearest) to the first's size and
    the longer one is cut to the shorter's length."""
    if second.shape[1:3] != first.shape[1:3]:
        second = torch.nn.functional.interpolate(second.permute(0, 3, 1, 2), size=first.shape[1:3])
        second = second.permute(0, 2, 3, 1)
    count = min(first.shape[0], second.shape[0])
    return torch.maximum(first[:count], second[:count].to(first.dtype))
