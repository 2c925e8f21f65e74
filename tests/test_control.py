"""Control preprocessor (models/preprocess/ and the EasyAnimate Control Preprocessor node).

Network methods are exercised through controlnet-aux's real loading code, offline, from a temporary folder of
random-weight checkpoints written under the released file names and containers
(docs/checkpoints.md, annotator weights). The OpenPose and MiDaS fakes are ~0.5 GB each: they are written once per
session, only when a test needs them, and deleted at the end.
"""

from __future__ import annotations

import functools
import gc
import importlib
import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from models import control
from models.control import (
    METHODS,
    ControlDependencyError,
    MissingWeightsError,
    annotator_search_dirs,
    normalize_depth_clip,
    preprocess,
    resolve_weights,
)

FRAMES, HEIGHT, WIDTH = 5, 170, 250  # odd sizes: controlnet-aux would round them to multiples of 64
NETWORK_METHODS = [m for m in METHODS if m != "canny"]
SMALL_DETECT = 64  # keeps the random-weight networks fast on a 2-core CPU


@pytest.fixture(autouse=True)
def no_ambient_checkpoint_dirs(monkeypatch):
    # a developer's own $AUX_ANNOTATOR_CKPTS_PATH must not decide what these tests find
    monkeypatch.delenv(control.AUX_CKPTS_ENV, raising=False)


def make_video(frames=FRAMES, height=HEIGHT, width=WIDTH, seed=0) -> np.ndarray:
    """uint8 [T, H, W, 3]: random colour blocks, so there are edges to find."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(frames, 9, 13, 3), dtype=np.uint8)
    return np.stack([cv2.resize(b, (width, height), interpolation=cv2.INTER_NEAREST) for b in blocks])


def as_image(video_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(video_uint8).float() / 255.0


# ---------------------------------------------------------------------------------------------------------------
# Random-weight checkpoints in the released layouts


def _strip_first_key_component(state_dict):
    # OpenPose body/hand files store keys without the first module-path component (controlnet-aux re-adds it)
    return {key.split(".", 1)[1]: value for key, value in state_dict.items()}


def _write_hed(folder: Path):
    from controlnet_aux.hed import ControlNetHED_Apache2

    torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")


def _write_mlsd(folder: Path):
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    torch.save(MobileV2_MLSD_Large().state_dict(), folder / "mlsd_large_512_fp32.pth")


def _write_anime(folder: Path):
    from controlnet_aux.lineart_anime import UnetGenerator

    norm = functools.partial(torch.nn.InstanceNorm2d, affine=False, track_running_stats=False)
    net = UnetGenerator(3, 1, 8, 64, norm_layer=norm, use_dropout=False)
    torch.save({"module." + k: v for k, v in net.state_dict().items()}, folder / "netG.pth")


def _write_openpose(folder: Path):
    from controlnet_aux.open_pose.face import FaceNet
    from controlnet_aux.open_pose.model import bodypose_model, handpose_model

    torch.save(_strip_first_key_component(bodypose_model().state_dict()), folder / "body_pose_model.pth")
    torch.save(_strip_first_key_component(handpose_model().state_dict()), folder / "hand_pose_model.pth")
    torch.save(FaceNet().state_dict(), folder / "facenet.pth")


def _write_midas(folder: Path):
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    model = DPTDepthModel(path=None, backbone="vitb_rn50_384", non_negative=True)
    torch.save(model.state_dict(), folder / "dpt_hybrid-midas-501f0c75.pt")


FAKE_WRITERS = {
    "hed": _write_hed,
    "scribble": _write_hed,
    "mlsd": _write_mlsd,
    "anime_lineart": _write_anime,
    "openpose": _write_openpose,
    "depth": _write_midas,
}


@pytest.fixture(scope="session")
def fake_weights():
    """fake_weights(method) -> a folder holding random-weight files for that method (written on first use)."""
    root = Path(tempfile.mkdtemp(prefix="easyanimate-annotators-"))
    folders: dict = {}

    def folder_for(method: str) -> Path:
        writer = FAKE_WRITERS[method]
        if writer not in folders:
            folder = root / writer.__name__.strip("_")
            folder.mkdir()
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                writer(folder)
            folders[writer] = folder
        return folders[writer]

    yield folder_for
    shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# Canny


def test_canny_output_equals_cv2_canny_on_the_same_frames_with_the_same_thresholds():
    video = make_video()
    out = preprocess(as_image(video), "canny", low_threshold=50, high_threshold=150)
    expected = np.stack([np.repeat(cv2.Canny(frame, 50, 150)[:, :, None], 3, axis=2) for frame in video])
    assert expected.max() == 255, "the test video must contain edges"
    assert torch.equal(out, torch.from_numpy(expected).float() / 255.0)


def test_canny_needs_neither_controlnet_aux_nor_weight_files(monkeypatch):
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)  # any `import controlnet_aux` now raises ImportError
    out = preprocess(as_image(make_video()), "canny", weights_dirs=[])
    assert out.shape == (FRAMES, HEIGHT, WIDTH, 3)


# ---------------------------------------------------------------------------------------------------------------
# Shapes: every method keeps frame count and size


@pytest.mark.parametrize("method", METHODS)
def test_output_keeps_frame_count_and_odd_size_as_rgb_float_frames(method, fake_weights):
    dirs = [] if method == "canny" else [fake_weights(method)]
    out = preprocess(as_image(make_video()), method, detect_resolution=SMALL_DETECT, weights_dirs=dirs)
    assert out.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert out.dtype == torch.float32 and out.device.type == "cpu"
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert torch.equal(out[..., 0], out[..., 1]) and torch.equal(out[..., 1], out[..., 2]), "maps are grey"


def test_hed_map_is_controlnet_aux_output_resized_back_to_the_input_size(fake_weights):
    from controlnet_aux.hed import HEDdetector

    video = make_video(frames=1)
    out = preprocess(as_image(video), "hed", detect_resolution=128, weights_dirs=[fake_weights("hed")])
    detector = HEDdetector.from_pretrained(str(fake_weights("hed")))
    reference = detector(video[0], detect_resolution=128, image_resolution=128, output_type="np")
    assert reference.shape[:2] == (128, 192)  # controlnet-aux's multiple-of-64 size
    expected = cv2.resize(reference, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
    assert torch.equal(out[0], torch.from_numpy(expected).float() / 255.0)


# ---------------------------------------------------------------------------------------------------------------
# Finding weights


def test_missing_weight_file_error_names_the_file_where_to_put_it_and_where_it_comes_from(tmp_path):
    with pytest.raises(MissingWeightsError) as caught:
        preprocess(as_image(make_video(frames=1)), "hed", weights_dirs=[tmp_path])
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    assert "ControlNetHED.pth" in message
    assert f"put it in {tmp_path}/" in message
    assert "https://huggingface.co/lllyasviel/Annotators/resolve/main/ControlNetHED.pth" in message


def test_missing_openpose_files_are_listed_and_present_ones_are_not(tmp_path):
    (tmp_path / "body_pose_model.pth").write_bytes(b"x")
    with pytest.raises(MissingWeightsError) as caught:
        resolve_weights("openpose", [tmp_path])
    message = str(caught.value)
    assert "hand_pose_model.pth, facenet.pth" in message
    assert "body_pose_model.pth" not in message


def test_weights_are_found_in_the_comfyui_controlnet_aux_layout(tmp_path):
    ckpts = tmp_path / "ckpts"
    (ckpts / "lllyasviel" / "Annotators").mkdir(parents=True)
    (ckpts / "lllyasviel" / "Annotators" / "netG.pth").write_bytes(b"x")
    assert resolve_weights("anime_lineart", [tmp_path / "empty", ckpts]) == {
        "netG.pth": ckpts / "lllyasviel" / "Annotators" / "netG.pth"
    }


def test_earlier_weight_folders_win(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    for folder in (first, second):
        folder.mkdir()
        (folder / "mlsd_large_512_fp32.pth").write_bytes(b"x")
    assert resolve_weights("mlsd", [first, second])["mlsd_large_512_fp32.pth"] == first / "mlsd_large_512_fp32.pth"


def test_aux_annotator_ckpts_path_is_searched_after_the_given_folders(tmp_path, monkeypatch):
    given, aux = tmp_path / "given", tmp_path / "aux"
    (aux / "lllyasviel" / "Annotators").mkdir(parents=True)
    (aux / "lllyasviel" / "Annotators" / "ControlNetHED.pth").write_bytes(b"x")
    given.mkdir()
    monkeypatch.setenv(control.AUX_CKPTS_ENV, str(aux))
    in_aux = aux / "lllyasviel" / "Annotators" / "ControlNetHED.pth"
    assert resolve_weights("hed", [given])["ControlNetHED.pth"] == in_aux
    (given / "ControlNetHED.pth").write_bytes(b"x")
    assert resolve_weights("hed", [given])["ControlNetHED.pth"] == given / "ControlNetHED.pth"


def test_openpose_files_may_come_from_different_folders(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "body_pose_model.pth").write_bytes(b"x")
    (second / "hand_pose_model.pth").write_bytes(b"x")
    (second / "facenet.pth").write_bytes(b"x")
    found = resolve_weights("openpose", [first, second])
    assert found == {
        "body_pose_model.pth": first / "body_pose_model.pth",
        "hand_pose_model.pth": second / "hand_pose_model.pth",
        "facenet.pth": second / "facenet.pth",
    }


def test_search_dirs_add_an_installed_comfyui_controlnet_aux_after_our_annotators_folder(tmp_path):
    annotators = tmp_path / "models" / "annotators"
    aux_pack = tmp_path / "custom_nodes" / "comfyui_controlnet_aux"
    aux_pack.mkdir(parents=True)
    (aux_pack / "config.yaml").write_text("# comment\nannotator_ckpts_path: ./my_ckpts\nUSE_SYMLINKS: False\n")
    (tmp_path / "custom_nodes" / "SomeOtherPack").mkdir()
    assert annotator_search_dirs([annotators], comfy_root=tmp_path) == [
        annotators,
        aux_pack / "my_ckpts",
        aux_pack / "ckpts",
    ]
    assert annotator_search_dirs([annotators], comfy_root=None) == [annotators]


# ---------------------------------------------------------------------------------------------------------------
# Depth: one normalisation for the whole clip


def test_depth_normalisation_spans_the_whole_clip_not_each_frame():
    near_only = np.linspace(0.0, 1.0, 12, dtype=np.float32).reshape(3, 4)
    wider = np.linspace(0.0, 2.0, 12, dtype=np.float32).reshape(3, 4)
    maps = normalize_depth_clip([near_only, wider], background_threshold=0.0)
    assert (maps[0].min(), maps[0].max()) == (0, 128)  # 1.0 of a 0..2 clip range: half brightness
    assert (maps[1].min(), maps[1].max()) == (0, 255)


def test_depth_background_threshold_blackens_values_below_it_on_the_clip_scale():
    depth = np.array([[0.0, 0.05, 0.2, 1.0]], dtype=np.float32)
    (mapped,) = normalize_depth_clip([depth], background_threshold=0.1)
    assert mapped.tolist() == [[0, 0, 51, 255]]


def test_depth_preprocess_normalises_two_frames_with_different_ranges_over_the_clip(fake_weights, monkeypatch):
    from controlnet_aux.midas.midas.dpt_depth import DPTDepthModel

    # depth := brightness of the (-1..1) network input, so each frame's depth range is known
    monkeypatch.setattr(DPTDepthModel, "forward", lambda self, x: (x.mean(dim=1) + 1.0) / 2.0)
    ramp = np.linspace(0, 255, WIDTH, dtype=np.float32)[None, :, None].repeat(HEIGHT, 0).repeat(3, 2)
    video = np.stack([ramp * 0.25 + 64, ramp]).round().astype(np.uint8)  # depths ~0.25..0.5 and 0..1
    out = preprocess(
        as_image(video),
        "depth",
        detect_resolution=SMALL_DETECT,
        depth_background_threshold=0.0,
        weights_dirs=[fake_weights("depth")],
    )
    dim, full = out[0], out[1]
    assert abs(float(full.max()) - 1.0) <= 0.02 and float(full.min()) <= 0.02
    # per-frame normalisation would stretch the dim frame to 0..1 as well
    assert abs(float(dim.min()) - 0.25) <= 0.03 and abs(float(dim.max()) - 0.5) <= 0.03


# ---------------------------------------------------------------------------------------------------------------
# MLSD errors, progress, interrupt, offline loading, release


def test_mlsd_errors_are_raised_instead_of_becoming_black_frames(fake_weights, monkeypatch):
    from controlnet_aux.mlsd.models.mbv2_mlsd_large import MobileV2_MLSD_Large

    def broken_forward(self, x):
        raise RuntimeError("weights on another device")

    monkeypatch.setattr(MobileV2_MLSD_Large, "forward", broken_forward)
    with pytest.raises(RuntimeError, match=r"MLSD line detection failed on frame 0") as caught:
        preprocess(
            as_image(make_video(frames=2)), "mlsd", detect_resolution=SMALL_DETECT, weights_dirs=[fake_weights("mlsd")]
        )
    assert "weights on another device" in str(caught.value)


@pytest.mark.parametrize("method", ["canny", "hed"])
def test_progress_is_reported_after_every_frame(method, fake_weights):
    calls = []
    dirs = [] if method == "canny" else [fake_weights(method)]
    preprocess(
        as_image(make_video()),
        method,
        detect_resolution=SMALL_DETECT,
        weights_dirs=dirs,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]


class Cancelled(Exception):
    pass


@pytest.mark.parametrize("method", ["canny", "mlsd"])
def test_interrupt_is_checked_before_every_frame_and_stops_the_batch(method, fake_weights):
    checks, calls = [], []

    def interrupt():
        checks.append(len(checks))
        if len(checks) == 3:
            raise Cancelled()

    dirs = [] if method == "canny" else [fake_weights(method)]
    with pytest.raises(Cancelled):
        preprocess(
            as_image(make_video()),
            method,
            detect_resolution=SMALL_DETECT,
            weights_dirs=dirs,
            progress=lambda done, total: calls.append(done),
            interrupt=interrupt,
        )
    assert calls == [1, 2]


def test_network_methods_load_without_network_and_leave_process_settings_alone(fake_weights, monkeypatch):
    import socket

    import huggingface_hub.constants as hub_constants

    def no_network(*args, **kwargs):
        raise AssertionError("a control preprocessor tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    # controlnet-aux's own first import sets variables (cv2's Qt paths, KMP_DUPLICATE_LIB_OK, TORCHINDUCTOR_CACHE_DIR),
    # once per process, whichever test imports it first: import it here so that only our calls are compared
    from models.preprocess.annotators import _import_controlnet_aux

    _import_controlnet_aux()
    environment_before = dict(os.environ)
    seen = []

    def progress(done, total):
        seen.append((dict(os.environ) == environment_before, hub_constants.HF_HUB_OFFLINE))

    maps = preprocess(
        as_image(make_video(frames=1)),
        "hed",
        detect_resolution=SMALL_DETECT,
        weights_dirs=[fake_weights("hed")],
        progress=progress,
    )
    assert maps.shape == (1, HEIGHT, WIDTH, 3)
    assert seen == [(True, False)]  # nothing process-wide changed, not even during the call
    assert dict(os.environ) == environment_before


PAYLOAD_RUNS = []


def _record_payload(marker):
    PAYLOAD_RUNS.append(marker)
    return {}


class _Payload:
    def __reduce__(self):
        return (_record_payload, ("code ran while loading",))


def test_weight_files_that_pickle_code_are_refused_even_if_the_environment_allows_it(tmp_path, monkeypatch):
    torch.save({"weight": _Payload()}, tmp_path / "ControlNetHED.pth")
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # would make a plain torch.load unpickle anything
    with pytest.raises(RuntimeError, match=r"could not load .*ControlNetHED\.pth") as caught:
        preprocess(as_image(make_video(frames=1)), "hed", detect_resolution=SMALL_DETECT, weights_dirs=[tmp_path])
    assert "huggingface.co/lllyasviel/Annotators" in str(caught.value)
    assert PAYLOAD_RUNS == []
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"


def test_network_weights_are_released_after_the_batch(fake_weights):
    from controlnet_aux.hed import ControlNetHED_Apache2

    gc.collect()
    before = sum(type(o) is ControlNetHED_Apache2 for o in gc.get_objects())
    weights = [fake_weights("hed")]
    preprocess(as_image(make_video(frames=2)), "hed", detect_resolution=SMALL_DETECT, weights_dirs=weights)
    gc.collect()
    assert sum(type(o) is ControlNetHED_Apache2 for o in gc.get_objects()) == before


def test_missing_controlnet_aux_error_says_how_to_install_it_without_replacing_torch(tmp_path, monkeypatch):
    (tmp_path / "ControlNetHED.pth").write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "controlnet_aux", None)
    with pytest.raises(ControlDependencyError) as caught:
        preprocess(as_image(make_video(frames=1)), "hed", weights_dirs=[tmp_path])
    message = str(caught.value)
    assert "controlnet-aux==0.0.10" in message and "--no-deps" in message and sys.executable in message


def test_unknown_method_and_non_image_input_are_rejected():
    with pytest.raises(ValueError, match="expected one of: canny, depth"):
        preprocess(as_image(make_video(frames=1)), "sobel")
    with pytest.raises(ValueError, match=r"\[frames, height, width, 3\]"):
        preprocess(torch.rand(HEIGHT, WIDTH, 3), "canny")


# ---------------------------------------------------------------------------------------------------------------
# The node


@pytest.fixture(scope="module")
def node_module(pack):
    return importlib.import_module(f"{pack.__name__}.nodes.control")


def test_node_is_registered_as_easyanimate_control_preprocessor(node_module):
    node = node_module.NODE_CLASS_MAPPINGS["EasyAnimateControlPreprocessor"]
    assert node_module.NODE_DISPLAY_NAME_MAPPINGS == {
        "EasyAnimateControlPreprocessor": "EasyAnimate Control Preprocessor"
    }
    assert (node.CATEGORY, node.RETURN_TYPES) == ("EasyAnimate", ("IMAGE",))
    assert callable(getattr(node(), node.FUNCTION))


def test_node_inputs_offer_every_method_with_controlnet_aux_defaults(node_module):
    required = node_module.EasyAnimateControlPreprocessor.INPUT_TYPES()["required"]
    assert list(required) == [
        "images",
        "method",
        "detect_resolution",
        "canny_low_threshold",
        "canny_high_threshold",
        "depth_background_threshold",
        "pose_body",
        "pose_hands",
        "pose_face",
        "mlsd_score_threshold",
        "mlsd_distance_threshold",
        "hed_safe",
    ]
    assert required["images"][0] == "IMAGE"
    assert required["method"][0] == list(METHODS) and required["method"][1]["default"] == "canny"
    defaults = {name: spec[1]["default"] for name, spec in required.items() if name not in ("images", "method")}
    assert defaults == {
        "detect_resolution": 512,
        "canny_low_threshold": 100,
        "canny_high_threshold": 200,
        "depth_background_threshold": 0.1,
        "pose_body": True,
        "pose_hands": False,
        "pose_face": False,
        "mlsd_score_threshold": 0.1,
        "mlsd_distance_threshold": 0.1,
        "hed_safe": False,
    }
    assert required["detect_resolution"][1]["step"] == 64 and required["detect_resolution"][1]["min"] == 64


def _node_kwargs(images, method):
    return dict(
        images=images,
        method=method,
        detect_resolution=SMALL_DETECT,
        canny_low_threshold=100,
        canny_high_threshold=200,
        depth_background_threshold=0.1,
        pose_body=True,
        pose_hands=False,
        pose_face=False,
        mlsd_score_threshold=0.1,
        mlsd_distance_threshold=0.1,
        hed_safe=False,
    )


def test_node_canny_output_equals_the_model_function(node_module):
    images = as_image(make_video())
    (out,) = node_module.EasyAnimateControlPreprocessor().execute(**_node_kwargs(images, "canny"))
    assert torch.equal(out, preprocess(images, "canny", low_threshold=100, high_threshold=200))


def test_node_reads_weights_from_the_annotators_model_folder(node_module, pack, fake_weights, monkeypatch, tmp_path):
    bridge = importlib.import_module(f"{pack.__name__}.nodes.bridge")
    env_name = bridge.ENV_OVERRIDES[bridge.ANNOTATORS_FOLDER]
    images = as_image(make_video(frames=2))
    monkeypatch.setenv(env_name, str(fake_weights("mlsd")))
    (out,) = node_module.EasyAnimateControlPreprocessor().execute(**_node_kwargs(images, "mlsd"))
    assert out.shape == (2, HEIGHT, WIDTH, 3)
    monkeypatch.setenv(env_name, str(tmp_path))
    pack_control = importlib.import_module(f"{pack.__name__}.models.control")  # the pack's own copy of the module
    with pytest.raises(pack_control.MissingWeightsError, match=f"put it in {tmp_path}/"):
        node_module.EasyAnimateControlPreprocessor().execute(**_node_kwargs(images, "mlsd"))


def test_node_max_frames_processes_and_counts_only_the_first_frames(node_module, monkeypatch):
    images = as_image(make_video())
    steps = []
    monkeypatch.setattr(
        node_module,
        "Progress",
        lambda total: type(
            "P", (), {"callback": staticmethod(lambda done, total_now, preview=None: steps.append((done, total_now)))}
        )(),
    )
    (out,) = node_module.EasyAnimateControlPreprocessor().execute(**_node_kwargs(images, "canny"), max_frames=2)
    assert torch.equal(out, preprocess(images[:2], "canny", low_threshold=100, high_threshold=200))
    assert steps[-1] == (2, 2)
    (everything,) = node_module.EasyAnimateControlPreprocessor().execute(**_node_kwargs(images, "canny"))
    assert everything.shape[0] == images.shape[0]  # 0 (the default) keeps every frame
