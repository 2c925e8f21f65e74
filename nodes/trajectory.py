"""Trajectory control without KJNodes: point tracks → control video, and the maximum of two control videos."""

from __future__ import annotations

from .widgets import size_inputs

_EXAMPLE = '[{"x": 120, "y": 200}, {"x": 200, "y": 180}, {"x": 300, "y": 150}]'


class EasyAnimateTrajectory:
    CATEGORY = "EasyAnimate"
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("control_video",)
    DESCRIPTION = (
        "Draws point tracks as the Gaussian discs the V5.1 Control models were trained on; feed the result to the "
        'sampler\'s control_video. Tracks: a JSON list of {"x", "y"} pixel points (one track), a list of such '
        "lists (several tracks), or KJNodes' Spline Editor coordinate string as it is. Each track is stretched to "
        "the frame count."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "tracks": (
                    "STRING",
                    {
                        "default": _EXAMPLE,
                        "multiline": True,
                        "tooltip": "Pixel coordinates in the output frame (x right, y down).",
                    },
                ),
                **size_inputs("The sampler's frame count."),
            }
        }

    def render(self, tracks, width, height, frames):
        from ..models.preprocess.trajectory import parse_tracks, render_tracks

        return (render_tracks(parse_tracks(tracks), width, height, frames),)


class EasyAnimateVideoMaximum:
    CATEGORY = "EasyAnimate"
    FUNCTION = "combine"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("video",)
    DESCRIPTION = (
        "Per-pixel maximum of two videos (e.g. a trajectory drawing over a reference frame or another control "
        "video). The second is resized to the first's size; the longer is cut to the shorter's length."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"video_1": ("IMAGE",), "video_2": ("IMAGE",)}}

    def combine(self, video_1, video_2):
        from ..models.preprocess.trajectory import video_maximum

        return (video_maximum(video_1, video_2),)


NODE_CLASS_MAPPINGS = {
    "EasyAnimateTrajectory": EasyAnimateTrajectory,
    "EasyAnimateVideoMaximum": EasyAnimateVideoMaximum,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EasyAnimateTrajectory": "EasyAnimate Trajectory",
    "EasyAnimateVideoMaximum": "EasyAnimate Video Maximum",
}
