"""The one module that talks to ComfyUI (`comfy.*`, `folder_paths`).

Everything here also works without ComfyUI (plain pytest, the headless tools): progress becomes a no-op, interrupt
never fires, the device is the CPU and model folders come only from environment overrides. Node modules import from
here; `models/` never imports ComfyUI at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

# ComfyUI model-folder keys this pack registers, and their sub-folder under ComfyUI/models/.
EASYANIMATE_FOLDER = "EasyAnimate"
ANNOTATORS_FOLDER = "annotators"
DIFFUSION_MODELS_FOLDER = "diffusion_models"
# Extra search paths, os.pathsep-separated, for use outside ComfyUI (tests, tools) or in addition to it.
ENV_OVERRIDES = {EASYANIMATE_FOLDER: "EASYANIMATE_MODELS_DIR", ANNOTATORS_FOLDER: "EASYANIMATE_ANNOTATORS_DIR"}


def _folder_paths():
    try:
        import folder_paths  # ComfyUI's module; only importable inside a ComfyUI process
    except ImportError:
        return None
    return folder_paths


def comfy_available() -> bool:
    return _folder_paths() is not None


def comfy_root() -> Path | None:
    folder_paths = _folder_paths()
    return None if folder_paths is None else Path(folder_paths.base_path)


def register_model_folders() -> None:
    """Register our model folders with ComfyUI (unconditionally: folder_paths de-duplicates, and a conditional add
    would skip the default folder whenever extra_model_paths.yaml names the key — reference/comfyui.md §3)."""
    folder_paths = _folder_paths()
    if folder_paths is None:
        return
    for name in (EASYANIMATE_FOLDER, ANNOTATORS_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))


def input_dir() -> Path | None:
    """ComfyUI's input folder (uploads, pose files); EASYANIMATE_INPUT_DIR outside ComfyUI. (issue-15)"""
    folder_paths = _folder_paths()
    if folder_paths is not None:
        return Path(folder_paths.get_input_directory())
    env = os.environ.get("EASYANIMATE_INPUT_DIR")
    return Path(env) if env else None


def model_dirs(folder_name: str) -> list[Path]:
    """Every directory to search for `folder_name` models: environment override first, then ComfyUI's list."""
    dirs: list[Path] = []
    env = os.environ.get(ENV_OVERRIDES.get(folder_name, ""), "")
    dirs.extend(Path(p) for p in env.split(os.pathsep) if p)
    folder_paths = _folder_paths()
    if folder_paths is not None:
        try:
            dirs.extend(Path(p) for p in folder_paths.get_folder_paths(folder_name))
        except KeyError:
            pass
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def torch_device():
    import torch

    try:
        import comfy.model_management as mm
    except ImportError:
        return torch.device("cpu")
    return mm.get_torch_device()


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Cancel; a no-op outside ComfyUI."""
    try:
        import comfy.model_management as mm
    except ImportError:
        return
    mm.throw_exception_if_processing_interrupted()


class Progress:
    """A ComfyUI progress bar (no-op outside ComfyUI). `callback` fits the models/ `(done, total)` hook."""

    def __init__(self, total: int):
        self.total = max(int(total), 1)
        self.done = 0
        try:
            import comfy.utils
        except ImportError:
            self._bar = None
        else:
            self._bar = comfy.utils.ProgressBar(self.total)

    @property
    def active(self) -> bool:
        """True inside ComfyUI, where updates (and previews) reach the user."""
        return self._bar is not None

    def update(self, n: int = 1, preview=None) -> None:
        self.done = min(self.done + n, self.total)
        if self._bar is not None:
            self._bar.update_absolute(self.done, self.total, preview)

    def callback(self, done: int, total: int, preview=None) -> None:
        self.total = max(int(total), 1)
        self.done = min(int(done), self.total)
        if self._bar is not None:
            self._bar.update_absolute(self.done, self.total, preview)


def interrupt_hook() -> Callable[[], None]:
    """The models/ `interrupt` callback: checks ComfyUI's cancel flag."""
    return check_interrupt


def free_memory() -> None:
    """Give cached GPU memory back (after an error or interrupt, and after big temporary work), and freed host heap
    memory back to the OS, so repeated runs do not grow the process's RSS."""
    try:
        import comfy.model_management as mm
    except ImportError:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    else:
        mm.soft_empty_cache()
    trim_host_heap()


def trim_host_heap() -> None:
    """glibc keeps freed large blocks of a long-lived process in its arenas (RSS creeps up run after run);
    malloc_trim(0) returns them. A no-op on other C libraries and systems."""
    import ctypes
    import gc
    import sys

    gc.collect()
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# -- model management (reference/comfyui.md §2) --------------------------------------------------------------------


def _mm():
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return mm


def free_vram(device) -> int | None:
    """Free bytes on a CUDA device as ComfyUI counts them (its own cache included); None on the CPU."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    mm = _mm()
    if mm is not None:
        return int(mm.get_free_memory(device))
    import torch

    return int(torch.cuda.mem_get_info(device)[0])


def comfy_patcher(holder, name: str, module, size: int, device):
    """A ModelPatcher around one of our modules so ComfyUI's model management can unload it (kept on `holder`, a
    ModelComponents, so it lives exactly as long as the module); None outside ComfyUI."""
    try:
        import comfy.model_patcher
    except ImportError:
        return None
    mm = _mm()
    holder = getattr(holder, "base_components", holder)  # a LoRA-stacked model shares its base's patcher
    patchers = holder.__dict__.setdefault("_comfy_patchers", {})
    patcher = patchers.get(name)
    if patcher is None or patcher.model is not module:
        patcher = comfy.model_patcher.ModelPatcher(module, load_device=device, offload_device=mm.unet_offload_device(),
                                                   size=size)  # fmt: skip
        patchers[name] = patcher
    return patcher


def load_on_device(patcher, extra_bytes: int = 0) -> None:
    """Ask ComfyUI to make room (evicting other models) and register our module as loaded on its device."""
    mm = _mm()
    if mm is None or patcher is None:
        return
    mm.load_models_gpu([patcher], memory_required=extra_bytes)


def make_room(bytes_needed: int, device, keep=()) -> None:
    """Evict other models until `bytes_needed` are free on `device` (offload modes manage our weights themselves)."""
    mm = _mm()
    if mm is None or getattr(device, "type", "cpu") == "cpu":
        return
    mm.free_memory(bytes_needed, device, keep_loaded=[p for p in keep if p is not None])


def is_out_of_memory(error: BaseException) -> bool:
    import torch

    mm = _mm()
    types = (torch.cuda.OutOfMemoryError,) + ((mm.OOM_EXCEPTION,) if mm is not None else ())
    return isinstance(error, types)
