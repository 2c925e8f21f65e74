"""Importing the pack is light: ComfyUI imports every pack at start-up, and /object_info must stay fast."""

import json
import subprocess
import sys

from conftest import REPO_ROOT

# Node ids of the official EasyAnimate plugin and kijai's EasyAnimateWrapper (docs/architecture.md, ComfyUI
# integration): ours must differ so either pack can be installed beside this one.
OFFICIAL_IDS = {
    "LoadEasyAnimateModel",
    "LoadEasyAnimateLora",
    "TextBox",
    "EasyAnimate_TextBox",
    "EasyAnimateT2VSampler",
    "EasyAnimateV5_T2VSampler",
    "EasyAnimateI2VSampler",
    "EasyAnimateV5_I2VSampler",
    "EasyAnimateV2VSampler",
    "EasyAnimateV5_V2VSampler",
    "CreateTrajectoryBasedOnKJNodes",
    "ImageMaximumNode",
    "CameraBasicFromChaoJie",
    "CameraCombineFromChaoJie",
    "CameraJoinFromChaoJie",
    "CameraTrajectoryFromChaoJie",
}
KIJAI_IDS = {
    "DownloadAndLoadEasyAnimateModel",
    "EasyAnimateTextEncode",
    "EasyAnimateSampler",
    "EasyAnimateDecode",
    "EasyAnimateImageEncoder",
    "EasyAnimateResize",
}

PROBE = r"""
import importlib.util, json, sys
import torch  # inside ComfyUI torch is always imported before any pack
before = set(sys.modules)
spec = importlib.util.spec_from_file_location(
    "ComfyUI-EasyAnimate-Nodes", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
new = sorted(m.split(".")[0] for m in set(sys.modules) - before)
print(json.dumps({"new_modules": sorted(set(new)), "nodes": sorted(module.NODE_CLASS_MAPPINGS)}))
"""


def _probe():
    out = subprocess.run(
        [sys.executable, "-c", PROBE, str(REPO_ROOT)], capture_output=True, text=True, check=True, timeout=120
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pack_import_loads_nothing_but_the_pack_and_the_standard_library_after_torch():
    # what makes an import slow is what it drags in; the time itself is a benchmark figure (benchmarks/pack_import.py)
    probe = _probe()
    extra = set(probe["new_modules"]) - {"ComfyUI-EasyAnimate-Nodes"} - set(sys.stdlib_module_names)
    assert not extra, f"importing the pack loads {sorted(extra)}; import them inside the functions that need them"


def test_pack_import_does_not_import_heavy_libraries():
    new = set(_probe()["new_modules"])
    assert not new & {"transformers", "cv2", "controlnet_aux", "diffusers", "timm", "skimage"}, new


def test_node_ids_start_with_easyanimate_and_do_not_clash_with_other_packs(pack):
    ids = set(pack.NODE_CLASS_MAPPINGS)
    assert ids, "the pack registers no nodes"
    assert all(node_id.startswith("EasyAnimate") for node_id in ids), ids
    assert not ids & (OFFICIAL_IDS | KIJAI_IDS)
    assert set(pack.NODE_DISPLAY_NAME_MAPPINGS) == ids


def test_every_node_sits_in_the_easyanimate_menu(pack):
    for node_id, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY.split("/")[0] == "EasyAnimate", node_id
        assert callable(getattr(cls, cls.FUNCTION)), node_id
