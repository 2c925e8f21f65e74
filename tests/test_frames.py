"""The clip-length rule (models/frames.py): any clip length becomes a 4k+1 video length, and every change is said."""

import pytest

from models.frames import fit_clip_length, is_video_length, largest_video_length


@pytest.mark.parametrize("frames,expected", [(1, 1), (2, 1), (4, 1), (5, 5), (8, 5), (30, 29), (49, 49), (52, 49)])
def test_largest_video_length_is_the_largest_4k_plus_1_not_above(frames, expected):
    assert largest_video_length(frames) == expected
    assert is_video_length(expected)


def test_a_30_frame_clip_gives_29_frames_and_says_so():
    frames, notes = fit_clip_length(49, {"control_video": 30})
    assert frames == 29
    assert notes == [
        "control_video has 30 frames: generating 29 frames (the largest 4k+1 that fits) from its first "
        "29; frames was 49"
    ]


def test_a_longer_clip_is_cut_to_the_frames_widget_and_says_so():
    assert fit_clip_length(49, {"input_video": 120}) == (
        49,
        ["input_video has 120 frames: using its first 49 (the frames widget)"],
    )


def test_a_clip_of_exactly_the_requested_length_needs_no_note():
    assert fit_clip_length(49, {"input_video": 49}) == (49, [])


def test_the_shortest_of_two_clips_decides_and_the_other_says_why():
    frames, notes = fit_clip_length(49, {"input_video": 40, "control_video": 22})
    assert frames == 21
    assert notes[0].startswith("input_video has 40 frames: generating 21 frames (capped by a shorter clip)")
    assert notes[1].startswith("control_video has 22 frames: generating 21 frames (the largest 4k+1 that fits)")


def test_without_clips_the_frames_widget_is_used_as_is():
    assert fit_clip_length(49, {}) == (49, [])
