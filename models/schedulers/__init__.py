"""Samplers for EasyAnimate: flow matching (V5.1) and the DDPM family with v-prediction (V5).

Each sampler reproduces, step for step, the diffusers 0.42.1 scheduler the reference pipelines use, configured from
the released `scheduler/scheduler_config.json` exactly as the reference does (`<Class>.from_pretrained(model,
subfolder="scheduler")`: one DDIM-style config file drives every V5 class; keys a class does not know are ignored,
keys the file lacks take that class's own defaults). Pure torch; diffusers is only a test-time oracle.

Usage (the denoising loop lives in the pipeline):

    sampler = make_scheduler("Flow", "v5.1", num_steps=50, device=device, strength=1.0)
    latents = sampler.initial_latents(noise, x0=None)
    for i in range(sampler.num_model_calls):
        t = sampler.model_timestep(i, batch_size=2, dtype=latents.dtype)     # docs/faithfulness.md, timestep embedding
        v = model(sampler.scale_input(latents, i), t)
        latents = sampler.step(v, i, latents, generator=generator)

Floating-point detail matters for bit-exact parity, so schedules are built with the same IEEE-double arithmetic
numpy uses (`_np_arange`, `_np_linspace`) and every coefficient is a 0-dim float32 tensor, as in diffusers: a bf16
latent stays bf16 where the reference keeps it bf16 and is upcast to fp32 exactly where the reference upcasts it.

Files: schedule.py (plain schedule functions: grids, beta / sigma tables, flow shift, config checks), base.py (the
loop interface), flow.py (V5.1 Euler), ddpm.py (DDIM, Euler, Euler A), pndm.py, multistep.py (DPM++ and UniPC, VP
and flow mode). Each family file holds its step function; `make_scheduler` below is the only entry point.
"""

from __future__ import annotations

import torch

from ..defaults import DEFAULT_SCHEDULER, SCHEDULERS_BY_VERSION
from ..variants import released_scheduler_config
from .base import Sampler
from .ddpm import DDIMSampler, EulerAncestralSampler, EulerSampler
from .flow import FlowEulerSampler
from .multistep import DPMSolverSampler, FlowDPMSolverSampler, FlowUniPCSampler, UniPCSampler
from .pndm import PNDMSampler
from .schedule import FLOW_MU, randn

# Names follow the reference UI / ComfyUI dropdowns ("DPM++" = DPMSolverMultistep 2M); the list per version is the
# registry's SCHEDULERS_BY_VERSION (models/defaults.py).


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

__all__ = [
    "DEFAULT_SCHEDULER",
    "FLOW_MU",
    "SCHEDULERS_BY_VERSION",
    "DDIMSampler",
    "DPMSolverSampler",
    "EulerAncestralSampler",
    "EulerSampler",
    "FlowDPMSolverSampler",
    "FlowEulerSampler",
    "FlowUniPCSampler",
    "PNDMSampler",
    "Sampler",
    "UniPCSampler",
    "make_scheduler",
    "randn",
    "released_scheduler_config",
]
