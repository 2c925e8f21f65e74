"""Acceptance of "never take the user's machine down", in a real ComfyUI 0.3.75 server: oversized requests refused
before any sampler progress, one copy per model across settings changes and back to baseline after /free, damaged
files named by the loader node. Uses its own server so the ≥100 M-parameter model and the damaged copies stay in
this module's temporary folders."""

import shutil
import threading
import time

import psutil
import pytest
from big_checkpoint import BIG_WIDTH, parameter_count, write_big_model
from comfyui_server import ComfyServer, PromptRejected
from conftest import PACK_FOLDER_NAME, REPO_ROOT
from test_comfyui_video import graph, run_ok

TINY = "tiny-EasyAnimateV5.1-12b-zh"
BIG = "big-EasyAnimateV5.1-12b-zh"
# The settings-change measurement uses twice the depth (≈ 205 M parameters, 0.8 GB in fp32): its limit is a multiple
# of one copy, and at 0.4 GB the server's own ≈ 50 MB of allocator and thread noise alone moved the figure by 0.12.
BIGGER = "bigger-EasyAnimateV5.1-12b-zh"
DAMAGED = {
    "damaged-vae": ("vae/diffusion_pytorch_model.safetensors", 4000),
    "damaged-text-encoder": ("text_encoder/model-00002-of-00003.safetensors", 3000),
    "damaged-tokenizer": ("tokenizer/tokenizer.json", 500),
}


def _start_server(tmp_path_factory, tiny_root, big: str = BIG) -> ComfyServer:
    models = tmp_path_factory.mktemp("reliability_models")
    if big == BIGGER:
        write_big_model(models, BIGGER, width={**BIG_WIDTH, "num_layers": 8, "mmdit_layers": 8})
    else:
        write_big_model(models, BIG)
    for name, (relative, keep) in DAMAGED.items():
        shutil.copytree(tiny_root / TINY, models / name)
        target = models / name / relative
        data = target.read_bytes()
        target.unlink()  # copies may be hard links into the shared cache: replace, never write through
        target.write_bytes(data[:keep])
    (models / TINY).symlink_to(tiny_root / TINY, target_is_directory=True)
    server = ComfyServer.start(
        custom_nodes={PACK_FOLDER_NAME: REPO_ROOT},
        model_paths={"EasyAnimate": [models]},
        base_dir=tmp_path_factory.mktemp("comfyui_reliability"),
    )
    server.models = models
    return server


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_root):
    server = _start_server(tmp_path_factory, tiny_root)
    yield server
    server.stop()


@pytest.fixture
def fresh_server(tmp_path_factory, tiny_root):
    """A server of its own: RSS figures must not depend on which prompts other tests ran before (random order)."""
    server = _start_server(tmp_path_factory, tiny_root, BIGGER)
    yield server
    server.stop()


def _rss(server) -> int:
    return psutil.Process(server.process.pid).memory_info().rss


class PeakRss:
    """Samples the server's RSS every 20 ms while in use (peaks inside a run, not only between runs)."""

    def __init__(self, server):
        self.server, self.peak, self._stop = server, 0, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss(self.server))
            time.sleep(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _free_and_settle(server, baseline_limit: float | None = None, attempts: int = 50) -> int:
    """POST /free with unload_models, then wait (up to ~10 s) for the worker loop to act on it."""
    status, _ = server.post("/free", {"unload_models": True})
    assert status == 200
    rss = _rss(server)
    for _ in range(attempts):
        time.sleep(0.2)
        rss = _rss(server)
        if baseline_limit is not None and rss <= baseline_limit:
            break
    return rss


def _sampler_errors(rejected: PromptRejected) -> list[dict]:
    return rejected.node_errors["3"]["errors"]


def test_an_8192_square_request_is_rejected_once_per_oversized_input_with_the_limit(server):
    with pytest.raises(PromptRejected) as rejected:
        server.queue(graph(TINY, width=8192, height=8192, frames=49))
    errors = _sampler_errors(rejected.value)
    assert sorted(e["extra_info"]["input_name"] for e in errors) == ["height", "width"]
    assert all(e["type"] == "value_bigger_than_max" and "max of 2048" in e["message"] for e in errors)


def test_frames_100001_is_rejected_once_on_frames_with_its_bounds(server):
    with pytest.raises(PromptRejected) as rejected:
        server.queue(graph(TINY, frames=100001))
    errors = _sampler_errors(rejected.value)
    assert [e["extra_info"]["input_name"] for e in errors] == ["frames"]
    assert "frames 100001 is outside 1..253" in errors[0]["details"]


def test_a_request_too_slow_to_cancel_is_refused_before_any_sampler_progress_and_the_next_prompt_runs(server):
    result = server.run(graph(TINY, width=2048, height=2048, frames=49, prefix="too-slow"), timeout=300)
    assert result.status == "error" and result.error["node_type"] == "EasyAnimateVideoSampler"
    assert "refused 2048x2048x49 before starting" in result.error["exception_message"]
    assert "Nearest that runs in time" in result.error["exception_message"]
    sampler_progress = [d for kind, d in result.events if kind == "progress" and d.get("node") == "3"]
    assert sampler_progress == []
    assert len(run_ok(server, graph(TINY, seed=3, prefix="after-refusal")).files()) == 1


def test_a_width_off_the_16_grid_is_refused_by_the_sampler_before_anything_loads_naming_width(server):
    result = server.run(graph(TINY, width=100, prefix="off-grid"), timeout=300)
    assert result.status == "error" and result.error["node_type"] == "EasyAnimateVideoSampler"
    assert "width 100 must be a multiple of 16 (e.g. 96 or 112)" in result.error["exception_message"]
    assert [d for kind, d in result.events if kind == "progress" and d.get("node") == "3"] == []


@pytest.mark.parametrize("name", sorted(DAMAGED))
def test_a_damaged_component_file_is_named_by_the_loader_node(server, name):
    result = server.run(graph(name, prefix=name), timeout=300)
    assert result.status == "error" and result.error["node_type"] == "EasyAnimateModelLoader"
    relative = DAMAGED[name][0]
    assert str(server.models / name / relative) in result.error["exception_message"]
    assert "Re-download" in result.error["exception_message"]


@pytest.mark.isolated
def test_five_settings_changes_hold_one_copy_and_free_returns_to_the_baseline(fresh_server):
    server = fresh_server
    one_copy = parameter_count(server.models / BIGGER) * 4  # the largest setting: fp32
    run_ok(server, graph(TINY, seed=11, prefix="warm-up"))  # code paths imported; then the baseline
    baseline = _free_and_settle(server)
    settings = [
        ("bf16", "auto"),
        ("fp32", "auto"),
        ("fp16", "auto"),
        ("bf16", "sequential"),
        ("fp32", "model_cpu_offload"),
    ]
    with PeakRss(server) as sampled:
        for run, (precision, mode) in enumerate(settings):
            prompt = graph(BIGGER, seed=20 + run, steps=1, prefix=f"settings{run}")
            prompt["1"]["inputs"].update(precision=precision, memory_mode=mode)
            run_ok(server, prompt, timeout=300)
    growth = (sampled.peak - baseline) / one_copy
    assert growth <= 1.3, f"peak {sampled.peak / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB"
    after = _free_and_settle(server, baseline_limit=1.2 * baseline)
    print(
        f"RSS: baseline {baseline / 2**20:.0f} MiB, peak over five settings {sampled.peak / 2**20:.0f} MiB "
        f"({growth:.2f} x one fp32 copy of {one_copy / 2**20:.0f} MiB), after /free {after / 2**20:.0f} MiB "
        f"({after / baseline:.2f} x baseline)"
    )
    assert after <= 1.2 * baseline, f"after /free {after / 2**20:.0f} MiB, baseline {baseline / 2**20:.0f} MiB"
