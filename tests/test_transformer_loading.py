"""Specification of `models.loading.transformer.load_transformer`: every released layout gives the same model,
storage dtypes (fp8 for qfloat8) behave as the reference, broken files fail with one clear error, and loading into
fp8 never holds a full-precision copy of the weights."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_transformer import original_rope_tables, rel_err
from tiny_checkpoints import TINY_MODELS, ensure_tiny_checkpoints

from models.loading.headers import CheckpointError, UnsafeCheckpointError
from models.loading.transformer import load_transformer
from models.transformer import EasyAnimateTransformer, TransformerParams
from models.variants import VARIANTS, variant_for

REPO_ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = Path("transformer") / "diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def tiny_root() -> Path:
    return ensure_tiny_checkpoints()


def copy_model(tiny_root: Path, name: str, dest: Path) -> Path:
    """A private copy (the tiny set hard-links identical files, so never modify it in place)."""
    return Path(shutil.copytree(tiny_root / name, dest / name))


def tiny_inputs(params: TransformerParams, dtype=torch.float32, frames: int = 2, size=(10, 18), seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, params.in_channels, frames, *size, generator=g).to(dtype)  # pre-concatenated
    text = torch.randn(2, 6, params.text_embed_dim, generator=g).to(dtype)
    text_t5 = (
        None if params.text_embed_dim_t5 is None else torch.randn(2, 5, params.text_embed_dim_t5, generator=g).to(dtype)
    )
    return dict(latents=latents, timestep=torch.tensor([999.0, 250.0]), text=text, text_t5=text_t5)


def forward(model, x: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**x)


# --- layouts ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["12b", "7b"])
def test_original_diffusers_bare_and_single_file_forms_give_identical_outputs(tiny_root, size):
    name = f"tiny-EasyAnimateV5.1-{size}-zh-InP"
    single = {"12b": f"{name}.safetensors", "7b": f"{name}-diffusers.safetensors"}[size]
    sources = [
        tiny_root / name,
        tiny_root / f"{name}-diffusers",
        tiny_root / name / "transformer",
        tiny_root / f"{name}-diffusers" / "transformer",
        tiny_root / single,
    ]
    models = [load_transformer(s, dtype=torch.float32) for s in sources]
    x = tiny_inputs(models[0].params)
    outputs = [forward(m, x) for m in models]
    assert all(m.params == models[0].params for m in models)
    assert all(torch.equal(out, outputs[0]) for out in outputs[1:])


def test_loaded_model_matches_diffusers_loading_the_diffusers_folder(tiny_root):
    from diffusers import EasyAnimateTransformer3DModel

    ours = load_transformer(tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP", dtype=torch.float32)
    theirs = EasyAnimateTransformer3DModel.from_pretrained(
        str(tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP-diffusers" / "transformer"), torch_dtype=torch.float32
    ).eval()
    theirs.rope_embedding.forward = lambda hs: original_rope_tables(hs.shape[2], hs.shape[3] // 2, hs.shape[4] // 2)
    x = tiny_inputs(ours.params)
    with torch.no_grad():
        expected = theirs(
            x["latents"][:, :16],
            x["timestep"],
            encoder_hidden_states=x["text"],
            inpaint_latents=x["latents"][:, 16:],
            return_dict=False,
        )[0]
    assert rel_err(forward(ours, x), expected) <= 1e-5


@pytest.mark.parametrize("name", [n for n, (_, _, _, layout) in TINY_MODELS.items() if layout != "single_file"])
def test_every_released_layout_loads_with_its_variant_config(tiny_root, name):
    version, size, kind, _ = TINY_MODELS[name]
    model = load_transformer(tiny_root / name, dtype=torch.float32)
    variant = variant_for(version, size, kind)  # the tiny set also holds an unreleased V5-7B Control
    p = model.params
    assert (p.in_channels, p.add_norm_text_encoder) == (variant.in_channels, variant.add_norm_text_encoder)
    assert (p.num_layers, p.mmdit_layers) == ((2, 2) if size == "12b" else (4, 2))
    assert all(t.dtype == torch.float32 and not t.is_meta for t in model.state_dict().values())
    out = forward(model, tiny_inputs(p, frames=1, size=(8, 12)))
    assert out.shape == (2, 16, 1, 8, 12) and torch.isfinite(out).all()


def test_absent_config_keys_take_the_released_values_not_class_defaults(tiny_root, tmp_path):
    model_dir = copy_model(tiny_root, "tiny-EasyAnimateV5-7b-zh-InP", tmp_path)
    config_path = model_dir / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("mmdit_layers", "text_embed_dim_t5", "norm_eps", "add_norm_text_encoder"):
        # reference class defaults: 10000, 4096, 1e-5, False (docs/checkpoints.md, transformer config)
        config.pop(key, None)
    config_path.write_text(json.dumps(config))
    model = load_transformer(model_dir, dtype=torch.float32)
    assert (model.params.mmdit_layers, model.params.text_embed_dim_t5, model.params.norm_eps) == (2, 48, 1e-5)


# --- storage dtypes -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "storage", [torch.float32, torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2]
)
def test_weights_are_stored_in_the_storage_dtype(tiny_root, storage):
    model = load_transformer(
        tiny_root / "tiny-EasyAnimateV5.1-7b-zh-Control", dtype=torch.bfloat16, storage_dtype=storage
    )
    assert {t.dtype for t in model.state_dict().values()} == {storage}
    assert model.compute_dtype == torch.bfloat16
    out = forward(model, tiny_inputs(model.params, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


# fp8 relative step 2^-3 (e4m3) / 2^-2 (e5m2). Measured on the tiny models (3 seeds, 3 variants): e4m3 max 0.05-0.08,
# mean 0.05-0.06; e5m2 max 0.12-0.15, mean 0.12. Bounds: max|Δ| <= a * max|bf16|, mean|Δ| <= b * mean|bf16|.
FP8_BOUNDS = {torch.float8_e4m3fn: (0.12, 0.08), torch.float8_e5m2: (0.25, 0.16)}


@pytest.mark.parametrize("storage", list(FP8_BOUNDS), ids=str)
def test_fp8_storage_equals_bf16_model_with_fp8_rounded_weights_and_stays_near_bf16(tiny_root, storage):
    source = tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP"
    fp8 = load_transformer(source, dtype=torch.bfloat16, storage_dtype=storage)
    bf16 = load_transformer(source, dtype=torch.bfloat16)
    rounded = load_transformer(source, dtype=torch.bfloat16)
    # reference qfloat8: every parameter cast to fp8, compute in bf16 (docs/faithfulness.md, qfloat8)
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(storage).to(torch.bfloat16))
    x = tiny_inputs(bf16.params, dtype=torch.bfloat16)
    out_fp8, out_bf16 = forward(fp8, x), forward(bf16, x)
    assert torch.equal(out_fp8, forward(rounded, x))
    max_bound, mean_bound = FP8_BOUNDS[storage]
    error = (out_fp8.float() - out_bf16.float()).abs()
    assert error.max() <= max_bound * out_bf16.float().abs().max()
    assert error.mean() <= mean_bound * out_bf16.float().abs().mean()
    assert error.mean() >= 0.01 * out_bf16.float().abs().mean()  # the weights really were rounded


# --- broken checkpoints -----------------------------------------------------------------------------------------------


def test_truncated_safetensors_is_reported_with_its_path(tiny_root, tmp_path):
    model_dir = copy_model(tiny_root, "tiny-EasyAnimateV5.1-12b-zh-InP", tmp_path)
    weights = model_dir / WEIGHTS
    data = weights.read_bytes()
    weights.unlink()  # break the hard link before writing
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated") as error:
        load_transformer(model_dir)
    assert str(weights) in str(error.value)


def test_corrupt_safetensors_header_is_reported(tiny_root, tmp_path):
    model_dir = copy_model(tiny_root, "tiny-EasyAnimateV5.1-12b-zh-InP", tmp_path)
    weights = model_dir / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[8:24] = b"#" * 16  # the JSON header now starts with garbage
    weights.unlink()
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt safetensors header"):
        load_transformer(model_dir)


def test_missing_tensor_is_named_in_one_error(tiny_root, tmp_path):
    tensors = load_file(tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP.safetensors")
    del tensors["norm_final.weight"], tensors["transformer_blocks.1.attn2.norm_k.bias"]
    path = tmp_path / "incomplete.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"2 missing") as error:
        load_transformer(path)
    assert "norm_final.weight" in str(error.value) and "transformer_blocks.1.attn2.norm_k.bias" in str(error.value)


def test_wrongly_shaped_tensor_is_named_with_both_shapes(tiny_root, tmp_path):
    tensors = load_file(tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP.safetensors")
    tensors["transformer_blocks.0.ff.net.2.bias"] = torch.zeros(31, dtype=torch.bfloat16)
    path = tmp_path / "misshapen.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"ff\.net\.2\.bias: file \(31,\), model expects \(32,\)"):
        load_transformer(path)


def test_config_in_channels_contradicting_the_weights_is_an_error(tiny_root, tmp_path):
    model_dir = copy_model(tiny_root, "tiny-EasyAnimateV5.1-12b-zh-InP", tmp_path)
    config_path = model_dir / "transformer" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "in_channels": 48}))
    with pytest.raises(CheckpointError, match=r"in_channels: config.json says 48, the weights say 33"):
        load_transformer(model_dir)
    with pytest.raises(CheckpointError, match=r"in_channels: config.json says 48, the weights say 33"):
        load_transformer(model_dir / "transformer")  # a bare transformer folder is checked the same way


def test_unknown_in_channels_in_the_weights_is_an_error(tiny_root, tmp_path):
    tensors = load_file(tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP.safetensors")
    tensors["proj.weight"] = tensors["proj.weight"][:, :20].contiguous()
    path = tmp_path / "twenty_channels.safetensors"
    save_file(tensors, path)
    with pytest.raises(CheckpointError, match=r"in_channels=20 is not a known model kind"):
        load_transformer(path)


def test_pickle_checkpoint_is_refused(tmp_path):
    path = tmp_path / "diffusion_pytorch_model.bin"
    path.write_bytes(b"not opened")
    with pytest.raises(UnsafeCheckpointError, match=r"safetensors only"):
        load_transformer(path)


# --- peak memory (subprocess) -------------------------------------------------------------------------------------

MEASURE = textwrap.dedent("""
    import json, sys, threading, time
    from pathlib import Path
    import torch
    sys.path.insert(0, sys.argv[2])
    from models.loading.transformer import load_transformer

    def status(field):  # bytes
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    anon_before, rss_before = status("RssAnon"), status("VmRSS")
    anon_peak, done = [anon_before], threading.Event()

    def sample():  # anonymous (allocated) memory, sampled every 0.2 ms
        while not done.is_set():
            anon_peak[0] = max(anon_peak[0], status("RssAnon"))
            time.sleep(0.0002)

    sampler = threading.Thread(target=sample)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM: peak RSS from here on
    sampler.start()
    model = load_transformer(sys.argv[1], dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
    done.set(); sampler.join()
    print(json.dumps(dict(
        weight_bytes=sum(t.numel() * t.element_size() for t in model.state_dict().values()),
        dtypes=sorted({str(t.dtype) for t in model.state_dict().values()}),
        anon_growth=max(anon_peak[0], status("RssAnon")) - anon_before,
        anon_retained=status("RssAnon") - anon_before,  # still held after loading (weights + allocator slack)
        rss_growth=status("VmHWM") - rss_before)))
""")


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory) -> Path:
    """~330 MB bf16 transformer: width 1024 (16 heads x 64), 5 MMDiT blocks, released V5.1 text width."""
    config = VARIANTS["EasyAnimateV5.1-12b-zh"].transformer_config()
    config.update(num_attention_heads=16, num_layers=5, mmdit_layers=5)
    with torch.device("meta"):
        shapes = {
            k: v.shape for k, v in EasyAnimateTransformer(TransformerParams.from_config(config)).state_dict().items()
        }
    torch.manual_seed(0)
    tensors = {k: torch.empty(shape, dtype=torch.bfloat16).uniform_(-0.1, 0.1) for k, shape in shapes.items()}
    folder = tmp_path_factory.mktemp("synthetic") / "transformer"
    folder.mkdir()
    save_file(tensors, folder / "diffusion_pytorch_model.safetensors")
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def fp8_load_figures(synthetic_checkpoint) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, str(synthetic_checkpoint), str(REPO_ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_fp8_load_never_allocates_a_full_precision_copy(fp8_load_figures):
    figures = fp8_load_figures
    assert figures["dtypes"] == ["torch.float8_e4m3fn"]
    assert figures["weight_bytes"] > 150e6  # the bf16 file is twice that
    assert figures["anon_growth"] <= 1.15 * figures["weight_bytes"], figures


def test_fp8_load_peak_rss_including_file_pages_stays_within_the_weights(fp8_load_figures):
    # VmHWM counts mapped file pages too: an mmap reader would show ~3x here (whole bf16 file + fp8 copy)
    figures = fp8_load_figures
    assert figures["rss_growth"] <= 1.15 * figures["weight_bytes"], figures


# --- tools/inspect_model.py -----------------------------------------------------------------------------------------


# Runs a script (argv[1], with argv[2:]) and reports how many bytes the process read through read() calls in all.
READ_BYTES_PROBE = r"""
import atexit, runpy, sys
def report():
    rchar = next(line for line in open("/proc/self/io") if line.startswith("rchar:"))
    sys.stderr.write("\nREAD_BYTES " + rchar.split()[1] + "\n")
atexit.register(report)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_inspect_model_reads_a_24gb_file_from_its_header_only(tmp_path):
    config = VARIANTS["EasyAnimateV5.1-12b-zh-Control"].transformer_config()
    with torch.device("meta"):
        state = EasyAnimateTransformer(TransformerParams.from_config(config)).state_dict()
    header, offset = {}, 0
    for name, tensor in state.items():
        header[name] = {
            "dtype": "BF16",
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + 2 * tensor.numel()],
        }
        offset += 2 * tensor.numel()
    raw = json.dumps(header).encode()
    path = tmp_path / "EasyAnimateV5.1-12b-zh-Control.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # sparse: 23.6 GB of holes
    result = subprocess.run(
        [sys.executable, "-c", READ_BYTES_PROBE, str(REPO_ROOT / "tools" / "inspect_model.py"), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 0, result.stderr
    read_bytes = int(result.stderr.rsplit("READ_BYTES ", 1)[1].split()[0])
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["model"].split() == ["v5.1", "12b", "control", "->", "EasyAnimateV5.1-12b-zh-Control"]
    assert lines["layout"].strip() == "single_file (key names: original)"
    assert lines["parameters"].strip() == "11,799,450,176 (= released count)"
    assert lines["dtypes"].strip() == "BF16 x1937"
    assert lines["files"].strip() == "1 safetensors, 23.60 GB of tensors"
    assert read_bytes < 10**9  # python + torch start-up reads well under 1 GB; the file holds 23.6 GB


def test_inspect_model_reports_a_missing_path_with_exit_code_1(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "inspect_model.py"), str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert result.returncode == 1 and "does not exist" in result.stderr
