"""A sampling run planned before any transformer weight is read (docs/architecture.md, run plan).

`plan_run` validates the whole request against the model (prompt embeddings of the same version, a sampler of the
model's family, inputs the model kind takes) and prices it (models/preflight.py), so a wrong combination is refused in
milliseconds instead of after a minutes-long load. Once the transformer is loaded, `RunPlan.residency` says what
ComfyUI's model management should hold and what to release first; the node only carries the decisions out (the
ComfyUI side is nodes/bridge.py). Out-of-memory messages are written here too. Pure Python/torch: no ComfyUI import.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import torch

from .defaults import AUTO_SCHEDULER, SCHEDULERS_BY_VERSION, VAE_SPATIAL_SCALE, VAE_TEMPORAL_SCALE


def check_embeddings(variant, embeddings_version: str) -> None:
    if embeddings_version != variant.version:
        raise ValueError(
            f"these prompt embeddings come from an EasyAnimate {embeddings_version} text encoder, but the model is "
            f"{variant.version}; encode the prompt with the same model's text encoder."
        )


def resolve_scheduler(variant, name: str) -> str:
    """The sampler a run uses: `auto` is the variant's default; one of the other family is refused."""
    if name == AUTO_SCHEDULER:
        return variant.default_scheduler
    choices = SCHEDULERS_BY_VERSION[variant.version]
    if name not in choices:
        raise ValueError(
            f"scheduler {name!r} does not work with {variant.name} ({variant.version.upper()}); choose "
            f"one of {', '.join(choices)} (or auto = {variant.default_scheduler})."
        )
    return name


@dataclass
class Residency:
    """What ComfyUI should hold for the transformer of one run (nodes/bridge.py `hold_on_device` applies it)."""

    module: torch.nn.Module | None  # the transformer when it sits on the device; None = a weightless stand-in
    size: int  # bytes ComfyUI accounts for it
    full: bool  # a full load (resident mode) rather than a partial one
    make_room: int  # bytes to free on the device beside it (offload modes: the planned peak); 0 = none
    release: tuple[str, ...]  # components to release first (their memory goes to the transformer)


@dataclass
class RunPlan:
    """One validated, priced sampling request on one model (a ModelComponents or a wrapper of one)."""

    model: object
    request: object  # models.pipeline.Request, scheduler resolved
    device: torch.device
    price: object  # models.preflight.Price, before loading

    @property
    def variant(self):
        return self.model.variant

    @property
    def cfg(self) -> bool:
        return self.request.guidance_scale > 1.0

    @property
    def size(self) -> tuple[int, int, int]:
        return self.request.width, self.request.height, self.request.frames

    def load_transformer(self, interrupt: Callable[[], None] | None = None):
        """The transformer, loaded for this run's size and the free memory priced before loading."""
        return self.model.transformer(
            device=self.device, interrupt=interrupt, size=self.size, free_vram=self.price.vram_available or None
        )

    def residency(self, transformer) -> Residency:
        """Resident (gpu) mode: ComfyUI holds the transformer itself, fully loaded. Offload modes: the text encoder
        goes (prompts are encoded), a stand-in keeps "unload models" in reach, and room is made for the plan's peak."""
        plan = self.model.plan
        if self.model.offloading:
            return Residency(None, 0, False, max(plan.peak_vram, 0), ("text_encoder",))
        from .quant import allocated_bytes

        return Residency(transformer, allocated_bytes(transformer), True, 0, ())

    def recheck(self, free_vram: int | None):
        """Priced again with the transformer loaded (what ComfyUI freed or kept since): refused before any step."""
        from .preflight import check_request

        width, height, frames = self.size
        return check_request(self.model, self.device, width, height, frames, self.cfg, free_vram)

    def oom_message(self) -> str:
        from .memory import oom_advice

        plan = self.model.plan
        mode = self.model.memory_mode if plan is None else plan.mode
        return oom_advice(mode, "?" if plan is None else plan.storage, *self.size)


def plan_run(
    model, request, embeddings_version: str, device, free_vram: Callable[[torch.device, int], int | None]
) -> RunPlan:
    """Validate `request` (a models.pipeline.Request) for `model` and price it, reading headers only; ValueError /
    preflight.RequestRefused name what to change. `free_vram(device, wanted)` asks the host how much device memory is
    free once `wanted` bytes were asked for (None on the CPU)."""
    from . import pipeline, preflight

    problems = preflight.input_problems(request.width, request.height, request.frames)
    if problems:
        raise ValueError("; ".join(problems.values()))
    variant = model.variant
    check_embeddings(variant, embeddings_version)
    request = replace(request, scheduler=resolve_scheduler(variant, request.scheduler))
    pipeline.check_request(variant, request)  # inputs the model kind does not take
    device = torch.device(device)
    cfg, size = request.guidance_scale > 1.0, (request.width, request.height, request.frames)
    price = preflight.check_request(model, device, *size, cfg, free_vram(device, preflight.gpu_peak(model, *size, cfg)))
    return RunPlan(model, request, device, price)


# -- VAE ------------------------------------------------------------------------------------------------------------


def vae_tile_budget(model, free_vram: int | None) -> int | None:
    """Bytes the VAE may use for its tiles: half the free device memory, never more than the memory plan left for
    it; None (no tiling) on the CPU."""
    if free_vram is None:
        return None
    budget = free_vram // 2
    plan = getattr(model, "plan", None)
    if plan is not None and plan.vae_budget:
        budget = min(budget, plan.vae_budget)  # the same plan as the sampler (models/memory.py)
    return budget


def vae_placement(model, vae, device):
    """Context manager for one VAE call: in the offload modes the VAE rests in RAM and is copied to the device only
    while it runs; otherwise it already sits where it runs."""
    import contextlib

    if not getattr(model, "offloading", False) or torch.device(device).type == "cpu":
        return contextlib.nullcontext(vae)
    from .offload import on_device

    return on_device(vae, device)


def vae_oom_message(model, method: str, shape: tuple[int, ...]) -> str:
    """The out-of-memory advice for a VAE `method` ("decode" / "encode") on a [B, C, T, H, W] input."""
    from .memory import oom_advice

    frames, height, width = shape[2:]
    if method == "decode":  # latent -> pixel sizes
        frames, height, width = (
            (frames - 1) * VAE_TEMPORAL_SCALE + 1,
            height * VAE_SPATIAL_SCALE,
            width * VAE_SPATIAL_SCALE,
        )
    return oom_advice(getattr(model, "memory_mode", "auto"), "?", width, height, frames, stage=method)
