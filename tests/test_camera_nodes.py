"""The camera nodes' public face (nodes/camera.py): widget names, order and defaults as released, and what the preset
nodes build. The server test (test_comfyui_camera.py) runs them in ComfyUI; these check them one by one."""

from __future__ import annotations

import importlib

import pytest

from models.camera import PRESETS

SPEED = (
    "FLOAT",
    {
        "default": 1.0,
        "min": -10.0,
        "max": 10.0,
        "step": 0.05,
        "tooltip": "1 = the official move (π/3 rotation or 1.5 units of travel over the clip).",
    },
)
PRESET = (list(PRESETS), {"default": "Static", "tooltip": "The official CameraCtrl presets; ACW/CW roll the camera."})


@pytest.fixture(scope="module")
def camera_nodes(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.camera")


def test_preset_node_widgets_are_preset_then_speed(camera_nodes):
    assert camera_nodes.EasyAnimateCameraPreset.INPUT_TYPES() == {"required": {"preset": PRESET, "speed": SPEED}}
    assert list(camera_nodes.EasyAnimateCameraPreset.INPUT_TYPES()["required"]) == ["preset", "speed"]


def test_combine_node_widgets_are_four_presets_then_speed(camera_nodes):
    required = camera_nodes.EasyAnimateCameraCombine.INPUT_TYPES()["required"]
    assert list(required) == ["preset_1", "preset_2", "preset_3", "preset_4", "speed"]
    assert required == {**{f"preset_{k}": PRESET for k in range(1, 5)}, "speed": SPEED}
    assert required["preset_1"][1] is not required["preset_2"][1]  # each widget its own options dict


def test_every_camera_node_returns_one_camera_under_the_camera_category(camera_nodes):
    for name, node in camera_nodes.NODE_CLASS_MAPPINGS.items():
        assert (node.CATEGORY, node.RETURN_TYPES, node.RETURN_NAMES) == (
            "EasyAnimate/camera",
            ("EASYANIMATE_CAMERA",),
            ("camera",),
        ), name
        assert callable(getattr(node(), node.FUNCTION)), name
    assert camera_nodes.EasyAnimateCameraPoseFile.FUNCTION == "load"


def test_preset_nodes_build_the_preset_path_from_their_widgets(camera_nodes, pack):
    preset = importlib.import_module(f"{pack.__name__}.models.camera").preset  # the pack's own CameraPath class
    # ComfyUI calls the node function with the widget values as keyword arguments
    (single,) = camera_nodes.EasyAnimateCameraPreset().build(preset="ACW", speed=0.5)
    assert single == preset("ACW", 0.5) and single.segments[0].angle == (0.0, 0.0, 1.0)
    (combined,) = camera_nodes.EasyAnimateCameraCombine().build(
        preset_1="Pan Left", preset_2="Zoom In", preset_3="CW", preset_4="Static", speed=1.5
    )
    assert combined == preset(["Pan Left", "Zoom In", "CW", "Static"], 1.5)
    assert (combined.segments[0].angle, combined.segments[0].translation) == ((0.0, 0.0, -1.0), (1.0, 0.0, -2.0))
    with pytest.raises(ValueError, match="unknown camera preset"):
        camera_nodes.EasyAnimateCameraPreset().build(preset="Barrel Roll", speed=1.0)
