"""Load the VAE from a model folder, a vae folder or one .safetensors file (config inference from tensor shapes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import torch

from ..variants import V5, V5_1, released_vae_config
from .causal import VAE
from .config import CONFIG_NAME, PICKLE_SUFFIXES, VAEConfig, VAEConfigError

_COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# --------------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------------


def _attention_in_keys(keys) -> bool:
    return any(".mid_block.attentions." in key for key in keys)


def _config_from_shapes(shapes: dict[str, tuple[int, ...]], overrides: dict | None, source: str) -> VAEConfig:
    """Config of a bare .safetensors VAE: the released V5 (attention keys present) or V5.1 config, with the widths
    read from the tensor shapes so that re-trained / reduced copies load too; `overrides` wins over both."""
    version = V5 if _attention_in_keys(shapes) else V5_1
    raw = released_vae_config(version)
    try:
        levels = sorted({int(key.split(".")[2]) for key in shapes if key.startswith("encoder.down_blocks.")})
        raw["block_out_channels"] = [shapes[f"encoder.down_blocks.{i}.convs.0.conv1.weight"][0] for i in levels]
        raw["layers_per_block"] = len(
            {key.split(".")[4] for key in shapes if key.startswith("encoder.down_blocks.0.convs.")}
        )
        raw["latent_channels"] = shapes["post_quant_conv.weight"][0]
        raw["in_channels"] = shapes["encoder.conv_in.weight"][1]
        raw["out_channels"] = shapes["decoder.conv_out.weight"][0]
    except (KeyError, IndexError, ValueError) as error:
        raise VAEConfigError(
            f"{source} does not look like an EasyAnimate VAE (AutoencoderKLMagvit) checkpoint: "
            f"missing or malformed tensor {error}. Expected keys like encoder.conv_in.weight, "
            "decoder.conv_out.weight, post_quant_conv.weight."
        ) from None
    if len(raw["block_out_channels"]) != len(raw["down_block_types"]):
        raise VAEConfigError(
            f"{source}: found {len(raw['block_out_channels'])} encoder levels, the released VAE "
            f"has {len(raw['down_block_types'])}; put its vae/config.json next to it as a folder"
        )
    raw.update(overrides or {})
    try:
        return VAEConfig.from_dict(raw, source=source)
    except VAEConfigError as error:
        raise VAEConfigError(
            f"{error}. A bare .safetensors file does not record norm_num_groups and friends: pass "
            "them as load_vae(..., config={...}) or load the folder with its config.json"
        ) from None


def _find_vae_folder(path: Path) -> Path:
    """The folder holding config.json + weights: `path` itself, or `path/vae` for a model root."""
    if (path / CONFIG_NAME).is_file() and not (path / "vae").is_dir():
        return path
    if (path / "vae" / CONFIG_NAME).is_file():
        return path / "vae"
    raise FileNotFoundError(
        f"no VAE config found under {path}: expected {path / 'vae' / CONFIG_NAME} (model folder, as released) or "
        f"{path / CONFIG_NAME} (the vae folder itself), next to diffusion_pytorch_model.safetensors. Download the "
        "model's vae/ folder from Hugging Face (alibaba-pai/EasyAnimateV5*) into ComfyUI/models/EasyAnimate/<name>/."
    )


def load_vae(
    path: str | Path,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    *,
    ops=None,
    compute_dtype: torch.dtype | None = None,
    config: dict | None = None,
) -> VAE:
    """Load the EasyAnimate VAE from a model folder (`<model>/vae/`), a vae folder, or a single `.safetensors` file.

    Folders: `config.json` + `diffusion_pytorch_model.safetensors` (original and `-diffusers` layouts; keys are the
    same, docs/checkpoints.md, VAE keys). Mid attention is built iff the config says so; a diffusers config (no such
    key) defers to the
    weights. Single files: the released V5 config when their mid-attention keys are present, else V5.1, widths read
    from the tensor shapes; `config` overrides fields in both cases. Weights stream into a meta-built model in
    `dtype` on `device` with strict key checks (models/loading/stream.py). compute_dtype defaults to `dtype`, except
    fp16 with V5 weights, which the reference always runs in fp32 (`upcast_vae`, docs/faithfulness.md, VAE)."""
    from ..loading.files import weight_files
    from ..loading.headers import UnsafeCheckpointError, read_headers
    from ..loading.stream import load_state_streaming

    path = Path(path).expanduser().absolute()
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise UnsafeCheckpointError(
            f"refusing to load {path}: pickle checkpoints ({', '.join(PICKLE_SUFFIXES)}) can run code when opened. "
            "Use the model's vae/diffusion_pytorch_model.safetensors instead."
        )
    if path.is_file():
        if path.suffix.lower() != ".safetensors":
            raise ValueError(f"{path} is not a .safetensors file; the VAE loads from safetensors only")
        files = [path]
        shapes = {key: info.shape for key, (info, _) in read_headers(files).items()}
        vae_config = _config_from_shapes(shapes, config, str(path))
    elif path.is_dir():
        folder = _find_vae_folder(path)
        config_file = folder / CONFIG_NAME
        try:
            raw = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise VAEConfigError(
                f"cannot read {config_file}: {error}. Restore the file from the model download."
            ) from None
        if not isinstance(raw, dict):
            raise VAEConfigError(f"{config_file} is not a JSON object. Restore the file from the model download.")
        raw.update(config or {})
        vae_config = VAEConfig.from_dict(raw, source=str(config_file))
        files = weight_files(folder, describe="the causal 3D VAE weights")
        has_attention = _attention_in_keys(read_headers(files))
        if vae_config.mid_block_use_attention is None:
            vae_config = replace(vae_config, mid_block_use_attention=has_attention)
        elif vae_config.mid_block_use_attention != has_attention:
            raise VAEConfigError(
                f"{config_file} says mid_block_use_attention={vae_config.mid_block_use_attention}, but the weights "
                f"in {folder} {'contain' if has_attention else 'lack'} the mid-block attention tensors "
                "(encoder/decoder.mid_block.attentions.0.*). The config and weights come from different models "
                "(V5 has the attention, V5.1 does not); use the vae/ folder of one download."
            )
    else:
        raise FileNotFoundError(
            f"VAE not found: {path} does not exist. Expected a model folder containing "
            "vae/config.json and vae/diffusion_pytorch_model.safetensors, or a .safetensors file."
        )

    if compute_dtype is None and dtype == torch.float16 and vae_config.mid_block_use_attention:
        compute_dtype = torch.float32  # V5 + fp16: reference upcasts the VAE to fp32 (docs/faithfulness.md, VAE)
    if (compute_dtype or dtype) not in _COMPUTE_DTYPES:
        raise ValueError(
            f"the VAE computes in {', '.join(map(str, _COMPUTE_DTYPES))}; got dtype={dtype}, "
            f"compute_dtype={compute_dtype}. Pass compute_dtype with a storage dtype it cannot compute in."
        )
    with torch.device("meta"):
        vae = VAE(vae_config, ops=ops, compute_dtype=compute_dtype)
    load_state_streaming(vae, files, dtype, device=device)
    return vae.eval()
