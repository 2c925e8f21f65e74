"""Parallel sampling from a real ComfyUI server: two CPU "devices" (gloo workers) against the plain sampler."""

import numpy as np
from PIL import Image
from test_comfyui_video import sampler_inputs

MODEL = "tiny-EasyAnimateV5.1-12b-zh"


def graph(devices=None, steps=3, width=80, height=48, frames=5, seed=4, prefix="parallel", cfg_parallel=False):
    sampler = sampler_inputs(width, height, frames, steps, seed)
    prompt = {
        "1": {
            "class_type": "EasyAnimateModelLoader",
            "inputs": {"model": MODEL, "precision": "fp32", "weight_storage": "same as precision"},
        },
        "2": {
            "class_type": "EasyAnimatePromptEncode",
            "inputs": {"model": ["1", 0], "prompt": "a lighthouse at dusk", "negative_prompt": "blurry"},
        },
        "3": {"class_type": "EasyAnimateVideoSampler", "inputs": sampler},
        "4": {"class_type": "EasyAnimateVAEDecode", "inputs": {"model": ["1", 0], "latents": ["3", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": prefix}},
    }
    if devices is not None:
        prompt["6"] = {
            "class_type": "EasyAnimateParallelOptions",
            "inputs": {"devices": devices, "sequence_parallel": 0, "cfg_parallel": cfg_parallel},
        }
        sampler["parallel"] = ["6", 0]
    return prompt


def frames_of(server, prompt) -> np.ndarray:
    result = server.run(prompt, timeout=600)
    assert result.status == "success", (result.error or {}).get("exception_message", result.error)
    files = sorted(result.files("images"), key=lambda f: f["filename"])
    return np.stack([np.asarray(Image.open(server.output_path(f)).convert("RGB"), dtype=np.int16) for f in files])


def test_two_cpu_workers_give_the_same_video_as_one_device(comfy_server):
    single = frames_of(comfy_server, graph(prefix="single"))
    sequence = frames_of(comfy_server, graph("cpu,cpu", prefix="sp2"))
    cfg_split = frames_of(comfy_server, graph("cpu,cpu", prefix="cfg2", cfg_parallel=True))
    assert single.shape == (5, 48, 80, 3)
    assert np.abs(sequence - single).max() <= 1  # 8-bit rounding of fp32 latents equal to 1e-5
    assert np.abs(cfg_split - single).max() <= 1


def test_cancel_stops_both_workers_and_the_next_prompt_runs(comfy_server):
    interrupted = []

    def interrupt_after_first_step(kind, data):
        if kind == "progress" and data.get("node") == "3" and not interrupted:
            interrupted.append(data["value"])
            comfy_server.interrupt()

    long_run = graph("cpu,cpu", steps=200, width=512, height=512, frames=49, prefix="cancelled")
    result = comfy_server.run(long_run, timeout=600, on_event=interrupt_after_first_step)
    assert interrupted and result.status == "interrupted"
    log = comfy_server.log()
    assert "parallel worker 0: interrupted" in log and "parallel worker 1: interrupted" in log, log[-2000:]
    assert frames_of(comfy_server, graph("cpu,cpu", prefix="after_cancel")).shape == (5, 48, 80, 3)


def test_a_device_list_that_does_not_fit_is_rejected_before_running(comfy_server):
    from comfyui_server import PromptRejected

    prompt = graph("cpu,cpu,cpu", cfg_parallel=True)
    try:
        comfy_server.queue(prompt)
    except PromptRejected as rejected:
        assert "6" in rejected.node_errors
    else:
        raise AssertionError("an odd device count with cfg_parallel was accepted")
