"""Control-video preprocessing: turn RGB frames into the condition maps EasyAnimate Control models were trained on.

EasyAnimate V5 Control was trained on OpenPose, Scribble, Canny, Anime, MLSD, HED and Depth maps, and the pipeline
takes them as an ordinary RGB frame batch that it resizes itself — see reference/users_and_control.md §B.1.

- Canny is plain OpenCV at the input's own resolution: no controlnet-aux, no weights.
- Every other method runs a network from controlnet-aux 0.0.10, imported only when such a method runs (the import
  alone takes ~10 s). Weights come from local folders only (file names as in the lllyasviel/Annotators repository),
  with the hub forced offline and `torch.load` forced to weights-only for the whole call.
- Output frames always have the input's size and count: controlnet-aux rounds sizes to multiples of 64 (§B.3), so
  every map is resized back.
- Video-aware: depth is normalised over the whole clip (per-frame min-max flickers, §B.3); MLSD errors are raised
  instead of turning into black frames (controlnet-aux swallows them, §B.3); progress per frame, interrupt between
  frames; the network runs on `device` and is released after the batch.

Installing controlnet-aux without letting pip replace the user's torch (its torchvision requirement can pull a
different torch build, §B.2): `python -m pip install --no-deps controlnet-aux==0.0.10`, then its remaining
requirements `timm scikit-image scipy huggingface_hub einops filelock importlib_metadata` into an environment that
already has the torchvision matching its torch (ComfyUI installs one).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

METHODS = ("canny", "depth", "openpose", "mlsd", "hed", "scribble", "anime_lineart")
ANNOTATORS_REPO = "lllyasviel/Annotators"
# Weight files per method, named as in the lllyasviel/Annotators repository (§B.3). OpenPose always loads all three.
WEIGHT_FILES: dict[str, tuple[str, ...]] = {
    "canny": (),
    "depth": ("dpt_hybrid-midas-501f0c75.pt",),
    "openpose": ("body_pose_model.pth", "hand_pose_model.pth", "facenet.pth"),
    "mlsd": ("mlsd_large_512_fp32.pth",),
    "hed": ("ControlNetHED.pth",),
    "scribble": ("ControlNetHED.pth",),  # scribble = HED edges thinned, blurred and thresholded
    "anime_lineart": ("netG.pth",),
}
# comfyui_controlnet_aux keeps downloads as <ckpts>/<hf repo id>/<file>; it also honours this variable (§B.6).
AUX_CKPTS_ENV = "AUX_ANNOTATOR_CKPTS_PATH"
CONTROLNET_AUX_REQUIREMENT = "controlnet-aux==0.0.10"

Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]


class MissingWeightsError(FileNotFoundError):
    """A network method's weight file is not in any searched folder."""


class ControlDependencyError(ImportError):
    """controlnet-aux (or one of its requirements) is not importable."""


def weight_url(filename: str) -> str:
    return f"https://huggingface.co/{ANNOTATORS_REPO}/resolve/main/{filename}"


# ---------------------------------------------------------------------------------------------------------------
# Finding weights


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


# ---------------------------------------------------------------------------------------------------------------
# Frames in and out


def frames_to_uint8(frames: torch.Tensor) -> np.ndarray:
    """ComfyUI IMAGE [T, H, W, 3] float 0..1 -> numpy uint8 [T, H, W, 3] (RGB)."""
    if not isinstance(frames, torch.Tensor) or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] < 1:
        shape = tuple(frames.shape) if isinstance(frames, torch.Tensor) else type(frames).__name__
        raise ValueError(f"control frames must be an IMAGE tensor [frames, height, width, 3]; got {shape}")
    as_float = frames.detach().to(device="cpu", dtype=torch.float32).clamp(0.0, 1.0)
    return as_float.mul(255.0).round().to(torch.uint8).contiguous().numpy()


def maps_to_frames(maps: Sequence[np.ndarray], height: int, width: int) -> torch.Tensor:
    """uint8 maps (any size, 1 or 3 channels) -> IMAGE [T, height, width, 3] float32 0..1 on the CPU."""
    return torch.from_numpy(np.stack([_to_rgb_of_size(m, height, width) for m in maps])).float().div_(255.0)


def _to_rgb_of_size(condition_map: np.ndarray, height: int, width: int) -> np.ndarray:
    import cv2

    if condition_map.shape[:2] != (height, width):
        shrinking = condition_map.shape[0] * condition_map.shape[1] > height * width
        interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
        condition_map = cv2.resize(condition_map, (width, height), interpolation=interpolation)
    if condition_map.ndim == 2:
        condition_map = np.repeat(condition_map[:, :, None], 3, axis=2)
    return condition_map


def normalize_depth_clip(raw_depths: Sequence[np.ndarray], background_threshold: float = 0.0) -> list[np.ndarray]:
    """Relative depth maps of one clip -> uint8 maps, min-max normalised over the WHOLE clip (one scale for every
    frame, so brightness does not flicker); normalised values below `background_threshold` become 0."""
    low = min(float(d.min()) for d in raw_depths)
    high = max(float(d.max()) for d in raw_depths)
    scale = max(high - low, 1e-8)
    maps = []
    for depth in raw_depths:
        normalised = (depth.astype(np.float64) - low) / scale
        normalised[normalised < background_threshold] = 0.0
        maps.append(np.round(normalised * 255.0).clip(0, 255).astype(np.uint8))
    return maps


def _run_frames(
    frames: np.ndarray,  # [T, H, W, 3] uint8
    per_frame: Callable[[np.ndarray], np.ndarray],
    progress: Progress | None,
    interrupt: Interrupt | None,
) -> list[np.ndarray]:
    total = len(frames)
    results = []
    for index, frame in enumerate(frames):
        if interrupt is not None:
            interrupt()
        results.append(per_frame(frame))
        if progress is not None:
            progress(index + 1, total)
    return results


# ---------------------------------------------------------------------------------------------------------------
# The entry point


def preprocess(
    frames: torch.Tensor,
    method: str,
    *,
    detect_resolution: int = 512,
    low_threshold: int = 100,
    high_threshold: int = 200,
    score_threshold: float = 0.1,
    distance_threshold: float = 0.1,
    safe: bool = False,
    include_body: bool = True,
    include_hand: bool = False,
    include_face: bool = False,
    depth_background_threshold: float = 0.1,
    weights_dirs: Sequence[Path] = (),
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
) -> torch.Tensor:
    """Control maps for `frames` (IMAGE [T, H, W, 3] float 0..1) -> IMAGE [T, H, W, 3] float32 0..1 on the CPU.

    Parameters by method (defaults are controlnet-aux's):
      canny          low_threshold, high_threshold (cv2.Canny hysteresis thresholds); runs at the input resolution.
      hed            safe (quantise the soft edges, ControlNet's "safe" mode).
      scribble       safe; HED edges turned into thick binary strokes.
      mlsd           score_threshold (line confidence), distance_threshold (minimum line length, pixels).
      openpose       include_body, include_hand, include_face (what to draw).
      depth          depth_background_threshold: clip-normalised depth below it is set to black; 0 keeps all.
      anime_lineart  nothing beyond detect_resolution.
    Every network method detects at `detect_resolution` (short side, rounded to a multiple of 64 by controlnet-aux)
    and its map is resized back to H x W. `weights_dirs` are searched in order (see `resolve_weights`).
    """
    _check_method(method)
    if int(detect_resolution) < 64:
        raise ValueError(f"detect_resolution must be at least 64 (a multiple of 64); got {detect_resolution}")
    rgb = frames_to_uint8(frames)
    height, width = rgb.shape[1:3]

    if method == "canny":
        import cv2

        maps = _run_frames(rgb, lambda frame: cv2.Canny(frame, low_threshold, high_threshold), progress, interrupt)
        return maps_to_frames(maps, height, width)

    weight_paths = resolve_weights(method, weights_dirs)  # fail fast, before the slow import
    _import_controlnet_aux()
    device = torch.device(device)
    try:
        with _offline_weights_only_loading(), torch.no_grad():
            maps = _run_network(
                method, weight_paths, rgb, device, progress, interrupt,
                detect_resolution=int(detect_resolution), safe=bool(safe), score_threshold=float(score_threshold),
                distance_threshold=float(distance_threshold), include_body=bool(include_body),
                include_hand=bool(include_hand), include_face=bool(include_face),
            )  # fmt: skip
    finally:
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if method == "depth":
        maps = normalize_depth_clip(maps, float(depth_background_threshold))
    return maps_to_frames(maps, height, width)


def _run_network(
    method: str,
    weight_paths: dict[str, Path],
    rgb: np.ndarray,
    device: torch.device,
    progress: Progress | None,
    interrupt: Interrupt | None,
    **params,
) -> list[np.ndarray]:
    detector = _load_detector(method, weight_paths)
    try:
        detector.to(device)
        per_frame = _frame_function(method, detector, device, **params)
        return _run_frames(rgb, per_frame, progress, interrupt)
    finally:
        detector.to("cpu")  # a traceback may keep the detector alive; it must not keep GPU memory


# ---------------------------------------------------------------------------------------------------------------
# controlnet-aux


def _import_controlnet_aux() -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its eager import of 18 detectors warns about timm, mediapipe, ...
            import controlnet_aux  # noqa: F401
    except ImportError as error:
        python = sys.executable
        raise ControlDependencyError(
            f"This control method needs the Python package {CONTROLNET_AUX_REQUIREMENT}, which could not be imported "
            f"({error}). Install it into the Python that runs ComfyUI ({python}) without letting pip replace torch: "
            f'"{python}" -m pip install --no-deps {CONTROLNET_AUX_REQUIREMENT} && "{python}" -m pip install timm '
            "scikit-image scipy huggingface_hub einops filelock importlib_metadata (torchvision must be the build "
            "matching your torch; ComfyUI normally has it). Canny needs none of this."
        ) from error


@contextlib.contextmanager
def _offline_weights_only_loading() -> Iterator[None]:
    """No network and no arbitrary unpickling while controlnet-aux loads and runs: the hub is put in offline mode
    and torch.load is forced to weights_only (the annotator files are .pth pickles)."""
    forced = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TORCH_FORCE_WEIGHTS_ONLY_LOAD": "1"}
    cleared = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)  # torch refuses both being set
    saved_env = {name: os.environ.get(name) for name in (*forced, *cleared)}
    os.environ.update(forced)
    for name in cleared:
        os.environ.pop(name, None)
    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:
        hub_constants = None
    saved_flag = getattr(hub_constants, "HF_HUB_OFFLINE", None)
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True  # read once at import; the env var alone is too late
    try:
        yield
    finally:
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved_flag
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _load_detector(method: str, weight_paths: dict[str, Path]):
    """The controlnet-aux detector for `method`, loaded by its own `from_pretrained` from local files only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. timm's deprecated-model-name notice for the MiDaS backbone
            return _from_pretrained(method, [str(path) for path in weight_paths.values()])
    except ImportError:
        raise
    except Exception as error:
        raise RuntimeError(
            f"Control preprocessor '{method}' could not load {', '.join(map(str, weight_paths.values()))}: "
            f"{type(error).__name__}: {error}. The file may be incomplete or not the {ANNOTATORS_REPO} file of that "
            f"name; download it again from {', '.join(weight_url(name) for name in weight_paths)}."
        ) from error


def _from_pretrained(method: str, paths: list[str]):
    # from_pretrained(folder, filename=...) reads os.path.join(folder, filename) and never asks the hub when `folder`
    # exists; an absolute filename makes that join the file itself, so OpenPose's three files may sit apart.
    from controlnet_aux.hed import HEDdetector
    from controlnet_aux.lineart_anime import LineartAnimeDetector
    from controlnet_aux.midas import MidasDetector
    from controlnet_aux.mlsd import MLSDdetector
    from controlnet_aux.open_pose import OpenposeDetector

    folder = os.path.dirname(paths[0])
    if method in ("hed", "scribble"):
        return HEDdetector.from_pretrained(folder, filename=paths[0])
    if method == "mlsd":
        return MLSDdetector.from_pretrained(folder, filename=paths[0])
    if method == "anime_lineart":
        return LineartAnimeDetector.from_pretrained(folder, filename=paths[0])
    if method == "depth":
        return MidasDetector.from_pretrained(folder, model_type="dpt_hybrid", filename=paths[0])
    if method == "openpose":
        body, hand, face = paths  # in WEIGHT_FILES["openpose"] order
        return OpenposeDetector.from_pretrained(folder, filename=body, hand_filename=hand, face_filename=face)
    raise AssertionError(f"no loader for control method {method!r}")


def _frame_function(method: str, detector, device: torch.device, **params) -> Callable[[np.ndarray], np.ndarray]:
    resolution = params["detect_resolution"]
    if method in ("hed", "scribble"):
        return lambda frame: detector(
            frame, detect_resolution=resolution, image_resolution=resolution, safe=params["safe"],
            scribble=method == "scribble", output_type="np",
        )  # fmt: skip
    if method == "anime_lineart":
        return lambda frame: detector(
            frame, detect_resolution=resolution, image_resolution=resolution, output_type="np"
        )
    if method == "openpose":
        return lambda frame: detector(
            frame, detect_resolution=resolution, image_resolution=resolution, include_body=params["include_body"],
            include_hand=params["include_hand"], include_face=params["include_face"], output_type="np",
        )  # fmt: skip
    if method == "mlsd":
        return _MlsdFrames(detector.model, resolution, params["score_threshold"], params["distance_threshold"])
    if method == "depth":
        return lambda frame: _midas_raw_depth(detector.model, frame, resolution, device)
    raise AssertionError(f"no frame function for control method {method!r}")


class _MlsdFrames:
    """MLSD line maps drawn here rather than by MLSDdetector.__call__, which swallows every exception and returns
    a black frame (a broken model or a device mismatch would look like "no lines"): here errors are raised."""

    def __init__(self, model: torch.nn.Module, resolution: int, score_threshold: float, distance_threshold: float):
        self.model, self.resolution = model, resolution
        self.score_threshold, self.distance_threshold = score_threshold, distance_threshold
        self.frame_index = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        import cv2
        from controlnet_aux.mlsd.utils import pred_lines
        from controlnet_aux.util import resize_image

        detect = resize_image(frame, self.resolution)
        canvas = np.zeros(detect.shape[:2], dtype=np.uint8)
        try:
            lines = pred_lines(
                detect, self.model, list(detect.shape[:2]), self.score_threshold, self.distance_threshold
            )
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as error:
            raise RuntimeError(
                f"MLSD line detection failed on frame {self.frame_index} ({type(error).__name__}: {error}). "
                "controlnet-aux would have returned a black frame here without a word; the control video would "
                "silently lose its lines."
            ) from error
        for x_start, y_start, x_end, y_end in lines:
            cv2.line(canvas, (int(x_start), int(y_start)), (int(x_end), int(y_end)), 255, 1)
        self.frame_index += 1
        return canvas


def _midas_raw_depth(model: torch.nn.Module, frame: np.ndarray, resolution: int, device: torch.device) -> np.ndarray:
    """Relative inverse depth [h, w] at detect resolution, before any normalisation (MidasDetector.__call__
    normalises per frame; we normalise per clip)."""
    from controlnet_aux.util import resize_image

    detect = resize_image(frame, resolution)
    pixels = torch.from_numpy(detect).to(device=device, dtype=torch.float32) / 127.5 - 1.0
    pixels = pixels.permute(2, 0, 1).unsqueeze(0)  # [1, 3, h, w] in -1..1, as the DPT annotator expects
    return model(pixels)[0].float().cpu().numpy()
