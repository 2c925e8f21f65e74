#!/usr/bin/env bash
# The README's first command on a fresh machine: set up only what the runner needs (a venv at .venv with the pinned
# torch, the pack's requirements.txt and the pinned ComfyUI; nothing from requirements-test.txt), then run the
# text-to-video workflow headless and print the video's path. Extra arguments go to tools/run_workflow.py (e.g.
# --comfyui DIR, --model NAME, another workflow). EASYANIMATE_VENV picks another venv folder (CI's lanes use it).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${EASYANIMATE_VENV:-.venv}
log=.cache/logs/setup.log
mkdir -p .cache/logs
say() { echo "[main_job] $*"; }
started=$(date +%s)

if [ ! -x "$venv/bin/python" ]; then
  say "creating a Python venv at $venv"
  python3 -m venv "$venv"
fi
PY=$venv/bin/python
pip_logged() {
  if ! "$PY" -m pip --disable-pip-version-check install "$@" >>"$log" 2>&1; then
    say "pip failed; the last lines of $log:"
    tail -n 20 "$log"
    exit 1
  fi
}
if ! "$PY" -c "import torch, torchvision" 2>/dev/null; then
  say "installing torch 2.14.1 + torchvision 0.29.1 (about 3 GB with the CUDA libraries; once; log: $log)"
  pip_logged torch==2.14.1 torchvision==0.29.1
  say "  done after $(( $(date +%s) - started ))s"
fi
if ! "$PY" -c "import einops, safetensors, transformers, cv2, controlnet_aux, imageio_ffmpeg" 2>/dev/null; then
  say "installing the pack's requirements.txt: transformers, opencv-python, controlnet-aux, imageio-ffmpeg, ..."
  say "  (about 400 MB; once; log: $log)"
  pip_logged -r requirements.txt
  say "  done after $(( $(date +%s) - started ))s"
fi
say "ComfyUI 0.3.75 (set-up output: $log)"
"$PY" tools/comfyui_setup.py --log "$log" >/dev/null
say "set-up finished after $(( $(date +%s) - started ))s"
workflow=workflows/text_to_video.json
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  workflow=$1
  shift
fi
exec "$PY" tools/run_workflow.py "$workflow" "$@"
