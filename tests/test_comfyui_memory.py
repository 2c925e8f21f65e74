"""Memory behaviour in a real ComfyUI 0.3.75 server: repeated runs do not grow the server's RSS; the loader's
memory widgets are exposed in the agreed order; offload modes run end to end."""

import psutil
import pytest
from test_comfyui_video import graph, run_ok

MODEL = "tiny-EasyAnimateV5.1-12b-zh"


def _rss(server) -> int:
    return psutil.Process(server.process.pid).memory_info().rss  # reads /proc/<pid>/statm


def test_loader_exposes_memory_mode_resident_blocks_and_fp8_mode_last(comfy_server):
    optional = comfy_server.object_info()["EasyAnimateModelLoader"]["input"]["optional"]
    assert list(optional)[:3] == ["memory_mode", "resident_blocks", "fp8_mode"]  # later inputs are appended after
    assert optional["memory_mode"][0] == ["auto", "gpu", "model_cpu_offload", "sequential"]
    assert optional["fp8_mode"][0] == ["quality", "reference exact", "scaled"]
    assert optional["resident_blocks"][1]["default"] == 0


def test_twenty_consecutive_text_to_video_runs_do_not_grow_rss(comfy_server):
    rss = []
    for run in range(20):  # a new seed each run, so ComfyUI re-executes the sampler, decode and save
        run_ok(comfy_server, graph(MODEL, seed=1000 + run, prefix=f"rss{run}"))
        rss.append(_rss(comfy_server))
    growth = (max(rss[2:]) - rss[1]) / rss[1]
    assert growth <= 0.05, [f"{r / 2**20:.0f} MiB" for r in rss]


@pytest.mark.parametrize(
    "mode,storage,fp8_mode",
    [("sequential", "fp8_e4m3fn", "reference exact"), ("model_cpu_offload", "same as precision", "quality")],
)
def test_offload_modes_run_end_to_end_in_the_server(comfy_server, mode, storage, fp8_mode):
    prompt = graph(MODEL, seed=7, prefix=f"mem-{mode}")
    prompt["1"]["inputs"].update(weight_storage=storage, memory_mode=mode, resident_blocks=1, fp8_mode=fp8_mode)
    result = run_ok(comfy_server, prompt)
    assert len(result.files()) == 1
