"""Load EasyAnimate Model: finds model folders, detects the variant, hands out a lazily-loading model object."""

from __future__ import annotations

from pathlib import Path

from ..models.defaults import (
    ATTENTION_CHOICES,
    FP8_MODES,
    MEMORY_MODE_CHOICES,
    PRECISIONS,
    SAME_AS_PRECISION,
    WEIGHT_STORAGES,
)
from .bridge import DIFFUSION_MODELS_FOLDER, EASYANIMATE_FOLDER
from .folders import CachedListing, files_under, find_in_folders, folders_under, relative_name

NO_MODELS = "(no models found"  # the dropdown entry starts so; it names the real folder (`no_models_entry`)
SINGLE_FILE_PREFIX = "diffusion_models/"
# What marks a sub-folder of models/EasyAnimate as a model (a partial download still lists, so loading it can say
# exactly which files are missing).
MODEL_MARKERS = ("transformer", "vae", "model_index.json")
# Keys whose presence in a safetensors header marks an EasyAnimate transformer file.
TRANSFORMER_HEADER_KEYS = ("proj.weight", "proj_out.weight", "transformer_blocks.0.norm1.linear.weight")


def _looks_like_model(folder: Path) -> bool:
    return folder.is_dir() and any((folder / marker).exists() for marker in MODEL_MARKERS)


def header_keys(path: Path) -> dict:
    """The tensor names in a safetensors file's header ({} for a file that is not one)."""
    from ..models.loading.headers import read_safetensors_header

    try:
        return read_safetensors_header(path)
    except Exception:
        return {}


def _looks_like_transformer_file(path: Path) -> bool:
    keys = header_keys(path)
    return all(name in keys for name in TRANSFORMER_HEADER_KEYS)


# Cached by directory mtimes (nodes/folders.py): INPUT_TYPES runs on every page load; headers are read once per file.
_model_folders = CachedListing(EASYANIMATE_FOLDER, folders_under(_looks_like_model))
_transformer_files = CachedListing(DIFFUSION_MODELS_FOLDER, files_under(".safetensors", _looks_like_transformer_file))


def no_models_entry() -> str:
    """The dropdown entry shown when nothing is installed: it names the folder of the running ComfyUI."""
    return f"{NO_MODELS}: put model folders in {_default_dir(EASYANIMATE_FOLDER)}/)"


def list_models() -> list[str]:
    """Model folder names under every registered EasyAnimate dir, then EasyAnimate single files in diffusion_models."""
    return _model_folders() + [SINGLE_FILE_PREFIX + name for name in _transformer_files()]


def resolve_model(name: str) -> Path:
    """The path behind a dropdown entry; refuses names that try to leave the model folders."""
    if name.startswith(NO_MODELS):
        raise FileNotFoundError(
            "No EasyAnimate model is installed. Download one (e.g. alibaba-pai/EasyAnimateV5.1-12b-zh-InP) into "
            f"{_default_dir(EASYANIMATE_FOLDER)}/<ModelName>/ and refresh the page."
        )
    folder_key, relative = EASYANIMATE_FOLDER, name
    if name.startswith(SINGLE_FILE_PREFIX):
        folder_key, relative = DIFFUSION_MODELS_FOLDER, name[len(SINGLE_FILE_PREFIX) :]
    # Checked lexically: the name may not leave the folder; a symlink inside it may point anywhere.
    return find_in_folders(
        folder_key,
        relative_name(relative, "model", "a folder or file inside the model folders"),
        _default_dir(folder_key),
        "model",
    )


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
                "model": (
                    models,
                    {"tooltip": "Folder in models/EasyAnimate (or transformer file in diffusion_models)."},
                ),
                "precision": (list(PRECISIONS), {"default": PRECISIONS[0], "tooltip": "Compute dtype."}),
                "weight_storage": (
                    list(WEIGHT_STORAGES),
                    {"default": SAME_AS_PRECISION, "tooltip": "fp8 storage halves transformer memory (qfloat8)."},
                ),
            },
            "optional": {
                "memory_mode": (list(MEMORY_MODE_CHOICES), {"default": MEMORY_MODE_CHOICES[0]}),
                "resident_blocks": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 64,
                        "tooltip": "sequential mode: transformer blocks kept on the GPU (0 = as many as fit)",
                    },
                ),
                "fp8_mode": (list(FP8_MODES), {"default": FP8_MODES[0]}),
                "attention": (
                    list(ATTENTION_CHOICES),
                    {
                        "default": ATTENTION_CHOICES[0],
                        "tooltip": "auto: flash-attn if installed, else PyTorch SDPA. sage (SageAttention) is faster and changes the output slightly. A choice that is not installed falls back to SDPA with a message.",
                    },
                ),
                "compile": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "torch.compile each transformer block: faster steps after a one-time compile (minutes) per video size; needs a working Triton/C++ compiler.",
                    },
                ),
                "text_encoder_storage": (
                    list(WEIGHT_STORAGES),
                    {
                        "default": SAME_AS_PRECISION,
                        "tooltip": "fp8 storage of the text encoders' big Linear weights (mT5, Qwen2-VL; Bert stays as is): about half their memory, prompt embeddings change slightly.",
                    },
                ),
            },
        }

    def load(
        self,
        model,
        precision,
        weight_storage,
        memory_mode=MEMORY_MODE_CHOICES[0],
        resident_blocks=0,
        fp8_mode=FP8_MODES[0],
        attention=ATTENTION_CHOICES[0],
        compile=False,
        text_encoder_storage=SAME_AS_PRECISION,
    ):
        from ..models.components import open_model

        storage = None if weight_storage == SAME_AS_PRECISION else weight_storage
        companions = [resolve_model(name) for name in list_models() if not name.startswith(SINGLE_FILE_PREFIX)]
        return (
            open_model(
                resolve_model(model),
                precision,
                storage,
                memory_mode,
                resident_blocks,
                fp8_mode,
                companions,
                attention=attention,
                compile_blocks=compile,
                text_encoder_storage=None if text_encoder_storage == SAME_AS_PRECISION else text_encoder_storage,
            ),
        )


NODE_CLASS_MAPPINGS = {"EasyAnimateModelLoader": EasyAnimateModelLoader}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimateModelLoader": "Load EasyAnimate Model"}
