"""Multistep exponential-integrator solvers (DPM-Solver++ 2M, UniPC), VP mode for V5 and flow mode for V5.1."""

from __future__ import annotations

import math

import torch

from .base import Sampler
from .schedule import (
    FLOW_MU,
    _check_flow_config,
    _check_prediction,
    _flow_shift_mu,
    _np_linspace,
    _reject_unsupported,
    _trailing_timesteps,
    _vp_sigma_table,
)

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
        alpha_t, sigma_t, sigma_s0, h_phi_1, b_h, rows, rhs, d1s = self._coefficients(k + 1, k, order, lambda j: k - j)
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
