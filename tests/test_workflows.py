"""The shipped workflows (workflows/*.json) against the LIVE server (ComfyUI 0.3.75) and against ComfyUI 0.27.0's
recorded core nodes (tests/data/, see tools/object_info_schema.py; the pack's own nodes come from the live server, they
are the same code on both): the contract (every node type exists, every
node's widgets_values fit its current INPUT_TYPES in count, order and type, every link joins matching types), the
templates listing, and execution of each one converted to API format with the tiny checkpoint substituted.

A change to a node's inputs that would break saved workflows fails here: append new inputs under "optional".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from run_workflow import LOADER, TINY_SIZE, run_on
from workflow_api import (
    CONTROL_VALUES,
    FRONTEND_ONLY_TYPES,
    WorkflowError,
    combo_options,
    missing_node_types,
    to_api,
    widget_inputs,
    widget_slots,
)

from models.variants import VARIANTS

REPO_ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = REPO_ROOT / "workflows"
WORKFLOWS = sorted(WORKFLOWS_DIR.glob("*.json"))
SHIPPED = {
    "text_to_video",
    "image_to_video",
    "control_to_video",
    "camera_to_video",
    "trajectory_to_video",
    "video_inpaint",
    "extend_video",
    "text_to_video_lora",
}
# Combos whose choices depend on the machine (installed models, files in the input folder): only the type is checked.
MACHINE_DEPENDENT_COMBOS = {(LOADER, "model"), ("LoadImage", "image"), ("LoadVideo", "file")}
IDS = [p.stem for p in WORKFLOWS]
RECORDED_SCHEMAS = {"0.27.0": REPO_ROOT / "tests" / "data" / "object_info_comfyui_0.27.0.json"}


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def live_object_info(comfy_server):
    return comfy_server.object_info()


def recorded_object_info(version: str, live: dict) -> dict:
    """ComfyUI `version`'s core nodes as recorded, plus this pack's nodes from the live server."""
    core = json.loads(RECORDED_SCHEMAS[version].read_text())["nodes"]
    pack = {name: info for name, info in live.items() if name.startswith("EasyAnimate")}
    return {**core, **pack}


@pytest.fixture(scope="module", params=["0.3.75", *RECORDED_SCHEMAS])
def object_info(request, live_object_info):
    return live_object_info if request.param == "0.3.75" else recorded_object_info(request.param, live_object_info)


def server_nodes(workflow: dict):
    return [node for node in workflow["nodes"] if node["type"] not in FRONTEND_ONLY_TYPES]


def widget_problems(node: dict, info: dict) -> list[str]:
    """Why `node`'s widgets_values do not fit the live INPUT_TYPES (empty when they do)."""
    slots, values = widget_slots(info), node.get("widgets_values") or []
    where = f"node {node['id']} {node['type']}"
    try:
        widget_inputs(node, info)  # count: trailing optional widgets may be missing (padded with their defaults)
    except WorkflowError as error:
        return [f"{where}: {error}"]
    problems = []
    for (name, kind, spec), value in zip(slots, values):
        if kind == "control":
            ok = value in CONTROL_VALUES
        elif kind == "upload":
            ok = value == "image"  # the upload button's value, as frontend 1.32.9 saves it for images and videos
        elif combo_options(spec) is not None:
            ok = isinstance(value, str) and (
                (node["type"], name) in MACHINE_DEPENDENT_COMBOS or value in combo_options(spec)
            )
        else:
            options = spec[1] if len(spec) > 1 else {}
            ok = {
                "INT": lambda v: isinstance(v, int) and not isinstance(v, bool),
                "FLOAT": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
                "STRING": lambda v: isinstance(v, str),
                "BOOLEAN": lambda v: isinstance(v, bool),
            }[spec[0]](value)
            if ok and spec[0] in ("INT", "FLOAT"):
                ok = options.get("min", -np.inf) <= value <= options.get("max", np.inf)
        if not ok:
            problems.append(f"{where}: widget {name!r} ({kind}, {spec[0] if spec else ''}) has value {value!r}")
    return problems


def test_the_shipped_workflows_are_all_there():
    assert {p.stem for p in WORKFLOWS} == SHIPPED


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_workflow_is_saved_in_the_frontends_ui_format(path):
    workflow = load(path)
    assert workflow["version"] == 0.4
    assert {"nodes", "links", "last_node_id", "last_link_id"} <= set(workflow)
    for link_id, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        source = next(n for n in workflow["nodes"] if n["id"] == origin)
        sink = next(n for n in workflow["nodes"] if n["id"] == target)
        assert link_id in source["outputs"][origin_slot]["links"]
        assert sink["inputs"][target_slot]["link"] == link_id


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_every_node_type_exists_on_the_server(path, object_info):
    assert missing_node_types(load(path), object_info) == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_widgets_values_match_current_inputs_in_count_order_and_type(path, object_info):
    workflow = load(path)
    problems = [p for node in server_nodes(workflow) for p in widget_problems(node, object_info[node["type"]])]
    assert problems == []


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_every_link_joins_an_output_and_an_input_of_the_same_type(path, object_info):
    workflow = load(path)
    nodes = {node["id"]: node for node in workflow["nodes"]}
    for _, origin, origin_slot, target, target_slot, link_type in workflow["links"]:
        produced = object_info[nodes[origin]["type"]]["output"][origin_slot]
        sink = object_info[nodes[target]["type"]]["input"]
        name = nodes[target]["inputs"][target_slot]["name"]
        spec = {**sink.get("required", {}), **sink.get("optional", {})}[name]
        expected = spec[0] if isinstance(spec[0], str) else "COMBO"
        assert produced == link_type == expected, (nodes[origin]["type"], nodes[target]["type"], name)


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_each_workflow_has_a_note_naming_its_model_and_folder(path, object_info):
    workflow = load(path)
    loader = next(n for n in workflow["nodes"] if n["type"] == LOADER)
    model = loader["widgets_values"][0]
    notes = [n["widgets_values"][0] for n in workflow["nodes"] if n["type"] in FRONTEND_ONLY_TYPES]
    assert any(model in note and f"ComfyUI/models/EasyAnimate/{model}/" in note for note in notes), notes


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_conversion_for_0_27_equals_0_3_75_plus_the_default_bit_depth(path, live_object_info):
    workflow = load(path)
    on_0_3_75 = to_api(workflow, live_object_info)
    on_0_27 = to_api(workflow, recorded_object_info("0.27.0", live_object_info))
    for node_id, entry in on_0_3_75.items():
        if entry["class_type"] == "CreateVideo":
            assert "bit_depth" not in entry["inputs"]
            entry["inputs"]["bit_depth"] = 8  # added in ComfyUI 0.25, padded with its default like the frontend does
    assert on_0_27 == on_0_3_75


def test_defaults_suit_the_real_models_on_a_24_gb_card():
    for path in WORKFLOWS:
        workflow = load(path)
        loader = next(n for n in workflow["nodes"] if n["type"] == LOADER)
        sampler = next(n for n in workflow["nodes"] if n["type"] == "EasyAnimateVideoSampler")
        model, precision, storage = loader["widgets_values"][:3]
        assert (precision, storage) == ("bf16", "fp8_e4m3fn"), path.name
        assert model in VARIANTS, f"{path.name}: {model!r} is not a released model folder name"
        assert (VARIANTS[model].version, VARIANTS[model].size) == ("v5.1", "12b"), path.name
        assert sampler["widgets_values"][:5] == [672, 384, 49, 50, 6.0]  # width, height, frames, steps, cfg


def test_workflows_are_listed_as_the_packs_templates(comfy_server):
    from conftest import PACK_FOLDER_NAME

    assert set(comfy_server.get("/api/workflow_templates")[PACK_FOLDER_NAME]) == SHIPPED
    served = comfy_server.get(f"/api/workflow_templates/{PACK_FOLDER_NAME}/text_to_video.json")
    assert served == load(REPO_ROOT / "workflows" / "text_to_video.json")


# -- execution --------------------------------------------------------------------------------------------------------
def saved_video(server, result) -> np.ndarray:
    import av

    files = result.files()
    assert len(files) == 1, result.outputs
    assert files[0]["filename"].endswith(".mp4")
    with av.open(str(server.output_path(files[0]))) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def run_tiny(server, workflow):
    result, tiny, prompt = run_on(server, workflow, timeout=600, quiet=True)
    assert tiny
    assert result.status == "success", (result.error or {}).get("exception_message", result.error)
    return result, prompt


@pytest.mark.parametrize("path", WORKFLOWS, ids=IDS)
def test_workflow_runs_on_the_server_and_saves_the_requested_frames_and_size(comfy_server, path):
    result, prompt = run_tiny(comfy_server, load(path))
    frames = saved_video(comfy_server, result)
    assert frames.shape == (TINY_SIZE["frames"], TINY_SIZE["height"], TINY_SIZE["width"], 3)


def test_image_to_video_end_image_joins_the_graph_when_enabled(comfy_server):
    workflow = load(REPO_ROOT / "workflows" / "image_to_video.json")
    end_node = next(n for n in workflow["nodes"] if n["type"] == "LoadImage" and n.get("mode") == 4)
    end_node["mode"] = 0  # what Ctrl+B does in the frontend
    result, prompt = run_tiny(comfy_server, workflow)
    sampler = next(node for node in prompt.values() if node["class_type"] == "EasyAnimateVideoSampler")
    assert sampler["inputs"]["end_image"] == [str(end_node["id"]), 0]
    assert saved_video(comfy_server, result).shape[0] == TINY_SIZE["frames"]


def test_control_workflow_feeds_the_preprocessed_source_video_to_a_control_model(comfy_server):
    result, prompt = run_tiny(comfy_server, load(REPO_ROOT / "workflows" / "control_to_video.json"))
    sampler = next(node for node in prompt.values() if node["class_type"] == "EasyAnimateVideoSampler")
    source = prompt[sampler["inputs"]["control_video"][0]]
    assert source["class_type"] == "EasyAnimateControlPreprocessor"
    assert prompt[source["inputs"]["images"][0]]["class_type"] == "GetVideoComponents"
    loader = next(node for node in prompt.values() if node["class_type"] == LOADER)
    assert loader["inputs"]["model"] == "tiny-EasyAnimateV5.1-12b-zh-Control"


def test_run_workflow_command_prints_the_path_of_a_saved_video_and_says_it_is_noise():
    command = [sys.executable, str(REPO_ROOT / "tools" / "run_workflow.py"), str(WORKFLOWS_DIR / "text_to_video.json")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    outputs = [line.split("output: ", 1)[1] for line in done.stdout.splitlines() if "] output: " in line]
    assert len(outputs) == 1 and outputs[0].endswith(".mp4") and Path(outputs[0]).stat().st_size > 0
    assert "noise" in done.stdout
    assert "EasyAnimate Sampler: 2/2" in done.stdout
