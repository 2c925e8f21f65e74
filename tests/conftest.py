"""Shared test set-up.

- The repo root goes on sys.path so `models` imports as a plain package (it never imports ComfyUI).
- `pack`: the whole pack imported as a package, the way ComfyUI imports it (relative imports resolved).
- `comfy_server`: one real ComfyUI 0.3.75 server for the session, with this checkout linked into its custom_nodes.
"""

import importlib.util
import sys
from pathlib import Path

import pytest


def pytest_addoption(parser):
    parser.addoption(
        "--screenshot-dir",
        default=None,
        help="where the browser test saves its workflow screenshots (default: a temporary folder); pass "
        "docs/screenshots to regenerate the README's images",
    )


REPO_ROOT = Path(__file__).resolve().parent.parent
for path in (REPO_ROOT, REPO_ROOT / "tools"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

PACK_FOLDER_NAME = "ComfyUI-EasyAnimate-Nodes"  # a realistic custom_nodes folder name (hyphens, not a identifier)
BROKEN_PACK_NAME = "deliberately_broken_pack"


def import_pack(name: str = "easyanimate_pack_under_test"):
    """Import the checkout as a package named `name` (what ComfyUI does with a custom_nodes folder)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO_ROOT / "__init__.py", submodule_search_locations=[str(REPO_ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return import_pack()


@pytest.fixture(scope="session")
def tiny_root():
    return tiny_checkpoints()


def tiny_checkpoints() -> Path:
    from tiny_checkpoints import ensure_tiny_checkpoints

    return ensure_tiny_checkpoints()


def tiny_lora_folder(folder: Path, tiny_root: Path) -> Path:
    """A loras folder for the server: the LoRA the shipped LoRA workflow names (made for the tiny V5.1 12B it runs on)
    and one per key format; see tests/tiny_loras.py."""
    import torch
    from tiny_loras import make_lora

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    make_lora(model_dir, "kohya", seed=11).save(folder / "easyanimate_v5.1_style_lora.safetensors", torch.bfloat16)
    make_lora(model_dir, "peft", alpha=None, seed=12).save(folder / "tiny_peft_lora.safetensors")
    make_lora(tiny_root / "tiny-EasyAnimateV5-12b-zh", seed=13).save(folder / "tiny_v5_lora.safetensors")
    return folder


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    from comfyui_server import ComfyServer

    base = tmp_path_factory.mktemp("comfyui")
    broken = tmp_path_factory.mktemp("packs") / BROKEN_PACK_NAME
    broken.mkdir()
    (broken / "__init__.py").write_text("raise ImportError('this pack is broken on purpose')\n")
    # Model discovery fixtures: one model in the default models/EasyAnimate folder, one in a folder named only by
    # extra_model_paths.yaml, and a sub-folder that is not a model.
    (base / "models" / "EasyAnimate" / "DefaultFolderModel" / "transformer").mkdir(parents=True)
    yaml_dir = tmp_path_factory.mktemp("yaml_models")
    (yaml_dir / "YamlFolderModel" / "vae").mkdir(parents=True)
    (yaml_dir / "NotAModel").mkdir()
    (yaml_dir / "NotAModel" / "notes.txt").write_text("just a folder")
    # The tiny real-layout checkpoints, as a user's extra_model_paths.yaml would add them; the single-file
    # transformers go into a diffusion_models folder.
    tiny_root = tiny_checkpoints()
    single_files = tmp_path_factory.mktemp("diffusion_models")
    for file in tiny_root.glob("*.safetensors"):
        (single_files / file.name).symlink_to(file)
    model_paths = {
        "EasyAnimate": [yaml_dir, tiny_root],
        "diffusion_models": [single_files],
        "loras": [tiny_lora_folder(tmp_path_factory.mktemp("loras"), tiny_root)],
    }
    server = ComfyServer.start(
        custom_nodes={PACK_FOLDER_NAME: REPO_ROOT, BROKEN_PACK_NAME: broken},
        model_paths=model_paths,
        base_dir=base,
    )
    yield server
    server.stop()


ISOLATED_ENV = "EASYANIMATE_ISOLATED_RUN"


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "isolated: an RSS measurement run in a pytest process of its own "
        "(tests/test_isolated.py starts it), so other tests' leftovers cannot move its figures",
    )


def pytest_collection_modifyitems(config, items):
    """`isolated` tests run only inside the child process that tests/test_isolated.py starts."""
    import os

    if os.environ.get(ISOLATED_ENV) == "1":
        return
    kept = [item for item in items if item.get_closest_marker("isolated") is None]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept
