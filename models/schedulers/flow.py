"""V5.1 flow matching, Euler step (FlowMatchEulerDiscreteScheduler)."""

from __future__ import annotations

import torch

from .base import Sampler
from .schedule import FLOW_MU, _check_flow_config, _flow_shift_mu, _np_linspace

# ---------------------------------------------------------------------------------------------------------------------
# V5.1: flow matching. Noisy latent x_σ = (1-σ)·x0 + σ·ε; the model predicts v ≈ ε - x0 (docs/faithfulness.md,
# schedulers).


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
        # fp32 step (docs/faithfulness.md, schedulers)
        return (sample.to(torch.float32) + dt * model_output).to(model_output.dtype)
