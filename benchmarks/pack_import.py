"""How long importing the pack takes once torch is loaded (ComfyUI imports every pack at start-up).

Prints `RESULT pack_import_seconds=<best of 5>`; the target is < 1 s. Each run is a fresh interpreter, so the pack's
modules are really imported; torch is imported first and not counted, as inside ComfyUI.

    python benchmarks/pack_import.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACK = Path(__file__).resolve().parents[1]
PROBE = r"""
import importlib.util, sys, time
import torch
start = time.perf_counter()
spec = importlib.util.spec_from_file_location(
    "ComfyUI-EasyAnimate-Nodes", sys.argv[1] + "/__init__.py", submodule_search_locations=[sys.argv[1]])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
print(time.perf_counter() - start)
"""


def main() -> None:
    runs = [
        float(
            subprocess.run([sys.executable, "-c", PROBE, str(PACK)], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(5)
    ]
    print(f"RESULT pack_import_seconds={min(runs):.3f}")


if __name__ == "__main__":
    main()
