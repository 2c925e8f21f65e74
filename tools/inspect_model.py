"""Tell what an EasyAnimate transformer checkpoint is, from safetensors headers only (fast on a 24 GB file).

    python tools/inspect_model.py PATH

PATH: a model folder (original or `-diffusers` layout), its `transformer/` folder, or a single `.safetensors` file.
Prints version / size / kind, layout, parameter count (against the released count), tensor count and dtypes.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.loading.detect import detect, infer_transformer  # noqa: E402
from models.loading.files import weight_files  # noqa: E402
from models.loading.headers import CheckpointError, MissingFilesError, read_headers  # noqa: E402
from models.variants import variant_for  # noqa: E402


def describe(path: Path) -> list[str]:
    path = path.expanduser().absolute()
    if path.is_dir() and not (path / "transformer").is_dir() and any(path.glob("*.safetensors*")):
        files = weight_files(path)  # a bare transformer folder
        headers = read_headers(files)
        inferred = infer_transformer({k: info.shape for k, (info, _) in headers.items()}, path)
        version, size, kind, key_format, layout = (
            inferred.version,
            inferred.size,
            inferred.kind,
            inferred.key_format,
            "transformer folder",
        )
        config = inferred.config
    else:
        found = detect(path)
        files, headers = found.transformer_files, read_headers(found.transformer_files)
        version, size, kind, key_format, layout = found.version, found.size, found.kind, found.key_format, found.layout
        config = found.transformer_config
    variant = variant_for(version, size, kind)
    params = sum(info.numel for info, _ in headers.values())
    size_bytes = sum(info.nbytes for info, _ in headers.values())
    dtypes = Counter(info.dtype for info, _ in headers.values())
    if variant.param_count is None:
        verdict = "no released count (unreleased combination)"
    elif variant.param_count == params:
        verdict = "= released count"
    else:
        verdict = f"released count is {variant.param_count:,} (differs by {params - variant.param_count:+,})"
    fields = (
        "in_channels",
        "num_layers",
        "mmdit_layers",
        "num_attention_heads",
        "attention_head_dim",
        "text_embed_dim",
        "text_embed_dim_t5",
        "add_norm_text_encoder",
    )
    return [
        f"source:      {path}",
        f"model:       {version} {size} {kind}  ->  {variant.name}{'' if variant.released else ' (not released)'}",
        f"layout:      {layout} (key names: {key_format})",
        f"files:       {len(files)} safetensors, {_human(size_bytes)} of tensors",
        f"parameters:  {params:,} ({verdict})",
        f"tensors:     {len(headers)}",
        f"dtypes:      {', '.join(f'{d} x{n}' for d, n in sorted(dtypes.items()))}",
        "config:      " + ", ".join(f"{k}={config.get(k)}" for k in fields),
    ]


def _human(size_bytes: int) -> str:
    return f"{size_bytes / 1e9:.2f} GB" if size_bytes >= 1e9 else f"{size_bytes / 1e6:.2f} MB"


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 2
    try:
        print("\n".join(describe(Path(argv[0]))))
    except (CheckpointError, MissingFilesError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
