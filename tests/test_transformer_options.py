"""Specification of models/transformer_options.py: the run's hooks (step index, TeaCache, interrupt, parallel layout)
reach the transformer through one options object, never as separate forward parameters (docs/architecture.md,
transformer options)."""

from __future__ import annotations

import inspect

import pytest
import torch
from tiny_checkpoints import tiny_transformer_params

from models.transformer import EasyAnimateTransformer
from models.transformer_options import NO_OPTIONS, TransformerOptions

LAYERS = 4
RUNTIME_NAMES = {"teacache", "step_index", "interrupt", "parallel"}


def tiny_model() -> EasyAnimateTransformer:
    torch.manual_seed(0)
    params = tiny_transformer_params(num_layers=LAYERS, mmdit_layers=LAYERS)
    return EasyAnimateTransformer(params).eval()


def tiny_inputs(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(2, 16, 2, 4, 6, generator=g),
        timestep=torch.tensor([999.0, 500.0]),
        text=torch.randn(2, 5, 64, generator=g),
    )


def blocks_run(model: EasyAnimateTransformer) -> list[int]:
    """Indices of the blocks that run, in order, recorded by forward hooks (removed by the caller's model going)."""
    ran: list[int] = []
    for index, block in enumerate(model.transformer_blocks):
        block.register_forward_hook(lambda *_, index=index: ran.append(index))
    return ran


@pytest.mark.parametrize(
    "callable_name", ["EasyAnimateTransformer.forward", "ParallelTransformer.__call__", "RemoteTransformer.forward"]
)
def test_runtime_hooks_are_not_forward_parameters_but_one_options_object(callable_name):
    from models.parallel import ParallelTransformer
    from models.parallel_workers import RemoteTransformer

    owners = {
        "EasyAnimateTransformer": EasyAnimateTransformer,
        "ParallelTransformer": ParallelTransformer,
        "RemoteTransformer": RemoteTransformer,
    }
    owner, method = callable_name.split(".")
    parameters = inspect.signature(getattr(owners[owner], method)).parameters
    assert not RUNTIME_NAMES & set(parameters)
    assert "options" in parameters and parameters["options"].default is None


def test_options_are_frozen_and_replace_returns_a_copy():
    hook = lambda: None  # noqa: E731
    options = TransformerOptions(step_index=3, interrupt=hook)
    changed = options.replace(step_index=4)
    assert (options.step_index, changed.step_index, changed.interrupt) == (3, 4, hook)
    with pytest.raises(AttributeError):
        options.step_index = 5  # type: ignore[misc]
    assert NO_OPTIONS == TransformerOptions() and NO_OPTIONS.sequence_shard(10) is None


def test_interrupt_from_the_options_is_checked_before_every_block_and_aborts_between_blocks():
    model = tiny_model()
    ran = blocks_run(model)
    checks = []

    def interrupt():
        checks.append(len(ran))  # how many blocks had run when it was asked
        if len(checks) == 3:
            raise InterruptedError("cancel")

    with pytest.raises(InterruptedError), torch.no_grad():
        model(**tiny_inputs(), options=TransformerOptions(interrupt=interrupt))
    assert checks == [0, 1, 2] and ran == [0, 1]  # stopped before block 2, after blocks 0 and 1 finished


def test_options_without_hooks_equal_a_plain_call_bit_for_bit():
    model = tiny_model()
    x = tiny_inputs()
    with torch.no_grad():
        plain = model(**x)
        ran = blocks_run(model)
        calls = []
        hooked = model(**x, options=TransformerOptions(step_index=0, interrupt=lambda: calls.append(1)))
    assert torch.equal(hooked, plain) and ran == list(range(LAYERS)) and len(calls) == LAYERS


class ScriptedTeaCache:
    """Duck-typed TeaCache whose skip decision is given; records what the transformer hands it."""

    def __init__(self, compute: bool, residual: torch.Tensor | None = None):
        self.compute, self.residual = compute, residual
        self.asked, self.stored, self.applied = [], [], []

    def should_compute(self, step_index, modulated_input):
        self.asked.append((step_index, tuple(modulated_input.shape)))
        return self.compute

    def store(self, residual):
        self.stored.append(residual)

    def apply(self, tokens):
        self.applied.append(tokens)
        return tokens + self.residual


def test_teacache_skip_is_decided_through_the_options_at_their_step_index():
    model = tiny_model()
    x = tiny_inputs()
    tokens = 2 * 2 * 3  # frames x (4/2) x (6/2) patches
    with torch.no_grad():
        plain = model(**x)
        computing = ScriptedTeaCache(compute=True)
        computed = model(**x, options=TransformerOptions(step_index=5, teacache=computing))
        residual = computing.stored[0]
        skipping = ScriptedTeaCache(compute=False, residual=residual)
        ran = blocks_run(model)
        skipped = model(**x, options=TransformerOptions(step_index=6, teacache=skipping))
        patch_tokens = skipping.applied[0]
        by_hand = model.proj_out(patch_tokens + residual)  # [B, N, p*p*C] → [B, C, F, H, W] as forward does
        by_hand = by_hand.reshape(2, 2, 2, 3, 16, 2, 2).permute(0, 4, 1, 2, 5, 3, 6).reshape(2, 16, 2, 4, 6)
    assert computing.asked == [(5, (2, tokens, 32))] and skipping.asked == [(6, (2, tokens, 32))]
    assert torch.equal(computed, plain) and residual.shape == (2, tokens, 32)
    assert ran == [] and skipping.stored == []  # the skipped call ran no block and stored nothing
    assert torch.equal(skipped, by_hand)
    assert torch.allclose(skipped, computed, rtol=1e-5, atol=1e-6)  # tokens + stored residual rebuild the output


class IdentityShard:
    """A one-rank 'sequence shard' that records what the transformer routes through it."""

    def __init__(self):
        self.split_calls, self.attention_calls, self.gathered = 0, 0, 0

    def split(self, tensor, dim=1):
        self.split_calls += 1
        return tensor

    def attention(self, text_tokens, heads, inner):
        def sharded(q, k, v):
            self.attention_calls += 1
            return inner(q, k, v)

        return sharded

    def gather(self, tensor):
        self.gathered += 1
        return tensor


def test_parallel_layout_is_taken_from_the_options():
    model = tiny_model()
    shard = IdentityShard()
    layout = type("Layout", (), {"sequence_shard": lambda self, tokens: shard})()
    x = tiny_inputs()
    with torch.no_grad():
        out = model(**x, options=TransformerOptions(parallel=layout))
        plain = model(**x)
    assert torch.equal(out, plain)
    assert (shard.split_calls, shard.attention_calls, shard.gathered) == (1 + 2, LAYERS, 1)  # tokens + cos/sin


def test_parallel_wrapper_hands_on_a_copy_with_its_layout_and_leaves_the_callers_options_alone():
    from models.parallel import ParallelGroups, ParallelTransformer

    seen = []
    wrapped = ParallelTransformer(
        lambda *args, options=None, **kwargs: seen.append(options) or args[0], ParallelGroups(0, 1, 1, 1)
    )
    hook = lambda: None  # noqa: E731
    options = TransformerOptions(step_index=2, interrupt=hook)
    wrapped(torch.zeros(2, 16, 1, 2, 2), 1.0, torch.zeros(2, 3, 8), options=options)
    assert seen[0].parallel is wrapped.groups and seen[0].step_index == 2 and seen[0].interrupt is hook
    assert options.parallel is None


def test_denoise_hands_every_call_its_step_index_teacache_and_interrupt():
    from models.pipeline import Conditioning, denoise

    class Sampler:
        num_model_calls = 3

        def scale_input(self, latents, i):
            return latents

        def model_timestep(self, i, batch, dtype):
            return torch.full((batch,), float(i), dtype=dtype)

        def step(self, prediction, i, latents, generator=None):
            return latents - 0.1 * prediction

    seen = []

    def transformer(latents, timestep, text, text_t5=None, *, options=None, **conditions):
        seen.append(options)
        return torch.ones_like(latents)

    teacache, interrupt = object(), lambda: None
    denoise(
        transformer,
        Sampler(),
        (torch.zeros(1, 3, 8),),
        torch.zeros(1, 16, 1, 2, 2),
        Conditioning(),
        1.0,
        teacache=teacache,
        interrupt=interrupt,
    )
    assert [o.step_index for o in seen] == [0, 1, 2]
    assert all(o.teacache is teacache and o.interrupt is interrupt and o.parallel is None for o in seen)
