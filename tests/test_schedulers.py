"""Samplers: parity with diffusers 0.42.1 configured like the released scheduler_config.json files.

The oracle is built the way the reference pipelines build it: `<Class>.from_config(released scheduler config)`,
`set_timesteps(N)` (`mu=1` for V5.1), `get_timesteps` truncation for denoise strength < 1, `scale_model_input`,
`step(..., generator=...)`. Both sides are fed the same model outputs and, at every step, the oracle's sample, so each
comparison is a single-step update; multistep solvers still accumulate their own history over the whole sequence.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from models.schedulers import DEFAULT_SCHEDULER, SCHEDULERS_BY_VERSION, make_scheduler
from models.variants import released_scheduler_config

# The facts every source quotes about the released scheduler/scheduler_config.json files
# (docs/faithfulness.md, schedulers, docs/checkpoints.md, folder layouts); the other V5 DDIM keys are not known and come
# from models/variants.py.
QUOTED = {
    "v5": {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "timestep_spacing": "trailing",
    },
    "v5.1": {
        "_class_name": "FlowMatchEulerDiscreteScheduler",
        "num_train_timesteps": 1000,
        "shift": 3.0,
        "use_dynamic_shifting": True,
        "base_shift": 0.5,
        "max_shift": 1.15,
    },
}
# What the oracle side runs with when a test passes no config: written here, never read from models/variants.py, so
# a wrong key in the registry cannot agree with itself. The V5 keys beyond QUOTED are the CogVideoX DDIM recipe the V5
# file was made from (no x0 clipping, ᾱ_final = 1, no offset; docs/faithfulness.md, schedulers).
ORACLE_CONFIG = {
    "v5": {**QUOTED["v5"], "clip_sample": False, "set_alpha_to_one": True, "steps_offset": 0},
    "v5.1": dict(QUOTED["v5.1"]),
}
ALL = [(version, name) for version, names in SCHEDULERS_BY_VERSION.items() for name in names]
SHAPE = (2, 4, 3, 4, 4)  # [B, C, T, H, W], tiny

# diffusers warns about keys a class ignores (e.g. snr_shift_scale) and about numpy 2's __array__ protocol
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def oracle(name: str, version: str, num_steps: int, strength: float = 1.0, config: dict | None = None):
    """The diffusers scheduler the reference would run, and the timesteps it would loop over."""
    import diffusers

    flow_solver = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
    cls, extra = {
        "DDIM": (diffusers.DDIMScheduler, {}),
        "Euler": (diffusers.EulerDiscreteScheduler, {}),
        "Euler A": (diffusers.EulerAncestralDiscreteScheduler, {}),
        "DPM++": (diffusers.DPMSolverMultistepScheduler, {}),
        "PNDM": (diffusers.PNDMScheduler, {}),
        "Flow": (diffusers.FlowMatchEulerDiscreteScheduler, {}),
        "Flow UniPC": (diffusers.UniPCMultistepScheduler, flow_solver),
        "Flow DPM++": (diffusers.DPMSolverMultistepScheduler, flow_solver),
    }[name]
    config = ORACLE_CONFIG[version] if config is None else config
    scheduler = cls.from_config(config, **extra)
    if version == "v5.1":
        scheduler.set_timesteps(num_steps, mu=1)
    else:
        scheduler.set_timesteps(num_steps)
    kept = min(int(num_steps * strength), num_steps)  # reference get_timesteps
    start = max(num_steps - kept, 0)
    return scheduler, scheduler.timesteps[start * scheduler.order :]


def assert_close(ours: torch.Tensor, ref: torch.Tensor, rel: float, what: str):
    assert ours.dtype == ref.dtype, what
    delta = (ours.double() - ref.double()).abs().max().item()
    scale = ref.double().abs().max().item()
    assert delta <= rel * scale, f"{what}: max|Δ| = {delta:.3g} > {rel} * max|ref| = {rel * scale:.3g}"


def run_side_by_side(name, version, num_steps, strength=1.0, dtype=torch.float32, rel=1e-6, config=None):
    ours = make_scheduler(name, version, num_steps, strength=strength, config=config)
    ref, ref_timesteps = oracle(name, version, num_steps, strength, config)
    assert ours.timesteps.dtype == ref_timesteps.dtype
    assert torch.equal(ours.timesteps, ref_timesteps)
    assert ours.num_model_calls == len(ref_timesteps)
    if ours.sigmas is not None:  # σ-space samplers: the whole σ table, terminal value included
        assert torch.equal(ours.sigmas, ref.sigmas.cpu())

    data = torch.Generator().manual_seed(1234)
    sample = torch.randn(SHAPE, generator=data).to(dtype)
    step_takes_generator = "generator" in inspect.signature(ref.step).parameters
    for i, t in enumerate(ref_timesteps):
        model_output = torch.randn(SHAPE, generator=data).to(dtype)
        ref_input = ref.scale_model_input(sample, t) if hasattr(ref, "scale_model_input") else sample
        assert_close(ours.scale_input(sample, i), ref_input, rel, f"{name} model input at step {i}")
        extra = {"generator": torch.Generator().manual_seed(100 + i)} if step_takes_generator else {}
        expected = ref.step(model_output, t, sample, return_dict=False, **extra)[0]
        got = ours.step(model_output, i, sample, generator=torch.Generator().manual_seed(100 + i))
        assert_close(got, expected, rel, f"{name} {version} N={num_steps} strength={strength} step {i} (t={t})")
        sample = expected
    return ours, ref


@pytest.mark.parametrize("version", ["v5", "v5.1"])
def test_default_config_carries_every_quoted_released_value(version):
    config = released_scheduler_config(version)
    assert {key: config[key] for key in QUOTED[version]} == QUOTED[version]


@pytest.mark.parametrize("version", ["v5", "v5.1"])
def test_registry_config_agrees_with_the_oracle_config_on_every_key_it_sets(version):
    config = released_scheduler_config(version)
    assert {key: config.get(key) for key in ORACLE_CONFIG[version]} == ORACLE_CONFIG[version]


def test_each_version_offers_only_its_own_samplers():
    assert SCHEDULERS_BY_VERSION == {
        "v5": ("DDIM", "Euler", "Euler A", "DPM++", "PNDM"),
        "v5.1": ("Flow", "Flow UniPC", "Flow DPM++"),
    }
    assert DEFAULT_SCHEDULER == {"v5": "DDIM", "v5.1": "Flow"}


@pytest.mark.parametrize("num_steps", [4, 25, 50])
@pytest.mark.parametrize("version,name", ALL)
def test_every_step_matches_diffusers_in_fp32(version, name, num_steps):
    run_side_by_side(name, version, num_steps)


@pytest.mark.parametrize("version,name", [(v, n) for v, n in ALL if n != "PNDM"])
@pytest.mark.parametrize("num_steps,strength", [(25, 0.6), (50, 0.7), (4, 0.5)])
def test_truncated_schedule_for_denoise_strength_matches_diffusers(version, name, num_steps, strength):
    ours, ref = run_side_by_side(name, version, num_steps, strength)
    assert ours.num_model_calls == int(num_steps * strength)


@pytest.mark.parametrize("name", ["DDIM", "PNDM", "Euler"])
def test_keys_missing_from_the_checkpoint_config_take_each_class_default(name):
    # only the keys every source quotes: DDIM then clips x0 to [-1, 1] (clip_sample defaults to True) and PNDM
    # ends on ᾱ_0 (set_alpha_to_one defaults to False) — exactly what from_pretrained would do with such a file
    run_side_by_side(name, "v5", 25, config=QUOTED["v5"])


@pytest.mark.parametrize("version,name", [(v, n) for v, n in ALL if n != "PNDM"])
def test_video_to_video_start_latents_match_diffusers(version, name):
    ours = make_scheduler(name, version, 25, strength=0.6)
    ref, ref_timesteps = oracle(name, version, 25, 0.6)
    data = torch.Generator().manual_seed(7)
    x0, noise = torch.randn(SHAPE, generator=data), torch.randn(SHAPE, generator=data)
    first = ref_timesteps[:1].repeat(SHAPE[0])
    if version == "v5.1" and name == "Flow":
        expected = ref.scale_noise(x0, first, noise)  # the reference's flow branch
    else:
        expected = ref.add_noise(x0, noise, first)
    assert_close(ours.initial_latents(noise, x0), expected, 1e-6, f"{name} start latents")


@pytest.mark.parametrize("version,name", ALL)
def test_bf16_latents_follow_the_reference_dtype_path_bit_for_bit(version, name):
    # bf16 in, bf16 out, upcast and rounded at the same points as diffusers: max|Δ| <= 0 · max|ref|
    run_side_by_side(name, version, 25, dtype=torch.bfloat16, rel=0.0)


@pytest.mark.parametrize("version,name", ALL)
def test_initial_noise_scale_matches_diffusers(version, name):
    ours = make_scheduler(name, version, 25)
    ref, _ = oracle(name, version, 25)
    assert ours.init_noise_sigma == float(getattr(ref, "init_noise_sigma", 1.0))


def test_flow_schedule_for_50_steps_has_the_documented_values():
    # docs/faithfulness.md, schedulers: σ' = e·σ/(1+(e-1)·σ) on σ = linspace(1, 0.001, 50), then 0; t = 1000·σ'
    sampler = make_scheduler("Flow", "v5.1", 50)
    e = math.e
    grid = [1 - i * (1 - 0.001) / 49 for i in range(50)]
    closed_form = torch.tensor([e * s / (1 + (e - 1) * s) for s in grid] + [0.0], dtype=torch.float64)
    assert (sampler.sigmas.double() - closed_form).abs().max().item() <= 3e-7
    assert sampler.sigmas[0].item() == 1.0 and sampler.sigmas[-1].item() == 0.0
    assert [round(s, 5) for s in sampler.sigmas[1:3].tolist()] == [0.9924, 0.9846]
    assert [round(s, 5) for s in sampler.sigmas[-4:-2].tolist()] == [0.10595, 0.05608]
    assert round(sampler.sigmas[-2].item(), 7) == 0.0027136
    assert [round(t, 2) for t in sampler.timesteps[:3].tolist()] == [1000.0, 992.4, 984.6]


def test_ddim_trailing_50_steps_run_from_999_to_19():
    sampler = make_scheduler("DDIM", "v5", 50)
    assert sampler.timesteps.tolist() == list(range(999, 0, -20))


def test_euler_starts_at_sigma_4096_with_zero_terminal_snr():
    sampler = make_scheduler("Euler", "v5", 50)
    assert abs(sampler.init_noise_sigma - 4096.0) <= 1e-4 * 4096
    assert sampler.sigmas[0].item() == sampler.init_noise_sigma
    x = torch.full((1, 1), 4096.0)
    assert abs(sampler.scale_input(x, 0).item() - 4096.0 / math.sqrt(4096.0**2 + 1)) <= 1e-6


def test_model_timestep_is_rounded_to_the_latent_dtype():
    # docs/faithfulness.md, timestep embedding: the pipeline casts t to the latent dtype: 992.40 → 992, 999 → 1000, 979
    # → 980 in bf16
    flow = make_scheduler("Flow", "v5.1", 50)
    assert flow.model_timestep(1, 2, torch.bfloat16).tolist() == [992.0, 992.0]
    assert flow.model_timestep(1, 2, torch.bfloat16).dtype == torch.bfloat16
    assert abs(flow.model_timestep(1, 1, torch.float32).item() - 992.40) <= 0.005
    ddim = make_scheduler("DDIM", "v5", 50)
    assert ddim.model_timestep(0, 1, torch.bfloat16).item() == 1000.0
    assert ddim.model_timestep(1, 1, torch.bfloat16).item() == 980.0


def test_pndm_runs_nine_extra_model_calls():
    assert make_scheduler("PNDM", "v5", 25).num_model_calls == 34


@pytest.mark.parametrize("version,name", ALL)
def test_timesteps_and_sigmas_match_diffusers_for_every_step_count_up_to_70(version, name):
    for num_steps in range(4 if name == "PNDM" else 1, 71):
        ours = make_scheduler(name, version, num_steps)
        ref, ref_timesteps = oracle(name, version, num_steps)
        if num_steps == 61 and version == "v5":  # see the next test
            ref_timesteps = ref_timesteps[:-1]
        assert ours.timesteps.dtype == ref_timesteps.dtype, num_steps
        assert torch.equal(ours.timesteps, ref_timesteps), num_steps
        if ours.sigmas is not None and num_steps != 61:
            assert torch.equal(ours.sigmas, ref.sigmas.cpu()), num_steps


def test_step_counts_where_numpy_arange_overshoots_keep_n_steps():
    # For N = 61 diffusers' trailing grid gains a 62nd timestep of -1; ours keeps the first 61, identical.
    ref, ref_timesteps = oracle("DDIM", "v5", 61)
    assert ref_timesteps[-1].item() == -1 and len(ref_timesteps) == 62
    ours = make_scheduler("DDIM", "v5", 61)
    assert torch.equal(ours.timesteps, ref_timesteps[:-1])
    euler = make_scheduler("Euler", "v5", 61)
    assert euler.num_model_calls == 61 and euler.timesteps.min().item() >= 0


def test_euler_ancestral_noise_is_reproducible_from_the_generator():
    sampler = make_scheduler("Euler A", "v5", 10)
    x = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0))
    v = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    first = sampler.step(v, 3, x, generator=torch.Generator().manual_seed(5))
    again = sampler.step(v, 3, x, generator=torch.Generator().manual_seed(5))
    other = sampler.step(v, 3, x, generator=torch.Generator().manual_seed(6))
    assert sampler.stochastic
    assert torch.equal(first, again)
    assert (first - other).abs().max().item() > 1e-3


def test_more_steps_than_training_steps_are_refused():
    with pytest.raises(ValueError, match="exceeds the 1000 training steps"):
        make_scheduler("DDIM", "v5", 1001)


@pytest.mark.parametrize("version,name", [("v5", "Flow"), ("v5.1", "DDIM"), ("v5.1", "Euler"), ("v6", "Flow")])
def test_sampler_of_the_wrong_family_is_refused(version, name):
    with pytest.raises(ValueError, match="choose one of|Unknown model version"):
        make_scheduler(name, version, 25)


def test_pndm_refuses_denoise_strength_below_one():
    with pytest.raises(ValueError, match="PNDM does not support denoise strength"):
        make_scheduler("PNDM", "v5", 25, strength=0.5)


def test_strength_that_leaves_no_step_is_refused():
    with pytest.raises(ValueError, match="leaves no step"):
        make_scheduler("Flow", "v5.1", 4, strength=0.2)


def test_multistep_solver_refuses_out_of_order_steps():
    sampler = make_scheduler("Flow UniPC", "v5.1", 10)
    x = torch.zeros(SHAPE)
    sampler.step(x, 0, x)
    with pytest.raises(ValueError, match="call step\\(\\) in order"):
        sampler.step(x, 2, x)


def test_start_from_video_needs_the_video_latents():
    sampler = make_scheduler("DDIM", "v5", 25, strength=0.5)
    with pytest.raises(ValueError, match="x0"):
        sampler.initial_latents(torch.zeros(SHAPE))


def test_unsupported_config_option_is_reported_by_name():
    config = dict(released_scheduler_config("v5"), timestep_spacing="leading")
    with pytest.raises(ValueError, match="timestep_spacing 'leading'"):
        make_scheduler("DDIM", "v5", 25, config=config)
