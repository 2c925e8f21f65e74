"""Longer clips: hand the last frames of one clip to the next generation, and join the clips with a cross-fade."""

from __future__ import annotations


class EasyAnimateLastFrames:
    CATEGORY = "EasyAnimate"
    FUNCTION = "take"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    DESCRIPTION = (
        "The last frames of a clip. Connect them to the next sampler's start_image (InP model): the next clip "
        "starts with these frames and continues the motion; then join both with EasyAnimate Cross-fade Join."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE",),
                "count": (
                    "INT",
                    {
                        "default": 9,
                        "min": 1,
                        "max": 64,
                        "tooltip": "Frames carried over (the overlap). 4k+1 fills whole latent frames.",
                    },
                ),
            }
        }

    def take(self, images, count):
        from ..models.editing import last_frames

        return (last_frames(images, count),)


class EasyAnimateCrossfadeJoin:
    CATEGORY = "EasyAnimate"
    FUNCTION = "join"
    RETURN_TYPES = ("IMAGE", "INT")
    RETURN_NAMES = ("images", "frame_count")
    DESCRIPTION = (
        "Joins two clips where the second was started from the first's last `overlap` frames: the overlap fades "
        "from the first clip to the second, so each moment appears once."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "first": ("IMAGE",),
                "second": ("IMAGE",),
                "overlap": (
                    "INT",
                    {"default": 9, "min": 0, "max": 64, "tooltip": "The count given to Last Frames; 0 just appends."},
                ),
            }
        }

    def join(self, first, second, overlap):
        from ..models.editing import crossfade_join

        images = crossfade_join(first, second, overlap)
        return (images, images.shape[0])


NODE_CLASS_MAPPINGS = {
    "EasyAnimateLastFrames": EasyAnimateLastFrames,
    "EasyAnimateCrossfadeJoin": EasyAnimateCrossfadeJoin,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EasyAnimateLastFrames": "EasyAnimate Last Frames",
    "EasyAnimateCrossfadeJoin": "EasyAnimate Cross-fade Join",
}
