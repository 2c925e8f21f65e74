"""Where annotator weight files are looked for, what each method needs, and the messages when one is missing."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, Sequence

METHODS = ("canny", "depth", "openpose", "mlsd", "hed", "scribble", "anime_lineart")
ANNOTATORS_REPO = "lllyasviel/Annotators"
# Weight files per method, named as in the lllyasviel/Annotators repository (docs/faithfulness.md, control
# preprocessors). OpenPose always loads all three.
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "canny": (),
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "hed": ("ControlNetHED.pth",),
    "scribble": ("ControlNetHED.pth",),  # scribble = HED edges thinned, blurred and thresholded
    "anime_lineart": ("netG.pth",),
}
# comfyui_controlnet_aux keeps downloads as <ckpts>/<hf repo id>/<file>; it also honours this variable
# (docs/checkpoints.md, annotator weights).
AUX_CKPTS_ENV = "AUX_ANNOTATOR_CKPTS_PATH"


class MissingWeightsError(FileNotFoundError):
    """A network method's weight file is not in any searched folder."""


def weight_url(filename: str) -> str:
    return f"https://huggingface.co/{ANNOTATORS_REPO}/resolve/main/{filename}"


def annotator_search_dirs(annotator_dirs: Iterable[Path], comfy_root: Path | None = None) -> list[Path]:
    """The folders to hand to `preprocess`, in search order: our registered `annotators` folders, then the checkpoint
    folder of an installed comfyui_controlnet_aux (its `ckpts/`, or `annotator_ckpts_path` from its config.yaml), so
    files that pack already downloaded are reused. $AUX_ANNOTATOR_CKPTS_PATH is searched by `resolve_weights`."""
    dirs = [Path(d) for d in annotator_dirs]
    custom_nodes = Path(comfy_root) / "custom_nodes" if comfy_root else None
    if custom_nodes is not None and custom_nodes.is_dir():
        for pack in sorted(custom_nodes.iterdir()):
            if "controlnet_aux" not in pack.name.lower() or not pack.is_dir():
                continue
            configured = _configured_ckpts_path(pack / "config.yaml")
            if configured is not None:
                dirs.append(configured if configured.is_absolute() else pack / configured)
            dirs.append(pack / "ckpts")
    return _unique(dirs)


def _configured_ckpts_path(config_file: Path) -> Path | None:
    # one `annotator_ckpts_path: <path>` line; read without a YAML dependency
    try:
        text = config_file.read_text(encoding="utf-8")
    except OSError:
        return None
    match = re.search(r"^annotator_ckpts_path:\s*['\"]?([^'\"#\n]+?)['\"]?\s*(#.*)?$", text, re.MULTILINE)
    return Path(match.group(1)) if match else None


def _unique(paths: Iterable[Path]) -> list[Path]:
    unique: list[Path] = []
    for path in paths:
        if path not in unique:
            unique.append(path)
    return unique


def weight_locations(weights_dirs: Iterable[Path]) -> list[Path]:
    """Every folder a weight file may sit in: each given dir and its `lllyasviel/Annotators` sub-folder (the
    comfyui_controlnet_aux layout), then the same for $AUX_ANNOTATOR_CKPTS_PATH."""
    roots = [Path(d) for d in weights_dirs]
    if os.environ.get(AUX_CKPTS_ENV):
        roots.append(Path(os.environ[AUX_CKPTS_ENV]))
    return _unique(location for root in roots for location in (root, root / ANNOTATORS_REPO))


def resolve_weights(method: str, weights_dirs: Sequence[Path]) -> dict[str, Path]:
    """{file name: path} for each weight file of `method`, each taken from the first location that has it.

    Raises MissingWeightsError naming every missing file, where to put it and where to download it from."""
    _check_method(method)
    locations = weight_locations(weights_dirs)
    found: dict[str, Path] = {}
    missing: list[str] = []
    for filename in WEIGHT_FILES[method]:
        path = next((loc / filename for loc in locations if (loc / filename).is_file()), None)
        if path is None:
            missing.append(filename)
        else:
            found[filename] = path
    if missing:
        raise MissingWeightsError(_missing_message(method, missing, list(weights_dirs), locations))
    return found


def _missing_message(method: str, missing: list[str], weights_dirs: list[Path], searched: list[Path]) -> str:
    target = str(weights_dirs[0]) if weights_dirs else "ComfyUI/models/annotators"
    files = ", ".join(missing)
    downloads = "; ".join(weight_url(name) for name in missing)
    where = ", ".join(str(loc) for loc in searched) or "(no folder was given)"
    return (
        f"Control preprocessor '{method}' needs the weight file{'s' if len(missing) > 1 else ''} {files}, not found. "
        f"Download {'them' if len(missing) > 1 else 'it'} from the Hugging Face repository {ANNOTATORS_REPO} "
        f"({downloads}) and put {'them' if len(missing) > 1 else 'it'} in {target}/ "
        f"(a {ANNOTATORS_REPO}/ sub-folder, as comfyui_controlnet_aux uses, works too). Searched: {where}."
    )


def _check_method(method: str) -> None:
    if method not in WEIGHT_FILES:
        raise ValueError(f"unknown control method {method!r}; expected one of: {', '.join(METHODS)}")
