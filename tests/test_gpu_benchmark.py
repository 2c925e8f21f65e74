"""`benchmarks/gpu.py --tiny` runs every section of the GPU check on the CPU (so the script cannot rot), and its
output has the figures the README table is filled from."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ("gpu_bf16", "gpu_fp8", "fp8_scaled_mm", "model_cpu_offload", "sequential")


def _results(stdout: str) -> dict[str, float]:
    pairs = (line[len("RESULT ") :].split("=", 1) for line in stdout.splitlines() if line.startswith("RESULT "))
    return {name: float(value) for name, value in pairs}


def test_gpu_check_runs_every_section_in_tiny_mode(tmp_path):
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "gpu.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=REPO_ROOT,
        env=env,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    results = _results(run.stdout)
    assert results["gpu_check_complete"] == 1, run.stdout[-2000:]
    data = json.loads(out.read_text())
    assert data["tiny"] is True and data["skipped"] == []
    assert data["errors"] == {} and results["gpu_check_errors"] == 0, data["errors"]  # sections are guarded: say so
    assert len(data["modes"]) == 4  # 2 models x 2 sizes
    for key, entry in data["modes"].items():
        assert set(entry["modes"]) == set(MODES), key
        for mode in MODES:
            assert results[f"{key}_{mode}_s_per_it"] > 0 and results[f"{key}_{mode}_mfu"] > 0
            assert results[f"{key}_{mode}_peak_host_rss_gib"] > 0
        # fp8 changes the output a little, never nothing and never everything
        for mode in ("gpu_fp8", "fp8_scaled_mm"):
            assert 1e-5 < results[f"{key}_{mode}_rel_error_vs_bf16"] < 0.1, (key, mode)
        assert entry["modes"]["sequential"]["prefetch_hits"] > 0  # block swap really streamed with prefetch
    assert {plan["mode"] for plan in data["plans"]} == {"gpu", "model_cpu_offload", "sequential"}
    assert all(plan["fits"] and plan["vae_phase_measured"] for plan in data["plans"])
    assert results["plans_run"] == 6 and "plan_estimate_error_max" in results
    assert {v["size"] for v in data["vae"]} == {"32x32x5", "32x64x5"} and all(v["decode_s"] > 0 for v in data["vae"])
    attention = data["speed_options"]["12b_32x32x5_attention"]
    assert attention["sdpa"]["rel_error_vs_sdpa"] == 0 and set(attention) == {"sdpa", "sage", "flash"}
    compiled = data["speed_options"]["12b_32x32x5_compile"]
    assert compiled["compile_s_blocks_built"] > 0 and len(compiled["log"]) == 1  # reported once
    assert results["12b_32x32x5_compiled_over_eager"] > 0
