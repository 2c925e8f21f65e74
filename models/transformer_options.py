"""What one transformer call needs besides its tensors: the runtime hooks (docs/architecture.md, transformer options).

The architecture (models/transformer.py) takes its inputs and weights; everything that belongs to the run rather than
to the network — which sampling step this is, the TeaCache state, the interrupt check, the parallel layout — travels
in one `TransformerOptions` (in the spirit of ComfyUI's `transformer_options`). A wrapper that changes how a call
runs (models/parallel.py, models/parallel_workers.py) hands on a modified copy (`replace`) and never mutates the
caller's object. No field changes what the network computes when it is left at its default.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # names for the annotations only: importing either module here would load torch.distributed
    from .parallel import ParallelGroups
    from .teacache import TeaCache


@dataclass(frozen=True)
class TransformerOptions:
    """Runtime hooks of one `EasyAnimateTransformer.forward` call; every field is optional.

    step_index: index of this transformer call in the run (0 .. sampler.num_model_calls - 1); TeaCache reads it.
    teacache: a models.teacache.TeaCache (duck-typed: should_compute / store / apply); it decides from block 0's
      modulated video tokens whether the blocks run or its cached residual is reused (docs/faithfulness.md, TeaCache).
    interrupt: called before every block; it raises to abort the call.
    parallel: a models.parallel.ParallelGroups; this rank then runs its shard of the video tokens and the output is
      gathered after proj_out (docs/parallel.md).
    """

    step_index: int | None = None
    teacache: TeaCache | None = None
    interrupt: Callable[[], None] | None = None
    parallel: ParallelGroups | None = None

    def replace(self, **changes) -> "TransformerOptions":
        """A copy with `changes` applied (the options are frozen: wrappers never change the caller's object)."""
        return dataclasses.replace(self, **changes)

    def check_interrupt(self) -> None:
        """Raise if the run was cancelled (a no-op without an interrupt hook)."""
        if self.interrupt is not None:
            self.interrupt()

    def sequence_shard(self, tokens: int):
        """This rank's share of `tokens` video tokens, or None when the call is not sequence-parallel."""
        return None if self.parallel is None else self.parallel.sequence_shard(tokens)


NO_OPTIONS = TransformerOptions()  # a plain call: no TeaCache, no interrupt, one device
