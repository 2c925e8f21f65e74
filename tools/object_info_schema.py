"""Keep the schema facts of some node types from a ComfyUI `/object_info` dump (for compatibility tests).

    python tools/object_info_schema.py object_info.json.gz --workflows workflows/*.json -o tests/data/x.json
    python tools/object_info_schema.py object_info.json CreateVideo SaveVideo

Kept per node type: its inputs (name, type, default, limits, combo choices, the flags that decide widget slots) in
INPUT_TYPES order, and its outputs (types and names). Dropped: descriptions, tooltips, categories —
prose that is not ours to copy and that no converter reads. With `--workflows`, the node types are those the
workflows use, minus frontend-only notes and minus custom-node packs (this pack's nodes come from the live server in
the tests: they are the same code on every ComfyUI version).
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from workflow_api import FRONTEND_ONLY_TYPES  # noqa: E402

# Options that decide a widget's slots, its default or the values it accepts (see workflow_api.widget_slots).
KEPT_OPTIONS = (
    "default",
    "min",
    "max",
    "step",
    "options",
    "multiselect",
    "forceInput",
    "control_after_generate",
    "image_upload",
    "video_upload",
)
KEPT_NODE_FIELDS = ("display_name", "output", "output_name", "output_is_list")
SECTIONS = ("required", "optional")  # "hidden" inputs are filled by the server, never by a workflow


def read_object_info(path: Path) -> dict:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        return json.load(file)


def input_spec(spec: list) -> list:
    """[type, {kept options}] of one input; the type is a list of choices for an old-style combo."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    kept = {key: options[key] for key in KEPT_OPTIONS if key in options}
    return [spec[0], kept] if kept else [spec[0]]


def node_schema(info: dict) -> dict:
    inputs, order = info.get("input") or {}, info.get("input_order") or {}
    schema = {"input": {}, "input_order": {}}
    for section in SECTIONS:
        specs = inputs.get(section) or {}
        if specs:
            names = order.get(section) or list(specs)
            schema["input"][section] = {name: input_spec(specs[name]) for name in names}
            schema["input_order"][section] = list(names)
    schema.update({field: info[field] for field in KEPT_NODE_FIELDS if field in info})
    return schema


def schema_facts(object_info: dict, node_types: list[str]) -> dict:
    missing = sorted(set(node_types) - set(object_info))
    if missing:
        raise SystemExit(f"node types not in this /object_info: {', '.join(missing)}")
    return {name: node_schema(object_info[name]) for name in sorted(set(node_types))}


def core_types_of_workflows(paths: list[Path], object_info: dict) -> list[str]:
    """Node types the workflows use that ComfyUI itself provides (not notes, not any custom_nodes pack)."""
    types = {node["type"] for path in paths for node in json.loads(path.read_text())["nodes"]}
    types -= FRONTEND_ONLY_TYPES
    return sorted(
        t for t in types if not str(object_info.get(t, {}).get("python_module", "")).startswith("custom_nodes")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("object_info", type=Path, help="an /object_info dump (.json or .json.gz)")
    parser.add_argument("node_types", nargs="*", help="node types to keep")
    parser.add_argument("--workflows", nargs="*", type=Path, default=[], help="also keep the core types these use")
    parser.add_argument("--comfyui-version", help="recorded in the output, e.g. 0.27.0")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of stdout")
    args = parser.parse_args(argv)

    object_info = read_object_info(args.object_info)
    node_types = list(args.node_types) + core_types_of_workflows(args.workflows, object_info)
    if not node_types:
        parser.error("name node types or --workflows")
    facts = {"comfyui_version": args.comfyui_version, "nodes": schema_facts(object_info, node_types)}
    text = json.dumps(facts, indent=1, sort_keys=True) + "\n"
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
