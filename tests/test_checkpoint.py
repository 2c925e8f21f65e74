"""Specification of models/loading/ (headers, detection, missing files, key renames, streaming loader) and of the
tiny real-layout checkpoint set in tools/tiny_checkpoints.py.

Reference: docs/checkpoints.md, transformer config / transformer keys (configs, key names, docs/checkpoints.md,
transformer keys renames), docs/checkpoints.md, VAE keys / folder layouts (folder layouts).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tiny_checkpoints import SINGLE_FILES, TINY_MODELS, ensure_tiny_checkpoints, transformer_tensors
from torch import nn

from models.loading.detect import detect
from models.loading.files import weight_files
from models.loading.headers import CheckpointError, MissingFilesError, UnsafeCheckpointError, read_safetensors_header
from models.loading.keys import diffusers_to_original_key, key_mapper, original_to_diffusers_key
from models.loading.stream import load_state_streaming
from models.variants import VARIANTS

FOLDERS = [name for name, (_, _, _, layout) in TINY_MODELS.items() if layout != "single_file"]


@pytest.fixture(scope="module")
def tiny_root() -> Path:
    return ensure_tiny_checkpoints()


def copy_model(tiny_root: Path, name: str, dest: Path) -> Path:
    """A private copy (the set hard-links identical files, so never modify it in place)."""
    return Path(shutil.copytree(tiny_root / name, dest / name))


# --- safetensors header ------------------------------------------------------------------------------------------------


def test_header_gives_dtype_shape_and_offsets_of_every_tensor(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"a": torch.zeros(3, 4, dtype=torch.bfloat16), "b": torch.zeros(5)}, str(path), metadata={"k": "v"})
    header = read_safetensors_header(path)
    assert sorted(header) == ["a", "b"]  # __metadata__ left out
    assert (header["a"].dtype, header["a"].shape, header["a"].nbytes) == ("BF16", (3, 4), 24)
    assert (header["b"].dtype, header["b"].shape, header["b"].nbytes) == ("F32", (5,), 20)
    with safe_open(str(path), framework="pt") as reader:
        assert {k: tuple(reader.get_slice(k).get_shape()) for k in reader.keys()} == {"a": (3, 4), "b": (5,)}


def test_truncated_file_is_reported_with_its_name(tmp_path):
    path = tmp_path / "cut.safetensors"
    save_file({"w": torch.zeros(100)}, str(path))
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors is truncated"):
        read_safetensors_header(path)


@pytest.mark.parametrize(
    "content",
    [b"", b"\x01\x02", struct.pack("<Q", 10**9) + b"{}", struct.pack("<Q", 4) + b"{{{{"],
    ids=["empty", "short", "huge-length", "bad-json"],
)
def test_corrupt_header_is_reported_with_the_file_name(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=str(path)):
        read_safetensors_header(path)


# --- detection -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FOLDERS)
def test_detect_identifies_every_tiny_model_folder(tiny_root, name):
    version, size, kind, layout = TINY_MODELS[name]
    found = detect(tiny_root / name)
    assert (found.version, found.size, found.kind, found.layout, found.key_format) == (
        version,
        size,
        kind,
        layout,
        layout,
    )
    assert found.variant.name == name.removeprefix("tiny-").removesuffix("-diffusers")
    expected = {"transformer", "vae", "text_encoder", "tokenizer", "scheduler"}
    if version == "v5":
        expected |= {"text_encoder_2", "tokenizer_2"}
    assert found.paths == {c: tiny_root / name / c for c in expected}


@pytest.mark.parametrize("name", FOLDERS)
def test_detect_identifies_every_tiny_transformer_as_a_single_file(tiny_root, name):
    version, size, kind, layout = TINY_MODELS[name]
    file = tiny_root / name / "transformer" / "diffusion_pytorch_model.safetensors"
    found = detect(file)
    assert (found.version, found.size, found.kind, found.layout, found.key_format) == (
        version,
        size,
        kind,
        "single_file",
        layout,
    )
    assert found.paths == {"transformer": file} and found.transformer_files == [file]


@pytest.mark.parametrize("file_name", list(SINGLE_FILES))
def test_detect_identifies_the_named_single_files(tiny_root, file_name):
    version, size, kind, _ = TINY_MODELS[file_name]
    found = detect(tiny_root / file_name)
    assert (found.version, found.size, found.kind, found.layout, found.key_format) == (
        version,
        size,
        kind,
        "single_file",
        SINGLE_FILES[file_name][1],
    )


def test_single_file_config_is_inferred_from_tensor_shapes(tiny_root):
    config = detect(tiny_root / "tiny-EasyAnimateV5.1-7b-zh-InP-diffusers.safetensors").transformer_config
    assert {
        k: config[k]
        for k in (
            "in_channels",
            "num_layers",
            "mmdit_layers",
            "num_attention_heads",
            "attention_head_dim",
            "time_embed_dim",
            "patch_size",
            "out_channels",
            "text_embed_dim",
            "text_embed_dim_t5",
            "add_norm_text_encoder",
        )
    } == {
        "in_channels": 33,
        "num_layers": 4,
        "mmdit_layers": 2,
        "num_attention_heads": 2,
        "attention_head_dim": 16,
        "time_embed_dim": 24,
        "patch_size": 2,
        "out_channels": 16,
        "text_embed_dim": 64,
        "text_embed_dim_t5": None,
        "add_norm_text_encoder": True,
    }
    # fields the weights cannot tell take the released V5.1 values
    assert (config["enable_text_attention_mask"], config["add_noise_in_inpaint_model"], config["norm_eps"]) == (
        True,
        True,
        1e-5,
    )


def test_v5_single_file_reports_both_text_widths(tiny_root):
    file = tiny_root / "tiny-EasyAnimateV5-7b-zh-Control" / "transformer" / "diffusion_pytorch_model.safetensors"
    found = detect(file)
    assert (found.transformer_config["text_embed_dim"], found.transformer_config["text_embed_dim_t5"]) == (32, 48)
    assert (found.variant.name, found.variant.released) == ("EasyAnimateV5-7b-zh-Control", False)


def test_folder_config_absent_keys_take_released_values(tiny_root):
    on_disk = json.loads((tiny_root / "tiny-EasyAnimateV5-12b-zh-InP" / "transformer" / "config.json").read_text())
    assert "add_norm_text_encoder" not in on_disk  # as in the released V5 config.json
    config = detect(tiny_root / "tiny-EasyAnimateV5-12b-zh-InP").transformer_config
    assert config["add_norm_text_encoder"] is False
    assert {k: config[k] for k in on_disk} == on_disk
    assert set(config) == set(VARIANTS["EasyAnimateV5-12b-zh-InP"].transformer_config())


def test_folder_vae_config_follows_the_version(tiny_root):
    assert detect(tiny_root / "tiny-EasyAnimateV5-7b-zh").vae_config["mid_block_use_attention"] is True
    assert detect(tiny_root / "tiny-EasyAnimateV5.1-7b-zh").vae_config["mid_block_use_attention"] is False
    assert detect(tiny_root / "tiny-EasyAnimateV5.1-7b-zh").vae_config["block_out_channels"] == [8, 16, 32, 32]


def test_config_that_contradicts_the_weights_is_refused(tiny_root, tmp_path):
    model = copy_model(tiny_root, "tiny-EasyAnimateV5.1-7b-zh-Control", tmp_path)
    config_path = model / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config.update(num_layers=6, in_channels=33)
    config_path.write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as error:
        detect(model)
    message = str(error.value)
    assert "num_layers: config.json says 6, the weights say 4" in message
    assert "in_channels: config.json says 33, the weights say 48" in message and str(config_path) in message


def test_detect_pointed_at_the_transformer_subfolder_uses_the_model_folder(tiny_root):
    found = detect(tiny_root / "tiny-EasyAnimateV5.1-12b-zh-Control" / "transformer")
    assert (found.layout, found.kind, found.name) == ("original", "control", "tiny-EasyAnimateV5.1-12b-zh-Control")


def test_detect_refuses_a_vae_file_as_a_transformer(tiny_root):
    with pytest.raises(CheckpointError, match="VAE weights"):
        detect(tiny_root / "tiny-EasyAnimateV5.1-12b-zh" / "vae" / "diffusion_pytorch_model.safetensors")


def test_detect_accepts_a_prefixed_single_file(tiny_root, tmp_path):
    source = tiny_root / "tiny-EasyAnimateV5-12b-zh-Control" / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(source), framework="pt") as reader:
        tensors = {f"model.diffusion_model.{k}": reader.get_tensor(k) for k in reader.keys()}
    save_file(tensors, str(tmp_path / "prefixed.safetensors"))
    found = detect(tmp_path / "prefixed.safetensors")
    assert (found.version, found.size, found.kind, found.key_prefix) == (
        "v5",
        "12b",
        "control",
        "model.diffusion_model.",
    )


def released_shapes_v51_7b_inp() -> dict[str, tuple[int, ...]]:
    """Full-size V5.1-7B-InP tensor shapes, written from docs/checkpoints.md, transformer keys (1169 tensors)."""
    d, t, h = 3072, 512, 64
    shapes = {
        "time_embedding.linear_1.weight": (t, d),
        "time_embedding.linear_1.bias": (t,),
        "time_embedding.linear_2.weight": (t, t),
        "time_embedding.linear_2.bias": (t,),
        "proj.weight": (d, 33, 2, 2),
        "proj.bias": (d,),
        "text_proj.0.weight": (3584,),
        "text_proj.1.weight": (d, 3584),
        "text_proj.1.bias": (d,),
        "norm_final.weight": (d,),
        "norm_final.bias": (d,),
        "norm_out.linear.weight": (2 * d, t),
        "norm_out.linear.bias": (2 * d,),
        "norm_out.norm.weight": (d,),
        "norm_out.norm.bias": (d,),
        "proj_out.weight": (64, d),
        "proj_out.bias": (64,),
    }
    for i in range(36):
        attentions = ["attn1", "attn2"] if i < 18 else ["attn1"]
        ffs = ["ff", "txt_ff"] if i < 18 else ["ff"]
        block = {f"{n}.linear.weight": (6 * d, t) for n in ("norm1", "norm2")}
        block |= {f"{n}.linear.bias": (6 * d,) for n in ("norm1", "norm2")}
        block |= {f"{n}.norm.{p}": (d,) for n in ("norm1", "norm2") for p in ("weight", "bias")}
        for a in attentions:
            block |= {f"{a}.{p}.weight": (d, d) for p in ("to_q", "to_k", "to_v", "to_out.0")}
            block |= {f"{a}.{p}.bias": (d,) for p in ("to_q", "to_k", "to_v", "to_out.0")}
            block |= {f"{a}.{n}.{p}": (h,) for n in ("norm_q", "norm_k") for p in ("weight", "bias")}
        for f in ffs:
            block |= {
                f"{f}.net.0.proj.weight": (4 * d, d),
                f"{f}.net.0.proj.bias": (4 * d,),
                f"{f}.net.2.weight": (d, 4 * d),
                f"{f}.net.2.bias": (d,),
            }
        shapes |= {f"transformer_blocks.{i}.{k}": v for k, v in block.items()}
    return shapes


def proc_io(field: str) -> int:
    """A counter of /proc/self/io (rchar: bytes this process got from read-like system calls)."""
    lines = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(lines[field])


def proc_status_kib(field: str) -> int:
    """A memory figure of /proc/self/status in KiB (VmRSS now, VmHWM peak since the last clear_refs 5)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_detect_reads_only_the_header_of_a_multi_gigabyte_file(tmp_path):
    shapes = released_shapes_v51_7b_inp()
    assert len(shapes) == 1169
    header, offset = {}, 0
    for name, shape in sorted(shapes.items()):
        size = 2 * torch.Size(shape).numel()  # bf16
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path = tmp_path / "EasyAnimateV5.1-7b-zh-InP.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", len(raw)) + raw)
        handle.truncate(8 + len(raw) + offset)  # sparse: 13.6 GB of holes, no disk used
    assert path.stat().st_size > 13 * 10**9

    rss_before = proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark: mmap-touched data would raise it
    chars_before = proc_io("rchar")
    found = detect(path)
    read_bytes = proc_io("rchar") - chars_before
    peak_growth_kib = proc_status_kib("VmHWM") - rss_before

    assert (found.version, found.size, found.kind) == ("v5.1", "7b", "inp")
    assert (
        found.transformer_config["num_layers"],
        found.transformer_config["mmdit_layers"],
        found.transformer_config["num_attention_heads"],
    ) == (36, 18, 48)
    assert read_bytes <= 2 * len(raw) + 64 * 1024  # the header (plus /proc reads), not 13.6 GB
    assert peak_growth_kib <= 64 * 1024  # no tensor data mapped in either (one 7B block alone is 480 MB)


# --- missing files and pickle refusal ---------------------------------------------------------------------------------------


def test_missing_parts_of_a_v5_folder_are_listed_in_one_error(tiny_root, tmp_path):
    model = copy_model(tiny_root, "tiny-EasyAnimateV5-12b-zh-InP", tmp_path)
    removed = [
        model / "vae" / "diffusion_pytorch_model.safetensors",
        model / "tokenizer_2" / "spiece.model",
        model / "text_encoder" / "config.json",
        model / "text_encoder_2" / "model-00002-of-00002.safetensors",
    ]
    for path in removed:
        path.unlink()
    shutil.rmtree(model / "tokenizer")
    with pytest.raises(MissingFilesError) as error:
        detect(model)
    listed = [path for path, _ in error.value.missing]
    assert sorted(listed) == sorted(
        removed + [model / "tokenizer" / "vocab.txt", model / "tokenizer" / "tokenizer_config.json"]
    )
    message = str(error.value)
    assert all(str(path) in message for path in listed)
    assert "the causal 3D VAE weights (≈1 GB)" in message and "mT5 sentencepiece tokenizer" in message
    assert "https://huggingface.co/alibaba-pai/EasyAnimateV5-12b-zh-InP" in message


def test_missing_parts_of_a_v51_diffusers_folder_are_listed_in_one_error(tiny_root, tmp_path):
    model = copy_model(tiny_root, "tiny-EasyAnimateV5.1-7b-zh-Control-diffusers", tmp_path)
    shutil.rmtree(model / "vae")
    for name in ("tokenizer.json", "vocab.json"):
        (model / "tokenizer" / name).unlink()
    for shard in (model / "text_encoder").glob("model-*.safetensors"):
        shard.unlink()
    with pytest.raises(MissingFilesError) as error:
        detect(model)
    assert sorted(path for path, _ in error.value.missing) == sorted(
        [
            model / "vae" / "diffusion_pytorch_model.safetensors",
            model / "tokenizer" / "tokenizer.json",
            *[model / "text_encoder" / f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)],
        ]
    )
    assert "https://huggingface.co/alibaba-pai/EasyAnimateV5.1-7b-zh-Control-diffusers" in str(error.value)
    assert isinstance(error.value, FileNotFoundError)


def test_missing_transformer_still_lists_the_text_parts_of_the_version(tiny_root, tmp_path):
    model = copy_model(tiny_root, "tiny-EasyAnimateV5.1-12b-zh", tmp_path)
    shutil.rmtree(model / "transformer")
    (model / "tokenizer" / "tokenizer_config.json").unlink()
    with pytest.raises(MissingFilesError) as error:
        detect(model)
    assert [path for path, _ in error.value.missing] == [
        model / "transformer" / "diffusion_pytorch_model.safetensors",
        model / "tokenizer" / "tokenizer_config.json",
    ]
    assert "EasyAnimate V5.1 model folder" in str(error.value)


def test_pickle_only_transformer_folder_is_refused(tiny_root, tmp_path):
    model = copy_model(tiny_root, "tiny-EasyAnimateV5.1-12b-zh-InP", tmp_path)
    weights = model / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_suffix(".bin"))
    for call in (
        lambda: detect(model),
        lambda: weight_files(model / "transformer"),
        lambda: detect(weights.with_suffix(".bin")),
    ):
        with pytest.raises(UnsafeCheckpointError, match="safetensors only") as error:
            call()
        assert "diffusion_pytorch_model.bin" in str(error.value) and "weights_only=True" in str(error.value)


def test_streaming_loader_refuses_pickle_files(tmp_path):
    with pytest.raises(UnsafeCheckpointError, match="safetensors only"):
        load_state_streaming(nn.Linear(2, 2), tmp_path / "weights.pt")


def test_weight_files_follow_the_shard_index(tiny_root, tmp_path):
    folder = tiny_root / "tiny-EasyAnimateV5-7b-zh" / "text_encoder_2"
    assert [p.name for p in weight_files(folder)] == [
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    ]
    copy = Path(shutil.copytree(folder, tmp_path / "text_encoder_2"))
    (copy / "model-00001-of-00002.safetensors").unlink()
    with pytest.raises(MissingFilesError) as error:
        weight_files(copy)
    assert [p for p, _ in error.value.missing] == [copy / "model-00001-of-00002.safetensors"]


# --- key renames (docs/checkpoints.md, transformer keys) --------------------------------------------------------------


@pytest.mark.parametrize(
    "original, diffusers",
    [
        ("transformer_blocks.0.attn2.to_q.weight", "transformer_blocks.0.attn1.add_q_proj.weight"),
        ("transformer_blocks.7.attn2.to_k.bias", "transformer_blocks.7.attn1.add_k_proj.bias"),
        ("transformer_blocks.12.attn2.to_v.weight", "transformer_blocks.12.attn1.add_v_proj.weight"),
        ("transformer_blocks.3.attn2.to_out.0.bias", "transformer_blocks.3.attn1.to_add_out.bias"),
        ("transformer_blocks.47.attn2.norm_q.weight", "transformer_blocks.47.attn1.norm_added_q.weight"),
        ("transformer_blocks.1.attn2.norm_k.bias", "transformer_blocks.1.attn1.norm_added_k.bias"),
        ("model.transformer_blocks.1.attn2.norm_k.bias", "model.transformer_blocks.1.attn1.norm_added_k.bias"),
    ],
)
def test_text_attention_keys_rename_both_ways(original, diffusers):
    assert original_to_diffusers_key(original) == diffusers
    assert diffusers_to_original_key(diffusers) == original


@pytest.mark.parametrize(
    "key",
    [
        "transformer_blocks.0.attn1.to_q.weight",
        "transformer_blocks.0.attn1.to_out.0.weight",
        "transformer_blocks.0.attn1.norm_q.weight",
        "transformer_blocks.0.txt_ff.net.2.bias",
        "text_proj.0.weight",
        "text_proj_t5.weight",
        "norm_out.linear.weight",
        "proj.weight",
    ],
)
def test_other_keys_are_the_same_in_both_layouts(key):
    assert original_to_diffusers_key(key) == key and diffusers_to_original_key(key) == key


def test_key_mapper_strips_the_prefix_and_converts_the_key_format(tiny_root, tmp_path):
    rename = key_mapper("diffusers", "model.diffusion_model.", target="original")
    assert (
        rename("model.diffusion_model.transformer_blocks.2.attn1.to_add_out.weight")
        == "transformer_blocks.2.attn2.to_out.0.weight"
    )
    assert rename("model.diffusion_model.proj.weight") == "proj.weight"
    assert rename("first_stage_model.encoder.conv_in.weight") is None  # another model's tensor: skipped
    found = detect(tiny_root / "tiny-EasyAnimateV5.1-7b-zh-InP-diffusers.safetensors")
    assert (
        found.key_mapper("original")("transformer_blocks.0.attn1.add_q_proj.bias")
        == "transformer_blocks.0.attn2.to_q.bias"
    )
    assert (
        found.key_mapper("diffusers")("transformer_blocks.0.attn1.add_q_proj.bias")
        == "transformer_blocks.0.attn1.add_q_proj.bias"
    )


def test_tiny_diffusers_folder_holds_the_original_tensors_under_renamed_keys(tiny_root):
    def tensors(name):
        path = tiny_root / name / "transformer" / "diffusion_pytorch_model.safetensors"
        with safe_open(str(path), framework="pt") as reader:
            return {k: reader.get_tensor(k) for k in reader.keys()}

    original = tensors("tiny-EasyAnimateV5.1-7b-zh-InP")
    diffusers = tensors("tiny-EasyAnimateV5.1-7b-zh-InP-diffusers")
    assert "transformer_blocks.1.attn2.to_out.0.weight" in original
    assert "transformer_blocks.1.attn1.to_add_out.weight" in diffusers
    assert {diffusers_to_original_key(k) for k in diffusers} == set(original)
    assert all(torch.equal(v, original[diffusers_to_original_key(k)]) for k, v in diffusers.items())


# --- streaming loader ------------------------------------------------------------------------------------------------------


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer("steps", torch.zeros(2, dtype=torch.int64))
        self.register_buffer("scratch", torch.zeros(5), persistent=False)


def toy_file(path: Path, **changes) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {
        "proj.weight": torch.randn(3, 4, generator=generator),
        "proj.bias": torch.randn(3, generator=generator),
        "norm.weight": 1 + torch.randn(3, generator=generator),
        "norm.bias": torch.randn(3, generator=generator),
        "steps": torch.tensor([7, 9]),
    }
    tensors.update(changes)
    save_file({k: v for k, v in tensors.items() if v is not None}, str(path))
    return tensors


def meta_toy() -> Toy:
    with torch.device("meta"):
        return Toy()


def test_streaming_loader_fills_a_meta_module_with_the_file_values(tmp_path):
    tensors = toy_file(tmp_path / "toy.safetensors")
    model = meta_toy()
    report = load_state_streaming(model, tmp_path / "toy.safetensors", dtype=torch.float32)
    assert sorted(report.loaded) == sorted(tensors)
    assert not any(p.is_meta for p in model.parameters())
    assert all(torch.equal(model.state_dict()[k], v) for k, v in tensors.items())
    assert model.steps.dtype == torch.int64  # integer tensors keep their dtype
    assert model.scratch.is_meta  # non-persistent buffers are the caller's to build


def test_streaming_loader_reports_every_missing_unexpected_and_misshaped_key_in_one_error(tmp_path):
    toy_file(
        tmp_path / "bad.safetensors",
        **{
            "norm.bias": None,
            "steps": None,
            "proj.weight": torch.zeros(3, 5),
            "extra.weight": torch.zeros(1),
            "proj_out.bias": torch.zeros(2),
        },
    )
    with pytest.raises(CheckpointError) as error:
        load_state_streaming(meta_toy(), tmp_path / "bad.safetensors")
    message = str(error.value)
    assert str(tmp_path / "bad.safetensors") in message
    assert "2 missing" in message and "norm.bias" in message and "steps" in message
    assert "2 unexpected" in message and "extra.weight" in message and "proj_out.bias" in message
    assert "1 wrongly shaped" in message and "proj.weight: file (3, 5), model expects (3, 4)" in message
    assert (sorted(error.value.missing), len(error.value.unexpected), len(error.value.mismatched)) == (
        ["norm.bias", "steps"],
        2,
        1,
    )


def test_non_strict_loading_tolerates_unexpected_keys_but_never_leaves_meta_tensors(tmp_path):
    toy_file(tmp_path / "extra.safetensors", **{"extra.weight": torch.zeros(1)})
    report = load_state_streaming(meta_toy(), tmp_path / "extra.safetensors", strict=False)
    assert report.unexpected == ["extra.weight  [extra.safetensors]"]
    toy_file(tmp_path / "short.safetensors", **{"norm.bias": None})
    with pytest.raises(CheckpointError, match="1 missing") as error:
        load_state_streaming(meta_toy(), tmp_path / "short.safetensors", strict=False)
    assert "norm.bias" in str(error.value)


@pytest.mark.parametrize("storage", [torch.float8_e4m3fn, torch.float8_e5m2, torch.float16, torch.bfloat16])
def test_streaming_loader_converts_to_the_storage_dtype(tmp_path, storage):
    tensors = toy_file(tmp_path / "toy.safetensors")
    model = meta_toy()
    load_state_streaming(
        model,
        tmp_path / "toy.safetensors",
        dtype=storage,
        keep_dtype=lambda name: torch.float32 if name.startswith("norm.") else None,
    )
    assert (model.proj.weight.dtype, model.proj.bias.dtype, model.norm.weight.dtype) == (
        storage,
        storage,
        torch.float32,
    )
    assert torch.equal(model.proj.weight.float(), tensors["proj.weight"].to(storage).float())
    assert torch.equal(model.norm.weight, tensors["norm.weight"])


def test_fp8_storage_computes_in_the_activation_dtype(tmp_path):
    from models import ops

    tensors = toy_file(tmp_path / "toy.safetensors")
    with torch.device("meta"):
        layer = ops.Linear(4, 3)
    load_state_streaming(
        layer,
        tmp_path / "toy.safetensors",
        dtype=torch.float8_e4m3fn,
        rename=lambda key: key.removeprefix("proj.") if key.startswith("proj.") else None,
    )
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(1))
    expected = (
        x @ tensors["proj.weight"].to(torch.float8_e4m3fn).float().T
        + tensors["proj.bias"].to(torch.float8_e4m3fn).float()
    )
    assert layer.weight.dtype == torch.float8_e4m3fn
    assert (layer(x) - expected).abs().max() <= 1e-6 * expected.abs().max()


def test_streaming_loader_reports_progress_and_stops_on_interrupt(tmp_path):
    toy_file(tmp_path / "toy.safetensors")
    seen = []
    load_state_streaming(
        meta_toy(), tmp_path / "toy.safetensors", progress=lambda done, total: seen.append((done, total))
    )
    assert seen == [(i, 5) for i in range(1, 6)]

    class Stop(Exception):
        pass

    calls = []

    def interrupt():
        calls.append(1)
        if len(calls) == 3:
            raise Stop

    with pytest.raises(Stop):
        load_state_streaming(meta_toy(), tmp_path / "toy.safetensors", interrupt=interrupt)
    assert len(calls) == 3


def test_streaming_loader_reads_shards_and_renames_keys(tiny_root):
    from diffusers import EasyAnimateTransformer3DModel

    folder = tiny_root / "tiny-EasyAnimateV5.1-12b-zh-Control"  # original keys into diffusers' module names
    config = json.loads((folder / "transformer" / "config.json").read_text())
    with torch.device("meta"):
        model = EasyAnimateTransformer3DModel(
            **{
                k: config[k]
                for k in (
                    "num_attention_heads",
                    "attention_head_dim",
                    "in_channels",
                    "out_channels",
                    "patch_size",
                    "num_layers",
                    "mmdit_layers",
                    "time_embed_dim",
                    "text_embed_dim",
                    "text_embed_dim_t5",
                    "add_norm_text_encoder",
                )
            }
        )
    files = weight_files(folder / "transformer")
    report = load_state_streaming(model, files, dtype=torch.float32, rename=original_to_diffusers_key)
    assert len(report.loaded) == 97 and not any(p.is_meta for p in model.parameters())
    with safe_open(str(files[0]), framework="pt") as reader:
        assert torch.equal(
            model.transformer_blocks[1].attn1.to_add_out.weight,
            reader.get_tensor("transformer_blocks.1.attn2.to_out.0.weight").float(),
        )


def test_a_7b_file_in_a_12b_model_is_refused_listing_every_missing_block_key(tiny_root):
    from diffusers import EasyAnimateTransformer3DModel

    with torch.device("meta"):
        model = EasyAnimateTransformer3DModel(
            num_attention_heads=2,
            attention_head_dim=16,
            in_channels=33,
            out_channels=16,
            patch_size=2,
            num_layers=4,
            mmdit_layers=4,
            time_embed_dim=24,
            text_embed_dim=64,
            add_norm_text_encoder=True,
        )
    file = tiny_root / "tiny-EasyAnimateV5.1-7b-zh-InP-diffusers.safetensors"
    with pytest.raises(CheckpointError) as error:
        load_state_streaming(model, file)
    assert len(error.value.missing) == 2 * 16  # attn2 (12) + txt_ff (4) tensors of blocks 2 and 3
    assert all(k.startswith(("transformer_blocks.2.", "transformer_blocks.3.")) for k in error.value.missing)


def test_v5_vae_attention_keys_are_unexpected_in_an_attention_free_vae(tiny_root):
    from diffusers import AutoencoderKLMagvit

    with torch.device("meta"):
        vae = AutoencoderKLMagvit(block_out_channels=[8, 16, 32, 32], norm_num_groups=4, layers_per_block=2)
    with pytest.raises(CheckpointError) as error:
        load_state_streaming(vae, weight_files(tiny_root / "tiny-EasyAnimateV5-12b-zh" / "vae"), dtype=torch.float32)
    assert len(error.value.unexpected) == 20 and not error.value.missing and not error.value.mismatched
    assert all(".mid_block.attentions.0." in k for k in error.value.unexpected)


# --- the tiny set itself ------------------------------------------------------------------------------------------------------


def test_tiny_vae_has_mid_attention_in_v5_and_not_in_v51(tiny_root):
    v5 = read_safetensors_header(
        tiny_root / "tiny-EasyAnimateV5-7b-zh-InP" / "vae" / "diffusion_pytorch_model.safetensors"
    )
    v51 = read_safetensors_header(
        tiny_root / "tiny-EasyAnimateV5.1-7b-zh" / "vae" / "diffusion_pytorch_model.safetensors"
    )
    attention = {k: v.shape for k, v in v5.items() if ".attentions." in k}
    assert len(v5) == 248 and len(v51) == 228 and set(v5) - set(attention) == set(v51)
    assert attention["decoder.mid_block.attentions.0.to_out.weight"] == (32, 32)
    assert attention["encoder.mid_block.attentions.0.group_norm.bias"] == (32,)
    assert {v.dtype for v in v5.values()} == {"F32"}


def test_tiny_transformer_key_counts_match_the_released_structure(tiny_root):
    def count(name):
        return len(read_safetensors_header(tiny_root / name / "transformer" / "diffusion_pytorch_model.safetensors"))

    # released: 12B = 48 MMDiT blocks x 40 + 17 (V5.1) / 18 (V5); non-MMDiT blocks have 24 tensors (docs/checkpoints.md,
    # transformer keys)
    assert count("tiny-EasyAnimateV5.1-12b-zh-InP") == 2 * 40 + 17
    assert count("tiny-EasyAnimateV5-12b-zh-InP") == 2 * 40 + 18
    assert count("tiny-EasyAnimateV5.1-7b-zh-InP") == 2 * 40 + 2 * 24 + 17
    assert count("tiny-EasyAnimateV5-7b-zh") == 2 * 40 + 2 * 24 + 18


def test_tiny_weights_are_non_trivial(tiny_root):
    path = tiny_root / "tiny-EasyAnimateV5.1-7b-zh-Control" / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(path), framework="pt") as reader:
        tensors = {k: reader.get_tensor(k).float() for k in reader.keys()}
    assert {str(t.dtype) for t in tensors.values()} == {"torch.float32"}  # stored bf16, read back as float
    for key, tensor in tensors.items():
        spread = tensor.std().item()
        if tensor.ndim == 1 and key.endswith("weight"):  # norm scales: 1 +- 0.1, never exactly 1
            assert 0.03 <= spread <= 0.3 and abs(tensor.mean().item() - 1) <= 0.2, key
        else:  # matrices and biases (diffusers zero-inits some of them)
            assert 0.01 <= spread <= 0.3, key


def test_tiny_generation_is_deterministic(tiny_root):
    again = transformer_tensors("v5", "7b", "control", seed=123)
    assert all(torch.equal(v, again[k]) for k, v in transformer_tensors("v5", "7b", "control", seed=123).items())
    assert not torch.equal(again["proj.weight"], transformer_tensors("v5", "7b", "control", seed=124)["proj.weight"])


def test_tiny_diffusers_layout_loads_in_diffusers_without_missing_keys(tiny_root):
    from diffusers import AutoencoderKLMagvit, EasyAnimateTransformer3DModel

    folder = tiny_root / "tiny-EasyAnimateV5.1-7b-zh-Control-Camera-diffusers"
    model = EasyAnimateTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=torch.bfloat16)
    with safe_open(str(folder / "transformer" / "diffusion_pytorch_model.safetensors"), framework="pt") as reader:
        assert set(model.state_dict()) == set(reader.keys())
        assert torch.equal(model.proj.weight, reader.get_tensor("proj.weight"))
    assert (model.config.in_channels, model.config.num_layers, model.config.mmdit_layers) == (38, 4, 2)
    vae = AutoencoderKLMagvit.from_pretrained(folder / "vae")
    assert vae.config.block_out_channels == [8, 16, 32, 32] and vae.config.scaling_factor == 0.7125


def test_tiny_set_is_small_and_complete(tiny_root):
    seen, total = set(), 0
    for path in tiny_root.rglob("*"):
        if path.is_file():
            stat = path.stat()
            if (stat.st_dev, stat.st_ino) not in seen:  # hard-linked duplicates count once
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    assert total <= 50 * 1024 * 1024
    assert sorted(p.name for p in tiny_root.iterdir() if not p.name.startswith(".")) == sorted(TINY_MODELS)
    assert (tiny_root / ".complete").is_file()


def test_concurrent_builds_leave_one_complete_set(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    import tiny_checkpoints

    calls = []
    original = tiny_checkpoints.build_tiny_checkpoints

    def fake_build(dest, with_text=True):  # the real build is covered above; here only the hand-over matters
        calls.append(dest)
        (Path(dest) / "marker").write_text(str(dest))
        return dest

    tiny_checkpoints.build_tiny_checkpoints = fake_build
    try:
        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(lambda _: tiny_checkpoints.ensure_tiny_checkpoints(tmp_path), range(3)))
    finally:
        tiny_checkpoints.build_tiny_checkpoints = original
    assert len(set(results)) == 1 and (results[0] / ".complete").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [results[0].name]  # losers' temp dirs removed
    assert os.listdir(results[0]) and 1 <= len(calls) <= 3
