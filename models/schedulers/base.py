"""The common face of every sampler: the strength cut, the loop interface (timestep, scale, add_noise, step) and
the in-order check of the stateful multistep samplers."""

from __future__ import annotations

import torch


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
        # what the model is fed (before the docs/faithfulness.md, timestep embedding cast)
        self.timesteps = full[self._start :].to(device)
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
        """The timestep tensor fed to the transformer: cast to the latent dtype, as the reference does
        (docs/faithfulness.md, timestep embedding)."""
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
