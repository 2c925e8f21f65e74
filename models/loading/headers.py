"""safetensors headers and the errors every loader raises.

`read_safetensors_header` reads the 8-byte length + JSON header of a file and nothing else, so detecting a 24 GB
transformer costs a few kilobytes of I/O. Pickle files are never opened (docs/checkpoints.md).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be used as it is (corrupt, wrong model, keys that do not fit)."""


class UnsafeCheckpointError(CheckpointError):
    """Only pickle weights were found; we never unpickle model files."""


class MissingFilesError(FileNotFoundError):
    """A model folder lacks files. `missing` lists every one as (absolute path, what belongs there)."""

    def __init__(
        self,
        folder: Path,
        missing: list[tuple[Path, str]],
        *,
        what: str = "model folder",
        download_hint: str = "",
        note: str = "",
    ):
        self.folder = Path(folder)
        self.missing = list(missing)
        lines = [
            f"{what} {self.folder} is incomplete: {len(self.missing)} "
            f"{'file is' if len(self.missing) == 1 else 'files are'} missing:"
        ]
        lines += [f"  {path} — {description}" for path, description in self.missing]
        if note:
            lines.append(note)
        if download_hint:
            lines.append(download_hint)
        super().__init__("\n".join(lines))


# --- safetensors headers ---------------------------------------------------------------------------------------------

_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
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
        raise CheckpointError(
            f"{path} is truncated ({file_size} bytes): a safetensors file starts with an 8-byte "
            f"header length. Re-download it."
        )
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        if header_len == 0 or header_len > _MAX_HEADER_BYTES or header_len > file_size - 8:
            raise CheckpointError(
                f"{path} is not a valid safetensors file (header length {header_len} bytes, file size "
                f"{file_size} bytes): it is truncated or not safetensors at all. Re-download it."
            )
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
            raise CheckpointError(
                f"{path}: corrupt header entry for tensor {name!r}: {info.dtype}{list(shape)} "
                f"needs {info.numel * itemsize} bytes, offsets span {info.nbytes}"
            )
        if info.data_offsets[1] > data_size:
            raise CheckpointError(
                f"{path} is truncated: tensor {name!r} ends at byte {info.data_offsets[1]} of the data section, "
                f"but the file holds only {data_size} data bytes. Re-download it."
            )
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


def pickle_refusal(folder: Path, pickles: list[Path]) -> UnsafeCheckpointError:
    """The error for a folder (or file) that offers only pickle weights, with the way to convert them."""
    names = ", ".join(p.name for p in pickles)
    return UnsafeCheckpointError(
        f"{folder} holds only pickle weights ({names}). This pack loads safetensors only: unpickling a model file "
        f"can run arbitrary code. Download the .safetensors files of this model (every EasyAnimate release on "
        f"https://huggingface.co/alibaba-pai ships them), or convert a file you trust yourself, e.g.\n"
        f'  python -c "import torch, safetensors.torch as st; '
        f"st.save_file(torch.load('IN.bin', weights_only=True), 'OUT.safetensors')\"\n"
        f"and put the .safetensors file into {folder}."
    )
