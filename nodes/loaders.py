"""Load EasyAnimate Model: finds model folders, detects the variant, hands out a lazily-loading model object."""

from __future__ import annotations

from pathlib import Path

from .bridge import DIFFUSION_MODELS_FOLDER, EASYANIMATE_FOLDER, model_dirs

NO_MODELS = "(no models found"  # the dropdown entry starts so; it names the real folder (`no_models_entry`)
SINGLE_FILE_PREFIX = "diffusion_models/"
PRECISIONS = ["bf16", "fp16", "fp32"]
WEIGHT_STORAGE = ["same as precision", "fp8_e4m3fn", "fp8_e5m2"]
# What marks a sub-folder of models/EasyAnimate as a model (a partial download still lists, so loading it can say
# exactly which files are missing).
MODEL_MARKERS = ("transformer", "vae", "model_index.json")
# Keys whose presence in a safetensors header marks an EasyAnimate transformer file.
TRANSFORMER_HEADER_KEYS = ("proj.weight", "proj_out.weight", "transformer_blocks.0.norm1.linear.weight")


def _looks_like_model(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in MODEL_MARKERS)


# (path, mtime_ns, size) -> is an EasyAnimate transformer: INPUT_TYPES runs on every page load and refresh, and
# diffusion_models may hold hundreds of large files; a header is read again only when its file changes.
_transformer_file_answers: dict[tuple[str, int, int], bool] = {}


def _looks_like_transformer_file(path: Path) -> bool:
    from ..models.checkpoint import read_safetensors_header

    try:
        stat = path.stat()
    except OSError:
        return False
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    if key not in _transformer_file_answers:
        try:
            keys = read_safetensors_header(path)
        except Exception:
            keys = {}
        _transformer_file_answers[key] = all(name in keys for name in TRANSFORMER_HEADER_KEYS)
    return _transformer_file_answers[key]


def no_models_entry() -> str:
    """The dropdown entry shown when nothing is installed: it names the folder of the running ComfyUI."""
    return f"{NO_MODELS}: put model folders in {_default_dir(EASYANIMATE_FOLDER)}/)"


def list_models() -> list[str]:
    """Model folder names under every registered EasyAnimate dir, then EasyAnimate single files in diffusion_models."""
    names: list[str] = []
    for root in model_dirs(EASYANIMATE_FOLDER):
        if root.is_dir():
            names += sorted(p.name for p in root.iterdir() if _looks_like_model(p) and p.name not in names)
    for root in model_dirs(DIFFUSION_MODELS_FOLDER):
        if root.is_dir():
            files = sorted(p for p in root.rglob("*.safetensors") if _looks_like_transformer_file(p))
            names += [SINGLE_FILE_PREFIX + p.relative_to(root).as_posix() for p in files]
    return names


def resolve_model(name: str) -> Path:
    """The path behind a dropdown entry; refuses names that try to leave the model folders."""
    if name.startswith(NO_MODELS):
        raise FileNotFoundError(
            "No EasyAnimate model is installed. Download one (e.g. alibaba-pai/EasyAnimateV5.1-12b-zh-InP) into "
            f"{_default_dir(EASYANIMATE_FOLDER)}/<ModelName>/ and refresh the page."
        )
    folder_key, relative = EASYANIMATE_FOLDER, name
    if name.startswith(SINGLE_FILE_PREFIX):
        folder_key, relative = DIFFUSION_MODELS_FOLDER, name[len(SINGLE_FILE_PREFIX):]
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or any(part in ("..", "") for part in parts):
        raise ValueError(f"invalid model name {name!r}: it must be a folder or file inside the model folders")
    searched = model_dirs(folder_key)
    for root in searched:
        # The name itself may not leave the folder (checked above, lexically); a symlink inside it may point
        # anywhere, as users link big files from other drives.
        candidate = root / relative
        if candidate.exists():
            return candidate.absolute()
    where = ", ".join(str(d) for d in searched) or _default_dir(folder_key)
    raise FileNotFoundError(f"model {name!r} not found in: {where}")


def _default_dir(folder_key: str) -> str:
    from .bridge import default_model_dir

    folder = default_model_dir(folder_key)
    return str(folder) if folder is not None else f"ComfyUI/models/{folder_key}"


class EasyAnimateModelLoader:
    CATEGORY = "EasyAnimate"
    FUNCTION = "load"
    RETURN_TYPES = ("EASYANIMATE_MODEL",)
    RETURN_NAMES = ("model",)
    DESCRIPTION = (
        "Finds an EasyAnimate V5/V5.1 model (a folder in models/EasyAnimate, or a single transformer file in "
        "models/diffusion_models), detects its version, size and kind from its files, and outputs a model that "
        "loads each component only when a node needs it."
    )

    @classmethod
    def INPUT_TYPES(cls):
        models = list_models() or [no_models_entry()]
        return {
            "required": {
                "model": (models, {"tooltip": "Folder in models/EasyAnimate (or transformer file in diffusion_models)."}),
                "precision": (PRECISIONS, {"default": "bf16", "tooltip": "Compute dtype."}),
                "weight_storage": (
                    WEIGHT_STORAGE,
                    {"default": "same as precision", "tooltip": "fp8 storage halves transformer memory (qfloat8)."},
                ),
            },
            "optional": {
                "memory_mode": (["auto", "gpu", "model_cpu_offload", "sequential"], {"default": "auto"}),
                "resident_blocks": ("INT", {"default": 0, "min": 0, "max": 64, "tooltip": "sequential mode: transformer blocks kept on the GPU (0 = as many as fit)"}),
                "fp8_mode": (["quality", "reference exact", "scaled"], {"default": "quality"}),
                "attention": (["auto", "sdpa", "sage", "flash"], {"default": "auto", "tooltip": "auto: flash-attn if installed, else PyTorch SDPA. sage (SageAttention) is faster and changes the output slightly. A choice that is not installed falls back to SDPA with a message."}),
                "compile": ("BOOLEAN", {"default": False, "tooltip": "torch.compile each transformer block: faster steps after a one-time compile (minutes) per video size; needs a working Triton/C++ compiler."}),
                "text_encoder_storage": (WEIGHT_STORAGE, {"default": WEIGHT_STORAGE[0], "tooltip": "fp8 storage of the text encoders' big Linear weights (mT5, Qwen2-VL; Bert stays as is): about half their memory, prompt embeddings change slightly."}),
            },
        }

    def load(self, model, precision, weight_storage, memory_mode="auto", resident_blocks=0, fp8_mode="quality",
             attention="auto", compile=False, text_encoder_storage=WEIGHT_STORAGE[0]):
        from ..models.components import open_model

        storage = None if weight_storage == WEIGHT_STORAGE[0] else weight_storage
        companions = [resolve_model(name) for name in list_models() if not name.startswith(SINGLE_FILE_PREFIX)]
        return (
            open_model(resolve_model(model), precision, storage, memory_mode, resident_blocks, fp8_mode, companions,
                       attention=attention, compile_blocks=compile,
                       text_encoder_storage=None if text_encoder_storage == WEIGHT_STORAGE[0] else text_encoder_storage),
        )


NODE_CLASS_MAPPINGS = {"EasyAnimateModelLoader": EasyAnimateModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimateModelLoader": "Load EasyAnimate Model"}
