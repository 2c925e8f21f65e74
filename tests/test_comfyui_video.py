"""Loader → Text Encode → Sampler → VAE Decode → core CreateVideo/SaveVideo, in a real ComfyUI, on tiny checkpoints."""

import numpy as np
import pytest
from comfyui_server import PromptRejected
from PIL import Image

WIDTH, HEIGHT, FRAMES = 96, 64, 5
# The control preprocessor's widgets at their defaults (canny), as a saved workflow holds them.
CONTROL_DEFAULTS = {
    "method": "canny",
    "detect_resolution": 512,
    "canny_low_threshold": 100,
    "canny_high_threshold": 200,
    "depth_background_threshold": 0.1,
    "pose_body": True,
    "pose_hands": False,
    "pose_face": False,
    "mlsd_score_threshold": 0.1,
    "mlsd_distance_threshold": 0.1,
    "hed_safe": False,
}


def sampler_inputs(width, height, frames, steps, seed) -> dict:
    """The sampler's inputs in an API prompt whose loader is node "1" and prompt encoder node "2"."""
    return {
        "model": ["1", 0],
        "embeddings": ["2", 0],
        "width": width,
        "height": height,
        "frames": frames,
        "steps": steps,
        "cfg": 6.0,
        "seed": seed,
        "scheduler": "auto",
        "teacache_threshold": 0.0,
        "teacache_skip_start": 0,
    }


def graph(
    model,
    seed=1,
    frames=FRAMES,
    steps=2,
    width=WIDTH,
    height=HEIGHT,
    prefix="t2v",
    sampler_extra=None,
    extra_nodes=None,
):
    sampler = {**sampler_inputs(width, height, frames, steps, seed), **(sampler_extra or {})}
    prompt = {
        "1": {
            "class_type": "EasyAnimateModelLoader",
            "inputs": {"model": model, "precision": "fp32", "weight_storage": "same as precision"},
        },
        "2": {
            "class_type": "EasyAnimatePromptEncode",
            "inputs": {"model": ["1", 0], "prompt": "a red fox running in snow", "negative_prompt": "blurry"},
        },
        "3": {"class_type": "EasyAnimateVideoSampler", "inputs": sampler},
        "4": {"class_type": "EasyAnimateVAEDecode", "inputs": {"model": ["1", 0], "latents": ["3", 0]}},
        "5": {"class_type": "CreateVideo", "inputs": {"images": ["4", 0], "fps": ["4", 2]}},
        "6": {
            "class_type": "SaveVideo",
            "inputs": {"video": ["5", 0], "filename_prefix": prefix, "format": "mp4", "codec": "h264"},
        },
    }
    prompt.update(extra_nodes or {})
    return prompt


def read_video(server, result) -> np.ndarray:
    import av

    files = result.files()
    assert len(files) == 1, result.outputs
    with av.open(str(server.output_path(files[0]))) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def run_ok(server, prompt, timeout=600):
    result = server.run(prompt, timeout=timeout)
    assert result.status == "success", (result.error or {}).get("exception_message", result.error)
    return result


def upload_picture(server, tmp_path, name, seed, size=(WIDTH, HEIGHT)):
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size[1], size[0], 3), np.uint8)
    pixels[size[1] // 4 : 3 * size[1] // 4, size[0] // 4 : 3 * size[0] // 4] = rng.integers(0, 255, 3)
    path = tmp_path / name
    Image.fromarray(pixels).save(path)
    return server.upload_image(path)


def test_text_to_video_saves_a_video_with_the_requested_frames_and_size(comfy_server):
    frames = read_video(comfy_server, run_ok(comfy_server, graph("tiny-EasyAnimateV5.1-12b-zh")))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_same_seed_gives_identical_frames_and_another_seed_does_not(comfy_server):
    model = "tiny-EasyAnimateV5.1-7b-zh"
    first = read_video(comfy_server, run_ok(comfy_server, graph(model, seed=5, prefix="seed_a")))
    other = read_video(comfy_server, run_ok(comfy_server, graph(model, seed=6, prefix="seed_b")))
    again = read_video(comfy_server, run_ok(comfy_server, graph(model, seed=5, prefix="seed_c")))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_v5_text_to_video_runs_with_its_ddim_default(comfy_server):
    frames = read_video(comfy_server, run_ok(comfy_server, graph("tiny-EasyAnimateV5-12b-zh", prefix="v5")))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_image_to_video_with_an_inp_model(comfy_server, tmp_path):
    start = upload_picture(comfy_server, tmp_path, "start.png", 1, size=(120, 80))  # resized to 96x64 by the node
    prompt = graph(
        "tiny-EasyAnimateV5.1-12b-zh-InP",
        prefix="i2v",
        sampler_extra={"start_image": ["7", 0]},
        extra_nodes={"7": {"class_type": "LoadImage", "inputs": {"image": start}}},
    )
    frames = read_video(comfy_server, run_ok(comfy_server, prompt))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_control_to_video_from_a_preprocessed_source_video(comfy_server, tmp_path):
    source = upload_picture(comfy_server, tmp_path, "source.png", 2)
    reference = upload_picture(comfy_server, tmp_path, "reference.png", 3)
    control_inputs = {"images": ["8", 0], **CONTROL_DEFAULTS}
    prompt = graph(
        "tiny-EasyAnimateV5.1-12b-zh-Control",
        prefix="control",
        sampler_extra={"control_video": ["9", 0], "reference_image": ["10", 0]},
        extra_nodes={
            "7": {"class_type": "LoadImage", "inputs": {"image": source}},
            "8": {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": FRAMES}},
            "9": {"class_type": "EasyAnimateControlPreprocessor", "inputs": control_inputs},
            "10": {"class_type": "LoadImage", "inputs": {"image": reference}},
        },
    )
    frames = read_video(comfy_server, run_ok(comfy_server, prompt))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_a_control_video_to_a_text_to_video_model_is_a_clear_error(comfy_server, tmp_path):
    source = upload_picture(comfy_server, tmp_path, "source2.png", 4)
    prompt = graph(
        "tiny-EasyAnimateV5.1-12b-zh",
        prefix="wrong",
        sampler_extra={"control_video": ["7", 0]},
        extra_nodes={"7": {"class_type": "LoadImage", "inputs": {"image": source}}},
    )
    result = comfy_server.run(prompt, timeout=300)
    assert result.status == "error"
    assert result.error["node_type"] == "EasyAnimateVideoSampler"
    assert "needs a Control model" in result.error["exception_message"]


# width 100 (not a multiple of 16) is refused by the sampler before loading: test_comfyui_reliability.py
@pytest.mark.parametrize("frames,width,needle", [(6, WIDTH, "frames 6")])
def test_invalid_frame_count_or_size_is_rejected_at_validation(comfy_server, frames, width, needle):
    with pytest.raises(PromptRejected) as excinfo:
        comfy_server.queue(graph("tiny-EasyAnimateV5.1-12b-zh", frames=frames, width=width))
    errors = excinfo.value.node_errors["3"]["errors"]
    assert any(needle in error["details"] for error in errors), errors


def test_interrupt_during_sampling_then_the_next_prompt_succeeds(comfy_server):
    interrupted = []

    def interrupt_on_first_step(kind, data):
        if kind == "progress" and data.get("node") == "3" and not interrupted:
            interrupted.append(data["value"])
            comfy_server.interrupt()

    long_run = graph("tiny-EasyAnimateV5.1-12b-zh", steps=200, seed=99, prefix="interrupted")
    result = comfy_server.run(long_run, timeout=600, on_event=interrupt_on_first_step)
    assert interrupted and result.status == "interrupted"
    assert not result.files()
    frames = read_video(
        comfy_server, run_ok(comfy_server, graph("tiny-EasyAnimateV5.1-12b-zh", seed=98, prefix="after"))
    )
    assert frames.shape[0] == FRAMES


def test_a_single_transformer_file_from_diffusion_models_runs_with_a_companion_folder(comfy_server):
    model = "diffusion_models/tiny-EasyAnimateV5.1-12b-zh-InP.safetensors"
    frames = read_video(comfy_server, run_ok(comfy_server, graph(model, prefix="single_file")))
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)


def test_a_control_clip_of_7_frames_gives_a_5_frame_video_and_the_sampler_says_so(comfy_server, tmp_path):
    source = upload_picture(comfy_server, tmp_path, "clip7.png", 5)
    control_inputs = {"images": ["8", 0], **CONTROL_DEFAULTS}
    prompt = graph(
        "tiny-EasyAnimateV5.1-12b-zh-Control",
        prefix="clip7",
        frames=9,
        seed=7,
        sampler_extra={"control_video": ["9", 0]},
        extra_nodes={
            "7": {"class_type": "LoadImage", "inputs": {"image": source}},
            "8": {"class_type": "RepeatImageBatch", "inputs": {"image": ["7", 0], "amount": 7}},
            "9": {"class_type": "EasyAnimateControlPreprocessor", "inputs": control_inputs},
        },
    )
    frames = read_video(comfy_server, run_ok(comfy_server, prompt))
    assert frames.shape == (5, HEIGHT, WIDTH, 3)
    assert (
        "control_video has 7 frames: generating 5 frames (the largest 4k+1 that fits) from its first 5; frames was 9"
    ) in comfy_server.log()
