"""tools/workflow_api.py pads like the frontend and stays strict where a value would land in the wrong widget.

Schemas come from tests/data/object_info_comfyui_0.27.0.json (ComfyUI 0.27.0's core nodes, written by
tools/object_info_schema.py) and from small hand-written node schemas. No server needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_api import WorkflowError, to_api, widget_inputs

REPO_ROOT = Path(__file__).resolve().parent.parent
RECORDED_0_27 = REPO_ROOT / "tests" / "data" / "object_info_comfyui_0.27.0.json"


@pytest.fixture(scope="module")
def core_0_27() -> dict:
    return json.loads(RECORDED_0_27.read_text())["nodes"]


def node(type_: str, values, node_id: int = 1) -> dict:
    return {"id": node_id, "type": type_, "mode": 0, "inputs": [], "outputs": [], "widgets_values": values}


def schema(required: dict, optional: dict | None = None) -> dict:
    info = {"input": {"required": required}, "input_order": {"required": list(required)}}
    if optional:
        info["input"]["optional"] = optional
        info["input_order"]["optional"] = list(optional)
    return info


def test_recorded_schema_holds_facts_only_no_prose(core_0_27):
    text = RECORDED_0_27.read_text()
    assert "tooltip" not in text and "description" not in text
    assert core_0_27["CreateVideo"]["input_order"] == {
        "required": ["images", "fps"],
        "optional": ["audio", "bit_depth"],
    }
    assert core_0_27["CreateVideo"]["input"]["optional"]["bit_depth"] == [
        "INT",
        {"default": 8, "max": 10, "min": 8, "step": 2},
    ]


def test_a_create_video_saved_on_0_3_75_gets_the_default_bit_depth_of_0_27(core_0_27):
    assert widget_inputs(node("CreateVideo", [8]), core_0_27["CreateVideo"]) == {"fps": 8, "bit_depth": 8}


def test_a_missing_required_widget_is_an_error_not_a_default(core_0_27):
    with pytest.raises(WorkflowError, match="expects 2"):
        widget_inputs(node("CreateVideo", []), core_0_27["CreateVideo"])


def test_more_values_than_widgets_is_an_error(core_0_27):
    with pytest.raises(WorkflowError, match="3 widget values"):
        widget_inputs(node("CreateVideo", [8, 8, 8]), core_0_27["CreateVideo"])


def test_an_input_inserted_in_the_middle_is_an_error_because_the_value_would_shift():
    # Saved when the node was (steps, strength); the installed node has (steps, label, strength).
    installed = schema(
        {"steps": ["INT", {"default": 20}]},
        {"label": ["STRING", {"default": ""}], "strength": ["FLOAT", {"default": 1.0}]},
    )
    with pytest.raises(WorkflowError, match="does not fit widget 'label'"):
        widget_inputs(node("X", [20, 0.5]), installed)


def test_padding_covers_a_trailing_seed_with_its_control_slot_and_a_combo_without_default():
    installed = schema({"steps": ["INT", {"default": 20}]}, {"seed": ["INT", {"default": 7}], "mode": [["a", "b"]]})
    assert widget_inputs(node("X", [3]), installed) == {"steps": 3, "seed": 7, "mode": "a"}
    assert widget_inputs(node("X", [3, 5, "randomize"]), installed) == {"steps": 3, "seed": 5, "mode": "a"}


def test_a_missing_optional_widget_without_any_default_is_an_error():
    installed = schema({"steps": ["INT", {"default": 20}]}, {"name": ["STRING", {}]})
    with pytest.raises(WorkflowError, match="expects 2"):
        widget_inputs(node("X", [3]), installed)


def test_to_api_pads_the_core_nodes_of_a_shipped_workflow(core_0_27):
    workflow = json.loads((REPO_ROOT / "workflows" / "text_to_video.json").read_text())
    kept = {"CreateVideo", "SaveVideo"}
    workflow["nodes"] = [n for n in workflow["nodes"] if n["type"] in kept]
    for n in workflow["nodes"]:
        n["inputs"] = [socket for socket in n.get("inputs") or [] if socket["type"] != "IMAGE"]
        for socket in n["inputs"]:
            socket["link"] = None
    workflow["links"] = []
    prompt = to_api(workflow, core_0_27)
    create = next(p for p in prompt.values() if p["class_type"] == "CreateVideo")
    assert create["inputs"] == {"fps": 8, "bit_depth": 8}


def test_the_extractor_keeps_order_types_defaults_and_choices_and_drops_prose_and_pack_nodes(tmp_path):
    dump = {
        "CoreNode": {
            "display_name": "Core",
            "description": "prose",
            "category": "x",
            "python_module": "nodes",
            "input": {
                "required": {
                    "b": ["INT", {"default": 2, "min": 0, "tooltip": "prose"}],
                    "a": [["p", "q"], {"image_upload": True}],
                },
                "optional": {"c": ["IMAGE", {"tooltip": "prose"}]},
                "hidden": {"h": ["PROMPT"]},
            },
            "input_order": {"required": ["b", "a"], "optional": ["c"], "hidden": ["h"]},
            "output": ["IMAGE"],
            "output_name": ["image"],
            "output_is_list": [False],
        },
        "PackNode": {"python_module": "custom_nodes.some-pack", "input": {"required": {}}},
    }
    source, workflow, out = tmp_path / "dump.json", tmp_path / "w.json", tmp_path / "facts.json"
    source.write_text(json.dumps(dump))
    workflow.write_text(json.dumps({"nodes": [{"type": "CoreNode"}, {"type": "PackNode"}, {"type": "MarkdownNote"}]}))
    command = [
        sys.executable,
        str(REPO_ROOT / "tools" / "object_info_schema.py"),
        str(source),
        "--workflows",
        str(workflow),
        "-o",
        str(out),
    ]
    subprocess.run(command, check=True, timeout=120)
    assert json.loads(out.read_text())["nodes"] == {
        "CoreNode": {
            "input": {
                "required": {"b": ["INT", {"default": 2, "min": 0}], "a": [["p", "q"], {"image_upload": True}]},
                "optional": {"c": ["IMAGE"]},
            },
            "input_order": {"required": ["b", "a"], "optional": ["c"]},
            "display_name": "Core",
            "output": ["IMAGE"],
            "output_name": ["image"],
            "output_is_list": [False],
        }
    }
