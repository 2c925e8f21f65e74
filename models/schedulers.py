"""Samplers for EasyAnimate: flow matching (V5.1) and the DDPM family with v-prediction (V5).

Each sampler reproduces, step for step, the diffusers 0.42.1 scheduler the reference pipelines use, configured from
the released `scheduler/scheduler_config.json` exactly as the reference does (`<Class>.from_pretrained(model,
subfolder="scheduler")`: one DDIM-style config file drives every V5 class; keys a class does not know are ignored,
keys the file lacks take that class's own defaults). Pure torch; diffusers is only a test-time oracle.

Usage (the denoising loop lives in the pipeline):

    sampler = make_scheduler("Flow", "v5.1", num_steps=50, device=device, strength=1.0)
    latents = sampler.initial_latents(noise, x0=None)
    for i in range(sampler.num_model_calls):
        t = sampler.model_timestep(i, batch_size=2, dtype=latents.dtype)     # transformer.md §5.4
        v = model(sampler.scale_input(latents, i), t)
        latents = sampler.step(v, i, latents, generator=generator)

Floating-point detail matters for bit-exact parity, so schedules are built with the same IEEE-double arithmetic
numpy uses (`_np_arange`, `_np_linspace`) and every coefficient is a 0-dim float32 tensor, as in diffusers: a bf16
latent stays bf16 where the reference keeps it bf16 and is upcast to fp32 exactly where the reference upcasts it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .variants import DEFAULT_SCHEDULER, released_scheduler_config  # noqa: F401  (re-exported for callers)

# Every EasyAnimate pipeline calls `scheduler.set_timesteps(N, mu=1)` for flow matching: an effective shift of
# e ≈ 2.718 at every resolution; the configured `shift: 3.0` is ignored — reference/transformer.md §5.1.
FLOW_MU = 1.0

# Names follow the reference UI / ComfyUI dropdowns ("DPM++" = DPMSolverMultistep 2M). Flow is the only V5.1 sampler
# upstream; "Flow UniPC" / "Flow DPM++" are the diffusers multistep solvers in flow mode (use_flow_sigmas,
# flow_prediction) on the same config and μ. DDPM-family samplers must not be used for V5.1 and Flow not for V5.
SCHEDULERS_BY_VERSION: dict[str, tuple[str, ...]] = {
    "v5": ("DDIM", "Euler", "Euler A", "DPM++", "PNDM"),
    "v5.1": ("Flow", "Flow UniPC", "Flow DPM++"),
}


def make_scheduler(
    name: str,
    version: str,
    num_steps: int,
    device: torch.device | str | None = None,
    strength: float = 1.0,
    config: dict | None = None,
) -> Sampler:
    """Build the sampler `name` for a model of `version` ("v5" / "v5.1").

    `strength` < 1 is video-to-video denoise strength: like the reference `get_timesteps`, only the last
    int(num_steps * strength) steps of the num_steps schedule run, starting from `initial_latents(noise, x0)`.
    `config` is the checkpoint's scheduler_config.json as a dict; None means `variants.released_scheduler_config`.
    """
    if version not in SCHEDULERS_BY_VERSION:
        raise ValueError(f"Unknown model version {version!r}; expected one of {sorted(SCHEDULERS_BY_VERSION)}.")
    choices = SCHEDULERS_BY_VERSION[version]
    if name not in choices:
        raise ValueError(
            f"Scheduler {name!r} is not valid for EasyAnimate {version.upper()} models; choose one of {list(choices)}."
        )
    if not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}.")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"Denoise strength must be in (0, 1], got {strength}.")
    cfg = dict(released_scheduler_config(version) if config is None else config)
    if num_steps > cfg.get("num_train_timesteps", 1000):
        raise ValueError(f"num_steps {num_steps} exceeds the {cfg.get('num_train_timesteps', 1000)} training steps.")
    return _SAMPLER_CLASSES[name](name, version, num_steps, cfg, device, strength)


def randn(
    shape: Sequence[int],
    generator: torch.Generator | None,
    device: torch.device | str | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Gaussian noise drawn the way diffusers' `randn_tensor` draws it (a CPU generator draws on CPU, then moves)."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    draw_device = device
    if generator is not None and generator.device.type != device.type:
        if generator.device.type != "cpu":
            raise ValueError(f"Cannot draw a {device} tensor from a {generator.device} generator.")
        draw_device = torch.device("cpu")
    return torch.randn(tuple(shape), generator=generator, device=draw_device, dtype=dtype).to(device)


# ---------------------------------------------------------------------------------------------------------------------
# Schedule arithmetic, written to match numpy's float64 results bit for bit.


def _np_arange(start: float, stop: float, step: float) -> list[float]:
    """numpy.arange for floats: length ceil((stop-start)/step), then start + i*(x1 - start) with x1 = start + step."""
    length = math.ceil((stop - start) / step)
    if length <= 0:
        return []
    second = start + step
    delta = second - start
    return [start, second][:length] + [start + i * delta for i in range(2, length)]


def _np_linspace(start: float, stop: float, num: int) -> list[float]:
    """numpy.linspace(start, stop, num): i*step + start, the last value exactly `stop`."""
    if num == 1:
        return [float(start)]
    step = (stop - start) / (num - 1)
    values = [i * step + start for i in range(num)]
    values[-1] = float(stop)
    return values


def _trailing_timesteps(num_train_timesteps: int, num_steps: int) -> list[int]:
    """Descending 'trailing' timesteps: round(arange(T, 0, -T/N)) - 1 (Table 2 of arXiv:2305.08891).

    For some N (61, 103, 121, 122, ...) numpy's arange yields an extra value ~1e-13 that becomes timestep -1 in
    diffusers (N+1 steps, the last one at t = -1, which indexes ᾱ_999); we drop it so N steps are N steps.
    """
    values = [round(v) - 1 for v in _np_arange(float(num_train_timesteps), 0.0, -(num_train_timesteps / num_steps))]
    return [t for t in values if t >= 0]


def _betas(cfg: dict, rescale_zero_snr: bool) -> torch.Tensor:
    n = cfg.get("num_train_timesteps", 1000)
    start, end = cfg.get("beta_start", 0.0001), cfg.get("beta_end", 0.02)
    schedule = cfg.get("beta_schedule", "linear")
    if cfg.get("trained_betas") is not None:
        betas = torch.tensor(cfg["trained_betas"], dtype=torch.float32)
    elif schedule == "linear":
        betas = torch.linspace(start, end, n, dtype=torch.float32)
    elif schedule == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float32) ** 2
    else:
        raise ValueError(f"beta_schedule {schedule!r} is not supported; EasyAnimate V5 uses 'scaled_linear'.")
    if rescale_zero_snr:
        betas = _rescale_zero_terminal_snr(betas)
    return betas


def _rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Shift and scale √ᾱ so that ᾱ_T = 0 while ᾱ_0 is kept (Algorithm 1 of arXiv:2305.08891), in float32."""
    sqrt_alpha_bar = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alpha_bar[0].clone(), sqrt_alpha_bar[-1].clone()
    sqrt_alpha_bar = (sqrt_alpha_bar - last) * (first / (first - last))
    alpha_bar = sqrt_alpha_bar**2
    alphas = torch.cat([alpha_bar[0:1], alpha_bar[1:] / alpha_bar[:-1]])
    return 1 - alphas


def _vp_sigma_table(cfg: dict) -> torch.Tensor:
    """σ_t = √((1-ᾱ_t)/ᾱ_t) per train step. With zero SNR, ᾱ_999 := 2⁻²⁴ so σ_max ≈ 4096 (diffusers' choice)."""
    zero_snr = cfg.get("rescale_betas_zero_snr", False)
    alphas_cumprod = torch.cumprod(1.0 - _betas(cfg, zero_snr), dim=0)
    if zero_snr:
        alphas_cumprod[-1] = 2**-24
    return ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5


def _reject_unsupported(cfg: dict, defaults: dict, sampler: str) -> None:
    for key, default in defaults.items():
        if cfg.get(key, default) != default:
            raise ValueError(
                f"scheduler_config.json sets {key}={cfg[key]!r}, which the {sampler} sampler does not implement "
                f"(expected {default!r}, as in the released EasyAnimate configs)."
            )


def _check_prediction(cfg: dict, allowed: tuple[str, ...], default: str, sampler: str) -> str:
    prediction = cfg.get("prediction_type", default)
    if prediction not in allowed:
        raise ValueError(f"prediction_type {prediction!r} is not supported by {sampler}; expected one of {allowed}.")
    return prediction


# ---------------------------------------------------------------------------------------------------------------------


class Sampler:
    """Common face of every sampler. Step indices `i` count the steps actually run (0 .. num_model_calls-1).

    Attributes: `timesteps` (one per model call, on `device`; float32 for Flow/Euler/Euler A, int64 otherwise, as
    diffusers yields them), `sigmas` (σ-space samplers: the full schedule incl. its terminal value, CPU float32),
    `init_noise_sigma`, `num_model_calls` (N, fewer with strength < 1, N + 9 for PNDM).
    """

    stochastic = False  # True when `step` draws noise (pass a torch.Generator for reproducibility)
    stateful = False  # True when `step` keeps a history: calls must come in order 0, 1, 2, ...

    def __init__(self, name, version, num_steps, cfg, device, strength):
        self.name, self.version, self.num_steps, self.strength = name, version, num_steps, strength
        self.config = cfg
        self.num_train_timesteps = cfg.get("num_train_timesteps", 1000)
        self.init_noise_sigma = 1.0
        self.sigmas: torch.Tensor | None = None  # full schedule incl. the terminal value, CPU float32
        full = self._build_schedule()  # full N-step timesteps as a 1-D tensor
        self._full_timesteps = full
        self._start = self._first_step()
        self.timesteps = full[self._start :].to(device)  # what the model is fed (before the §5.4 cast)
        self._next_step = 0

    # -- set up ----------------------------------------------------------------------------------------------------
    def _build_schedule(self) -> torch.Tensor:
        raise NotImplementedError

    def _first_step(self) -> int:
        # Reference `get_timesteps`: keep the last int(N * strength) steps (scheduler.order is 1 for all of ours).
        kept = min(int(self.num_steps * self.strength), self.num_steps)
        if kept < 1:
            raise ValueError(
                f"Denoise strength {self.strength} with {self.num_steps} steps leaves no step to run "
                f"(int({self.num_steps} * {self.strength}) = 0); raise the strength or the number of steps."
            )
        return max(self.num_steps - kept, 0)

    # -- loop interface --------------------------------------------------------------------------------------------
    @property
    def num_model_calls(self) -> int:
        return len(self.timesteps)

    def model_timestep(self, i: int, batch_size: int, dtype: torch.dtype) -> torch.Tensor:
        """The timestep tensor fed to the transformer: cast to the latent dtype, as the reference does (§5.4)."""
        return self.timesteps[i].expand(batch_size).to(dtype)

    def scale_input(self, x: torch.Tensor, i: int) -> torch.Tensor:
        return x

    def initial_latents(self, noise: torch.Tensor, x0: torch.Tensor | None = None) -> torch.Tensor:
        """Pure noise (times init_noise_sigma) at full strength; x0 noised to the first kept step otherwise."""
        if self.strength == 1.0:
            return noise * self.init_noise_sigma if self.init_noise_sigma != 1.0 else noise
        if x0 is None:
            raise ValueError("Denoise strength < 1 needs the encoded input video latents (x0) to start from.")
        return self.add_noise(x0, noise, 0)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, i: int = 0) -> torch.Tensor:
        """x0 noised to the level of step `i` of this run (the reference's add_noise / scale_noise)."""
        raise NotImplementedError

    def step(
        self,
        model_output: torch.Tensor,
        i: int,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        if not 0 <= i < self.num_model_calls:
            raise IndexError(f"step index {i} out of range for {self.num_model_calls} steps.")
        if self.stateful:
            if i == 0:
                self.reset()
            elif i != self._next_step:
                raise ValueError(
                    f"{self.name} keeps a history of previous steps: call step() in order (expected index "
                    f"{self._next_step}, got {i})."
                )
        self._next_step = i + 1
        return self._step(model_output, self._start + i, sample, generator)

    def reset(self) -> None:
        """Forget multistep history (done automatically when step 0 runs)."""
        self._next_step = 0

    def _step(self, model_output, k, sample, generator):
        raise NotImplementedError


# ---------------------------------------------------------------------------------------------------------------------
# V5.1: flow matching. Noisy latent x_σ = (1-σ)·x0 + σ·ε; the model predicts v ≈ ε - x0 (transformer.md §5.1).


def _flow_shift_mu(sigma: float, mu: float) -> float:
    # exponential time shift with exponent 1: e^μ / (e^μ + (1/σ - 1)); σ = 1 stays 1
    return math.exp(mu) / (math.exp(mu) + (1 / sigma - 1))


def _check_flow_config(cfg: dict, sampler: str) -> None:
    if not cfg.get("use_dynamic_shifting", False):
        raise ValueError(
            f"{sampler} expects the released V5.1 scheduler_config.json (use_dynamic_shifting: true, with the "
            f"pipelines' fixed mu=1); this config has use_dynamic_shifting={cfg.get('use_dynamic_shifting')!r}."
        )
    _reject_unsupported(
        cfg,
        {
            "time_shift_type": "exponential",
            "shift_terminal": None,
            "use_karras_sigmas": False,
            "use_exponential_sigmas": False,
            "use_beta_sigmas": False,
            "invert_sigmas": False,
            "stochastic_sampling": False,
        },
        sampler,
    )


class FlowEulerSampler(Sampler):
    """FlowMatchEulerDiscreteScheduler with set_timesteps(N, mu=1): σ from 1 to 1/1000, shifted, then 0."""

    def _build_schedule(self):
        _check_flow_config(self.config, self.name)
        n_train = self.num_train_timesteps
        sigma_min = float(torch.tensor(1.0, dtype=torch.float32) / n_train)  # the float32 1/1000 of the train grid
        grid = _np_linspace(1.0 * n_train, sigma_min * n_train, self.num_steps)
        shifted = [_flow_shift_mu(t / n_train, FLOW_MU) for t in grid]
        sigmas = torch.tensor(shifted, dtype=torch.float64).to(torch.float32)
        self.sigmas = torch.cat([sigmas, torch.zeros(1)])
        return sigmas * n_train  # float timesteps, e.g. 1000.0, 992.40, ... for N = 50

    def add_noise(self, x0, noise, i=0):
        sigma = self.sigmas.to(device=x0.device, dtype=x0.dtype)[self._start + i]
        return sigma * noise + (1.0 - sigma) * x0

    def _step(self, model_output, k, sample, generator):
        dt = self.sigmas[k + 1] - self.sigmas[k]
        return (sample.to(torch.float32) + dt * model_output).to(model_output.dtype)  # fp32 step (§8.13)


# ---------------------------------------------------------------------------------------------------------------------
# V5: DDPM family. Betas scaled_linear 0.00085 → 0.012, 1000 steps, zero terminal SNR, trailing spacing,
# v-prediction: v = √ᾱ·ε - √(1-ᾱ)·x0 (transformer.md §5.2).


class _DDPMSampler(Sampler):
    rescale_zero_snr_key = True  # PNDM's diffusers class has no `rescale_betas_zero_snr` and ignores it

    def _ddpm_tables(self):
        cfg = self.config
        if cfg.get("timestep_spacing", "leading") != "trailing":
            raise ValueError(
                f"timestep_spacing {cfg.get('timestep_spacing', 'leading')!r} is not supported; the released V5 "
                f"scheduler_config.json uses 'trailing'."
            )
        zero_snr = self.rescale_zero_snr_key and cfg.get("rescale_betas_zero_snr", False)
        self.alphas_cumprod = torch.cumprod(1.0 - _betas(cfg, zero_snr), dim=0)

    def _x0_and_eps(self, model_output, sample, alpha_prod_t):
        beta_prod_t = 1 - alpha_prod_t
        if self.prediction == "v_prediction":
            x0 = (alpha_prod_t**0.5) * sample - (beta_prod_t**0.5) * model_output
            eps = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        else:  # epsilon
            x0 = (sample - beta_prod_t ** (0.5) * model_output) / alpha_prod_t ** (0.5)
            eps = model_output
        return x0, eps

    def _ddpm_add_noise(self, x0, noise, t: int):
        alphas_cumprod = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)
        return alphas_cumprod[t] ** 0.5 * x0 + (1 - alphas_cumprod[t]) ** 0.5 * noise


class DDIMSampler(_DDPMSampler):
    """DDIMScheduler, eta = 0 (the reference never passes eta)."""

    def _build_schedule(self):
        self._ddpm_tables()
        self.prediction = _check_prediction(self.config, ("epsilon", "v_prediction"), "epsilon", self.name)
        _reject_unsupported(self.config, {"thresholding": False}, self.name)
        self.clip_sample = self.config.get("clip_sample", True)
        self.clip_sample_range = self.config.get("clip_sample_range", 1.0)
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]
        )
        return torch.tensor(_trailing_timesteps(self.num_train_timesteps, self.num_steps), dtype=torch.int64)

    def add_noise(self, x0, noise, i=0):
        return self._ddpm_add_noise(x0, noise, int(self._full_timesteps[self._start + i]))

    def _step(self, model_output, k, sample, generator):
        t = int(self._full_timesteps[k])
        prev_t = t - self.num_train_timesteps // self.num_steps
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        x0, eps = self._x0_and_eps(model_output, sample, alpha_prod_t)
        if self.clip_sample:
            x0 = x0.clamp(-self.clip_sample_range, self.clip_sample_range)
        # DDIM eq. (12) with σ_t = 0: x_prev = √ᾱ_prev·x0 + √(1-ᾱ_prev)·ε
        return alpha_prod_prev ** (0.5) * x0 + (1 - alpha_prod_prev) ** (0.5) * eps


class EulerSampler(_DDPMSampler):
    """EulerDiscreteScheduler (s_churn = 0), in σ-space: x = x0 + σ·ε, model input x / √(σ²+1)."""

    def _build_schedule(self):
        self._ddpm_tables()
        self.prediction = _check_prediction(self.config, ("epsilon", "v_prediction"), "epsilon", self.name)
        _reject_unsupported(
            self.config,
            {
                "interpolation_type": "linear",
                "use_karras_sigmas": False,
                "use_exponential_sigmas": False,
                "use_beta_sigmas": False,
                "timestep_type": "discrete",
                "final_sigmas_type": "zero",
            },
            self.name,
        )
        timesteps = _trailing_timesteps(self.num_train_timesteps, self.num_steps)
        # integer timesteps, so diffusers' linear interpolation of the σ table is a plain lookup
        self.sigmas = torch.cat([_vp_sigma_table(self.config)[timesteps], torch.zeros(1)])
        # trailing spacing: init_noise_sigma = σ_max (≈ 4096 with zero SNR), not √(σ_max²+1)
        self.init_noise_sigma = self.sigmas.max().item()
        return torch.tensor(timesteps, dtype=torch.float32)

    def scale_input(self, x, i):
        sigma = self.sigmas[self._start + i]
        return x / ((sigma**2 + 1) ** 0.5)

    def add_noise(self, x0, noise, i=0):
        sigma = self.sigmas.to(device=x0.device, dtype=x0.dtype)[self._start + i]
        return x0 + noise * sigma

    def _x0(self, model_output, sample, sigma):
        if self.prediction == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + (sample / (sigma**2 + 1))
        return sample - sigma * model_output

    def _step(self, model_output, k, sample, generator):
        sample = sample.to(torch.float32)
        sigma = self.sigmas[k]
        x0 = self._x0(model_output, sample, sigma)
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (self.sigmas[k + 1] - sigma)
        return prev.to(model_output.dtype)


class EulerAncestralSampler(EulerSampler):
    """EulerAncestralDiscreteScheduler: Euler to σ_down, then fresh noise of std σ_up."""

    stochastic = True

    def _build_schedule(self):
        # Euler A has no interpolation / karras / final-sigma options; it shares Euler's trailing σ table.
        self.config = {k: v for k, v in self.config.items() if k in _EULER_A_KEYS}
        return super()._build_schedule()

    def _step(self, model_output, k, sample, generator):
        sigma = self.sigmas[k]
        sample = sample.to(torch.float32)
        x0 = self._x0(model_output, sample, sigma)
        sigma_from, sigma_to = self.sigmas[k], self.sigmas[k + 1]
        sigma_up = (sigma_to**2 * (sigma_from**2 - sigma_to**2) / sigma_from**2) ** 0.5
        sigma_down = (sigma_to**2 - sigma_up**2) ** 0.5
        derivative = (sample - x0) / sigma
        prev = sample + derivative * (sigma_down - sigma)
        noise = randn(model_output.shape, generator, model_output.device, model_output.dtype)
        prev = prev + noise * sigma_up
        return prev.to(model_output.dtype)


_EULER_A_KEYS = {
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "prediction_type",
    "timestep_spacing",
    "steps_offset",
    "rescale_betas_zero_snr",
}


class PNDMSampler(_DDPMSampler):
    """PNDMScheduler (F-PNDM): 3 Runge-Kutta intervals of 4 model calls each, then 4th-order linear multistep.

    N steps make N + 9 model calls. Its diffusers class has no `rescale_betas_zero_snr`, so V5's zero-SNR flag is
    ignored and ᾱ_999 ≈ 0.0047 (reference behaviour). Denoise strength < 1 is refused: the reference slices the
    N + 9 list while the solver's internal counter still starts at the first Runge-Kutta stage, which mixes up
    timesteps.
    """

    stateful = True
    rescale_zero_snr_key = False

    def _build_schedule(self):
        self._ddpm_tables()
        self.prediction = _check_prediction(self.config, ("epsilon", "v_prediction"), "epsilon", self.name)
        _reject_unsupported(self.config, {"skip_prk_steps": False}, self.name)
        if self.strength != 1.0:
            raise ValueError(
                "PNDM does not support denoise strength < 1 (its Runge-Kutta warm-up cannot start mid-schedule); "
                "choose DDIM, Euler, Euler A or DPM++ for video-to-video."
            )
        if self.num_steps < 4:
            raise ValueError(f"PNDM needs at least 4 steps, got {self.num_steps}.")
        self.final_alpha_cumprod = (
            torch.tensor(1.0) if self.config.get("set_alpha_to_one", False) else self.alphas_cumprod[0]
        )
        ascending = _trailing_timesteps(self.num_train_timesteps, self.num_steps)[::-1]
        half = self.num_train_timesteps // self.num_steps // 2
        # Runge-Kutta warm-up on the 3 noisiest intervals: t, t - half, t - half, t - 2·half per interval
        anchors = [t + offset for t in ascending[-4:] for offset in (0, half)][:-1]
        doubled = [t for t in anchors for _ in range(2)][1:-1]
        self.prk_timesteps = doubled[::-1]
        plms_timesteps = ascending[:-3][::-1]
        self.reset()
        return torch.tensor(self.prk_timesteps + plms_timesteps, dtype=torch.int64)

    def reset(self):
        super().reset()
        self.counter = 0
        self.ets: list[torch.Tensor] = []  # model outputs (ε-like) of completed intervals
        self.cur_model_output = 0
        self.cur_sample = None

    def _step(self, model_output, k, sample, generator):
        t = int(self._full_timesteps[k])
        if self.counter < len(self.prk_timesteps):
            return self._step_runge_kutta(model_output, t, sample)
        return self._step_linear_multistep(model_output, t, sample)

    def _step_runge_kutta(self, model_output, t, sample):
        interval = self.num_train_timesteps // self.num_steps
        prev_t = t - (0 if self.counter % 2 else interval // 2)
        t = self.prk_timesteps[self.counter // 4 * 4]
        stage = self.counter % 4
        if stage == 0:
            self.cur_model_output += 1 / 6 * model_output
            self.ets.append(model_output)
            self.cur_sample = sample
        elif stage in (1, 2):
            self.cur_model_output += 1 / 3 * model_output
        else:
            model_output = self.cur_model_output + 1 / 6 * model_output
            self.cur_model_output = 0
        start = self.cur_sample if self.cur_sample is not None else sample
        prev = self._transfer(start, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _step_linear_multistep(self, model_output, t, sample):
        interval = self.num_train_timesteps // self.num_steps
        prev_t = t - interval
        if self.counter != 1:
            self.ets = self.ets[-3:]
            self.ets.append(model_output)
        else:
            prev_t, t = t, t + interval
        ets = self.ets
        if len(ets) == 1 and self.counter == 0:
            self.cur_sample = sample
        elif len(ets) == 1 and self.counter == 1:
            model_output = (model_output + ets[-1]) / 2
            sample, self.cur_sample = self.cur_sample, None
        elif len(ets) == 2:
            model_output = (3 * ets[-1] - ets[-2]) / 2
        elif len(ets) == 3:
            model_output = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            model_output = (1 / 24) * (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4])
        prev = self._transfer(sample, t, prev_t, model_output)
        self.counter += 1
        return prev

    def _transfer(self, sample, t, prev_t, model_output):
        """PNDM eq. (9): move x_t to x_prev_t along the (ε-converted) model output."""
        alpha_prod_t = self.alphas_cumprod[t]
        alpha_prod_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t, beta_prod_prev = 1 - alpha_prod_t, 1 - alpha_prod_prev
        if self.prediction == "v_prediction":
            model_output = (alpha_prod_t**0.5) * model_output + (beta_prod_t**0.5) * sample
        sample_coeff = (alpha_prod_prev / alpha_prod_t) ** (0.5)
        denominator = alpha_prod_t * beta_prod_prev ** (0.5) + (alpha_prod_t * beta_prod_t * alpha_prod_prev) ** (0.5)
        return sample_coeff * sample - (alpha_prod_prev - alpha_prod_t) * model_output / denominator

    def add_noise(self, x0, noise, i=0):
        return self._ddpm_add_noise(x0, noise, int(self._full_timesteps[i]))


# ---------------------------------------------------------------------------------------------------------------------
# Multistep exponential-integrator solvers (DPM-Solver++ 2M, UniPC) in data-prediction form. They work in
# (α_t, σ_t, λ_t = log α_t - log σ_t): VP mode for V5 (α = 1/√(σ²+1)), flow mode for V5.1 (α = 1-σ).


class _MultistepSampler(Sampler):
    stateful = True
    flow = False

    def _alpha_sigma(self, sigma):
        if self.flow:
            return 1 - sigma, sigma
        alpha_t = 1 / ((sigma**2 + 1) ** 0.5)
        return alpha_t, sigma * alpha_t

    def _lambda(self, sigma):
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        return torch.log(alpha_t) - torch.log(sigma_t)

    def _setup(self, flow_sigmas_fn) -> torch.Tensor:
        cfg = self.config
        self.solver_order = cfg.get("solver_order", 2)
        self.lower_order_final = cfg.get("lower_order_final", True)
        _reject_unsupported(
            cfg,
            {
                "thresholding": False,
                "use_karras_sigmas": False,
                "use_exponential_sigmas": False,
                "use_beta_sigmas": False,
                "final_sigmas_type": "zero",
            },
            self.name,
        )
        if self.flow:
            _check_flow_config(cfg, self.name)
            self.prediction = "flow_prediction"
            sigmas, timesteps = flow_sigmas_fn()
            self.sigmas = torch.cat([torch.tensor(sigmas, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
            self.sigmas = self.sigmas.to(torch.float32)
            return torch.tensor([int(t) for t in timesteps], dtype=torch.int64)  # float → int64 truncates
        if cfg.get("timestep_spacing", "linspace") != "trailing":
            raise ValueError("Only timestep_spacing 'trailing' (the released V5 config) is supported.")
        self.prediction = _check_prediction(cfg, ("epsilon", "v_prediction"), "epsilon", self.name)
        timesteps = _trailing_timesteps(self.num_train_timesteps, self.num_steps)
        self.sigmas = torch.cat([_vp_sigma_table(cfg)[timesteps], torch.zeros(1)])
        return torch.tensor(timesteps, dtype=torch.int64)

    def reset(self):
        super().reset()
        self.model_outputs: list[torch.Tensor] = []  # data predictions x0 of the last `solver_order` steps
        self.lower_order_nums = 0

    def _data_prediction(self, model_output, sample, k):
        sigma = self.sigmas[k]
        if self.prediction == "flow_prediction":
            return sample - sigma * model_output
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        if self.prediction == "v_prediction":
            return alpha_t * sample - sigma_t * model_output
        return (sample - sigma_t * model_output) / alpha_t

    def _remember(self, x0):
        self.model_outputs = (self.model_outputs + [x0])[-self.solver_order :]

    def add_noise(self, x0, noise, i=0):
        sigma = self.sigmas.to(device=x0.device, dtype=x0.dtype)[self._start + i]
        alpha_t, sigma_t = self._alpha_sigma(sigma)
        return alpha_t * x0 + sigma_t * noise


class DPMSolverSampler(_MultistepSampler):
    """DPMSolverMultistepScheduler, algorithm dpmsolver++ (2M by default), midpoint or heun second-order step."""

    def _build_schedule(self):
        cfg = self.config
        if cfg.get("algorithm_type", "dpmsolver++") != "dpmsolver++":
            raise ValueError(f"algorithm_type {cfg['algorithm_type']!r} is not supported; use 'dpmsolver++'.")
        self.solver_type = cfg.get("solver_type", "midpoint")
        if self.solver_type not in ("midpoint", "heun"):
            raise ValueError(f"solver_type {self.solver_type!r} is not supported; use 'midpoint' or 'heun'.")
        timesteps = self._setup(self._flow_sigmas)
        if self.solver_order not in (1, 2):
            raise ValueError(f"DPM++ supports solver_order 1 or 2, got {self.solver_order}.")
        self.reset()
        return timesteps

    def _flow_sigmas(self):
        # flow grid of the diffusers class: σ = 1 - linspace(1, 1/T, N+1), shifted by e^μ, reversed, last dropped
        n_train = self.num_train_timesteps
        shift = math.exp(FLOW_MU)
        raw = [1.0 - a for a in _np_linspace(1.0, 1 / n_train, self.num_steps + 1)]
        sigmas = [shift * s / (1 + (shift - 1) * s) for s in raw][::-1][:-1]
        return sigmas, [s * n_train for s in sigmas]

    def _step(self, model_output, k, sample, generator):
        # the final σ is 0 (final_sigmas_type "zero"), so the last step is always first order; with order ≤ 2 the
        # diffusers "lower order at the second-to-last step" rule never changes anything
        last = k == len(self._full_timesteps) - 1
        x0 = self._data_prediction(model_output, sample, k)
        self._remember(x0)
        sample = sample.to(torch.float32)
        if self.solver_order == 1 or self.lower_order_nums < 1 or last:
            prev = self._first_order(k, sample)
        else:
            prev = self._second_order(k, sample)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        return prev.to(x0.dtype)

    def _first_order(self, k, sample):
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[k + 1])
        alpha_s, sigma_s = self._alpha_sigma(self.sigmas[k])
        h = (torch.log(alpha_t) - torch.log(sigma_t)) - (torch.log(alpha_s) - torch.log(sigma_s))
        return (sigma_t / sigma_s) * sample - (alpha_t * (torch.exp(-h) - 1.0)) * self.model_outputs[-1]

    def _second_order(self, k, sample):
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[k + 1])
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[k])
        alpha_s1, sigma_s1 = self._alpha_sigma(self.sigmas[k - 1])
        lambda_t = torch.log(alpha_t) - torch.log(sigma_t)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        lambda_s1 = torch.log(alpha_s1) - torch.log(sigma_s1)
        m0, m1 = self.model_outputs[-1], self.model_outputs[-2]
        h, h_0 = lambda_t - lambda_s0, lambda_s0 - lambda_s1
        r0 = h_0 / h
        d0, d1 = m0, (1.0 / r0) * (m0 - m1)
        if self.solver_type == "midpoint":
            return (
                (sigma_t / sigma_s0) * sample
                - (alpha_t * (torch.exp(-h) - 1.0)) * d0
                - 0.5 * (alpha_t * (torch.exp(-h) - 1.0)) * d1
            )
        return (
            (sigma_t / sigma_s0) * sample
            - (alpha_t * (torch.exp(-h) - 1.0)) * d0
            + (alpha_t * ((torch.exp(-h) - 1.0) / h + 1.0)) * d1
        )


class UniPCSampler(_MultistepSampler):
    """UniPCMultistepScheduler (predict_x0, bh2 by default): UniP predictor + UniC corrector (arXiv:2302.04867)."""

    def _build_schedule(self):
        cfg = self.config
        self.solver_type = cfg.get("solver_type", "bh2")
        if self.solver_type not in ("bh1", "bh2"):
            raise ValueError(f"solver_type {self.solver_type!r} is not supported; use 'bh1' or 'bh2'.")
        if not cfg.get("predict_x0", True) or cfg.get("solver_p") is not None:
            raise ValueError("UniPC is implemented for predict_x0=True without solver_p only.")
        self.disable_corrector = set(cfg.get("disable_corrector", []))
        timesteps = self._setup(self._flow_sigmas)
        self.reset()
        return timesteps

    def _flow_sigmas(self):
        # flow grid of the diffusers class: linspace(1, 1/T, N+1) without its end, shifted by e^μ, σ_0 nudged below 1
        n_train = self.num_train_timesteps
        sigmas = [_flow_shift_mu(s, FLOW_MU) for s in _np_linspace(1.0, 1 / n_train, self.num_steps + 1)[:-1]]
        if abs(sigmas[0] - 1) < 1e-6:
            sigmas[0] -= 1e-6
        return sigmas, [s * n_train for s in sigmas]

    def reset(self):
        super().reset()
        self.last_sample = None
        self.this_order = 0

    def _step(self, model_output, k, sample, generator):
        use_corrector = self.last_sample is not None and (k - 1) not in self.disable_corrector
        x0 = self._data_prediction(model_output, sample, k)
        if use_corrector:
            sample = self._correct(x0, k, self.last_sample, sample, self.this_order)
        self._remember(x0)
        order = self.solver_order
        if self.lower_order_final:
            order = min(order, len(self._full_timesteps) - k)
        self.this_order = min(order, self.lower_order_nums + 1)  # warm-up: order grows with the history
        self.last_sample = sample
        prev = self._predict(k, sample, self.this_order)
        self.lower_order_nums = min(self.lower_order_nums + 1, self.solver_order)
        return prev

    def _coefficients(self, k_target, k_base, order, history_index):
        """h, the B(h)-scaled φ terms and the rk ratios of the earlier points: what UniP / UniC share."""
        alpha_t, sigma_t = self._alpha_sigma(self.sigmas[k_target])
        alpha_s0, sigma_s0 = self._alpha_sigma(self.sigmas[k_base])
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = (torch.log(alpha_t) - torch.log(sigma_t)) - lambda_s0
        m0 = self.model_outputs[-1]
        rks, d1s = [], []
        for j in range(1, order):
            rk = (self._lambda(self.sigmas[history_index(j)]) - lambda_s0) / h
            rks.append(rk)
            d1s.append((self.model_outputs[-(j + 1)] - m0) / rk)
        rks = torch.stack(rks + [torch.ones(())])
        hh = -h  # data prediction integrates in -λ
        h_phi_1 = torch.expm1(hh)  # h·φ₁(h) = e^h - 1
        h_phi_k = h_phi_1 / hh - 1
        b_h = hh if self.solver_type == "bh1" else torch.expm1(hh)
        rows, rhs, factorial = [], [], 1
        for j in range(1, order + 1):
            rows.append(torch.pow(rks, j - 1))
            rhs.append(h_phi_k * factorial / b_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1 / factorial
        return alpha_t, sigma_t, sigma_s0, h_phi_1, b_h, torch.stack(rows), torch.stack(rhs), d1s

    def _predict(self, k, sample, order):
        alpha_t, sigma_t, sigma_s0, h_phi_1, b_h, rows, rhs, d1s = self._coefficients(
            k + 1, k, order, lambda j: k - j
        )
        m0 = self.model_outputs[-1]
        x_t = sigma_t / sigma_s0 * sample - alpha_t * h_phi_1 * m0
        if d1s:
            if order == 2:
                rhos = torch.ones(1, dtype=sample.dtype) * 0.5
            else:
                rhos = torch.linalg.solve(rows[:-1, :-1], rhs[:-1]).to(sample.dtype)
            x_t = x_t - alpha_t * b_h * _weighted_sum(rhos, d1s)
        return x_t.to(sample.dtype)

    def _correct(self, this_x0, k, last_sample, this_sample, order):
        alpha_t, sigma_t, sigma_s0, h_phi_1, b_h, rows, rhs, d1s = self._coefficients(
            k, k - 1, order, lambda j: k - (j + 1)
        )
        m0 = self.model_outputs[-1]
        if order == 1:
            rhos = torch.ones(1, dtype=last_sample.dtype) * 0.5
        else:
            rhos = torch.linalg.solve(rows, rhs).to(last_sample.dtype)
        x_t = sigma_t / sigma_s0 * last_sample - alpha_t * h_phi_1 * m0
        correction = rhos[-1] * (this_x0 - m0)
        if d1s:
            correction = _weighted_sum(rhos[:-1], d1s) + correction
        x_t = x_t - alpha_t * b_h * correction
        return x_t.to(last_sample.dtype)


def _weighted_sum(weights: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
    total = weights[0] * terms[0]
    for weight, term in zip(weights[1:], terms[1:]):
        total = total + weight * term
    return total


class FlowUniPCSampler(UniPCSampler):
    flow = True


class FlowDPMSolverSampler(DPMSolverSampler):
    flow = True


_SAMPLER_CLASSES: dict[str, type[Sampler]] = {
    "DDIM": DDIMSampler,
    "Euler": EulerSampler,
    "Euler A": EulerAncestralSampler,
    "DPM++": DPMSolverSampler,
    "PNDM": PNDMSampler,
    "Flow": FlowEulerSampler,
    "Flow UniPC": FlowUniPCSampler,
    "Flow DPM++": FlowDPMSolverSampler,
}
