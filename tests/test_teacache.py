"""TeaCache decisions (docs/faithfulness.md, TeaCache) on synthetic indicator sequences with hand-worked outcomes.

Indicators are x_k = [1 + a_k, 1 - a_k]: mean|x_k| = 1 and mean|x_k - x_{k-1}| = |a_k - a_{k-1}|, so with dyadic
a_k the relative L1 distance of each call is exactly |a_k - a_{k-1}|.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.schedulers import make_scheduler
from models.teacache import (
    TEACACHE_COEFFICIENTS,
    TeaCache,
    coefficients_for,
    relative_l1,
    rescale,
)

IDENTITY = (0.0, 0.0, 0.0, 1.0, 0.0)  # f(x) = x: the accumulator sums raw distances
V51_12B = (-10.47857366, 8.33844143, -0.78477557, 0.68798618, 0.0136149)
V51_7B = (1.07862322, -4.19362456, 3.06725828, 0.33161686, 0.02374758)


def indicator(a: float) -> torch.Tensor:
    return torch.tensor([1.0 + a, 1.0 - a])


def run(cache: TeaCache, offsets: list[float]) -> tuple[list[int], list[int]]:
    for step, a in enumerate(offsets):
        if cache.should_compute(step, indicator(a)):
            cache.store(torch.full((2,), float(step)))
    return cache.computed_steps, cache.skipped_steps


def test_relative_l1_of_the_synthetic_indicators_is_the_offset_change():
    assert relative_l1(indicator(1 / 8), indicator(5 / 16)) == 3 / 16


def test_rescale_matches_numpy_poly1d_highest_power_first():
    for x in (0.0, 0.03125, 0.1, 0.37):
        assert abs(rescale(V51_12B, x) - float(np.poly1d(V51_12B)(x))) <= 1e-15
    # hand-worked: f(1/32) = -10.47857366/32⁴ + 8.33844143/32³ - 0.78477557/32² + 0.68798618/32 + 0.0136149
    assert abs(rescale(V51_12B, 1 / 32) - 0.0345925616) <= 1e-9


def test_distances_accumulate_until_they_reach_the_threshold():
    # rel = 1/32 per call, threshold 0.1: 1/32, 2/32, 3/32 stay below (skip), 4/32 = 0.125 computes and resets;
    # a jump of 1/2 computes at once; no change (rel 0) skips; the last call is forced.
    offsets = [0, 1 / 32, 2 / 32, 3 / 32, 4 / 32, 20 / 32, 20 / 32, 20 / 32]
    computed, skipped = run(TeaCache(IDENTITY, 0.1, num_steps=8), offsets)
    assert computed == [0, 4, 5, 7]
    assert skipped == [1, 2, 3, 6]


def test_constant_change_computes_every_other_step_when_two_distances_exceed_the_threshold():
    offsets = [k / 16 for k in range(8)]  # rel 0.0625 per call, threshold 0.1
    computed, skipped = run(TeaCache(IDENTITY, 0.1, num_steps=8), offsets)
    assert computed == [0, 2, 4, 6, 7]
    assert skipped == [1, 3, 5]


def test_reaching_the_threshold_exactly_computes():
    # upstream skips only while the sum is strictly below the threshold: 1/16 + 1/16 = 0.125 computes
    computed, skipped = run(TeaCache(IDENTITY, 0.125, num_steps=5), [0, 1 / 16, 2 / 16, 3 / 16, 4 / 16])
    assert computed == [0, 2, 4]
    assert skipped == [1, 3]


def test_released_12b_polynomial_with_threshold_008_computes_every_third_call():
    # f(1/32) = 0.03459: 0.0346, 0.0692 < 0.08 skip; 0.1038 computes — with 10 calls the last one is forced
    offsets = [k / 32 for k in range(10)]
    computed, skipped = run(TeaCache(V51_12B, 0.08, num_steps=10), offsets)
    assert computed == [0, 3, 6, 9]
    assert skipped == [1, 2, 4, 5, 7, 8]


def test_unchanged_input_still_computes_when_the_polynomial_constant_adds_up():
    # f(0) = 0.0136149: six skipped-step increments reach 0.0817 >= 0.08 on the 6th call after a computed one
    computed, _ = run(TeaCache(V51_12B, 0.08, num_steps=14), [0.0] * 14)
    assert computed == [0, 6, 12, 13]


def test_first_and_last_calls_always_compute():
    computed, skipped = run(TeaCache(IDENTITY, 1e9, num_steps=6), [0.0] * 6)
    assert computed == [0, 5]
    assert skipped == [1, 2, 3, 4]


def test_skip_start_computes_the_first_calls_and_restarts_the_accumulator():
    computed, _ = run(TeaCache(IDENTITY, 1e9, num_steps=8, skip_start=3), [0.0] * 8)
    assert computed == [0, 1, 2, 7]
    # the distance of call 2 (1/2) is not accumulated: calls 3 and 4 add 1/16 each → 0.125 >= 0.1 at call 4
    offsets = [0, 0, 1 / 2, 9 / 16, 10 / 16, 10 / 16]
    computed, _ = run(TeaCache(IDENTITY, 0.1, num_steps=6, skip_start=3), offsets)
    assert computed == [0, 1, 2, 4, 5]


def test_denoise_strength_below_one_forces_the_actual_last_call():
    sampler = make_scheduler("Flow", "v5.1", 50, strength=0.5)
    assert sampler.num_model_calls == 25
    computed, _ = run(TeaCache(IDENTITY, 1e9, num_steps=sampler.num_model_calls), [0.0] * 25)
    assert computed == [0, 24]
    # the reference keeps num_steps = 50 here, so its last executed call (24) is skipped
    computed, _ = run(TeaCache(IDENTITY, 1e9, num_steps=50), [0.0] * 25)
    assert computed == [0]


def test_skipped_call_adds_the_stored_residual_to_the_tokens():
    cache = TeaCache(IDENTITY, 1e9, num_steps=4)
    tokens = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert cache.should_compute(0, indicator(0))
    residual = torch.tensor([[0.5, -0.25], [0.125, 1.0]])
    cache.store(residual)
    residual.zero_()  # the cache keeps its own copy
    assert not cache.should_compute(1, indicator(0))
    assert torch.equal(cache.apply(tokens), torch.tensor([[1.5, 1.75], [3.125, 5.0]]))


def test_residual_and_indicator_are_kept_on_the_offload_device():
    cache = TeaCache(IDENTITY, 1e9, num_steps=4, offload_device="cpu")
    cache.should_compute(0, indicator(0))
    cache.store(torch.ones(2, dtype=torch.bfloat16))
    assert cache._residual.device.type == "cpu" and cache._residual.dtype == torch.bfloat16
    assert cache.apply(torch.zeros(2)).dtype == torch.float32


def test_apply_without_a_stored_residual_is_an_error():
    cache = TeaCache(IDENTITY, 1e9, num_steps=4)
    with pytest.raises(RuntimeError, match="store"):
        cache.apply(torch.zeros(2))


def test_a_missing_residual_or_a_changed_batch_forces_a_computed_call():
    cache = TeaCache(IDENTITY, 1e9, num_steps=6)
    assert cache.should_compute(0, indicator(0))  # caller forgot store()
    assert cache.should_compute(1, indicator(0))
    cache.store(torch.zeros(2))
    assert not cache.should_compute(2, indicator(0))
    assert cache.should_compute(3, torch.ones(4))  # indicator shape changed (e.g. CFG batch halved)


def test_step_zero_starts_a_fresh_run():
    cache = TeaCache(IDENTITY, 0.1, num_steps=8)
    run(cache, [0, 1 / 32, 2 / 32])  # an interrupted run
    computed, skipped = run(cache, [0.5, 0.5 + 1 / 32, 0.5 + 2 / 32, 0.5 + 3 / 32])
    assert computed == [0]  # the bookkeeping and the sum (3/32) are those of the new run only
    assert skipped == [1, 2, 3]
    assert cache.accumulated == 3 / 32


def test_counting_calls_without_step_indices_gives_the_same_decisions_and_wraps():
    offsets = [0, 1 / 32, 2 / 32, 3 / 32, 4 / 32, 20 / 32, 20 / 32, 20 / 32]
    cache = TeaCache(IDENTITY, 0.1, num_steps=8)
    decisions = []
    for a in offsets:
        decisions.append(cache.should_compute(None, indicator(a)))
        if decisions[-1]:
            cache.store(torch.zeros(2))
    assert decisions == [True, False, False, False, True, True, False, True]
    assert cache.should_compute(None, indicator(0)) and cache.computed_steps == [0]  # the 9th call is a new run


def test_coefficients_are_keyed_by_the_detected_variant():
    assert coefficients_for("v5.1", "7b") == V51_7B
    assert coefficients_for("v5.1", "12b") == V51_12B
    assert coefficients_for("v5", "7b") is None and coefficients_for("v5", "12b") is None
    assert set(TEACACHE_COEFFICIENTS) == {("v5.1", "7b"), ("v5.1", "12b")}
    with pytest.raises(ValueError, match="Unknown variant"):
        coefficients_for("EasyAnimateV5.1-12b-zh", "12b")


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(coefficients=(), threshold=0.1, num_steps=4), "coefficients"),
        (dict(coefficients=IDENTITY, threshold=-0.1, num_steps=4), "threshold"),
        (dict(coefficients=IDENTITY, threshold=0.1, num_steps=0), "num_steps"),
        (dict(coefficients=IDENTITY, threshold=0.1, num_steps=4, skip_start=5), "skip_start"),
    ],
)
def test_invalid_settings_are_refused_with_the_setting_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TeaCache(**kwargs)
