"""Plain schedule arithmetic shared by every sampler family: noise draws, numpy-exact grids, beta / alpha-bar / sigma
tables, the flow shift, and the config checks. No state: functions of the config and the step count only."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

# Every EasyAnimate pipeline calls `scheduler.set_timesteps(N, mu=1)` for flow matching: an effective shift of
# e ≈ 2.718 at every resolution; the configured `shift: 3.0` is ignored — docs/faithfulness.md, schedulers.
FLOW_MU = 1.0


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
