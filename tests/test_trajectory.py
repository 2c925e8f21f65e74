"""Trajectory control video: exact against an independent rendering written from the formula (loops, float64)."""

import json
import math

import numpy as np
import pytest
import torch

from models.preprocess import trajectory


def oracle_template():
    import cv2

    size, sigma = 200, 40.0
    circle = np.zeros((size, size), np.float32)
    cv2.circle(circle, (100, 100), 99, 1, -1)
    gaussian = np.zeros((size, size), np.float32)
    for i in range(size):
        for j in range(size):
            gaussian[i, j] = 1 / (2 * np.pi * sigma**2) * np.exp(-0.5 * ((i - 100) ** 2 + (j - 100) ** 2) / sigma**2)
    gaussian = gaussian * circle
    return (gaussian / gaussian.max() * 255).astype(np.uint8)


def oracle_video(tracks, width, height):
    """tracks: lists of integer (x, y), one point per frame."""
    import cv2

    template = oracle_template()
    half = int(50 * math.sqrt(width * height / (1280 * 720)))
    per_track = []
    for track in tracks:
        frames = []
        for x, y in track:
            image = np.zeros((height, width))
            top, bottom = max(y - half, 0), min(y + half, height - 1)
            left, right = max(x - half, 0), min(x + half, width - 1)
            if right - left > 3 and bottom - top > 3:
                image[top:bottom, left:right] = np.maximum(
                    cv2.resize(template, (right - left, bottom - top)), image[top:bottom, left:right]
                )
            frames.append(image / 255)
        per_track.append(frames)
    video = np.max(np.array(per_track), axis=0)
    return np.repeat(video[..., None], 3, axis=-1)


def as_json(track):
    return json.dumps([{"x": x, "y": y} for x, y in track])


def test_one_track_matches_the_independent_rendering_exactly():
    width, height = 320, 192
    track = [(40 + 30 * k, 60 + 10 * k) for k in range(9)]
    video = trajectory.render_tracks(trajectory.parse_tracks(as_json(track)), width, height, 9)
    assert video.shape == (9, height, width, 3) and video.dtype == torch.float32
    expected = torch.from_numpy(oracle_video([track], width, height)).float()
    assert torch.equal(video, expected)
    assert video.max() > 0.9 and (video * 255 - (video * 255).round()).abs().max() < 1e-4  # values k/255


def test_gaussian_template_matches_the_formula_and_peaks_at_255():
    template = trajectory.gaussian_disc()
    np.testing.assert_array_equal(template, oracle_template())
    assert template.max() == 255 and template[0, 0] == 0 and template[100, 1] > 0


def test_several_tracks_take_the_maximum_and_one_leaving_the_frame_is_clipped_then_dropped():
    width, height = 256, 160
    crossing = [(60 + 8 * k, 80) for k in range(5)]
    other = [(100 - 8 * k, 70 + 2 * k) for k in range(5)]
    leaving = [(230, 20), (250, 8), (263, -4), (280, -16), (300, -28)]  # squeezed, a 2-px sliver (skipped), gone
    text = json.dumps([[{"x": x, "y": y} for x, y in t] for t in (crossing, other, leaving)])
    video = trajectory.render_tracks(trajectory.parse_tracks(text), width, height, 5)
    expected = torch.from_numpy(oracle_video([crossing, other, leaving], width, height)).float()
    assert torch.equal(video, expected)
    alone = trajectory.render_tracks([crossing, other], width, height, 5)
    assert not torch.equal(video[0], alone[0]) and torch.equal(video[-1], alone[-1])


def test_spline_editor_string_with_single_quotes_and_float_points_is_accepted():
    text = "[{'x': 10.4, 'y': 20.6}, {'x': 30.5, 'y': 40.0}]"
    assert trajectory.parse_tracks(text) == [[(10.4, 20.6), (30.5, 40.0)]]
    assert trajectory.resample_track([(10.4, 20.6), (30.5, 40.0)], 2) == [(10, 21), (30, 40)]


def test_tracks_are_resampled_linearly_to_the_frame_count():
    assert trajectory.resample_track([(0, 0), (10, 20)], 5) == [(0, 0), (2, 5), (5, 10), (8, 15), (10, 20)]
    assert trajectory.resample_track([(7, 3)], 3) == [(7, 3)] * 3
    track = [(0, 0), (4, 4), (4, 12)]
    assert trajectory.resample_track(track, 5) == [(0, 0), (2, 2), (4, 4), (4, 8), (4, 12)]


@pytest.mark.parametrize("text, needle", [("nope", "not valid JSON"), ("[]", "non-empty"), ('[{"x": 1}]', "x")])
def test_bad_track_text_says_what_was_expected(text, needle):
    with pytest.raises(ValueError, match=needle):
        trajectory.parse_tracks(text)


def test_video_maximum_resizes_the_second_and_cuts_to_the_shorter():
    first = torch.zeros(5, 4, 6, 3)
    second = torch.zeros(3, 2, 3, 3)
    second[:, 0, 0] = 0.5
    out = trajectory.video_maximum(first, second)
    assert out.shape == (3, 4, 6, 3)
    assert torch.equal(out[:, :2, :2], torch.full((3, 2, 2, 3), 0.5)) and out[:, 2:].sum() == 0
