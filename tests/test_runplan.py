"""The registry is the single source of node defaults, and a sampling run is validated before any transformer weight
is read (models/runplan.py): a wrong sampler family, an input the model kind does not take or prompt embeddings of the
other version are refused with zero transformer loads."""

from __future__ import annotations

import types

import pytest
import torch

from models import defaults, variants
from models.components import open_model

# The node defaults as released by the reference predict scripts (docs/faithfulness.md, schedulers), written out by
# hand: the registry must hold exactly these, and the nodes must show the registry's.
REFERENCE_DEFAULTS = {
    "width": 672,
    "height": 384,
    "frames": 49,
    "steps": 50,
    "cfg": 6.0,
    "seed": 43,
    "scheduler": "auto",
    "teacache_threshold": 0.08,
}


def test_sampler_widget_defaults_are_the_registry_values(pack):
    required = pack.nodes.sampler.EasyAnimateVideoSampler.INPUT_TYPES()["required"]
    shown = {name: required[name][1]["default"] for name in REFERENCE_DEFAULTS}
    registry = {
        "width": defaults.DEFAULT_WIDTH,
        "height": defaults.DEFAULT_HEIGHT,
        "frames": defaults.DEFAULT_FRAMES,
        "steps": defaults.DEFAULT_STEPS,
        "cfg": defaults.DEFAULT_GUIDANCE,
        "seed": defaults.DEFAULT_SEED,
        "scheduler": defaults.AUTO_SCHEDULER,
        "teacache_threshold": defaults.DEFAULT_TEACACHE_THRESHOLD,
    }
    assert shown == registry == REFERENCE_DEFAULTS
    assert tuple(required["scheduler"][0]) == defaults.SCHEDULER_CHOICES
    assert set(defaults.SCHEDULER_CHOICES[1:]) == {
        s for v in defaults.VERSIONS for s in defaults.SCHEDULERS_BY_VERSION[v]
    }
    for version in defaults.VERSIONS:  # every released variant's own default is in its family
        variant = variants.find_variant(version, "12b", "t2v")
        assert variant.default_scheduler in defaults.SCHEDULERS_BY_VERSION[version]
        assert (variant.default_steps, variant.default_guidance) == (
            REFERENCE_DEFAULTS["steps"],
            REFERENCE_DEFAULTS["cfg"],
        )


def test_loader_and_vae_widgets_come_from_the_registry(pack):
    loader = pack.nodes.loaders.EasyAnimateModelLoader.INPUT_TYPES()
    required, optional = loader["required"], loader["optional"]
    assert (tuple(required["precision"][0]), required["precision"][1]["default"]) == (defaults.PRECISIONS, "bf16")
    assert tuple(required["weight_storage"][0]) == defaults.WEIGHT_STORAGES
    assert required["weight_storage"][1]["default"] == "same as precision"
    assert (tuple(optional["memory_mode"][0]), optional["memory_mode"][1]["default"]) == (
        defaults.MEMORY_MODE_CHOICES,
        "auto",
    )
    assert (tuple(optional["fp8_mode"][0]), optional["fp8_mode"][1]["default"]) == (defaults.FP8_MODES, "quality")
    assert (tuple(optional["attention"][0]), optional["attention"][1]["default"]) == (
        defaults.ATTENTION_CHOICES,
        "auto",
    )
    assert pack.nodes.vae.FPS == defaults.DEFAULT_FPS == 8


@pytest.fixture
def counted_loads(monkeypatch):
    """Calls of the transformer loader of every ModelComponents (the node sees the same class)."""
    from models.components import ModelComponents

    calls = []
    monkeypatch.setattr(ModelComponents, "_load_transformer", lambda self, *a, **k: calls.append(self) or 1 / 0)
    return calls


def _sample(pack, model, embeddings_version, **inputs):
    settings = dict(
        width=64,
        height=64,
        frames=5,
        steps=2,
        cfg=6.0,
        seed=1,
        scheduler="auto",
        teacache_threshold=0.0,
        teacache_skip_start=0,
    )
    settings.update(inputs)
    embeddings = types.SimpleNamespace(version=embeddings_version)
    return pack.nodes.sampler.EasyAnimateVideoSampler().sample(model, embeddings, **settings)


IMAGE = torch.rand(1, 64, 64, 3)


@pytest.mark.parametrize(
    ("model_name", "embeddings", "inputs", "message"),
    [
        ("tiny-EasyAnimateV5.1-12b-zh", "v5.1", {"scheduler": "DDIM"}, "does not work with"),
        ("tiny-EasyAnimateV5-12b-zh", "v5", {"scheduler": "Flow UniPC"}, "does not work with"),
        ("tiny-EasyAnimateV5.1-12b-zh", "v5.1", {"start_image": IMAGE}, "need an InP"),
        ("tiny-EasyAnimateV5.1-12b-zh-InP", "v5.1", {"reference_image": IMAGE}, "reference image needs"),
        ("tiny-EasyAnimateV5.1-12b-zh-Control-Camera", "v5.1", {}, "connect a camera path"),
        ("tiny-EasyAnimateV5.1-12b-zh", "v5", {}, "same model's text encoder"),
    ],
)
def test_a_mismatch_is_refused_before_any_transformer_weight_is_read(
    pack, tiny_root, counted_loads, model_name, embeddings, inputs, message
):
    model = open_model(tiny_root / model_name, "bf16")
    with pytest.raises(ValueError, match=message):
        _sample(pack, model, embeddings, **inputs)
    assert counted_loads == [] and not model.is_loaded("transformer")


def test_a_valid_request_reaches_the_loader(pack, tiny_root, counted_loads):
    """The counter does count: the same call with a matching sampler gets to the transformer load."""
    model = open_model(tiny_root / "tiny-EasyAnimateV5.1-12b-zh", "bf16")
    with pytest.raises(ZeroDivisionError):
        _sample(pack, model, "v5.1", scheduler="Flow UniPC")
    assert counted_loads == [model]


def test_the_plan_resolves_auto_to_the_variant_default_and_keeps_the_request_otherwise(tiny_root):
    from models.pipeline import Request
    from models.runplan import plan_run

    model = open_model(tiny_root / "tiny-EasyAnimateV5-12b-zh", "bf16")
    request = Request(width=64, height=64, frames=5, steps=2, guidance_scale=1.0, seed=1, scheduler="auto")
    run = plan_run(model, request, "v5", "cpu", lambda device, wanted: None)
    assert run.request.scheduler == "DDIM" and request.scheduler == "auto"
    assert (run.size, run.cfg, run.price.mode) == ((64, 64, 5), False, "cpu")


def test_residency_offload_releases_the_text_encoder_and_makes_room_for_the_planned_peak():
    from models.memory import Plan
    from models.runplan import RunPlan

    transformer = torch.nn.Linear(4, 4, dtype=torch.bfloat16)
    offloaded = types.SimpleNamespace(plan=Plan("sequential", "bf16", 3, 5 * 2**30, 0, 0, True), offloading=True)
    residency = RunPlan(offloaded, None, torch.device("cpu"), None).residency(transformer)
    assert (residency.module, residency.size, residency.full) == (None, 0, False)
    assert (residency.make_room, residency.release) == (5 * 2**30, ("text_encoder",))

    resident = types.SimpleNamespace(plan=Plan("gpu", "bf16", 0, 7, 0, 0, True), offloading=False)
    residency = RunPlan(resident, None, torch.device("cpu"), None).residency(transformer)
    assert (residency.module, residency.size, residency.full) == (transformer, 4 * 4 * 2 + 4 * 2, True)
    assert (residency.make_room, residency.release) == (0, ())


def test_hold_on_device_releases_before_registering(pack):
    from models.runplan import Residency

    released = []
    holder = types.SimpleNamespace(release=released.append)
    pack.nodes.bridge.hold_on_device(holder, "transformer", Residency(None, 0, False, 0, ("text_encoder",)), "cpu")
    assert released == ["text_encoder"]  # outside ComfyUI no patcher is made; the release still happens


def test_the_plan_prices_fp8_text_encoder_storage_from_the_folders_headers(tiny_root):
    from models.loading.text import text_weight_bytes
    from models.preflight import model_bytes

    path = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    plain = model_bytes(open_model(path, "fp32"), ("fp32",))
    fp8 = model_bytes(open_model(path, "fp32", text_encoder_storage="fp8_e4m3fn"), ("fp32",))
    assert plain.text_encoder == text_weight_bytes(path, "v5.1", torch.float32)
    assert fp8.text_encoder == text_weight_bytes(path, "v5.1", torch.float32, torch.float8_e4m3fn) < plain.text_encoder
