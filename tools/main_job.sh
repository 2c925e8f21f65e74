#!/usr/bin/env bash
# The README's first command on a fresh machine: set up only what the runner needs (a venv at .venv with the pinned
# torch, the pack's requirements and the pinned ComfyUI), then run the text-to-video workflow headless and print the
# video's path. Extra arguments go to tools/run_workflow.py (e.g. --comfyui DIR, --model NAME, another workflow).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch, websocket, diffusers" 2>/dev/null; then
  echo "[main_job] installing torch, the pack's requirements and the runner's (a few minutes, once)"
  "${PIP[@]}" install torch==2.14.1 torchvision==0.29.1
  # requirements-test.txt brings websocket-client (the runner) and diffusers/transformers (the tiny checkpoint).
  "${PIP[@]}" install -r requirements.txt -r requirements-test.txt
fi
.venv/bin/python tools/comfyui_setup.py >/dev/null
workflow=workflows/text_to_video.json
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  workflow=$1
  shift
fi
exec .venv/bin/python tools/run_workflow.py "$workflow" "$@"
