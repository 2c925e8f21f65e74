"""Runs the `isolated` RSS measurements, each in a pytest process of its own (same assertions, same limits).

In the full suite the settings-change peak of a 100 M-parameter model read 1.36-1.38x one copy in three runs, against
1.15-1.23x in every run on its own. Since then the loader hands freed heap back to the OS after every load
(models/components.py); measuring in a clean process also keeps the figure about the server, not about what earlier
tests left behind (which server processes are alive, what they hold).
"""

import os
import subprocess
import sys
from pathlib import Path

from conftest import ISOLATED_ENV

HERE = Path(__file__).resolve().parent
ISOLATED = ["test_comfyui_reliability.py::test_five_settings_changes_hold_one_copy_and_free_returns_to_the_baseline"]


def test_isolated_memory_measurements_pass_in_a_process_of_their_own():
    env = {**os.environ, ISOLATED_ENV: "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:randomly",
            "-p",
            "no:cacheprovider",
            *(str(HERE / node) for node in ISOLATED),
        ],
        cwd=HERE,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(done.stdout[-2000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert f"{len(ISOLATED)} passed" in done.stdout
