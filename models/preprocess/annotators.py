"""The controlnet-aux network annotators (depth, openpose, mlsd, hed, scribble, anime lineart): imported only
when one runs, loaded from local files only, weights-only unpickling checked here, released after the batch."""

from __future__ import annotations

import gc
import os
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .frames import Interrupt, Progress, _run_frames
from .weights import ANNOTATORS_REPO, weight_url

CONTROLNET_AUX_REQUIREMENT = "controlnet-aux==0.0.10"


class ControlDependencyError(ImportError):
    """controlnet-aux (or one of its requirements) is not importable."""


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


def refuse_pickled_code(path: Path) -> None:
    """Unpickle `path` with torch's weights-only unpickler (explicit, so no environment variable can relax it) and
    raise if the file references anything but tensors and plain containers. controlnet-aux then loads the same file
    with a plain torch.load, which can only rebuild what this check accepted. Zip-format files are memory-mapped, so
    the check reads the pickle, not the tensor data. No process-wide setting is touched (docs/architecture.md,
    control preprocessors)."""
    import zipfile

    torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))


def _load_detector(method: str, weight_paths: dict[str, Path]):
    """The controlnet-aux detector for `method`, loaded by its own `from_pretrained` from local files only."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. timm's deprecated-model-name notice for the MiDaS backbone
            for path in weight_paths.values():
                refuse_pickled_code(path)
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
    # exists; an absolute filename makes that join the file itself, so OpenPose's three files may sit apart. The files
    # were found by resolve_weights, so the folder exists and no hub call can happen (tests block sockets to prove it).
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
            frame,
            detect_resolution=resolution,
            image_resolution=resolution,
            safe=params["safe"],
            scribble=method == "scribble",
            output_type="np",
        )
    if method == "anime_lineart":
        return lambda frame: detector(
            frame, detect_resolution=resolution, image_resolution=resolution, output_type="np"
        )
    if method == "openpose":
        return lambda frame: detector(
            frame,
            detect_resolution=resolution,
            image_resolution=resolution,
            include_body=params["include_body"],
            include_hand=params["include_hand"],
            include_face=params["include_face"],
            output_type="np",
        )
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


def run_annotator(
    method: str,
    weight_paths: dict[str, Path],
    rgb: np.ndarray,
    device: torch.device,
    progress: Progress | None,
    interrupt: Interrupt | None,
    **params,
) -> list[np.ndarray]:
    """Per-frame maps of a network method; whatever happens, the network leaves the GPU and memory is collected."""
    _import_controlnet_aux()
    detector = per_frame = None
    try:
        with torch.no_grad():
            detector = _load_detector(method, weight_paths)
            detector.to(device)
            per_frame = _frame_function(method, detector, device, **params)
            return _run_frames(rgb, per_frame, progress, interrupt)
    finally:
        if detector is not None:
            detector.to("cpu")  # a traceback may keep the detector alive; it must not keep GPU memory
        detector = per_frame = None  # collected below, not when this frame ends
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
