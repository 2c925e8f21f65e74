"""Camera, trajectory, mask-edit and extend nodes in a real ComfyUI server on the tiny checkpoints."""

import numpy as np
import pytest
from comfyui_server import PromptRejected
from PIL import Image
from test_comfyui_video import FRAMES, HEIGHT, WIDTH, graph, read_video, run_ok

CAMERA_MODELS = ["tiny-EasyAnimateV5.1-12b-zh-Control-Camera", "tiny-EasyAnimateV5.1-7b-zh-Control-Camera"]


def camera_nodes():
    """Pan Left + Zoom In, then a roll, with a custom lens: every camera node but the pose file."""
    return {
        "20": {
            "class_type": "EasyAnimateCameraCombine",
            "inputs": {
                "preset_1": "Pan Left",
                "preset_2": "Zoom In",
                "preset_3": "Static",
                "preset_4": "Static",
                "speed": 1.0,
            },
        },
        "21": {"class_type": "EasyAnimateCameraPreset", "inputs": {"preset": "ACW", "speed": 0.5}},
        "22": {"class_type": "EasyAnimateCameraJoin", "inputs": {"first": ["20", 0], "then": ["21", 0]}},
        "23": {
            "class_type": "EasyAnimateCameraIntrinsics",
            "inputs": {"camera": ["22", 0], "fx": 0.5, "fy": 0.85, "cx": 0.5, "cy": 0.5},
        },
    }


@pytest.mark.parametrize("model", CAMERA_MODELS)
def test_control_camera_model_runs_from_camera_presets(comfy_server, model):
    prompt = graph(
        model, prefix="camera_" + model[-24:-15], sampler_extra={"camera": ["23", 0]}, extra_nodes=camera_nodes()
    )
    assert read_video(comfy_server, run_ok(comfy_server, prompt)).shape == (FRAMES, HEIGHT, WIDTH, 3)


@pytest.mark.parametrize("model", CAMERA_MODELS)
def test_control_camera_model_runs_from_a_pose_file_in_the_input_folder(comfy_server, model):
    folder = comfy_server.base_dir / "input" / "camera_poses"
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["https://www.youtube.com/watch?v=pose-test"]
    for n in range(12):  # a 24 fps file: every third line is used at 8 fps
        w2c = [1, 0, 0, 0.05 * n, 0, 1, 0, 0, 0, 0, 1, -0.1 * n]
        lines.append(" ".join(str(v) for v in [n * 41708, 0.474812461, 0.844111024, 0.5, 0.5, 0, 0, *w2c]))
    (folder / "dolly.txt").write_text("\n".join(lines) + "\n")
    prompt = graph(
        model,
        prefix="pose_file",
        sampler_extra={"camera": ["20", 0]},
        extra_nodes={
            "20": {
                "class_type": "EasyAnimateCameraPoseFile",
                "inputs": {"pose_file": "camera_poses/dolly.txt", "fps": 8},
            }
        },
    )
    assert read_video(comfy_server, run_ok(comfy_server, prompt)).shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_a_pose_file_name_outside_the_input_folder_is_rejected(comfy_server):
    prompt = graph(
        CAMERA_MODELS[0],
        sampler_extra={"camera": ["20", 0]},
        extra_nodes={
            "20": {"class_type": "EasyAnimateCameraPoseFile", "inputs": {"pose_file": "../../etc/passwd", "fps": 8}}
        },
    )
    with pytest.raises(PromptRejected, match="leaves the input folder"):
        comfy_server.queue(prompt)


@pytest.mark.parametrize(
    "model, camera, needle",
    [
        ("tiny-EasyAnimateV5.1-12b-zh-InP", True, "needs a Control-Camera model"),
        (CAMERA_MODELS[1], False, "connect a camera path"),
    ],
)
def test_camera_mismatch_is_a_clear_error(comfy_server, model, camera, needle):
    extra = camera_nodes() if camera else {}
    prompt = graph(model, prefix="mismatch", sampler_extra={"camera": ["23", 0]} if camera else {}, extra_nodes=extra)
    result = comfy_server.run(prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "EasyAnimateVideoSampler"
    assert needle in result.error["exception_message"]


def test_trajectory_drives_a_control_model(comfy_server):
    tracks = '[{"x": 10, "y": 20}, {"x": 40, "y": 30}, {"x": 80, "y": 40}]'
    prompt = graph(
        "tiny-EasyAnimateV5.1-12b-zh-Control",
        prefix="trajectory",
        sampler_extra={"control_video": ["21", 0]},
        extra_nodes={
            "20": {
                "class_type": "EasyAnimateTrajectory",
                "inputs": {"tracks": tracks, "width": WIDTH, "height": HEIGHT, "frames": FRAMES},
            },
            "22": {
                "class_type": "EasyAnimateTrajectory",
                "inputs": {"tracks": "[[30, 50], [60, 10]]", "width": WIDTH, "height": HEIGHT, "frames": FRAMES},
            },
            "21": {"class_type": "EasyAnimateVideoMaximum", "inputs": {"video_1": ["20", 0], "video_2": ["22", 0]}},
        },
    )
    assert read_video(comfy_server, run_ok(comfy_server, prompt)).shape == (FRAMES, HEIGHT, WIDTH, 3)


def saved_png(server, result, node_id):
    entry = result.outputs[node_id]["images"][0]
    return np.asarray(Image.open(server.output_path(entry)).convert("RGB"))


def test_mask_edit_keeps_the_input_outside_the_feathered_mask_exactly(comfy_server, tmp_path):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    alpha = np.full((HEIGHT, WIDTH), 255, np.uint8)
    alpha[16:48, 32:80] = 0  # LoadImage's MASK is 1 − alpha: the box is regenerated
    Image.fromarray(np.dstack([pixels, alpha]), "RGBA").save(tmp_path / "edit.png")
    name = comfy_server.upload_image(tmp_path / "edit.png")
    feather = 4
    prompt = graph(
        "tiny-EasyAnimateV5.1-12b-zh-InP",
        prefix="mask_edit",
        sampler_extra={"input_video": ["20", 0], "mask": ["20", 1], "mask_composite": True, "mask_feather": feather},
        extra_nodes={
            "20": {"class_type": "LoadImage", "inputs": {"image": name}},
            "21": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": "mask_edit_out"}},
        },
    )
    del prompt["5"], prompt["6"]
    result = run_ok(comfy_server, prompt)
    out = saved_png(comfy_server, result, "21")
    rows, cols = np.mgrid[:HEIGHT, :WIDTH]
    distance = np.hypot(
        np.clip(np.maximum(16 - rows, rows - 47), 0, None), np.clip(np.maximum(32 - cols, cols - 79), 0, None)
    )
    beyond = distance >= feather
    assert np.array_equal(out[beyond], pixels[beyond])
    assert not np.array_equal(out[distance == 0], pixels[distance == 0])  # the box was regenerated


def test_extend_then_crossfade_join(comfy_server):
    prompt = graph("tiny-EasyAnimateV5.1-12b-zh-InP", prefix="first")
    del prompt["5"], prompt["6"]
    second = graph("tiny-EasyAnimateV5.1-12b-zh-InP", seed=2, sampler_extra={"start_image": ["30", 0]})
    prompt.update(
        {
            "30": {"class_type": "EasyAnimateLastFrames", "inputs": {"images": ["4", 0], "count": 2}},
            "33": {**second["3"], "inputs": {**second["3"]["inputs"], "model": ["1", 0], "embeddings": ["2", 0]}},
            "34": {"class_type": "EasyAnimateVAEDecode", "inputs": {"model": ["1", 0], "latents": ["33", 0]}},
            "35": {
                "class_type": "EasyAnimateCrossfadeJoin",
                "inputs": {"first": ["4", 0], "second": ["34", 0], "overlap": 2},
            },
            "36": {"class_type": "CreateVideo", "inputs": {"images": ["35", 0], "fps": 8.0}},
            "37": {
                "class_type": "SaveVideo",
                "inputs": {"video": ["36", 0], "filename_prefix": "extended", "format": "mp4", "codec": "h264"},
            },
        }
    )
    assert read_video(comfy_server, run_ok(comfy_server, prompt)).shape == (2 * FRAMES - 2, HEIGHT, WIDTH, 3)
