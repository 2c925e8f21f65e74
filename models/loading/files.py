"""The one routine that finds the weight files of a component folder (transformer, VAE, text encoders).

A folder holds either a `*.safetensors.index.json` shard map and the shards it lists, or `*.safetensors` files.
Pickle files (.bin/.pt/...) are reported, never opened (docs/checkpoints.md, folder layouts).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .headers import PICKLE_SUFFIXES, CheckpointError, MissingFilesError, pickle_refusal


@dataclass(frozen=True)
class FoundWeights:
    """What a folder offers: its safetensors `files`, the `missing` (path, what belongs there) entries, and the
    pickle files found when it has no safetensors at all (`pickles`; the caller refuses them)."""

    folder: Path
    files: list[Path] = field(default_factory=list)
    missing: list[tuple[Path, str]] = field(default_factory=list)
    pickles: list[Path] = field(default_factory=list)
    index: Path | None = None  # the shard map, when the folder has one

    @property
    def complete(self) -> bool:
        return bool(self.files) and not self.missing


def find_weights(folder: str | Path, shown: str | Path, description: str) -> FoundWeights:
    """The weight files of `folder`, honouring its shard index. `shown` is the file a user should put there when
    nothing is found (e.g. `vae/diffusion_pytorch_model.safetensors`); `description` says what it is."""
    folder = Path(folder).absolute()
    shown = Path(shown)
    if not folder.is_dir():
        return FoundWeights(folder, missing=[(shown, description)])
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise CheckpointError(
            f"{folder} has several shard indexes ({', '.join(i.name for i in indexes)}); "
            f"keep the one that belongs to the weights."
        )
    if indexes:
        try:
            weight_map = json.loads(indexes[0].read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise CheckpointError(f"{indexes[0]} is not a valid shard index ({error}). Re-download it.") from None
        shards = [folder / name for name in names]
        return FoundWeights(
            folder,
            files=[s for s in shards if s.is_file()],
            index=indexes[0],
            missing=[(s, f"shard of {description} listed in {indexes[0].name}") for s in shards if not s.is_file()],
        )
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if files:
        return FoundWeights(folder, files=files)
    pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
    return FoundWeights(folder, missing=[(shown, description)], pickles=pickles)


def weight_files(folder: str | Path, *, describe: str = "weights") -> list[Path]:
    """The `*.safetensors` of one component folder, honouring a `*.safetensors.index.json` shard map.

    Raises MissingFilesError (folder or listed shards absent, no weights at all) or UnsafeCheckpointError (only
    pickle files: .bin/.pt/.pth/.ckpt).
    """
    folder = Path(folder).absolute()
    found = find_weights(folder, folder / "diffusion_pytorch_model.safetensors", describe)
    if found.pickles:
        raise pickle_refusal(folder, found.pickles)
    if found.missing:
        raise MissingFilesError(folder, found.missing, what="weights folder")
    return found.files
