"""Run a shipped (UI-format) workflow headless in a real ComfyUI and print the paths of what it saved.

    python tools/run_workflow.py workflows/text_to_video.json                 # pinned ComfyUI 0.3.75, provisioned
    python tools/run_workflow.py workflows/image_to_video.json --comfyui ~/ComfyUI --model EasyAnimateV5.1-7b-zh-InP

It links this pack into ComfyUI's custom_nodes, starts the server on a free loopback port (CPU unless CUDA is
available), converts the workflow to API format (tools/workflow_api.py), uploads the example inputs it names
(workflows/inputs/), follows the run over the websocket with a progress line per node, and prints every output file.

When the workflow's model is not installed (and --model names none), it substitutes the built-in tiny checkpoint of
the same kind (tools/tiny_checkpoints.py) and shrinks the video to TINY_SIZE so it runs in seconds on a CPU: the
pipeline is real, the weights are random, so the video is noise.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT / "tools",):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from comfyui_server import ComfyServer, write_model_paths_yaml  # noqa: E402
from workflow_api import MODE_BYPASSED, MODE_MUTED, padded_widget_values, to_api, widget_inputs, widget_slots  # noqa: E402

PACK_FOLDER_NAME = "ComfyUI-EasyAnimate-Nodes"
LOADER = "EasyAnimateModelLoader"
SAMPLER = "EasyAnimateVideoSampler"
PREPROCESSOR = "EasyAnimateControlPreprocessor"
FILE_LOADERS = {"LoadImage": "image", "LoadVideo": "file"}
EXAMPLE_INPUTS = REPO_ROOT / "workflows" / "inputs"
TINY_SIZE = {"width": 96, "height": 64, "frames": 5, "steps": 2}
KIND_SUFFIXES = ("-Control-Camera", "-Control", "-InP")
DEFAULT_RUN_DIR = REPO_ROOT / ".cache" / "run_workflow"


# -- preparing the workflow -------------------------------------------------------------------------------------------
def _active(node: dict) -> bool:
    return node.get("mode", 0) not in (MODE_MUTED, MODE_BYPASSED)


def installed_models(object_info: dict) -> list[str]:
    return list(object_info[LOADER]["input"]["required"]["model"][0])


def tiny_counterpart(name: str, available: list[str]) -> str | None:
    """The tiny checkpoint of the same version and kind as a released model name (e.g. ...-12b-zh-InP)."""
    if "tiny-" + name in available:
        return "tiny-" + name
    version = "V5" if "EasyAnimateV5-" in name else "V5.1"
    size = "7b" if "-7b-" in name else "12b"
    suffix = next((s for s in KIND_SUFFIXES if name.removesuffix(".safetensors").endswith(s)), "")
    candidate = f"tiny-EasyAnimate{version}-{size}-zh{suffix}"
    return candidate if candidate in available else None


def set_widget(node: dict, object_info: dict, name: str, value) -> None:
    info = object_info[node["type"]]
    slots = widget_slots(info)
    index = [i for i, (slot_name, kind, _) in enumerate(slots) if slot_name == name and kind == "value"][0]
    node["widgets_values"] = padded_widget_values(node, info)  # saved before a widget existed: pad like the frontend
    node["widgets_values"][index] = value


def get_widget(node: dict, object_info: dict, name: str):
    return widget_inputs(node, object_info[node["type"]])[name]


def choose_models(workflow: dict, object_info: dict, model: str | None = None) -> tuple[dict, bool]:
    """A copy of `workflow` whose loaders name an installed model; True when that is a tiny stand-in (shrunk too)."""
    workflow = copy.deepcopy(workflow)
    available = installed_models(object_info)
    tiny = False
    for node in workflow["nodes"]:
        if node["type"] != LOADER or not _active(node):
            continue
        wanted = model or get_widget(node, object_info, "model")
        if wanted not in available:
            if model is not None:
                raise SystemExit(f"model {model!r} is not installed; the loader lists: {', '.join(available)}")
            stand_in = tiny_counterpart(wanted, available)
            if stand_in is None:
                raise SystemExit(
                    f"model {wanted!r} is not installed and no tiny stand-in fits it; installed: {', '.join(available)}"
                )
            print(f"[run_workflow] {wanted} is not installed: using the built-in tiny checkpoint {stand_in}")
            wanted = stand_in
        tiny = tiny or wanted.startswith("tiny-")
        set_widget(node, object_info, "model", wanted)
    if tiny:
        shrink(workflow, object_info)
    return workflow, tiny


def shrink(workflow: dict, object_info: dict, size: dict = TINY_SIZE) -> None:
    """Make every sampler's video tiny (the tiny checkpoints have random weights: size and steps buy nothing)."""
    for node in workflow["nodes"]:
        if node["type"] == SAMPLER:
            for name, value in size.items():
                set_widget(node, object_info, name, value)
        if node["type"] == PREPROCESSOR:  # preprocess only the frames the tiny video uses
            set_widget(node, object_info, "max_frames", size["frames"])


def example_inputs(workflow: dict, object_info: dict) -> list[Path]:
    """Files under workflows/inputs/ that the LoadImage/LoadVideo nodes name (bypassed ones too: a user who opens the
    workflow in the frontend and enables the end image finds its file in ComfyUI's input folder)."""
    files = []
    for node in workflow["nodes"]:
        if node["type"] in FILE_LOADERS and node.get("mode", 0) != MODE_MUTED:
            path = EXAMPLE_INPUTS / str(get_widget(node, object_info, FILE_LOADERS[node["type"]]))
            if path.is_file() and path not in files:
                files.append(path)
    return files


# -- the server -------------------------------------------------------------------------------------------------------
def _cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def tiny_model_paths() -> dict[str, list[Path]]:
    from tiny_checkpoints import ensure_tiny_checkpoints, tiny_set_path

    if not (tiny_set_path() / ".complete").is_file():
        print(
            f"[run_workflow] writing the built-in tiny checkpoints (random weights, about 15 MB, once) into "
            f"{tiny_set_path().parent}",
            flush=True,
        )
    return {"EasyAnimate": [ensure_tiny_checkpoints()]}


def start_existing(comfy_dir: Path, model_paths: dict[str, list[Path]] | None, timeout: float = 600) -> ComfyServer:
    """Start an existing ComfyUI install (its own models/ and output/) with this pack linked into its custom_nodes."""
    comfy_dir = comfy_dir.expanduser().resolve()
    if not (comfy_dir / "main.py").is_file():
        raise SystemExit(f"{comfy_dir} is not a ComfyUI folder: expected {comfy_dir / 'main.py'}")
    custom_nodes = comfy_dir / "custom_nodes"
    if not any(p.resolve() == REPO_ROOT for p in custom_nodes.iterdir() if p.is_dir()):
        link = custom_nodes / PACK_FOLDER_NAME
        print(f"[run_workflow] linking this pack into {link}")
        link.symlink_to(REPO_ROOT, target_is_directory=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run_workflow-"))
    args = [] if _cuda_available() else ["--cpu"]
    if model_paths:
        args += [
            "--extra-model-paths-config",
            str(write_model_paths_yaml(run_dir / "extra_model_paths.yaml", model_paths)),
        ]
    return ComfyServer.launch(comfy_dir, comfy_dir, args, run_dir / "server.log", timeout)


def start_server(comfyui: Path | None, with_tiny: bool, run_dir: Path = DEFAULT_RUN_DIR) -> ComfyServer:
    model_paths = tiny_model_paths() if with_tiny else None
    if comfyui is not None:
        return start_existing(comfyui, model_paths)
    print("[run_workflow] starting the pinned ComfyUI (provisioned on first use under .cache/comfyui)")
    return ComfyServer.start(custom_nodes={PACK_FOLDER_NAME: REPO_ROOT}, model_paths=model_paths, base_dir=run_dir)


# -- running ----------------------------------------------------------------------------------------------------------
class ProgressPrinter:
    """One line per node as it starts, a live step counter for nodes that report progress."""

    def __init__(self, prompt: dict, stream=sys.stdout):
        self.prompt, self.stream, self.started = prompt, stream, time.monotonic()

    def __call__(self, kind: str, data: dict) -> None:
        elapsed = time.monotonic() - self.started
        if kind == "executing" and data.get("node") is not None:
            node = data["node"]
            title = self.prompt.get(node, {}).get("_meta", {}).get("title", node)
            self.stream.write(f"\n[{elapsed:6.1f}s] {title}")
        elif kind == "progress":
            self.stream.write(f"\r[{elapsed:6.1f}s] {self._title(data)}: {data['value']}/{data['max']}   ")
        elif kind == "execution_cached" and data.get("nodes"):
            self.stream.write(f"\n[{elapsed:6.1f}s] cached: {', '.join(data['nodes'])}")
        self.stream.flush()

    def _title(self, data: dict) -> str:
        return self.prompt.get(str(data.get("node")), {}).get("_meta", {}).get("title", str(data.get("node")))


def run_on(server: ComfyServer, workflow: dict, model: str | None = None, timeout: float = 3600, quiet=False):
    """Prepare, upload, convert and run `workflow` on a started server; returns (PromptResult, tiny, api prompt)."""
    object_info = server.object_info()
    workflow, tiny = choose_models(workflow, object_info, model)
    for path in example_inputs(workflow, object_info):
        server.upload_image(path)  # /upload/image stores any file in the input folder under its own name
        if not quiet:
            print(f"[run_workflow] example input {path.name} copied into ComfyUI's input folder")
    prompt = to_api(workflow, object_info)
    result = server.run(prompt, timeout=timeout, on_event=None if quiet else ProgressPrinter(prompt))
    return result, tiny, prompt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run a ComfyUI workflow headless and print its output files.")
    parser.add_argument("workflow", type=Path, help="UI-format workflow JSON, e.g. workflows/text_to_video.json")
    parser.add_argument("--comfyui", type=Path, help="an existing ComfyUI folder (default: the pinned 0.3.75)")
    parser.add_argument("--model", help="model to load instead of the workflow's (a name from the loader's list)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    args = parser.parse_args(argv)

    workflow = json.loads(args.workflow.read_text())
    server = start_server(args.comfyui, with_tiny=args.model is None or args.model.startswith("tiny-"))
    try:
        print(f"[run_workflow] ComfyUI at {server.url} (log: {server.log_path})")
        result, tiny, _ = run_on(server, workflow, args.model, timeout=args.timeout)
        print()
        if result.status != "success":
            error = result.error or {}
            print(f"[run_workflow] {result.status}: {error.get('node_type', '')} {error.get('exception_message', '')}")
            return 1
        paths = [server.output_path(entry) for entry in result.files()]
        if tiny:
            print(
                "[run_workflow] NOTE: this ran the built-in tiny checkpoint with random weights, so the video is "
                "noise. Install a real model (see the workflow's note) for a real video."
            )
        for path in paths:
            print(f"[run_workflow] output: {path.resolve()}")
        return 0 if paths else 1
    finally:
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
