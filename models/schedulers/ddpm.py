"""V5 DDPM family with v-prediction: DDIM, Euler and Euler Ancestral."""

from __future__ import annotations

import torch

from .base import Sampler
from .schedule import (
    _betas,
    _check_prediction,
    _reject_unsupported,
    _trailing_timesteps,
    _vp_sigma_table,
    randn,
)

# ---------------------------------------------------------------------------------------------------------------------
# V5: DDPM family. Betas scaled_linear 0.00085 → 0.012, 1000 steps, zero terminal SNR, trailing spacing,
# v-prediction: v = √ᾱ·ε - √(1-ᾱ)·x0 (docs/faithfulness.md, schedulers).


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
