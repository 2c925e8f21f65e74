"""How a clip of any length becomes an EasyAnimate video length (1 or 4k+1 frames).

The VAE compresses 4 frames into one latent frame after the first, so a video has 4k+1 frames. Clips from Load Video
(core or VideoHelperSuite) have any length. The rule (docs/compatibility.md, clip length): a clip that drives the
video (input_video, control_video) caps its length; the length used is the largest 4k+1 that is at most both the
`frames` widget and every connected clip, and each clip gives its FIRST frames. Nothing is padded with repeated
frames, nothing is dropped silently: every change is described in a note the node prints.
"""

from __future__ import annotations


def is_video_length(frames: int) -> bool:
    return frames >= 1 and frames % 4 == 1


def largest_video_length(frames: int) -> int:
    """The largest 4k+1 that is <= frames (1 for anything shorter than 5)."""
    return max(1, (frames - 1) // 4 * 4 + 1)


def fit_clip_length(requested: int, clips: dict[str, int]) -> tuple[int, list[str]]:
    """(frames to generate, notes) for a `requested` length and the frame counts of the connected clips by input name.

    >>> fit_clip_length(49, {"control_video": 30})
    (29, ['control_video has 30 frames: generating 29 frames (the largest 4k+1 that fits) from its first 29; frames was 49'])
    """
    if not clips:
        return requested, []
    frames = largest_video_length(min(requested, *clips.values()))
    notes = []
    for name, count in clips.items():
        if count == frames:
            continue
        if frames < requested:
            cause = "the largest 4k+1 that fits" if count == min(clips.values()) else "capped by a shorter clip"
            notes.append(
                f"{name} has {count} frames: generating {frames} frames ({cause}) from its first "
                f"{min(count, frames)}; frames was {requested}"
            )
        else:
            notes.append(f"{name} has {count} frames: using its first {frames} (the frames widget)")
    return frames, notes
