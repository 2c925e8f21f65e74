"""Find, detect, rename and stream-load EasyAnimate checkpoints (safetensors only).

* `read_safetensors_header` reads the 8-byte length + JSON header of a file and nothing else, so detection of a
  24 GB transformer costs a few kilobytes of I/O.
* `detect` tells version / size / kind / layout for a model folder (original or `-diffusers` layout) or for a single
  transformer `.safetensors`, from tensor names and shapes; config.json values are checked against the weights.
* `load_state_streaming` fills a module built on the meta device one tensor at a time, converting straight to the
  storage dtype, and reports every missing / unexpected / wrongly shaped key in one error (the reference loader
  silently skips mismatches, docs/faithfulness.md, numerical pitfalls).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch
from torch import nn

from .variants import (
    V5,
    V5_1,
    VARIANTS,
    Variant,
    kind_for_in_channels,
    released_vae_config,
    variant_for,
)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used as it is (corrupt, wrong model, keys that do not fit)."""


class UnsafeCheckpointError(CheckpointError):
    """Only pickle weights were found; we never unpickle model files."""


class MissingFilesError(FileNotFoundError):
    """A model folder lacks files. `missing` lists every one as (absolute path, what belongs there)."""

    def __init__(self, folder: Path, missing: list[tuple[Path, str]], *, what: str = "model folder",
                 download_hint: str = "", note: str = ""):
        self.folder = Path(folder)
        self.missing = list(missing)
        lines = [f"{what} {self.folder} is incomplete: {len(self.missing)} "
                 f"{'file is' if len(self.missing) == 1 else 'files are'} missing:"]
        lines += [f"  {path} — {description}" for path, description in self.missing]
        if note:
            lines.append(note)
        if download_hint:
            lines.append(download_hint)
        super().__init__("\n".join(lines))


# --- safetensors headers ---------------------------------------------------------------------------------------------

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    dtype: str  # safetensors dtype name: "BF16", "F32", "F8_E4M3", ...
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]  # [begin, end) relative to the end of the header

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.data_offsets[1] - self.data_offsets[0]


def read_safetensors_header(path: str | Path) -> dict[str, TensorInfo]:
    """Tensor name -> TensorInfo, read from the header alone (never the tensor data).

    Truncated or corrupt files raise CheckpointError naming the file; `__metadata__` is left out.
    """
    path = Path(path)
    file_size = path.stat().st_size
    if file_size < 8:
        raise CheckpointError(f"{path} is truncated ({file_size} bytes): a safetensors file starts with an 8-byte "
                              f"header length. Re-download it.")
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len == 0 or header_len > _MAX_HEADER_BYTES or header_len > file_size - 8:
            raise CheckpointError(
                f"{path} is not a valid safetensors file (header length {header_len} bytes, file size "
                f"{file_size} bytes): it is truncated or not safetensors at all. Re-download it.")
        raw = handle.read(header_len)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} has a corrupt safetensors header ({error}). Re-download it.") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} has a corrupt safetensors header (not a JSON object). Re-download it.")

    data_size = file_size - 8 - header_len
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], tuple(int(d) for d in entry["shape"]), entry["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {entry!r}") from None
        info = TensorInfo(dtype=str(dtype), shape=shape, data_offsets=(int(begin), int(end)))
        if not 0 <= info.data_offsets[0] <= info.data_offsets[1]:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: offsets {begin}..{end}")
        itemsize = _DTYPE_BYTES.get(info.dtype)
        if itemsize is not None and info.nbytes != info.numel * itemsize:
            raise CheckpointError(f"{path}: corrupt header entry for tensor {name!r}: {info.dtype}{list(shape)} "
                                  f"needs {info.numel * itemsize} bytes, offsets span {info.nbytes}")
        if info.data_offsets[1] > data_size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {info.data_offsets[1]} of the data section, "
                f"but the file holds only {data_size} data bytes. Re-download it.")
        tensors[name] = info
    return tensors


def read_headers(files: Iterable[str | Path]) -> dict[str, tuple[TensorInfo, Path]]:
    """Merged headers of several shards: name -> (info, file). A name present in two files is an error."""
    merged: dict[str, tuple[TensorInfo, Path]] = {}
    for file in files:
        file = Path(file)
        for name, info in read_safetensors_header(file).items():
            if name in merged:
                raise CheckpointError(f"tensor {name!r} is stored twice: in {merged[name][1]} and in {file}")
            merged[name] = (info, file)
    return merged


# --- weight files of a component folder -------------------------------------------------------------------------------


def _pickle_refusal(folder: Path, pickles: list[Path]) -> UnsafeCheckpointError:
    names = ", ".join(p.name for p in pickles)
    return UnsafeCheckpointError(
        f"{folder} holds only pickle weights ({names}). This pack loads safetensors only: unpickling a model file "
        f"can run arbitrary code. Download the .safetensors files of this model (every EasyAnimate release on "
        f"https://huggingface.co/alibaba-pai ships them), or convert a file you trust yourself, e.g.\n"
        f"  python -c \"import torch, safetensors.torch as st; "
        f"st.save_file(torch.load('IN.bin', weights_only=True), 'OUT.safetensors')\"\n"
        f"and put the .safetensors file into {folder}.")


def _index_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(shards that exist, shards that are missing) per the folder's `*.safetensors.index.json`; ([], []) if none."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if not indexes:
        return [], []
    if len(indexes) > 1:
        raise CheckpointError(f"{folder} has several shard indexes ({', '.join(i.name for i in indexes)}); "
                              f"keep the one that belongs to the weights.")
    try:
        weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{indexes[0]} is not a valid shard index ({error}). Re-download it.") from None
    shards = [folder / name for name in names]
    return [s for s in shards if s.is_file()], [s for s in shards if not s.is_file()]


def weight_files(folder: str | Path, *, describe: str = "weights") -> list[Path]:
    """The `*.safetensors` of one component folder, honouring a `*.safetensors.index.json` shard map.

    Raises MissingFilesError (folder or listed shards absent, no weights at all) or UnsafeCheckpointError (only
    pickle files: .bin/.pt/.pth/.ckpt).
    """
    folder = Path(folder).absolute()
    if not folder.is_dir():
        raise MissingFilesError(folder, [(folder / "diffusion_pytorch_model.safetensors", describe)],
                                what="weights folder")
    present, absent = _index_files(folder)
    if absent:
        index = next(folder.glob("*.safetensors.index.json")).name
        raise MissingFilesError(folder, [(s, f"shard of {describe} listed in {index}") for s in absent],
                                what="weights folder")
    if present:
        return present
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if files:
        return files
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_refusal(folder, pickles)
    raise MissingFilesError(folder, [(folder / "diffusion_pytorch_model.safetensors", describe)],
                            what="weights folder")


# --- original <-> diffusers transformer key names (docs/checkpoints.md, transformer keys) -----------------------------

_ORIGINAL_TO_DIFFUSERS = {
    "to_q": "add_q_proj",
    "to_k": "add_k_proj",
    "to_v": "add_v_proj",
    "to_out.0": "to_add_out",
    "norm_q": "norm_added_q",
    "norm_k": "norm_added_k",
}
_DIFFUSERS_TO_ORIGINAL = {v: k for k, v in _ORIGINAL_TO_DIFFUSERS.items()}
_ORIGINAL_KEY = re.compile(r"^((?:.*\.)?transformer_blocks\.\d+\.)attn2\.(to_q|to_k|to_v|to_out\.0|norm_q|norm_k)\.(.+)$")
_DIFFUSERS_KEY = re.compile(
    r"^((?:.*\.)?transformer_blocks\.\d+\.)attn1\.(add_q_proj|add_k_proj|add_v_proj|to_add_out|norm_added_q|"
    r"norm_added_k)\.(.+)$")


def original_to_diffusers_key(key: str) -> str:
    """`transformer_blocks.i.attn2.to_q.weight` -> `transformer_blocks.i.attn1.add_q_proj.weight`; others unchanged."""
    match = _ORIGINAL_KEY.match(key)
    if not match:
        return key
    return f"{match[1]}attn1.{_ORIGINAL_TO_DIFFUSERS[match[2]]}.{match[3]}"


def diffusers_to_original_key(key: str) -> str:
    """`transformer_blocks.i.attn1.add_q_proj.weight` -> `transformer_blocks.i.attn2.to_q.weight`; others unchanged."""
    match = _DIFFUSERS_KEY.match(key)
    if not match:
        return key
    return f"{match[1]}attn2.{_DIFFUSERS_TO_ORIGINAL[match[2]]}.{match[3]}"


def key_mapper(key_format: str, key_prefix: str = "", target: str = "original") -> Callable[[str], str | None]:
    """A `rename` for load_state_streaming: strip `key_prefix` (keys without it are skipped: they belong to other
    models in an all-in-one file) and convert `key_format` key names to `target` ("original" | "diffusers")."""
    if {key_format, target} - {"original", "diffusers"}:
        raise ValueError(f"key formats are 'original' or 'diffusers', got {key_format!r} -> {target!r}")
    convert = {("diffusers", "original"): diffusers_to_original_key,
               ("original", "diffusers"): original_to_diffusers_key}.get((key_format, target), lambda key: key)

    def rename(key: str) -> str | None:
        if not key.startswith(key_prefix):
            return None
        return convert(key[len(key_prefix):])

    return rename


# --- transformer config from tensor names and shapes -------------------------------------------------------------------

_ANCHOR = "time_embedding.linear_1.weight"
_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_VAE_KEYS = ("encoder.conv_in.weight", "decoder.conv_in.weight", "post_quant_conv.weight")
# Architecture fields the weights determine; config.json must agree with them.
STRUCTURAL_FIELDS = ("in_channels", "out_channels", "patch_size", "num_attention_heads", "attention_head_dim",
                     "time_embed_dim", "num_layers", "mmdit_layers", "text_embed_dim", "text_embed_dim_t5",
                     "add_norm_text_encoder", "after_norm")


@dataclass(frozen=True)
class InferredTransformer:
    """What a transformer's tensor names and shapes say about it."""

    version: str
    size: str
    kind: str
    key_format: str  # "original" (attn2.*) | "diffusers" (attn1.add_*_proj)
    key_prefix: str  # prefix in front of every key ("" for released files)
    config: dict  # the STRUCTURAL_FIELDS


def infer_transformer(shapes: Mapping[str, tuple[int, ...]], source: str | Path = "checkpoint") -> InferredTransformer:
    """Infer version / size / kind / structural config from `name -> shape` (a header; no tensor data needed)."""
    anchors = [k for k in shapes if k == _ANCHOR or k.endswith("." + _ANCHOR)]
    if len(anchors) != 1:
        if any(k.endswith(v) for k in shapes for v in _VAE_KEYS):
            raise CheckpointError(f"{source} holds VAE weights (encoder/decoder keys), not an EasyAnimate "
                                  f"transformer. Transformer files have keys such as proj.weight, "
                                  f"transformer_blocks.0.attn1.to_q.weight.")
        sample = ", ".join(sorted(shapes)[:5]) or "no tensors"
        problem = "no" if not anchors else "several"
        raise CheckpointError(
            f"{source} is not an EasyAnimate V5/V5.1 transformer: {problem} {_ANCHOR!r} key found (first keys: "
            f"{sample}). Expected the released transformer/diffusion_pytorch_model.safetensors key names.")
    prefix = anchors[0][: -len(_ANCHOR)]
    local = {k[len(prefix):]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}

    def need(key: str, ndim: int) -> tuple[int, ...]:
        shape = local.get(key)
        if shape is None or len(shape) != ndim:
            raise CheckpointError(f"{source} is not an EasyAnimate V5/V5.1 transformer: "
                                  f"{prefix + key!r} is {'missing' if shape is None else f'shaped {shape}'}.")
        return shape

    inner, in_channels, patch, _ = need("proj.weight", 4)
    head_dim = need("transformer_blocks.0.attn1.norm_q.weight", 1)[0]
    time_embed_dim = need(_ANCHOR, 2)[0]
    out_features = need("proj_out.weight", 2)[0]

    blocks: dict[int, set[str]] = {}
    for key in local:
        match = _BLOCK_KEY.match(key)
        if match:
            blocks.setdefault(int(match[1]), set()).add(match[2])
    num_layers = max(blocks) + 1
    if sorted(blocks) != list(range(num_layers)):
        gaps = sorted(set(range(num_layers)) - set(blocks))
        raise CheckpointError(f"{source}: transformer blocks {gaps} are missing (found {len(blocks)} of "
                              f"{num_layers}); the file is incomplete.")
    original = [i for i, keys in blocks.items() if "attn2.to_q.weight" in keys]
    diffusers = [i for i, keys in blocks.items() if "attn1.add_q_proj.weight" in keys]
    if original and diffusers:
        raise CheckpointError(f"{source} mixes original (attn2.*) and diffusers (attn1.add_*_proj) key names.")
    mmdit = sorted(original or diffusers)
    if not mmdit:
        raise CheckpointError(f"{source} has no MMDiT blocks (no attn2.* / attn1.add_q_proj keys); every released "
                              f"EasyAnimate V5/V5.1 transformer starts with MMDiT blocks.")
    if mmdit != list(range(len(mmdit))):
        raise CheckpointError(f"{source}: MMDiT blocks must come first, found them at {mmdit}.")

    if "text_proj_t5.weight" in local:
        version, add_norm = V5, False
        text_embed_dim = need("text_proj.weight", 2)[1]
        text_embed_dim_t5 = need("text_proj_t5.weight", 2)[1]
    elif "text_proj.0.weight" in local:
        version, add_norm = V5_1, True
        text_embed_dim = need("text_proj.0.weight", 1)[0]
        text_embed_dim_t5 = None
    else:
        raise CheckpointError(f"{source}: cannot tell V5 from V5.1: expected text_proj_t5.weight (V5, Bert + mT5) or "
                              f"text_proj.0.weight (V5.1, Qwen2-VL RMSNorm).")
    try:
        kind = kind_for_in_channels(version, in_channels)
    except ValueError as error:
        raise CheckpointError(f"{source}: {error}") from None

    config = {
        "in_channels": in_channels,
        "out_channels": out_features // (patch * patch),
        "patch_size": patch,
        "num_attention_heads": inner // head_dim,
        "attention_head_dim": head_dim,
        "time_embed_dim": time_embed_dim,
        "num_layers": num_layers,
        "mmdit_layers": len(mmdit),
        "text_embed_dim": text_embed_dim,
        "text_embed_dim_t5": text_embed_dim_t5,
        "add_norm_text_encoder": add_norm,
        "after_norm": any(k.startswith("norm3.") for keys in blocks.values() for k in keys),
    }
    return InferredTransformer(
        version=version,
        # 7B: trailing non-MMDiT blocks (docs/checkpoints.md, transformer config)
        size="12b" if len(mmdit) == num_layers else "7b",
        kind=kind,
        key_format="diffusers" if diffusers else "original",
        key_prefix=prefix,
        config=config,
    )


# --- detection ----------------------------------------------------------------------------------------------------------


@dataclass
class Detection:
    version: str  # "v5" | "v5.1"
    size: str  # "7b" | "12b" (structural: trailing non-MMDiT blocks -> 7b)
    kind: str  # "t2v" | "inp" | "control" | "control_camera"
    layout: str  # "original" | "diffusers" | "single_file"
    variant: Variant  # registry entry (released=False for an unreleased combination such as V5-7B Control)
    transformer_config: dict  # released values <- config.json <- values the weights determine
    paths: dict[str, Path]  # component -> absolute path (folders; "transformer" is the file for single files)
    transformer_files: list[Path] = field(default_factory=list)
    key_format: str = "original"  # key names inside the transformer files
    key_prefix: str = ""  # strip this from every transformer key (single files saved by other tools)
    vae_config: dict | None = None  # released values <- vae/config.json (folders only)
    name: str = ""

    def key_mapper(self, target: str = "original") -> Callable[[str], str | None]:
        """`rename` that maps this checkpoint's transformer keys onto `target` ("original" | "diffusers") names."""
        return key_mapper(self.key_format, self.key_prefix, target)


_VERSION_LABEL = {V5: "V5 ", V5_1: "V5.1 "}
_SIZE_HINT = {"7b": "≈13.6 GB", "12b": "≈23.6 GB", None: "13.6 GB for 7B, 23.6 GB for 12B"}
_WEIGHTS, _FILE = "weights", "file"


def _requirements(version: str | None, size: str | None) -> list[tuple[str, str, str, tuple[str, ...], str]]:
    """(component, check, shown path, alternatives, description) of what a model folder must hold; `check` is
    _WEIGHTS (any *.safetensors / complete shard index in that folder) or _FILE (the file, or all alternatives)."""
    needs = [
        ("transformer", _WEIGHTS, "transformer/diffusion_pytorch_model.safetensors", (),
         f"the MMDiT transformer weights ({_SIZE_HINT[size]}, bf16)"),
        ("vae", _WEIGHTS, "vae/diffusion_pytorch_model.safetensors", (), "the causal 3D VAE weights (≈1 GB)"),
    ]
    if version == V5:
        needs += [
            ("text_encoder", _FILE, "text_encoder/config.json", (),
             "Bert text-encoder config (HunyuanDiT bilingual CLIP, hidden 1024)"),
            ("text_encoder", _WEIGHTS, "text_encoder/model.safetensors", (), "Bert text-encoder weights (≈1.4 GB)"),
            ("tokenizer", _FILE, "tokenizer/vocab.txt", ("tokenizer/tokenizer.json",), "Bert tokenizer vocabulary"),
            ("tokenizer", _FILE, "tokenizer/tokenizer_config.json", (), "Bert tokenizer settings (max length 77)"),
            ("text_encoder_2", _FILE, "text_encoder_2/config.json", (), "mT5-XL encoder config (d_model 2048)"),
            ("text_encoder_2", _WEIGHTS, "text_encoder_2/model.safetensors.index.json", (),
             "mT5 encoder weights (≈6.7 GB: this index and the 2 shards it lists)"),
            ("tokenizer_2", _FILE, "tokenizer_2/spiece.model", ("tokenizer_2/tokenizer.json",),
             "mT5 sentencepiece tokenizer"),
        ]
    elif version == V5_1:
        needs += [
            ("text_encoder", _FILE, "text_encoder/config.json", (), "Qwen2-VL-7B-Instruct config"),
            ("text_encoder", _WEIGHTS, "text_encoder/model.safetensors.index.json", (),
             "Qwen2-VL-7B-Instruct weights (≈16.6 GB: this index and the 5 shards it lists)"),
            ("tokenizer", _FILE, "tokenizer/tokenizer.json", ("tokenizer/vocab.json", "tokenizer/merges.txt"),
             "Qwen2 tokenizer (tokenizer.json, or vocab.json + merges.txt)"),
            ("tokenizer", _FILE, "tokenizer/tokenizer_config.json", (), "Qwen2 tokenizer settings"),
        ]
    return needs


def _check_weights(folder: Path, shown: Path, description: str) -> list[tuple[Path, str]]:
    """Missing entries for a weights folder ([] when complete). Pickle-only folders raise."""
    if not folder.is_dir():
        return [(shown, description)]
    present, absent = _index_files(folder)
    if absent:
        return [(s, f"shard of {description}") for s in absent]
    if present or any(p.is_file() for p in folder.glob("*.safetensors")):
        return []
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    if pickles:
        raise _pickle_refusal(folder, pickles)
    return [(shown, description)]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}). Re-download it.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} is not a JSON object. Re-download it.")
    return data


def _guess_version(root: Path) -> str | None:
    """V5 or V5.1 from the folder's other files, when the transformer is missing."""
    index = root / "model_index.json"
    if index.is_file():
        text = index.read_text(encoding="utf-8", errors="replace")
        if "text_encoder_2" in text or "Multi_Text_Encoder" in text:
            return V5
        if "Qwen2" in text:
            return V5_1
    encoder_config = root / "text_encoder" / "config.json"
    if encoder_config.is_file():
        text = encoder_config.read_text(encoding="utf-8", errors="replace")
        if '"bert"' in text:
            return V5
        if "qwen2_vl" in text:
            return V5_1
    if (root / "text_encoder_2").exists() or (root / "tokenizer_2").exists():
        return V5
    if "V5.1" in root.name:
        return V5_1
    if "V5-" in root.name:
        return V5
    return None


def _download_hint(root: Path, variant: Variant | None, layout: str) -> str:
    name = None
    if variant is not None and variant.released:
        name = variant.diffusers_name if layout == "diffusers" else variant.name
    elif root.name in VARIANTS or root.name.removesuffix("-diffusers") in VARIANTS:
        name = root.name
    where = f"https://huggingface.co/alibaba-pai/{name}" if name else "https://huggingface.co/alibaba-pai"
    return f"Download the missing files from {where} (same folder structure) into {root}."


def detect(path: str | Path) -> Detection:
    """Identify an EasyAnimate V5/V5.1 model folder (original or diffusers layout) or single transformer file.

    Reads JSON configs and safetensors headers only. A folder with missing parts raises one MissingFilesError that
    lists every missing path; config.json values that contradict the weights raise CheckpointError.
    """
    path = Path(path).expanduser().absolute()
    if path.is_file() or path.suffix.lower() in (".safetensors", ".sft") + PICKLE_SUFFIXES:
        return _detect_single_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} does not exist: expected an EasyAnimate model folder (with transformer/, "
                                f"vae/, text_encoder/, ...) or a transformer .safetensors file.")
    if path.name == "transformer" and not (path / "transformer").exists() and (path.parent / "vae").exists():
        path = path.parent  # pointed at the transformer subfolder of a full model folder
    return _detect_folder(path)


def _detect_single_file(path: Path) -> Detection:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(path.parent, [path])
    if not path.is_file():
        raise MissingFilesError(path.parent, [(path, "a transformer .safetensors file")], what="folder")
    header = read_safetensors_header(path)
    inferred = infer_transformer({k: v.shape for k, v in header.items()}, path)
    variant = variant_for(inferred.version, inferred.size, inferred.kind)
    config = variant.transformer_config()
    config.update(inferred.config)
    return Detection(
        version=inferred.version, size=inferred.size, kind=inferred.kind, layout="single_file", variant=variant,
        transformer_config=config, paths={"transformer": path}, transformer_files=[path],
        key_format=inferred.key_format, key_prefix=inferred.key_prefix, vae_config=None, name=path.stem,
    )


def _detect_folder(root: Path) -> Detection:
    missing: list[tuple[Path, str]] = []
    transformer_dir = root / "transformer"
    inferred = None
    missing += _check_weights(transformer_dir, transformer_dir / "diffusion_pytorch_model.safetensors",
                              f"the MMDiT transformer weights ({_SIZE_HINT[None]}, bf16)")
    transformer_files: list[Path] = []
    if not missing:
        transformer_files = weight_files(transformer_dir, describe="the MMDiT transformer weights")
        headers = read_headers(transformer_files)
        inferred = infer_transformer({k: info.shape for k, (info, _) in headers.items()}, transformer_dir)
    version = inferred.version if inferred else _guess_version(root)

    for component, check, shown, alternatives, description in _requirements(version, inferred and inferred.size):
        if component == "transformer":
            continue
        target = root / shown
        if check == _WEIGHTS:
            missing += _check_weights(target.parent, target, description)
        elif not target.is_file() and not (alternatives and all((root / a).is_file() for a in alternatives)):
            missing.append((target, description))
    if missing:
        variant = variant_for(inferred.version, inferred.size, inferred.kind) if inferred else None
        note = "" if version else ("Could not tell V5 from V5.1 without the transformer, so the text-encoder files "
                                   "were not checked yet.")
        layout = inferred.key_format if inferred else ("diffusers" if root.name.endswith("-diffusers") else "original")
        raise MissingFilesError(root, missing, what=f"EasyAnimate {_VERSION_LABEL.get(version, '')}model folder",
                                download_hint=_download_hint(root, variant, layout), note=note)

    variant = variant_for(inferred.version, inferred.size, inferred.kind)
    config = variant.transformer_config()
    config_path = transformer_dir / "config.json"
    if config_path.is_file():
        on_disk = _read_json(config_path)
        conflicts = [f"{key}: config.json says {on_disk[key]!r}, the weights say {value!r}"
                     for key, value in inferred.config.items() if key in on_disk and on_disk[key] != value]
        if conflicts:
            raise CheckpointError(
                f"{config_path} contradicts the weights in {transformer_dir}:\n  " + "\n  ".join(conflicts) +
                "\nThe weights decide the architecture: restore the released config.json or delete it.")
        config.update(on_disk)
    config.update(inferred.config)

    vae_dir = root / "vae"
    vae_config = released_vae_config(inferred.version)
    if (vae_dir / "config.json").is_file():
        vae_config.update(_read_json(vae_dir / "config.json"))
    else:  # mid attention follows the weights when no config says otherwise
        vae_keys = read_headers(weight_files(vae_dir, describe="the causal 3D VAE weights"))
        vae_config["mid_block_use_attention"] = any(".mid_block.attentions." in k for k in vae_keys)

    components = ["transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"]
    paths = {c: root / c for c in components if (root / c).is_dir()}
    return Detection(
        version=inferred.version, size=inferred.size, kind=inferred.kind, layout=inferred.key_format,
        variant=variant, transformer_config=config, paths=paths, transformer_files=transformer_files,
        key_format=inferred.key_format, key_prefix=inferred.key_prefix, vae_config=vae_config, name=root.name,
    )


# --- streaming loader --------------------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    files: list[Path]
    loaded: list[str]  # module names that received a tensor
    missing: list[str]  # only non-empty with strict=False (module built off-meta keeps its values)
    unexpected: list[str]  # file keys with no module target, only with strict=False


def _tensor_targets(module: nn.Module) -> dict[str, tuple[nn.Module, str, bool]]:
    """state-dict name -> (owning module, attribute, is_parameter) for parameters and persistent buffers."""
    targets = {}
    for prefix, owner in module.named_modules(remove_duplicate=False):
        dot = f"{prefix}." if prefix else ""
        for attr, param in owner._parameters.items():
            if param is not None:
                targets[dot + attr] = (owner, attr, True)
        for attr, buffer in owner._buffers.items():
            if buffer is not None and attr not in owner._non_persistent_buffers_set:
                targets[dot + attr] = (owner, attr, False)
    return targets


def load_state_streaming(
    module: nn.Module,
    files: str | Path | Iterable[str | Path],
    dtype: torch.dtype | None = torch.bfloat16,
    rename: Callable[[str], str | None] | None = None,
    keep_dtype: Callable[[str], torch.dtype | None] | None = None,
    strict: bool = True,
    device: str | torch.device = "cpu",
    progress: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], None] | None = None,
) -> LoadReport:
    """Fill `module` (built on the meta device) from safetensors `files`, one tensor at a time.

    Each tensor is read through safetensors' mmap reader, converted to its storage dtype — `keep_dtype(name)` if
    that returns a dtype, else `dtype` (None keeps the file's dtype; integer tensors always keep theirs) — moved to
    `device`, and assigned in place of the module's parameter/buffer; no second copy of the model is ever held.
    `rename(file_key)` maps file keys to module names (return None to skip a key on purpose).

    All problems are collected first from the headers (before any data is read) and raised as one CheckpointError
    naming the files: wrongly shaped keys always; missing and unexpected keys when `strict`. With strict=False,
    missing keys are tolerated only for tensors that are not on the meta device. Non-persistent buffers are not
    loaded; the caller builds them. Returns a LoadReport.
    """
    if isinstance(files, (str, Path)):
        files = [files]
    files = [Path(f).absolute() for f in files]
    if not files:
        raise CheckpointError(f"no weight files given to load into {type(module).__name__}")
    for file in files:
        if file.suffix.lower() in PICKLE_SUFFIXES:
            raise _pickle_refusal(file.parent, [file])
    targets = _tensor_targets(module)

    plan: dict[Path, list[tuple[str, str]]] = {file: [] for file in files}  # file -> [(file key, module name)]
    source: dict[str, tuple[str, Path]] = {}
    unexpected, mismatched, duplicates = [], [], []
    for file in files:
        for key, info in read_safetensors_header(file).items():
            name = rename(key) if rename is not None else key
            if name is None:
                continue
            if name not in targets:
                unexpected.append(f"{key}  [{file.name}]")
                continue
            if name in source:
                duplicates.append(f"{name}  [{source[name][1].name} and {file.name}]")
                continue
            source[name] = (key, file)
            owner, attr, _ = targets[name]
            expected = tuple(getattr(owner, attr).shape)
            if info.shape != expected:
                mismatched.append(f"{key}: file {info.shape}, model expects {expected}  [{file.name}]")
                continue
            plan[file].append((key, name))
    missing = [name for name in targets if name not in source]
    missing_on_meta = [name for name in missing if getattr(targets[name][0], targets[name][1]).is_meta]

    sections = []
    reported_missing = missing if strict else missing_on_meta
    if reported_missing:
        sections.append((f"{len(reported_missing)} missing (the model needs them, the files lack them)",
                         reported_missing))
    if unexpected and strict:
        sections.append((f"{len(unexpected)} unexpected (in the files, no such tensor in the model)", unexpected))
    if mismatched:
        sections.append((f"{len(mismatched)} wrongly shaped", mismatched))
    if duplicates:
        sections.append((f"{len(duplicates)} stored more than once", duplicates))
    if sections:
        shown = ", ".join(str(f) for f in files)
        lines = [f"checkpoint {shown} does not fit the {type(module).__name__} it is loaded into:"]
        for title, names in sections:
            lines.append(f"  {title}:")
            lines += [f"    {n}" for n in names]
        lines.append("This usually means the files belong to another model variant, are incomplete, or the "
                     "config.json next to them does not match the weights.")
        error = CheckpointError("\n".join(lines))
        error.missing, error.unexpected, error.mismatched = reported_missing, unexpected, mismatched
        raise error

    # Tensors are read with plain file reads, one at a time, into a temporary of the stored dtype, then converted:
    # unlike an mmap reader, pages already read never count towards the process's RSS, so peak host memory stays
    # at the final weights plus one tensor (benchmarks/memory.py).
    total = sum(len(entries) for entries in plan.values())
    done = 0
    loaded = []
    for file, entries in plan.items():
        if not entries:
            continue
        header = read_safetensors_header(file)
        # One read buffer per file, reused for every tensor: fresh per-tensor temporaries would be kept by the C
        # allocator and show up as RSS. Each tensor is then copied out (copy=True), converted on the way.
        buffer = torch.empty(max(header[key].nbytes for key, _ in entries), dtype=torch.uint8)
        with open(file, "rb") as handle:
            data_start = 8 + int.from_bytes(handle.read(8), "little")
            for key, name in entries:
                if interrupt is not None:
                    interrupt()
                tensor = _read_tensor(handle, file, key, header[key], data_start, buffer)
                wanted = keep_dtype(name) if keep_dtype is not None else None
                wanted = wanted or dtype
                if wanted is not None and tensor.is_floating_point():
                    tensor = tensor.to(device=device, dtype=wanted, copy=True)
                else:
                    tensor = tensor.to(device=device, copy=True)
                owner, attr, is_parameter = targets[name]
                if is_parameter:
                    owner._parameters[attr] = nn.Parameter(tensor, requires_grad=False)
                else:
                    owner._buffers[attr] = tensor
                loaded.append(name)
                done += 1
                if progress is not None:
                    progress(done, total)

    still_meta = [name for name, (owner, attr, _) in targets.items() if getattr(owner, attr).is_meta]
    if still_meta:
        raise CheckpointError(f"after loading {', '.join(str(f) for f in files)} these tensors were never "
                              f"filled: {', '.join(still_meta)}")
    return LoadReport(files=files, loaded=loaded, missing=missing, unexpected=unexpected)


_TORCH_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64, "I32": torch.int32,
    "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}  # fmt: skip


def _read_tensor(handle, file: Path, key: str, info: TensorInfo, data_start: int, buffer: torch.Tensor) -> torch.Tensor:
    """One tensor of an open safetensors file, read (not mapped) into `buffer`, viewed in its stored dtype.

    The result aliases `buffer`: copy it before reading the next tensor."""
    if info.dtype not in _TORCH_DTYPES:
        raise CheckpointError(f"{file}: tensor {key!r} has dtype {info.dtype}, which EasyAnimate weights never use")
    raw = buffer[: info.nbytes]
    handle.seek(data_start + info.data_offsets[0])
    read = handle.readinto(memoryview(raw.numpy()))
    if read != info.nbytes:
        raise CheckpointError(
            f"{file} could not be read: tensor {key!r} is cut short ({read} of {info.nbytes} bytes); the file is "
            "truncated or corrupt. Re-download it."
        )
    return raw.view(_TORCH_DTYPES[info.dtype]).reshape(info.shape)
