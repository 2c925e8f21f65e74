"""One EasyAnimate model on disk, its components loaded lazily and shared between every user of the same settings.

The loader node hands this object around; the text-encode, sampler and VAE nodes ask it for the part they need,
so a workflow that only encodes prompts never reads the transformer, and two loader nodes naming the same model
and settings share one copy (`open_model`). Pure Python/torch: no ComfyUI import.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import Detection, detect

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STORAGE_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@dataclass(eq=False)
class ModelComponents:
    path: Path
    detection: Detection
    dtype: torch.dtype
    storage_dtype: torch.dtype | None = None  # transformer weights in memory (fp8 = qfloat8); None = dtype
    _loaded: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def variant(self):
        return self.detection.variant

    @property
    def version(self) -> str:
        return self.detection.version

    def _folder_for(self, component: str) -> Path:
        if self.detection.layout == "single_file":
            raise FileNotFoundError(
                f"{self.path.name} is a single transformer file: it has no {component}. Load a full model folder "
                f"(models/EasyAnimate/<ModelName>/ with vae/, text_encoder/, tokenizer/ ...) for that part."
            )
        return self.path

    def _get(self, name: str, build):
        with self._lock:
            if name not in self._loaded:
                self._loaded[name] = build()
            return self._loaded[name]

    def transformer(self, device="cpu", progress=None, interrupt=None):
        from .transformer import load_transformer

        return self._get(
            "transformer",
            lambda: load_transformer(
                self.path, dtype=self.dtype, storage_dtype=self.storage_dtype, device=device, progress=progress,
                interrupt=interrupt,
            ),
        )  # fmt: skip

    def vae(self, device="cpu"):
        from .vae import load_vae

        # The reference runs the VAE in the pipeline dtype (bf16 by default); load_vae upcasts V5 fp16 itself.
        return self._get("vae", lambda: load_vae(self._folder_for("VAE"), dtype=self.dtype, device=device))

    def text_encoder(self, device="cpu"):
        from .text import load_text_encoder

        folder = self._folder_for("text encoder")
        return self._get(
            "text_encoder",
            lambda: load_text_encoder(folder, self.version, dtype=self.dtype, device=device, lazy=True),
        )

    def scheduler_config(self) -> dict | None:
        """The checkpoint's own scheduler_config.json (None → the released one for this version)."""
        if self.detection.layout == "single_file":
            return None
        file = self.path / "scheduler" / "scheduler_config.json"
        return json.loads(file.read_text()) if file.exists() else None

    def release(self, name: str | None = None) -> None:
        """Drop one component (or all); the next request loads it again."""
        with self._lock:
            for key in [name] if name else list(self._loaded):
                component = self._loaded.pop(key, None)
                if key == "text_encoder" and component is not None:
                    component.release()

    def __repr__(self) -> str:
        d = self.detection
        storage = "" if self.storage_dtype is None else f", storage {self.storage_dtype}"
        return f"EasyAnimate({self.path.name}: {d.version} {d.size} {d.kind}, {d.layout}, {self.dtype}{storage})"


_open: dict[tuple, ModelComponents] = {}
_open_lock = threading.Lock()


def open_model(path: str | Path, precision: str = "bf16", weight_storage: str | None = None) -> ModelComponents:
    """Detect the model at `path` and return its (shared) components object for these settings."""
    path = Path(path).resolve()
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    storage = STORAGE_DTYPES.get(weight_storage) if weight_storage else None
    key = (str(path), precision, str(storage), path.stat().st_mtime_ns)
    with _open_lock:
        if key not in _open:
            _open[key] = ModelComponents(path, detect(path), DTYPES[precision], storage)
        return _open[key]
