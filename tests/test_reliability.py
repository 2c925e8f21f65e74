"""Requests bounded and priced before work starts, one owner per model, damaged files named at the loader, latents
tied to their model — unit level, no ComfyUI (the server-level acceptance is in test_comfyui_reliability.py)."""

import gc
import inspect
import shutil
import weakref

import pytest
import torch

from models import preflight
from models.components import live_components, open_model
from models.loading.headers import CheckpointError
from models.offload import OffloadStats, Placement

MODEL = "tiny-EasyAnimateV5.1-12b-zh"
GIB = 1024**3


@pytest.fixture
def tiny_model(tiny_root):
    return open_model(tiny_root / MODEL, "bf16")


# -- limits -----------------------------------------------------------------------------------------------------------


def test_each_out_of_range_input_is_reported_once_on_itself_with_its_bounds():
    problems = preflight.input_problems(0, -64, 100001)
    assert problems == {
        "width": "width 0 is outside 16..2048 pixels",
        "height": "height -64 is outside 16..2048 pixels",
        "frames": "frames 100001 is outside 1..253",
    }


def test_a_string_width_is_rejected_with_the_expected_type_and_a_step_error_names_neighbours():
    problems = preflight.input_problems("672", 650, 48)
    assert problems["width"] == "width must be a whole number (INT), got str '672'"
    assert problems["height"] == "height 650 must be a multiple of 16 (e.g. 640 or 656)"
    assert problems["frames"].endswith("nearest 45 or 49")


def test_sampler_widgets_carry_the_registry_limits_and_validation_takes_over_frames_only(pack):
    from models import variants

    sampler = pack.nodes.sampler.EasyAnimateVideoSampler
    required = sampler.INPUT_TYPES()["required"]
    assert (required["width"][1]["min"], required["width"][1]["max"]) == (variants.MIN_SIDE, variants.MAX_SIDE)
    assert (required["frames"][1]["min"], required["frames"][1]["max"]) == (variants.MIN_FRAMES, variants.MAX_FRAMES)
    # ComfyUI skips its own min/max for every input VALIDATE_INPUTS names, and repeats its message on each of them
    assert list(inspect.signature(sampler.VALIDATE_INPUTS).parameters) == ["frames"]
    assert sampler.VALIDATE_INPUTS(frames=100001) == "frames 100001 is outside 1..253"
    assert sampler.VALIDATE_INPUTS(frames=49) is True


# -- pricing ----------------------------------------------------------------------------------------------------------


def test_a_block_longer_than_the_limit_is_refused_with_nearest_sizes_that_run_in_time(tiny_model):
    # hand computation: 2048x2048x49 -> 13 latent frames x 128 x 128 patches + 256 text tokens; inner 2 x 16 = 32
    tokens = 13 * 128 * 128 + 256
    seconds = 4 * 2 * 32 * tokens**2 / (preflight.CPU_ATTENTION_FLOPS_PER_THREAD * 2)
    assert seconds > preflight.MAX_UNINTERRUPTIBLE_SECONDS
    with pytest.raises(preflight.RequestRefused) as refused:
        preflight.check_request(tiny_model, "cpu", 2048, 2048, 49, threads=2, ram=64 * GIB, log=lambda s: None)
    message = str(refused.value)
    assert f"about {seconds:.0f} s" in message and "limit 60 s" in message
    assert "2048x2048 with 9 frames" in message and "1008x1008 with 49 frames" in message
    for width, height, frames in ((2048, 2048, 9), (1008, 1008, 49)):  # the suggestions really run in time
        preflight.check_request(tiny_model, "cpu", width, height, frames, threads=2, ram=64 * GIB, log=lambda s: None)
    with pytest.raises(preflight.RequestRefused):  # and they are the nearest: one step more is refused
        preflight.check_request(tiny_model, "cpu", 2048, 2048, 13, threads=2, ram=64 * GIB, log=lambda s: None)


def test_a_request_that_does_not_fit_free_ram_is_refused_with_frames_that_fit(tiny_model):
    ok = preflight.check_request(tiny_model, "cpu", 672, 384, 49, threads=64, ram=64 * GIB, log=lambda s: None)
    ram = int(ok.ram_needed * 0.6)
    with pytest.raises(preflight.RequestRefused) as refused:
        preflight.check_request(tiny_model, "cpu", 672, 384, 49, threads=64, ram=ram, log=lambda s: None)
    message = str(refused.value)
    assert "RAM" in message and "672x384 with" in message
    suggested_frames = int(message.split("672x384 with ")[1].split(" frames")[0])
    assert 1 <= suggested_frames < 49
    preflight.check_request(tiny_model, "cpu", 672, 384, suggested_frames, threads=64, ram=ram, log=lambda s: None)


def test_on_a_gpu_a_forced_mode_that_does_not_fit_names_a_mode_that_does(tiny_root, monkeypatch):
    from models.memory import ModelBytes

    model = open_model(tiny_root / MODEL, "bf16", memory_mode="gpu")
    twelve_b = ModelBytes({"bf16": 24 * GIB}, {"bf16": GIB // 2}, 48, 3072, 14 * GIB, GIB, "v5.1")  # released sizes
    monkeypatch.setattr(preflight, "model_bytes", lambda model, storages: twelve_b)
    # 40 GB free: all components at once (24 + 14 + 1 GB) do not fit; the transformer alone (offload) does
    with pytest.raises(preflight.RequestRefused) as refused:
        preflight.check_request(model, "cuda", 672, 384, 49, free_vram=40 * GIB, ram=128 * GIB, log=lambda s: None)
    assert "GPU memory" in str(refused.value) and "memory_mode model_cpu_offload" in str(refused.value)
    offload = open_model(tiny_root / MODEL, "bf16", memory_mode="model_cpu_offload")
    assert preflight.check_request(
        offload, "cuda", 672, 384, 49, free_vram=40 * GIB, ram=128 * GIB, log=lambda s: None
    ).fits


# -- ownership --------------------------------------------------------------------------------------------------------


def test_two_loaders_with_the_same_settings_share_one_object_and_nothing_keeps_it_after_them(tiny_root):
    first = open_model(tiny_root / MODEL, "fp16")
    assert open_model(tiny_root / MODEL, "fp16") is first
    gone = weakref.ref(first)
    del first
    gc.collect()
    assert gone() is None  # no module-level cache outlives what ComfyUI holds
    assert all(c.dtype != torch.float16 or c.path.name != MODEL for c in live_components())


def test_a_settings_change_releases_the_previous_copy_before_the_new_one_loads(tiny_root, monkeypatch):
    old = open_model(tiny_root / MODEL, "bf16")
    old.transformer(device="cpu", log=lambda s: None)
    new = open_model(tiny_root / MODEL, "fp32")
    seen = {}
    real_load = type(new)._load_transformer

    def recording_load(self, *args):
        seen["old still loaded"] = old.is_loaded("transformer")
        return real_load(self, *args)

    monkeypatch.setattr(type(new), "_load_transformer", recording_load)
    new.transformer(device="cpu", log=lambda s: None)
    assert seen == {"old still loaded": False}
    assert new.is_loaded("transformer") and old.plan is None


def test_release_hooks_run_when_a_component_is_released(tiny_model):
    released = []
    tiny_model.on_release.append(lambda components, name: released.append(name))
    tiny_model.transformer(device="cpu", log=lambda s: None)
    assert tiny_model.get_ram_usage() > 0
    tiny_model.release()
    assert released == ["transformer"] and tiny_model.get_ram_usage() == 0


def test_pinning_replaces_tensors_one_by_one_so_at_most_one_original_is_alive(monkeypatch):
    module = torch.nn.Sequential(*[torch.nn.Linear(64, 64) for _ in range(6)])
    originals = [weakref.ref(p) for p in module.parameters()]
    alive_at_each_pin = []

    def pin(tensor):
        alive_at_each_pin.append(sum(ref() is not None for ref in originals))
        return tensor.clone()

    Placement(module, "cpu", OffloadStats(), pin_memory=True, pin=pin)
    # before the k-th pin, the k-1 tensors already pinned have let go of their originals: only the rest are alive
    assert alive_at_each_pin == [len(originals) - k for k in range(len(originals))]
    assert all(ref() is None for ref in originals)


# -- files ------------------------------------------------------------------------------------------------------------


def _truncated_copy(tiny_root, tmp_path, relative: str, keep: int) -> tuple:
    folder = tmp_path / MODEL
    shutil.copytree(tiny_root / MODEL, folder)
    target = folder / relative
    data = target.read_bytes()
    target.unlink()  # the copy may share an inode with the cache: replace, never write through
    target.write_bytes(data[:keep])
    return folder, target


@pytest.mark.parametrize(
    "relative,keep",
    [
        ("vae/diffusion_pytorch_model.safetensors", 4000),
        ("text_encoder/model-00002-of-00003.safetensors", 3000),
        ("tokenizer/tokenizer.json", 500),
    ],
)
def test_a_truncated_vae_text_encoder_or_tokenizer_file_is_named_when_the_model_opens(
    tiny_root, tmp_path, relative, keep
):
    folder, target = _truncated_copy(tiny_root, tmp_path, relative, keep)
    with pytest.raises(CheckpointError) as error:
        open_model(folder, "bf16")
    assert str(target) in str(error.value) and "Re-download" in str(error.value)


# -- latents and prompts ----------------------------------------------------------------------------------------------


def test_latents_from_another_version_are_refused_by_vae_decode(pack, tiny_root):
    v5 = open_model(tiny_root / "tiny-EasyAnimateV5-12b-zh", "bf16")
    latents = {"samples": torch.zeros(1, 16, 2, 8, 12), "version": "v5.1", "model": MODEL}
    with pytest.raises(ValueError, match=f"come from {MODEL} \\(v5.1\\).*tiny-EasyAnimateV5-12b-zh \\(v5\\)"):
        pack.nodes.vae.EasyAnimateVAEDecode().decode(v5, latents)


def test_a_prompt_over_the_token_limit_warns_how_many_tokens_are_dropped(tiny_model):
    encoder = tiny_model.text_encoder()
    limit = encoder.max_length("qwen")
    short = preflight.token_warnings(encoder, {"prompt": "a fox"})
    assert short == []
    dropped = preflight.dropped_tokens(encoder, "fox " * (limit + 40))["qwen"]
    assert dropped >= 40
    warning = preflight.token_warnings(encoder, {"prompt": "fox " * (limit + 40)})[0]
    assert f"{dropped} tokens too long" in warning and f"limit {limit}" in warning
