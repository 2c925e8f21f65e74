"""Install this pack's requirements into the Python that runs ComfyUI (ComfyUI-Manager runs this file too).

Idempotent and offline-safe: pip skips what is already installed, nothing here downloads models, and torch /
torchvision / torchaudio are never installed or upgraded (your CUDA build stays as it is).
"""

import subprocess
import sys
from pathlib import Path

PROTECTED = {"torch", "torchvision", "torchaudio"}


def requirements(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        name = line.split(";")[0]
        for sep in "<>=~![ ":
            name = name.split(sep)[0]
        if line and name.lower() not in PROTECTED:
            lines.append(line)
    return lines


def main() -> int:
    reqs = requirements(Path(__file__).resolve().parent / "requirements.txt")
    # Constrain torch to the installed build so no requirement can pull in a different one.
    constraints = []
    try:
        import importlib.metadata as metadata

        for name in sorted(PROTECTED):
            try:
                constraints.append(f"{name}=={metadata.version(name)}")
            except metadata.PackageNotFoundError:
                pass
    except ImportError:
        pass
    cmd = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", *reqs]
    if constraints:
        import tempfile

        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
            handle.write("\n".join(constraints) + "\n")
        cmd += ["-c", handle.name]
    print("[EasyAnimate] installing:", " ".join(reqs), flush=True)
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
