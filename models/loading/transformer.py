"""Load the MMDiT transformer: find its config and weight files, build it on the meta device with the injected ops,
and stream its weights in, each tensor straight into the dtype the storage rule holds it in (models/quant.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from .detect import detect, infer_transformer
from .files import weight_files
from .headers import CheckpointError, read_headers
from .keys import key_mapper
from .stream import load_state_streaming


def load_transformer(
    source,
    dtype: torch.dtype = torch.bfloat16,
    storage_dtype: torch.dtype | None = None,
    ops=None,
    device="cpu",
    progress: Callable[[int, int], None] | None = None,
    interrupt: Callable[[], None] | None = None,
    *,
    fp8_mode: str = "reference exact",
    fp8_matmul: bool = False,
    attention=None,
):
    """Build the transformer on the meta device and stream its weights in, tensor by tensor, as `storage_dtype`.

    source: a model folder (original or `-diffusers` layout), its `transformer/` folder, or a single transformer
      `.safetensors` file of either key naming. Version, size and kind come from the tensor names and shapes; config
      keys absent from config.json take the released values of the variant registry (docs/checkpoints.md, transformer
      config).
    dtype: the compute dtype (`model.compute_dtype`; feed latents in it); storage_dtype: the weights' dtype in memory
      (default `dtype`; float8_e4m3fn / float8_e5m2 for qfloat8 — the ops layers upcast at call time).
    fp8_mode: which tensors an fp8 storage_dtype applies to (models/quant.py, FP8_MODES; "reference exact" = all);
      "scaled" injects the per-tensor scaled Linear, optionally with fp8 matmuls (`fp8_matmul`).
    ops: the layer namespace to build with (default: the casting layers, or the scaled ones for "scaled");
      attention: the attention function to inject into it (models/attention.py; None keeps the namespace's).
    Missing, unexpected or wrongly shaped tensors raise one CheckpointError; pickle files are refused.
    """
    from .. import ops as cast_ops
    from ..attention import with_attention
    from ..quant import FP8_DTYPES, ScaledLoader, scaled_ops, storage_rule
    from ..transformer import EasyAnimateTransformer, TransformerParams

    rule = storage_rule(fp8_mode, storage_dtype, dtype)
    scaled = fp8_mode == "scaled" and storage_dtype in FP8_DTYPES
    if ops is None:
        ops = scaled_ops(fp8_matmul) if scaled else cast_ops.cast
    if attention is not None:
        ops = with_attention(ops, attention)
    config, files, rename = transformer_checkpoint(source)
    with torch.device("meta"):
        model = EasyAnimateTransformer(TransformerParams.from_config(config), ops)
    loader = ScaledLoader(model, rule, storage_dtype, dtype) if scaled else None
    load_state_streaming(
        model,
        files,
        dtype,
        rename=rename,
        keep_dtype=loader.keep_dtype if loader else rule,
        strict=True,
        device=device,
        progress=progress,
        interrupt=interrupt,
    )
    if loader is not None:
        loader.flush()
    model.compute_dtype = dtype
    model.fp8_mode = fp8_mode if storage_dtype in FP8_DTYPES else None
    return model.eval().requires_grad_(False)


def transformer_checkpoint(source) -> tuple[dict, list[Path], Callable[[str], str | None]]:
    """(config, weight files, key rename) of a model folder, a bare transformer folder or a single file."""
    from ..variants import variant_for

    path = Path(source).expanduser().absolute()
    bare_folder = path.is_dir() and not (path / "transformer").is_dir() and any(path.glob("*.safetensors*"))
    if not bare_folder:  # a whole model folder or a single file
        found = detect(path)
        return found.transformer_config, found.transformer_files, found.key_mapper("original")
    files = weight_files(path, describe="the MMDiT transformer weights")
    inferred = infer_transformer({k: info.shape for k, (info, _) in read_headers(files).items()}, path)
    config = variant_for(inferred.version, inferred.size, inferred.kind).transformer_config()
    on_disk = {}
    if (path / "config.json").is_file():
        try:
            on_disk = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except ValueError as error:
            raise CheckpointError(f"{path / 'config.json'} is not valid JSON ({error}). Re-download it.") from None
    conflicts = [
        f"{k}: config.json says {on_disk[k]!r}, the weights say {v!r}"
        for k, v in inferred.config.items()
        if k in on_disk and on_disk[k] != v
    ]
    if conflicts:
        raise CheckpointError(f"{path / 'config.json'} contradicts the weights in {path}:\n  " + "\n  ".join(conflicts))
    config.update(on_disk)
    config.update(inferred.config)
    return config, files, key_mapper(inferred.key_format, inferred.key_prefix, "original")
