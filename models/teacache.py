"""TeaCache: reuse the transformer blocks' last output change on steps where the input barely moved.

Follows docs/faithfulness.md, TeaCache (arXiv:2411.19108). On every transformer call the indicator is the modulated
video tokens of block 0 (`transformer_blocks[0].norm1(x, c, temb)[0]`, joint CFG batch). Its relative L1 change
since the previous call, mapped through a per-model polynomial, is accumulated; while the sum stays below the
threshold the blocks are skipped and the cached residual (output of norm_out minus the patch-embedded tokens) is
added back instead. The first and last calls always run, and so do the first `skip_start` calls.

Model-agnostic: the transformer only hands over tensors. Per call:

    if teacache.should_compute(step_index, modulated_block0_input):
        out = run_blocks_and_output_norms(tokens)
        teacache.store(out - tokens)
    else:
        out = teacache.apply(tokens)

Differences from the reference, on purpose:
* coefficients are looked up by the detected variant (`coefficients_for`), not by a substring of the folder name;
* `num_steps` is the number of transformer calls that actually run (`sampler.num_model_calls`): with denoise
  strength < 1 the reference keeps the full N, so its forced final full step never happens; ours always does;
* step 0 starts a fresh run, so an interrupted or truncated run never leaks its cache into the next one.
"""

from __future__ import annotations

import torch

# TEACACHE_COEFFICIENTS: (version, size) → polynomial, highest power first (numpy.poly1d order):
# f(x) = c0·x⁴ + c1·x³ + c2·x² + c3·x + c4; fitted upstream on the V5.1 InP models only.
from .variants import DEFAULT_TEACACHE_THRESHOLD, SIZES, TEACACHE_COEFFICIENTS, VERSIONS  # noqa: F401 (re-exported)


def coefficients_for(version: str, size: str) -> tuple[float, ...] | None:
    """The rescale polynomial for a detected variant, or None where upstream ships none (every V5 model)."""
    if version not in VERSIONS or size not in SIZES:
        raise ValueError(f"Unknown variant ({version!r}, {size!r}); expected a version in {VERSIONS}, size in {SIZES}.")
    return TEACACHE_COEFFICIENTS.get((version, size))


def rescale(coefficients: tuple[float, ...] | list[float], x: float) -> float:
    """Evaluate the polynomial (highest power first) by Horner's rule, in double precision like numpy.poly1d."""
    value = 0.0
    for coefficient in coefficients:
        value = value * x + coefficient
    return value


def relative_l1(previous: torch.Tensor, current: torch.Tensor) -> float:
    """mean|current - previous| / mean|previous| over the whole tensor, in the indicator's own dtype (as upstream)."""
    return ((current - previous).abs().mean() / previous.abs().mean()).item()


class TeaCache:
    """Per-run caching state. `num_steps` = transformer calls this run makes (use `sampler.num_model_calls`)."""

    def __init__(
        self,
        coefficients: tuple[float, ...] | list[float],
        threshold: float,
        num_steps: int,
        skip_start: int = 0,
        offload_device: torch.device | str | None = None,
    ):
        if not coefficients:
            raise ValueError(
                "TeaCache needs the model's rescale coefficients; this variant has none (see coefficients_for)."
            )
        if num_steps < 1:
            raise ValueError(f"TeaCache num_steps must be at least 1, got {num_steps}.")
        if threshold < 0:
            raise ValueError(f"TeaCache threshold must be >= 0, got {threshold}.")
        if not 0 <= skip_start <= num_steps:
            raise ValueError(f"TeaCache skip_start must be between 0 and num_steps={num_steps}, got {skip_start}.")
        self.coefficients = tuple(coefficients)
        self.threshold = threshold
        self.num_steps = num_steps
        self.skip_start = skip_start
        # where the indicator and residual are kept between calls (upstream: CPU); None = where they were computed
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        # how the indicator's change is measured; parallel runs reduce it over every rank (docs/parallel.md)
        self.relative_l1 = relative_l1
        self.reset()

    def reset(self) -> None:
        self.accumulated = 0.0
        self._previous_input: torch.Tensor | None = None
        self._residual: torch.Tensor | None = None
        self._next_call = 0
        self.computed_steps: list[int] = []
        self.skipped_steps: list[int] = []

    def should_compute(self, step_index: int | None, modulated_input: torch.Tensor) -> bool:
        """Decide whether this call runs the blocks. `step_index` None counts calls (wrapping after num_steps)."""
        if step_index is None:
            step_index = self._next_call
        if not 0 <= step_index < self.num_steps:
            raise IndexError(f"TeaCache step {step_index} out of range for num_steps={self.num_steps}.")
        if step_index == 0:
            self.reset()
        previous = self._previous_input
        forced = (
            step_index == 0
            or step_index == self.num_steps - 1
            or step_index < self.skip_start
            or previous is None
            or previous.shape != modulated_input.shape  # e.g. the CFG batch changed size
            or self._residual is None
        )
        if forced:
            compute = True
            self.accumulated = 0.0
        else:
            distance = self.relative_l1(previous.to(modulated_input.device), modulated_input)
            self.accumulated += rescale(self.coefficients, distance)
            compute = not self.accumulated < self.threshold
            if compute:
                self.accumulated = 0.0
        self._previous_input = self._keep(modulated_input)
        self._next_call = (step_index + 1) % self.num_steps
        (self.computed_steps if compute else self.skipped_steps).append(step_index)
        return compute

    def store(self, residual: torch.Tensor) -> None:
        """After a computed call: output tokens (after norm_out) minus the patch-embedded input tokens
        (docs/faithfulness.md, TeaCache)."""
        self._residual = self._keep(residual)

    def apply(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """On a skipped call: the patch-embedded tokens plus the cached residual, ready for proj_out."""
        if self._residual is None:
            raise RuntimeError("TeaCache.apply() called before any computed step stored its residual with store().")
        return hidden_states + self._residual.to(device=hidden_states.device, dtype=hidden_states.dtype)

    def _keep(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach()
        if self.offload_device is not None and tensor.device != self.offload_device:
            return tensor.to(self.offload_device)
        return tensor.clone()  # the caller may reuse its buffer
