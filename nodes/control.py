"""EasyAnimate Control Preprocessor: frames -> control video (canny, depth, pose, ...) for the Control models.

A thin face over models/control.py: it only gathers ComfyUI's device, progress bar, cancel flag and the folders to
search for annotator weights (our `annotators` model folder, then an installed comfyui_controlnet_aux's checkpoints).
"""

from __future__ import annotations

from ..models.control import METHODS, annotator_search_dirs, preprocess
from .bridge import ANNOTATORS_FOLDER, Progress, check_interrupt, comfy_root, model_dirs, torch_device

_NETWORK_NOTE = (
    "Network methods read weights from ComfyUI/models/annotators/ (file names as in huggingface.co/"
    "lllyasviel/Annotators) or an installed comfyui_controlnet_aux's ckpts folder, and need the controlnet-aux "
    "package; canny needs neither."
)


class EasyAnimateControlPreprocessor:
    CATEGORY = "EasyAnimate"
    FUNCTION = "execute"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("control_video",)
    OUTPUT_TOOLTIPS = ("One control frame per input frame, same size as the input.",)
    DESCRIPTION = (
        "Turns a video into the control video an EasyAnimate Control model expects (Canny, Depth, OpenPose, MLSD, "
        "HED, Scribble or Anime line art), one frame per input frame at the input's size. Depth is normalised over "
        "the whole clip so it does not flicker. " + _NETWORK_NOTE + " OpenPose weights are CMU's, licensed for "
        "non-commercial use only."
    )

    @classmethod
    def INPUT_TYPES(cls):
        # Widget order is part of every saved workflow: append new inputs at the end, never reorder.
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The source video frames."}),
                "method": (list(METHODS), {"default": "canny", "tooltip": _NETWORK_NOTE}),
                "detect_resolution": (
                    "INT",
                    {
                        "default": 512,
                        "min": 64,
                        "max": 2048,
                        "step": 64,
                        "tooltip": "Short side the network methods detect at; the result is resized back to the input "
                        "size. Canny always runs at the input size.",
                    },
                ),
                "canny_low_threshold": (
                    "INT",
                    {
                        "default": 100,
                        "min": 0,
                        "max": 1000,
                        "step": 1,
                        "tooltip": "canny: gradients below this are never edges.",
                    },
                ),
                "canny_high_threshold": (
                    "INT",
                    {
                        "default": 200,
                        "min": 0,
                        "max": 1000,
                        "step": 1,
                        "tooltip": "canny: gradients above this always start an edge.",
                    },
                ),
                "depth_background_threshold": (
                    "FLOAT",
                    {
                        "default": 0.1,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.01,
                        "tooltip": "depth: parts farther than this fraction of the clip's depth range turn black; "
                        "0 keeps everything.",
                    },
                ),
                "pose_body": ("BOOLEAN", {"default": True, "tooltip": "openpose: draw the body skeleton."}),
                "pose_hands": ("BOOLEAN", {"default": False, "tooltip": "openpose: detect and draw hands."}),
                "pose_face": ("BOOLEAN", {"default": False, "tooltip": "openpose: detect and draw the face."}),
                "mlsd_score_threshold": (
                    "FLOAT",
                    {
                        "default": 0.1,
                        "min": 0.01,
                        "max": 2.0,
                        "step": 0.01,
                        "tooltip": "mlsd: minimum line confidence.",
                    },
                ),
                "mlsd_distance_threshold": (
                    "FLOAT",
                    {
                        "default": 0.1,
                        "min": 0.01,
                        "max": 20.0,
                        "step": 0.01,
                        "tooltip": "mlsd: minimum line length, in pixels at detect resolution.",
                    },
                ),
                "hed_safe": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "hed / scribble: quantise the soft edges (ControlNet's 'safe' mode).",
                    },
                ),
            },
            "optional": {
                "max_frames": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 4096,
                        "step": 1,
                        "tooltip": "Process only the first N frames (0 = all). Set it to the sampler's frames so no "
                        "frame is processed that the sampler would not use.",
                    },
                ),
            },
        }

    def execute(
        self,
        images,
        method,
        detect_resolution,
        canny_low_threshold,
        canny_high_threshold,
        depth_background_threshold,
        pose_body,
        pose_hands,
        pose_face,
        mlsd_score_threshold,
        mlsd_distance_threshold,
        hed_safe,
        max_frames=0,
    ):
        if max_frames:
            images = images[:max_frames]  # progress then counts the frames really processed
        progress = Progress(images.shape[0])
        control_video = preprocess(
            images,
            method,
            detect_resolution=detect_resolution,
            low_threshold=canny_low_threshold,
            high_threshold=canny_high_threshold,
            depth_background_threshold=depth_background_threshold,
            include_body=pose_body,
            include_hand=pose_hands,
            include_face=pose_face,
            score_threshold=mlsd_score_threshold,
            distance_threshold=mlsd_distance_threshold,
            safe=hed_safe,
            weights_dirs=annotator_search_dirs(model_dirs(ANNOTATORS_FOLDER), comfy_root()),
            device=torch_device(),
            progress=progress.callback,
            interrupt=check_interrupt,
        )
        return (control_video,)


NODE_CLASS_MAPPINGS = {"EasyAnimateControlPreprocessor": EasyAnimateControlPreprocessor}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimateControlPreprocessor": "EasyAnimate Control Preprocessor"}
