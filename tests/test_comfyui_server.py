"""The pack inside a real ComfyUI 0.3.75 server, driven over HTTP + websocket like the browser frontend."""

import pytest
from comfyui_server import PromptRejected, import_failures
from conftest import BROKEN_PACK_NAME, PACK_FOLDER_NAME
from PIL import Image
from test_comfyui_video import CONTROL_DEFAULTS


def test_server_reports_cpu_device_and_pinned_version(comfy_server):
    stats = comfy_server.get("/system_stats")
    assert stats["system"]["comfyui_version"] == "0.3.75"
    assert [d["type"] for d in stats["devices"]] == ["cpu"]


def test_pack_imports_without_failure(comfy_server):
    log = comfy_server.log()
    assert PACK_FOLDER_NAME not in import_failures(log), log[-3000:]
    assert f"Cannot import {comfy_server.base_dir}/custom_nodes/{PACK_FOLDER_NAME}" not in log


def test_a_deliberately_broken_pack_is_detected(comfy_server):
    # proves the import check above can fail
    assert BROKEN_PACK_NAME in import_failures(comfy_server.log())


def test_every_registered_node_appears_in_object_info(comfy_server, pack):
    info = comfy_server.object_info()
    missing = sorted(set(pack.NODE_CLASS_MAPPINGS) - set(info))
    assert not missing, missing
    for node_id, display in pack.NODE_DISPLAY_NAME_MAPPINGS.items():
        assert info[node_id]["display_name"] == display
        assert info[node_id]["category"].startswith("EasyAnimate")


def test_core_workflow_executes(comfy_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 2, "color": 0xFF8800}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "core_smoke"}},
    }
    result = comfy_server.run(prompt, timeout=120)
    assert result.status == "success", result.error
    files = result.files("images")
    assert len(files) == 2
    with Image.open(comfy_server.output_path(files[0])) as image:
        assert image.size == (64, 48)
        assert image.convert("RGB").getpixel((10, 10)) == (255, 136, 0)


def test_invalid_prompt_is_rejected_with_node_errors(comfy_server):
    prompt = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 0, "height": 48, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }
    with pytest.raises(PromptRejected) as excinfo:
        comfy_server.queue(prompt)
    assert "1" in excinfo.value.node_errors


def test_model_dropdown_lists_default_and_yaml_folders_but_not_other_folders(comfy_server):
    info = comfy_server.get("/object_info/EasyAnimateModelLoader")["EasyAnimateModelLoader"]
    choices = info["input"]["required"]["model"][0]
    assert "DefaultFolderModel" in choices  # <base>/models/EasyAnimate, registered unconditionally
    assert "YamlFolderModel" in choices  # only named by extra_model_paths.yaml
    assert "NotAModel" not in choices


def test_model_dropdown_lists_every_tiny_checkpoint_and_single_file(comfy_server, tiny_root):
    info = comfy_server.get("/object_info/EasyAnimateModelLoader")["EasyAnimateModelLoader"]
    choices = info["input"]["required"]["model"][0]
    folders = sorted(p.name for p in tiny_root.iterdir() if p.is_dir())
    assert len(folders) == 22
    assert set(folders) <= set(choices)
    assert "diffusion_models/tiny-EasyAnimateV5.1-12b-zh-InP.safetensors" in choices
    assert "diffusion_models/tiny-EasyAnimateV5.1-7b-zh-InP-diffusers.safetensors" in choices


def test_control_preprocessor_canny_runs_in_comfyui_and_keeps_the_frame_size(comfy_server, tmp_path):
    import numpy as np

    rng = np.random.default_rng(0)
    picture = tmp_path / "control_source.png"
    pixels = np.zeros((170, 250, 3), np.uint8)
    pixels[40:130, 60:190] = rng.integers(0, 255, size=(90, 130, 3), dtype=np.uint8)  # edges to find
    Image.fromarray(pixels).save(picture)
    name = comfy_server.upload_image(picture)
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": name}},
        "2": {"class_type": "RepeatImageBatch", "inputs": {"image": ["1", 0], "amount": 3}},
        "3": {
            "class_type": "EasyAnimateControlPreprocessor",
            "inputs": {"images": ["2", 0], **CONTROL_DEFAULTS},
        },
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "control"}},
    }
    result = comfy_server.run(prompt, timeout=300)
    assert result.status == "success", result.error
    files = result.files("images")
    assert len(files) == 3
    with Image.open(comfy_server.output_path(files[0])) as image:
        assert image.size == (250, 170)
        edges = np.asarray(image.convert("L"))
    assert 0 < (edges > 0).mean() < 0.5  # edges found, not a blank or full frame
