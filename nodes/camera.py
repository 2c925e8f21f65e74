"""Camera nodes for the Control-Camera models: presets, combine, join, intrinsics, pose files.

Each node outputs one EASYANIMATE_CAMERA (a models.camera.CameraPath) for the sampler's `camera` input. Paths are
descriptions: the sampler renders them at its own frame count, so no node here asks for a video length.
"""

from __future__ import annotations

from ..models.camera import DEFAULT_INTRINSICS, PRESETS, list_pose_files, read_pose_file, resolve_pose_file
from ..models.camera import preset as preset_path
from ..models.defaults import DEFAULT_FPS
from .bridge import input_dir

CAMERA = "EASYANIMATE_CAMERA"
CATEGORY = "EasyAnimate/camera"
_PRESET_NAMES = list(PRESETS)
_PRESET_TOOLTIP = "The official CameraCtrl presets; ACW/CW roll the camera."
_SPEED = (
    "FLOAT",
    {
        "default": 1.0,
        "min": -10.0,
        "max": 10.0,
        "step": 0.05,
        "tooltip": "1 = the official move (π/3 rotation or 1.5 units of travel over the clip).",
    },
)


class _CameraNode:
    """What every camera node shares: its category and its one EASYANIMATE_CAMERA output."""

    CATEGORY = CATEGORY
    FUNCTION = "build"
    RETURN_TYPES = (CAMERA,)
    RETURN_NAMES = ("camera",)


class _PresetMove(_CameraNode):
    """One camera move from the preset widgets named in `PRESET_INPUTS`, then a speed; several presets add up."""

    PRESET_INPUTS: tuple[str, ...] = ()

    @classmethod
    def INPUT_TYPES(cls):
        choice = {"default": "Static", "tooltip": _PRESET_TOOLTIP}
        presets = {name: (_PRESET_NAMES, dict(choice)) for name in cls.PRESET_INPUTS}
        return {"required": {**presets, "speed": _SPEED}}

    def build(self, speed, **presets):
        return (preset_path([presets[name] for name in self.PRESET_INPUTS], speed),)


class EasyAnimateCameraPreset(_PresetMove):
    DESCRIPTION = "A preset camera move (pan, zoom, roll) over the whole clip, for a Control-Camera model."
    PRESET_INPUTS = ("preset",)


class EasyAnimateCameraCombine(_PresetMove):
    DESCRIPTION = "Up to four presets at once (e.g. Pan Left + Zoom In): their rotations and translations add."
    PRESET_INPUTS = ("preset_1", "preset_2", "preset_3", "preset_4")


class EasyAnimateCameraJoin(_CameraNode):
    DESCRIPTION = (
        "Plays one camera move after another; the second continues from where the first ends. Preset moves share "
        "the sampler's frames equally; pose files keep their own length."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"first": (CAMERA,), "then": (CAMERA,)}}

    def build(self, first, then):
        return (first.then(then),)


class EasyAnimateCameraIntrinsics(_CameraNode):
    DESCRIPTION = (
        "Sets the lens for every frame: focal lengths and principal point as fractions of the frame width/height "
        "(defaults as the official node; they refer to a 1280×720 frame and are aspect-corrected at sampling)."
    )

    @classmethod
    def INPUT_TYPES(cls):
        fx, fy, cx, cy = DEFAULT_INTRINSICS
        fraction = {"min": 0.0, "max": 1.0, "step": 0.001}
        return {
            "required": {
                "camera": (CAMERA,),
                "fx": ("FLOAT", {"default": fx, **fraction, "tooltip": "focal length / frame width"}),
                "fy": ("FLOAT", {"default": fy, **fraction, "tooltip": "focal length / frame height"}),
                "cx": ("FLOAT", {"default": cx, **fraction, "tooltip": "principal point x / frame width"}),
                "cy": ("FLOAT", {"default": cy, **fraction, "tooltip": "principal point y / frame height"}),
            }
        }

    def build(self, camera, fx, fy, cx, cy):
        if fx <= 0.0 or fy <= 0.0:
            raise ValueError(f"focal lengths must be above 0 (got fx={fx}, fy={fy})")
        return (camera.with_intrinsics(fx, fy, cx, cy),)


class EasyAnimateCameraPoseFile(_CameraNode):
    FUNCTION = "load"
    DESCRIPTION = (
        "Loads a CameraCtrl / RealEstate10K pose file (.txt: a URL line, then 'time fx fy cx cy 0 0' + 12 "
        "world-to-camera numbers per frame) from ComfyUI's input/ or input/camera_poses/ folder. Files recorded at "
        "24 fps are thinned to every (24 // fps)-th pose. A longer file is cut to the clip; a shorter one is "
        "stretched over it."
    )

    @classmethod
    def INPUT_TYPES(cls):
        files = list_pose_files(input_dir())
        return {
            "required": {
                "pose_file": (files, {"tooltip": "Pose files in input/ and input/camera_poses/."}),
                "fps": (
                    "INT",
                    {
                        "default": DEFAULT_FPS,
                        "min": 1,
                        "max": 24,
                        "tooltip": "Frame rate of the video to make (EasyAnimate: 8).",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, pose_file):
        try:
            resolve_pose_file(input_dir(), pose_file)
        except (ValueError, FileNotFoundError) as error:
            return str(error)
        return True

    def load(self, pose_file, fps):
        return (read_pose_file(resolve_pose_file(input_dir(), pose_file), fps),)


NODE_CLASS_MAPPINGS = {
    "EasyAnimateCameraPreset": EasyAnimateCameraPreset,
    "EasyAnimateCameraCombine": EasyAnimateCameraCombine,
    "EasyAnimateCameraJoin": EasyAnimateCameraJoin,
    "EasyAnimateCameraIntrinsics": EasyAnimateCameraIntrinsics,
    "EasyAnimateCameraPoseFile": EasyAnimateCameraPoseFile,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EasyAnimateCameraPreset": "EasyAnimate Camera Preset",
    "EasyAnimateCameraCombine": "EasyAnimate Camera Combine",
    "EasyAnimateCameraJoin": "EasyAnimate Camera Join",
    "EasyAnimateCameraIntrinsics": "EasyAnimate Camera Intrinsics",
    "EasyAnimateCameraPoseFile": "EasyAnimate Camera Pose File",
}
