"""nodes/bridge.py against ComfyUI's model management: the real 0.3.75 (in a subprocess, so this test process never
imports ComfyUI) and fakes of the newer behaviour (Dynamic VRAM free memory, is_oom / AcceleratorError,
force_full_load, keep_loaded records)."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import REPO_ROOT

CUDA = torch.device("cuda")  # only its .type is read: the fakes stand in for the device


@pytest.fixture
def bridge(pack):
    return pack.nodes.bridge


def _fake_mm(bridge, monkeypatch, **functions):
    fake = SimpleNamespace(**functions)
    monkeypatch.setattr(bridge, "_mm", lambda: fake)
    return fake


def test_dynamic_vram_free_memory_evicts_before_measuring_when_too_little_shows_free(bridge, monkeypatch):
    state = {"evicted": False, "asked": []}

    def get_free_memory(device):  # newer ComfyUI: evictable models count as used until evicted
        return 30 * 2**30 if state["evicted"] else 2 * 2**30

    def free_memory(bytes_needed, device, keep_loaded=()):
        state["evicted"], state["asked"] = True, state["asked"] + [bytes_needed]

    _fake_mm(bridge, monkeypatch, get_free_memory=get_free_memory, free_memory=free_memory)
    assert bridge.free_vram(CUDA, wanted=20 * 2**30) == 30 * 2**30
    assert state["asked"] == [20 * 2**30]


def test_free_memory_is_taken_as_is_when_enough_shows_free(bridge, monkeypatch):
    calls = []
    _fake_mm(
        bridge,
        monkeypatch,
        get_free_memory=lambda device: 40 * 2**30,
        free_memory=lambda *args, **kwargs: calls.append(args),
    )
    assert bridge.free_vram(CUDA, wanted=20 * 2**30) == 40 * 2**30 and calls == []
    assert bridge.free_vram(torch.device("cpu"), wanted=1) is None


def test_is_oom_of_newer_comfyui_decides_and_accelerator_errors_count_without_it(bridge, monkeypatch):
    class AcceleratorError(RuntimeError):
        pass

    _fake_mm(bridge, monkeypatch, is_oom=lambda error: isinstance(error, AcceleratorError))
    assert bridge.is_out_of_memory(AcceleratorError("CUDA error: out of memory"))
    assert not bridge.is_out_of_memory(RuntimeError("shape mismatch"))
    _fake_mm(bridge, monkeypatch, OOM_EXCEPTION=torch.cuda.OutOfMemoryError)  # 0.3.75: no is_oom
    assert bridge.is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    if hasattr(torch, "AcceleratorError"):
        monkeypatch.setattr(torch, "AcceleratorError", AcceleratorError)
        assert bridge.is_out_of_memory(AcceleratorError("CUDA error: out of memory"))
        assert not bridge.is_out_of_memory(AcceleratorError("CUDA error: illegal address"))


def test_gpu_mode_asks_for_a_full_load_and_says_when_it_got_a_partial_one(bridge, monkeypatch):
    asked = {}

    def load_models_gpu(
        models, memory_required=0, force_patch_weights=False, minimum_memory_required=None, force_full_load=False
    ):
        asked.update(memory_required=memory_required, force_full_load=force_full_load)

    _fake_mm(bridge, monkeypatch, load_models_gpu=load_models_gpu)
    partial = SimpleNamespace(loaded_size=lambda: 3 * 2**30, model_size=lambda: 8 * 2**30, load_device=CUDA)
    said = []
    bridge.load_on_device(partial, 123, log=said.append)
    assert asked == {"memory_required": 123, "force_full_load": True}
    assert len(said) == 1 and "3.0 of 8.0 GB" in said[0] and "model_cpu_offload" in said[0]
    full = SimpleNamespace(loaded_size=lambda: 8, model_size=lambda: 8, load_device=CUDA)
    bridge.load_on_device(full, log=said.append)
    assert len(said) == 1


def test_make_room_keeps_loaded_model_records_not_patchers(bridge, monkeypatch):
    ours, other = object(), object()
    records = [SimpleNamespace(model=other), SimpleNamespace(model=ours)]
    kept = {}
    _fake_mm(
        bridge,
        monkeypatch,
        current_loaded_models=records,
        free_memory=lambda need, device, keep_loaded=(): kept.update(keep=keep_loaded),
    )
    bridge.make_room(10, CUDA, keep=[ours, None])
    assert kept["keep"] == [records[1]]


REAL_COMFYUI = r"""
import json, sys
comfy_dir, repo, model_dir = sys.argv[1:4]
sys.path.insert(0, comfy_dir); sys.path.insert(0, repo); sys.path.insert(0, repo + "/tests")
from comfy.cli_args import args
args.cpu = True
import comfy.model_management as mm, comfy.model_patcher, torch
from conftest import import_pack
bridge = import_pack().nodes.bridge
from models.components import open_model
from models.quant import allocated_bytes
model = open_model(model_dir, "bf16")
device = mm.get_torch_device()
transformer = model.transformer(device=device, log=lambda s: None)
ours = bridge.comfy_patcher(model, "transformer", transformer, allocated_bytes(transformer), device)
bridge.load_on_device(ours)
bridge.load_on_device(ours)                       # asked again (the next prompt): ComfyUI re-attaches, keeps it
result_again = {"kept_on_reload": model.is_loaded("transformer") and not transformer.proj.weight.is_meta}
del transformer, ours                             # as in the server: only the model object holds it
ours = bridge.patcher_of(model, "transformer")
other = comfy.model_patcher.ModelPatcher(torch.nn.Linear(8, 8), load_device=device, offload_device=device)
mm.load_models_gpu([other])
kept = bridge.loaded_records([ours])
mm.free_memory(1e30, device, keep_loaded=kept)   # what make_room does: ours is kept, the other goes
survivors = [r.model for r in mm.current_loaded_models]
result = {**result_again, "records": len(kept), "ours_kept": any(m is ours for m in survivors),
          "other_kept": any(m is other for m in survivors), "loaded_before_unload": model.is_loaded("transformer")}
mm.load_models_gpu([other])                       # two models in the list: unload iterates over both
del ours, survivors, kept
mm.unload_all_models()                            # "unload models" (/free): releases our weights too
result["loaded_after_unload"] = model.is_loaded("transformer")
result["left_loaded"] = len(mm.current_loaded_models)
transformer = model.transformer(device=device, log=lambda s: None)  # and it loads again after that
bridge.load_on_device(bridge.comfy_patcher(model, "transformer", transformer, allocated_bytes(transformer), device))
result["reloaded"] = sum(r.model is not None and r.model.model is transformer for r in mm.current_loaded_models)
result["state_on_model"] = sorted(k for k in vars(model) if "comfy" in k or "patcher" in k)  # kept beside it
print("RESULT " + json.dumps(result))
"""


def test_real_comfyui_keeps_our_record_and_its_unload_releases_our_transformer(tiny_root, tmp_path):
    from comfyui_setup import ensure_comfyui

    script = tmp_path / "probe.py"
    script.write_text(REAL_COMFYUI)
    run = subprocess.run(
        [
            sys.executable,
            str(script),
            str(ensure_comfyui()),
            str(REPO_ROOT),
            str(tiny_root / "tiny-EasyAnimateV5.1-12b-zh"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    lines = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, run.stderr[-3000:]
    assert json.loads(lines[-1][7:]) == {
        "kept_on_reload": True,
        "records": 1,
        "ours_kept": True,
        "other_kept": False,
        "loaded_before_unload": True,
        "loaded_after_unload": False,
        "left_loaded": 0,
        "reloaded": 1,
        "state_on_model": [],
    }
