"""What a checkpoint is, from names, shapes and config files only (no tensor data is read).

`infer_transformer` tells version / size / kind / key layout from a transformer's header; `detect` checks a whole model
folder (original or `-diffusers` layout) or a single transformer file, lists every missing file in one error, and
checks config.json values against the weights (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from ..variants import (
    V5,
    V5_1,
    VARIANTS,
    Variant,
    kind_for_in_channels,
    released_vae_config,
    transformer_size_hint,
    variant_for,
)
from .files import find_weights, weight_files
from .headers import (
    PICKLE_SUFFIXES,
    CheckpointError,
    MissingFilesError,
    pickle_refusal,
    read_headers,
    read_safetensors_header,
)
from .keys import key_mapper

_ANCHOR = "time_embedding.linear_1.weight"
_BLOCK_KEY = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")
_VAE_KEYS = ("encoder.conv_in.weight", "decoder.conv_in.weight", "post_quant_conv.weight")
# Architecture fields the weights determine; config.json must agree with them.
STRUCTURAL_FIELDS = (
    "in_channels",
    "out_channels",
    "patch_size",
    "num_attention_heads",
    "attention_head_dim",
    "time_embed_dim",
    "num_layers",
    "mmdit_layers",
    "text_embed_dim",
    "text_embed_dim_t5",
    "add_norm_text_encoder",
    "after_norm",
)


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
            raise CheckpointError(
                f"{source} holds VAE weights (encoder/decoder keys), not an EasyAnimate "
                f"transformer. Transformer files have keys such as proj.weight, "
                f"transformer_blocks.0.attn1.to_q.weight."
            )
        sample = ", ".join(sorted(shapes)[:5]) or "no tensors"
        problem = "no" if not anchors else "several"
        raise CheckpointError(
            f"{source} is not an EasyAnimate V5/V5.1 transformer: {problem} {_ANCHOR!r} key found (first keys: "
            f"{sample}). Expected the released transformer/diffusion_pytorch_model.safetensors key names."
        )
    prefix = anchors[0][: -len(_ANCHOR)]
    local = {k[len(prefix) :]: tuple(v) for k, v in shapes.items() if k.startswith(prefix)}

    def need(key: str, ndim: int) -> tuple[int, ...]:
        shape = local.get(key)
        if shape is None or len(shape) != ndim:
            raise CheckpointError(
                f"{source} is not an EasyAnimate V5/V5.1 transformer: "
                f"{prefix + key!r} is {'missing' if shape is None else f'shaped {shape}'}."
            )
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
        raise CheckpointError(
            f"{source}: transformer blocks {gaps} are missing (found {len(blocks)} of "
            f"{num_layers}); the file is incomplete."
        )
    original = [i for i, keys in blocks.items() if "attn2.to_q.weight" in keys]
    diffusers = [i for i, keys in blocks.items() if "attn1.add_q_proj.weight" in keys]
    if original and diffusers:
        raise CheckpointError(f"{source} mixes original (attn2.*) and diffusers (attn1.add_*_proj) key names.")
    mmdit = sorted(original or diffusers)
    if not mmdit:
        raise CheckpointError(
            f"{source} has no MMDiT blocks (no attn2.* / attn1.add_q_proj keys); every released "
            f"EasyAnimate V5/V5.1 transformer starts with MMDiT blocks."
        )
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
        raise CheckpointError(
            f"{source}: cannot tell V5 from V5.1: expected text_proj_t5.weight (V5, Bert + mT5) or "
            f"text_proj.0.weight (V5.1, Qwen2-VL RMSNorm)."
        )
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
_WEIGHTS, _FILE = "weights", "file"


def _requirements(version: str | None, size: str | None) -> list[tuple[str, str, str, tuple[str, ...], str]]:
    """(component, check, shown path, alternatives, description) of what a model folder must hold; `check` is
    _WEIGHTS (any *.safetensors / complete shard index in that folder) or _FILE (the file, or all alternatives)."""
    needs = [
        (
            "transformer",
            _WEIGHTS,
            "transformer/diffusion_pytorch_model.safetensors",
            (),
            f"the MMDiT transformer weights ({transformer_size_hint(size)}, bf16)",
        ),
        ("vae", _WEIGHTS, "vae/diffusion_pytorch_model.safetensors", (), "the causal 3D VAE weights (≈1 GB)"),
    ]
    if version == V5:
        needs += [
            (
                "text_encoder",
                _FILE,
                "text_encoder/config.json",
                (),
                "Bert text-encoder config (HunyuanDiT bilingual CLIP, hidden 1024)",
            ),
            ("text_encoder", _WEIGHTS, "text_encoder/model.safetensors", (), "Bert text-encoder weights (≈1.4 GB)"),
            ("tokenizer", _FILE, "tokenizer/vocab.txt", ("tokenizer/tokenizer.json",), "Bert tokenizer vocabulary"),
            ("tokenizer", _FILE, "tokenizer/tokenizer_config.json", (), "Bert tokenizer settings (max length 77)"),
            ("text_encoder_2", _FILE, "text_encoder_2/config.json", (), "mT5-XL encoder config (d_model 2048)"),
            (
                "text_encoder_2",
                _WEIGHTS,
                "text_encoder_2/model.safetensors.index.json",
                (),
                "mT5 encoder weights (≈6.7 GB: this index and the 2 shards it lists)",
            ),
            (
                "tokenizer_2",
                _FILE,
                "tokenizer_2/spiece.model",
                ("tokenizer_2/tokenizer.json",),
                "mT5 sentencepiece tokenizer",
            ),
        ]
    elif version == V5_1:
        needs += [
            ("text_encoder", _FILE, "text_encoder/config.json", (), "Qwen2-VL-7B-Instruct config"),
            (
                "text_encoder",
                _WEIGHTS,
                "text_encoder/model.safetensors.index.json",
                (),
                "Qwen2-VL-7B-Instruct weights (≈16.6 GB: this index and the 5 shards it lists)",
            ),
            (
                "tokenizer",
                _FILE,
                "tokenizer/tokenizer.json",
                ("tokenizer/vocab.json", "tokenizer/merges.txt"),
                "Qwen2 tokenizer (tokenizer.json, or vocab.json + merges.txt)",
            ),
            ("tokenizer", _FILE, "tokenizer/tokenizer_config.json", (), "Qwen2 tokenizer settings"),
        ]
    return needs


def _check_weights(folder: Path, shown: Path, description: str) -> list[tuple[Path, str]]:
    """Missing entries for a weights folder ([] when complete). Pickle-only folders raise."""
    found = find_weights(folder, shown, description)
    if found.pickles:
        raise pickle_refusal(folder, found.pickles)
    return found.missing


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
        raise FileNotFoundError(
            f"{path} does not exist: expected an EasyAnimate model folder (with transformer/, "
            f"vae/, text_encoder/, ...) or a transformer .safetensors file."
        )
    if path.name == "transformer" and not (path / "transformer").exists() and (path.parent / "vae").exists():
        path = path.parent  # pointed at the transformer subfolder of a full model folder
    return _detect_folder(path)


def _detect_single_file(path: Path) -> Detection:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise pickle_refusal(path.parent, [path])
    if not path.is_file():
        raise MissingFilesError(path.parent, [(path, "a transformer .safetensors file")], what="folder")
    header = read_safetensors_header(path)
    inferred = infer_transformer({k: v.shape for k, v in header.items()}, path)
    variant = variant_for(inferred.version, inferred.size, inferred.kind)
    config = variant.transformer_config()
    config.update(inferred.config)
    return Detection(
        version=inferred.version,
        size=inferred.size,
        kind=inferred.kind,
        layout="single_file",
        variant=variant,
        transformer_config=config,
        paths={"transformer": path},
        transformer_files=[path],
        key_format=inferred.key_format,
        key_prefix=inferred.key_prefix,
        vae_config=None,
        name=path.stem,
    )


def _detect_folder(root: Path) -> Detection:
    missing: list[tuple[Path, str]] = []
    transformer_dir = root / "transformer"
    inferred = None
    missing += _check_weights(
        transformer_dir,
        transformer_dir / "diffusion_pytorch_model.safetensors",
        f"the MMDiT transformer weights ({transformer_size_hint(None)}, bf16)",
    )
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
        note = (
            ""
            if version
            else (
                "Could not tell V5 from V5.1 without the transformer, so the text-encoder files were not checked yet."
            )
        )
        layout = inferred.key_format if inferred else ("diffusers" if root.name.endswith("-diffusers") else "original")
        raise MissingFilesError(
            root,
            missing,
            what=f"EasyAnimate {_VERSION_LABEL.get(version, '')}model folder",
            download_hint=_download_hint(root, variant, layout),
            note=note,
        )

    variant = variant_for(inferred.version, inferred.size, inferred.kind)
    config = variant.transformer_config()
    config_path = transformer_dir / "config.json"
    if config_path.is_file():
        on_disk = _read_json(config_path)
        conflicts = [
            f"{key}: config.json says {on_disk[key]!r}, the weights say {value!r}"
            for key, value in inferred.config.items()
            if key in on_disk and on_disk[key] != value
        ]
        if conflicts:
            raise CheckpointError(
                f"{config_path} contradicts the weights in {transformer_dir}:\n  "
                + "\n  ".join(conflicts)
                + "\nThe weights decide the architecture: restore the released config.json or delete it."
            )
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
        version=inferred.version,
        size=inferred.size,
        kind=inferred.kind,
        layout=inferred.key_format,
        variant=variant,
        transformer_config=config,
        paths=paths,
        transformer_files=transformer_files,
        key_format=inferred.key_format,
        key_prefix=inferred.key_prefix,
        vae_config=vae_config,
        name=root.name,
    )
