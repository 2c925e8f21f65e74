"""Worker processes for parallel sampling from a host (models/parallel_workers.py), two CPU "devices" on gloo."""

import os
import signal

import pytest
import torch
from parallel_cases import text_embeds
from tiny_checkpoints import ensure_tiny_checkpoints

from models import pipeline
from models.components import open_model
from models.parallel_workers import ParallelModel, WorkerError, parse_devices

MODEL = "tiny-EasyAnimateV5.1-12b-zh"


def _generate(transformer, model, steps=3, teacache_threshold=0.0):
    request = pipeline.Request(width=80, height=48, frames=5, steps=steps, guidance_scale=6.0, seed=3, scheduler="Flow")
    return pipeline.generate(
        transformer,
        model.vae(),
        text_embeds(),
        request,
        variant=model.variant,
        dtype=torch.float32,
        teacache_threshold=teacache_threshold,
    )


@pytest.fixture(scope="module")
def model():
    return open_model(ensure_tiny_checkpoints() / MODEL, "fp32", memory_mode="gpu")


@pytest.fixture(scope="module")
def parallel(model):
    wrapped = ParallelModel(model, "cpu, cpu")
    yield wrapped
    for key in [k for k in model._loaded if k.startswith("parallel workers")]:
        model._loaded.pop(key).close()  # stop the workers now, not whenever the pool is collected


def test_two_workers_give_the_single_process_latents_and_are_reused(model, parallel):
    torch.set_num_threads(1)
    reference = _generate(model.transformer(), model)
    remote = parallel.transformer()
    first = _generate(remote, model)
    pids = [p.pid for p in remote.pool.processes]
    second = _generate(parallel.transformer(), model)
    assert ((first - reference).abs().max() / reference.abs().max()).item() <= 1e-5
    assert torch.equal(first, second)
    assert [p.pid for p in parallel.transformer().pool.processes] == pids  # the same workers, weights loaded once


def test_a_dead_worker_is_an_error_and_the_next_run_starts_new_workers(model, parallel):
    pool = parallel.transformer().pool
    os.kill(pool.processes[1].pid, signal.SIGKILL)
    with pytest.raises(WorkerError, match="worker 1"):
        _generate(parallel.transformer(), model, steps=1)
    assert not pool.alive and all(p.poll() is not None for p in pool.processes)  # nothing left running
    fresh = parallel.transformer().pool
    assert fresh is not pool and fresh.alive
    assert _generate(parallel.transformer(), model, steps=1).isfinite().all()


def test_interrupt_stops_every_worker_mid_call_and_the_pool_stays_usable(model, parallel):
    pool = parallel.transformer().pool
    calls = []

    def interrupt():  # Cancel pressed as the call starts: the workers must stop between blocks, not at the end
        calls.append(1)
        raise KeyboardInterrupt("user cancel")

    inputs = {
        "latents": torch.randn(1, 16, 13, 64, 64),
        "timestep": torch.tensor([500.0]),
        "text": torch.randn(1, 12, 64),
        "text_t5": None,
        "step_index": None,
    }
    with pytest.raises(KeyboardInterrupt):
        pool.call(inputs, interrupt)
    assert pool.interrupted_ranks == [0, 1]  # both answered from inside the forward, not after finishing it
    assert pool.alive
    assert _generate(parallel.transformer(), model, steps=1).isfinite().all()


@pytest.mark.parametrize(
    "text,needle",
    [
        ("cuda:0", "at least two"),
        ("cpu, gpu9", "not a device"),
        ("cuda:0, cpu", "CUDA"),
        ("cuda:7, cuda:8", "present CUDA device"),
    ],
)
def test_device_lists_are_checked_with_a_clear_message(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse_devices(text)


def test_a_lora_stacked_model_is_refused_by_the_parallel_path_instead_of_being_dropped(tmp_path):
    from models.parallel_workers import ParallelModel

    class Stacked:  # what EasyAnimate LoRA hands on: the shared components plus a non-empty LoRA stack
        loras = (("a lora", 1.0),)

    with pytest.raises(ValueError, match="LoRA and EasyAnimate Parallel Options cannot be combined"):
        ParallelModel(Stacked(), "cpu,cpu")
