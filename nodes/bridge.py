"""The one module that talks to ComfyUI (`comfy.*`, `folder_paths`).

Everything here also works without ComfyUI (plain pytest, the headless tools): progress becomes a no-op, interrupt
never fires, the device is the CPU and model folders come only from environment overrides. Node modules import from
here; `models/` never imports ComfyUI at all.
"""

from __future__ import annotations

import os
import weakref
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


def default_model_dir(folder_name: str) -> Path | None:
    """The running ComfyUI's own folder for `folder_name` (models_dir follows --base-directory); None outside it."""
    folder_paths = _folder_paths()
    return None if folder_paths is None else Path(folder_paths.models_dir) / folder_name


def register_model_folders() -> None:
    """Register our model folders with ComfyUI (unconditionally: folder_paths de-duplicates, and a conditional add
    would skip the default folder whenever extra_model_paths.yaml names the key — docs/architecture.md, model
    folders)."""
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
    """Freed host heap back to the OS, so repeated runs do not grow the process's RSS."""
    from ..models.memory import release_host_memory

    release_host_memory()


# -- model management (docs/memory.md, ComfyUI models) -------------------------------------------------------------


def _mm():
    try:
        import comfy.model_management as mm
    except ImportError:
        return None
    return mm


def free_vram(device, wanted: int = 0) -> int | None:
    """Free bytes on a CUDA device as ComfyUI counts them; None on the CPU. Newer ComfyUI (Dynamic VRAM) counts
    evictable models as used, so when less than `wanted` shows as free, other models are evicted first and the
    figure is taken again (docs/reliability.md, ComfyUI versions)."""
    if getattr(device, "type", "cpu") != "cuda":
        return None
    mm = _mm()
    if mm is None:
        import torch

        return int(torch.cuda.mem_get_info(device)[0])
    free = int(mm.get_free_memory(device))
    if wanted and free < wanted:
        mm.free_memory(wanted, device)
        free = int(mm.get_free_memory(device))
    return free


class _ComfyRecord:
    """What ComfyUI's model management knows of one model object: its ModelPatchers by component, and the component
    ComfyUI is unloading right now. Kept here, beside the object rather than on it (models/ knows nothing of it)."""

    def __init__(self):
        self.patchers: dict = {}
        self.detaching: str | None = None


# model object (a ModelComponents) -> its record; weak, so the record lives exactly as long as the object.
_records: "weakref.WeakKeyDictionary[object, _ComfyRecord]" = weakref.WeakKeyDictionary()


def _record(holder) -> _ComfyRecord:
    holder = getattr(holder, "base_components", holder)  # a LoRA-stacked model shares its base's record
    record = _records.get(holder)
    if record is None:
        record = _records[holder] = _ComfyRecord()
    return record


def patcher_of(holder, name: str):
    """The ModelPatcher ComfyUI holds for component `name` of `holder`, or None."""
    return _record(holder).patchers.get(name)


def _release_on_unload(holder, name: str):
    """ON_DETACH callback: ComfyUI unloading our patcher releases the component (weak: the callback does not keep
    the model alive). The weights go now (moved to the meta device); the patcher and its emptied module stay until
    the next load replaces them, because freeing the module inside ComfyUI's unload loop fires its cleanup
    finalizer while the loop still indexes current_loaded_models."""
    owner = weakref.ref(holder)

    def released(patcher, unpatch_all: bool = True, *args) -> None:
        components = owner()
        if components is None or not unpatch_all:  # unpatch_all=False: load_models_gpu re-loading it, not unloading
            return
        patcher.model.to("meta")
        record = _record(components)
        record.detaching = name
        try:
            components.release(name)
        finally:
            record.detaching = None

    return released


def _forget_patcher(components, name, *args) -> None:
    """on_release hook: a component released by us (not by ComfyUI's unload) takes its patcher along."""
    record = _records.get(components)
    if record is not None and record.detaching != name:
        record.patchers.pop(name, None)


def comfy_patcher(holder, name: str, module, size: int, device):
    """A ModelPatcher so ComfyUI's model management owns one of our components (kept in this module's weak table
    beside `holder`, a ModelComponents, so it lives exactly as long as the component); None outside ComfyUI.

    `module` is the component when it sits on the device (gpu mode), or None when it rests in RAM (offload modes):
    then a weightless stand-in is registered, so "unload models" still reaches it. Unloading RELEASES the component
    instead of copying it to RAM (offload device = load device): a 12B copied to RAM is how machines go down."""
    try:
        import comfy.model_patcher
        from comfy.patcher_extension import CallbacksMP
    except ImportError:
        return None
    import torch

    holder = getattr(holder, "base_components", holder)
    patchers = _record(holder).patchers
    if _forget_patcher not in holder.on_release:
        holder.on_release.append(_forget_patcher)
    target = module if module is not None else torch.nn.Module()
    patcher = patchers.get(name)
    if patcher is None or patcher.model is not target and module is not None:
        patcher = comfy.model_patcher.ModelPatcher(target, load_device=device, offload_device=device, size=size)
        patcher.add_callback(CallbacksMP.ON_DETACH, _release_on_unload(holder, name))
        patchers[name] = patcher
    return patcher


def load_on_device(patcher, extra_bytes: int = 0, full: bool = True, log=print) -> None:
    """Ask ComfyUI to make room (evicting other models) and register our module as loaded on its device. With `full`,
    a partial ("lowvram") load is refused where ComfyUI supports force_full_load, and reported where it happens.

    A partial load does not move our weights: ComfyUI only moves the layers it counts as loaded, and the rest of a
    plain module stays where it is, on the device already in gpu mode (its offload device is the device too). What
    goes wrong is ComfyUI's accounting, which then under-counts the VRAM in use (docs/compatibility.md, model management)."""
    mm = _mm()
    if mm is None or patcher is None:
        return
    import inspect

    options = {"memory_required": extra_bytes}
    if full and "force_full_load" in inspect.signature(mm.load_models_gpu).parameters:
        options["force_full_load"] = True
    mm.load_models_gpu([patcher], **options)
    if full and patcher.loaded_size() < patcher.model_size():
        log(
            f"EasyAnimate: ComfyUI counted only {patcher.loaded_size() / 2**30:.1f} of "
            f"{patcher.model_size() / 2**30:.1f} GB of the model as loaded on {patcher.load_device} (it judged VRAM "
            "too tight beside the models it holds). The weights are all on the device anyway, but ComfyUI now "
            "under-counts the VRAM in use and may load other models into memory that is not free. If VRAM runs "
            "out, unload other models or choose memory_mode model_cpu_offload or sequential."
        )


def hold_on_device(holder, name: str, residency, device) -> None:
    """Carry out a models.runplan.Residency: release what it names, register the component (or its stand-in) with
    ComfyUI's model management, and make room beside it for the planned peak."""
    for other in residency.release:
        holder.release(other)
    patcher = comfy_patcher(holder, name, residency.module, residency.size, device)
    load_on_device(patcher, full=residency.full)
    if residency.make_room:
        make_room(residency.make_room, device, keep=[patcher])


def loaded_records(patchers) -> list:
    """ComfyUI's LoadedModel records of these patchers (what free_memory's keep_loaded compares against)."""
    mm = _mm()
    wanted = [p for p in patchers if p is not None]
    if mm is None or not wanted:
        return []
    return [record for record in mm.current_loaded_models if any(record.model is p for p in wanted)]


def make_room(bytes_needed: int, device, keep=()) -> None:
    """Evict other models until `bytes_needed` are free on `device`, keeping the patchers in `keep` loaded."""
    mm = _mm()
    if mm is None or getattr(device, "type", "cpu") == "cpu":
        return
    mm.free_memory(bytes_needed, device, keep_loaded=loaded_records(keep))


def is_out_of_memory(error: BaseException) -> bool:
    """True for an out-of-memory error in any form ComfyUI knows (its own is_oom from 0.17, which also covers
    torch.AcceleratorError; OOM_EXCEPTION before)."""
    import torch

    mm = _mm()
    if mm is not None and hasattr(mm, "is_oom"):
        return bool(mm.is_oom(error))
    types = (torch.cuda.OutOfMemoryError,) + ((mm.OOM_EXCEPTION,) if mm is not None else ())
    if isinstance(error, types):
        return True
    accelerator_error = getattr(torch, "AcceleratorError", None)
    return accelerator_error is not None and isinstance(error, accelerator_error) and "out of memory" in str(error)
