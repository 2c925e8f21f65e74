"""Tiny random-weight EasyAnimate checkpoints in the RELEASED folder layouts (the runner's stand-ins, test fixtures).

`ensure_tiny_checkpoints()` builds, once, a set of model folders named `tiny-<ReleasedName>`, laid out like the
released repos (docs/checkpoints.md):

    model_index.json                      scheduler/scheduler_config.json (released settings)
    transformer/config.json               every released field, tiny widths/depths
    transformer/diffusion_pytorch_model.safetensors   bf16, original key names (attn2.*) or diffusers (-diffusers)
    vae/config.json, vae/diffusion_pytorch_model.safetensors   fp32; V5 with the mid-block attention, V5.1 without
    text_encoder/, tokenizer/ (+ text_encoder_2/, tokenizer_2/ for V5)   written by tools/tiny_text.py

for V5 (T2V, InP, Control) and V5.1 (T2V, InP, Control, Control-Camera), each "12b"-like (all blocks MMDiT) and
"7b"-like (trailing non-MMDiT blocks), plus `-diffusers` copies of every V5.1 folder and two single transformer files.
Dimensions are the project's shared tiny sizes. Key sets and shapes come from the pack's own transformer and VAE
built on the meta device (no weights allocated); tests/test_tiny_checkpoints.py checks them against diffusers'
EasyAnimateTransformer3DModel / AutoencoderKLMagvit, an independent writer. Only requirements.txt is needed
(transformers writes the text encoders), so the headless runner works on an end-user install. Values are seeded
random, with every norm scale, bias and output projection non-trivial so a parity test can fail.

    python tools/tiny_checkpoints.py        # builds the set once (cached per generator version), prints its folder

Identical files (the VAE and text encoders of one version, an original/diffusers pair's tensors) are HARD-LINKED
inside the set to keep it small: copy a model (shutil.copytree) before modifying any file in it.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
import zlib
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
for _path in (REPO_ROOT, REPO_ROOT / "tools"):  # usable outside pytest too (tools, benchmarks)
    if str(_path) not in sys.path:
        sys.path.append(str(_path))
SEED = 20250306

# Shared tiny dimensions (see the project brief): transformer, text widths per version, VAE.
TINY_TRANSFORMER = {
    "num_attention_heads": 2,
    "attention_head_dim": 16,
    "time_embed_dim": 24,
    "patch_size": 2,
    "out_channels": 16,
}
TINY_TEXT_DIMS = {
    "v5": {"text_embed_dim": 32, "text_embed_dim_t5": 48},
    "v5.1": {"text_embed_dim": 64, "text_embed_dim_t5": None},
}
TINY_LAYERS = {"12b": {"num_layers": 2, "mmdit_layers": 2}, "7b": {"num_layers": 4, "mmdit_layers": 2}}
TINY_VAE = {
    "block_out_channels": [8, 16, 32, 32],
    "ch": 8,
    "norm_num_groups": 4,
    "layers_per_block": 2,
    "latent_channels": 16,
}
KINDS_BY_VERSION = {"v5": ("t2v", "inp", "control"), "v5.1": ("t2v", "inp", "control", "control_camera")}

SINGLE_FILES = {  # file name -> (source model folder, key names inside)
    "tiny-EasyAnimateV5.1-12b-zh-InP.safetensors": ("tiny-EasyAnimateV5.1-12b-zh-InP", "original"),
    "tiny-EasyAnimateV5.1-7b-zh-InP-diffusers.safetensors": ("tiny-EasyAnimateV5.1-7b-zh-InP-diffusers", "diffusers"),
}


def released_name(version: str, size: str, kind: str) -> str:
    from models.variants import KIND_SUFFIX

    return f"EasyAnimate{'V5.1' if version == 'v5.1' else 'V5'}-{size}-zh{KIND_SUFFIX[kind]}"


def _tiny_models() -> dict[str, tuple[str, str, str, str]]:
    models = {}
    for version, kinds in KINDS_BY_VERSION.items():
        for size in ("12b", "7b"):
            for kind in kinds:
                name = "tiny-" + released_name(version, size, kind)
                models[name] = (version, size, kind, "original")
                if version == "v5.1":
                    models[name + "-diffusers"] = (version, size, kind, "diffusers")
    for file_name, (folder, _) in SINGLE_FILES.items():
        version, size, kind, _ = models[folder]
        models[file_name] = (version, size, kind, "single_file")
    return models


# name -> (version, size, kind, layout); layout "original" | "diffusers" | "single_file"
TINY_MODELS: dict[str, tuple[str, str, str, str]] = _tiny_models()


# --- configs ---------------------------------------------------------------------------------------------------------


def tiny_transformer_config(version: str, size: str, kind: str) -> dict:
    """The released transformer config.json with the tiny widths/depths (fields as in the released file)."""
    from models.variants import variant_for

    config = variant_for(version, size, kind).transformer_config()
    config.update(TINY_TRANSFORMER, **TINY_TEXT_DIMS[version], **TINY_LAYERS[size])
    if version == "v5":
        del config["add_norm_text_encoder"]  # absent from the released V5 configs
    return config


def tiny_transformer_params(num_layers: int, mmdit_layers: int, **changes):
    """`TransformerParams` of the tiny V5.1 text-to-video transformer at another depth, for tests and benchmarks that
    build a model in memory (`changes`: other config fields, such as `num_attention_heads`)."""
    from models.transformer import TransformerParams

    config = tiny_transformer_config("v5.1", "12b", "t2v")
    config.update(num_layers=num_layers, mmdit_layers=mmdit_layers, **changes)
    return TransformerParams.from_config(config)


def tiny_vae_config(version: str) -> dict:
    from models.variants import released_vae_config

    config = released_vae_config(version)
    config.update(TINY_VAE)
    return config


def _model_index(version: str, kind: str) -> dict:
    if version == "v5":  # stale class names, exactly as released
        return {
            "_class_name": "EasyAnimatePipeline_Multi_Text_Encoder",
            "_diffusers_version": "0.30.1",
            "scheduler": ["diffusers", "DDPMScheduler"],
            "text_encoder": ["transformers", "BertModel"],
            "text_encoder_2": ["transformers", "T5EncoderModel"],
            "tokenizer": ["transformers", "BertTokenizer"],
            "tokenizer_2": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "Transformer2DModel"],
            "vae": ["diffusers", "AutoencoderKL"],
        }
    pipeline = {"t2v": "EasyAnimatePipeline", "inp": "EasyAnimateInpaintPipeline"}.get(
        kind, "EasyAnimateControlPipeline"
    )
    return {
        "_class_name": pipeline,
        "_diffusers_version": "0.31.0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["transformers", "Qwen2VLForConditionalGeneration"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
        "transformer": ["diffusers", "EasyAnimateTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLMagvit"],
    }


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")  # diffusers' style


# --- weights ---------------------------------------------------------------------------------------------------------


def _random_tensor(key: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Deterministic per (seed, key): norm scales 1 ± 0.1, biases ±0.1, matrices ~ N(0, 1/fan_in) in [0.02, 0.2]."""
    generator = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}".encode()))
    values = torch.randn(shape, generator=generator, dtype=torch.float32)
    if key.endswith("bias"):
        return 0.1 * values
    if len(shape) == 1:  # LayerNorm / GroupNorm / RMSNorm scale (diffusers initialises these to exactly 1)
        return 1.0 + 0.1 * values
    return values * min(0.2, max(0.02, 1.0 / math.sqrt(math.prod(shape[1:]))))


def transformer_tensors(version: str, size: str, kind: str, seed: int) -> dict[str, torch.Tensor]:
    """bf16 transformer weights with ORIGINAL key names."""
    from models.transformer import EasyAnimateTransformer, TransformerParams

    config = dict(tiny_transformer_config(version, size, kind), add_norm_text_encoder=version == "v5.1")
    with torch.device("meta"):  # shapes only: nothing is allocated
        model = EasyAnimateTransformer(TransformerParams.from_config(config))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return {k: _random_tensor(k, shapes[k], seed).to(torch.bfloat16).contiguous() for k in sorted(shapes)}


def vae_tensors(version: str, seed: int) -> dict[str, torch.Tensor]:
    """fp32 VAE weights; V5 has the two mid-block spatial attentions, V5.1 not (released configs)."""
    from models.vae import VAE, VAEConfig

    with torch.device("meta"):
        model = VAE(VAEConfig.from_dict(tiny_vae_config(version)))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    return {k: _random_tensor(k, shapes[k], seed).contiguous() for k in sorted(shapes)}


def _save(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={"format": "pt"})


def _model_seed(name: str) -> int:
    base = name.removesuffix("-diffusers")  # an original/diffusers pair holds the same weights
    return zlib.crc32(f"{SEED}/{base}".encode())


# --- building ----------------------------------------------------------------------------------------------------------


def write_tiny_model(dest: Path, name: str, *, text_from: Path | None = None, vae_files: dict | None = None) -> Path:
    """Write one `tiny-*` model folder (TINY_MODELS layout "original" or "diffusers") at `dest`.

    `text_from`: a folder holding this version's text components to hard-link in (None: no text components).
    `vae_files`: version -> an already written VAE safetensors to link (else the VAE is generated here).
    """
    from models.loading.keys import original_to_diffusers_key
    from models.variants import released_scheduler_config

    version, size, kind, layout = TINY_MODELS[name]
    if layout not in ("original", "diffusers"):
        raise ValueError(f"{name} is a single file, not a model folder")
    dest = Path(dest)
    _write_json(dest / "model_index.json", _model_index(version, kind))
    _write_json(dest / "scheduler" / "scheduler_config.json", released_scheduler_config(version))

    config = tiny_transformer_config(version, size, kind)
    tensors = transformer_tensors(version, size, kind, _model_seed(name))
    if layout == "diffusers":
        config["_diffusers_version"] = "0.32.0.dev0"
        tensors = {original_to_diffusers_key(k): v for k, v in tensors.items()}
    _write_json(dest / "transformer" / "config.json", config)
    _save(tensors, dest / "transformer" / "diffusion_pytorch_model.safetensors")

    _write_json(dest / "vae" / "config.json", tiny_vae_config(version))
    vae_path = dest / "vae" / "diffusion_pytorch_model.safetensors"
    if vae_files and version in vae_files:
        _link(Path(vae_files[version]), vae_path)
    else:
        _save(vae_tensors(version, zlib.crc32(f"{SEED}/vae/{version}".encode())), vae_path)

    if text_from is not None:
        for source in sorted(Path(text_from).rglob("*")):
            if source.is_file():
                _link(source, dest / source.relative_to(text_from))
    return dest


def _link(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:  # file systems without hard links
        shutil.copy2(source, target)


def build_tiny_checkpoints(dest: Path, *, with_text: bool = True) -> Path:
    """Write the whole TINY_MODELS set into `dest` (no caching; see ensure_tiny_checkpoints)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    scratch = dest / ".parts"
    text_dirs: dict[str, Path] = {}
    if with_text:
        tiny_text = importlib.import_module("tiny_text")  # the text helper's writers, next to this file
        write_v5_text, write_v51_text = tiny_text.write_v5_text, tiny_text.write_v51_text
        text_dirs = {"v5": scratch / "text-v5", "v5.1": scratch / "text-v5.1"}
        write_v5_text(text_dirs["v5"], seed=SEED)
        write_v51_text(text_dirs["v5.1"], seed=SEED)
    vae_files = {}
    for version in KINDS_BY_VERSION:
        vae_files[version] = scratch / f"vae-{version}.safetensors"
        _save(vae_tensors(version, zlib.crc32(f"{SEED}/vae/{version}".encode())), vae_files[version])

    for name, (version, _, _, layout) in TINY_MODELS.items():
        if layout != "single_file":
            write_tiny_model(dest / name, name, text_from=text_dirs.get(version), vae_files=vae_files)
    for file_name, (folder, _) in SINGLE_FILES.items():
        _link(dest / folder / "transformer" / "diffusion_pytorch_model.safetensors", dest / file_name)
    shutil.rmtree(scratch)
    return dest


def _generator_sources() -> list[Path]:
    """Every file whose change changes the set: these writers, the registry, and the modules that give the shapes."""
    models = REPO_ROOT / "models"
    sources = [
        Path(__file__),
        Path(__file__).with_name("tiny_text.py"),
        models / "variants.py",
        models / "checkpoint.py",
        models / "transformer.py",
        models / "vae.py",
    ]
    return sources + sorted((models / "vae").rglob("*.py"))  # models/vae may become a package


def _stamp() -> str:
    """Changes whenever a generator source or the transformers release (it lays out the text encoders) changes."""
    import transformers

    digest = hashlib.sha256(f"{SEED}/transformers {transformers.__version__}".encode())
    for source in _generator_sources():
        digest.update(source.read_bytes() if source.is_file() else b"-")
    return digest.hexdigest()[:12]


def _default_root() -> Path:
    return Path(os.environ.get("EASYANIMATE_TINY_DIR") or REPO_ROOT / ".cache" / "tiny_checkpoints")


def tiny_set_path(root: str | Path | None = None) -> Path:
    """Where this generator version's set lives (it may not be built yet: see ensure_tiny_checkpoints)."""
    return (Path(root) if root is not None else _default_root()) / f"set-{_stamp()}"


def ensure_tiny_checkpoints(root: str | Path | None = None) -> Path:
    """The folder holding every TINY_MODELS entry, built once per generator version.

    Safe when several processes build at once: each builds in a private temp dir and renames it into place; the
    first rename wins, the others discard their copy.
    """
    root = Path(root) if root is not None else _default_root()
    stamp = _stamp()
    final = root / f"set-{stamp}"
    if (final / ".complete").is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    _prune(root, keep=final.name)
    building = Path(tempfile.mkdtemp(prefix=f".building-{stamp}-", dir=root))
    try:
        build_tiny_checkpoints(building, with_text=True)
        (building / ".complete").write_text(stamp + "\n")
        try:
            os.rename(building, final)
        except OSError:
            if not (final / ".complete").is_file():  # a stale, incomplete folder: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(building, final)
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)
    return final


def _prune(root: Path, keep: str, older_than_s: float = 3600.0) -> None:
    """Remove sets of older generator versions (and abandoned builds) untouched for an hour."""
    now = time.time()
    for entry in root.iterdir():
        if entry.name != keep and entry.name.startswith(("set-", ".building-")) and entry.is_dir():
            try:
                if now - entry.stat().st_mtime > older_than_s:
                    shutil.rmtree(entry, ignore_errors=True)
            except OSError:
                pass


def tiny_model_dir(name: str) -> Path:
    """Path of one TINY_MODELS entry (a folder, or a file for single_file entries); `tiny-` may be omitted."""
    key = name if name in TINY_MODELS else f"tiny-{name}"
    if key not in TINY_MODELS:
        raise KeyError(f"no tiny model {name!r}; available: {', '.join(TINY_MODELS)}")
    return ensure_tiny_checkpoints() / key


if __name__ == "__main__":
    print(ensure_tiny_checkpoints())
