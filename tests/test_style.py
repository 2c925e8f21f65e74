"""The code style is checked, not hoped for: `ruff check` (pyflakes, import order, pycodestyle errors) and
`ruff format --check` over the whole checkout, with the settings in pyproject.toml. ruff is a test requirement
(requirements-test.txt); a run without it fails here instead of passing silently."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_finds_nothing(command):
    run = subprocess.run([sys.executable, "-m", "ruff", *command], cwd=REPO_ROOT, capture_output=True, text=True)
    assert "No module named ruff" not in run.stderr, "ruff is missing: pip install -r requirements-test.txt"
    assert run.returncode == 0, (run.stdout + run.stderr)[-3000:]
