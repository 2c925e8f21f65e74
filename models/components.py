"""One EasyAnimate model on disk, its components loaded lazily and shared between every user of the same settings.

The loader node hands this object around; the text-encode, sampler and VAE nodes ask it for the part they need,
so a workflow that only encodes prompts never reads the transformer, and two loader nodes naming the same model
and settings share one copy (`open_model`). Pure Python/torch: no ComfyUI import.

Ownership (docs/reliability.md, ownership): this module keeps only WEAK references. A components object lives as
long as a node output (ComfyUI's cache) holds it; loading a component first releases the same component of every
other live object for the same files (a settings change never holds two copies), and `release` is what ComfyUI's
unload calls (nodes/bridge.py registers it).
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .defaults import DEFAULT_FRAMES, DEFAULT_HEIGHT, DEFAULT_WIDTH
from .loading.detect import Detection, detect
from .text import PromptCache

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STORAGE_DTYPES = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}


@dataclass(eq=False)
class ModelComponents:
    path: Path
    detection: Detection
    dtype: torch.dtype
    storage_dtype: torch.dtype | None = None  # transformer weights in memory (fp8 = qfloat8); None = dtype
    memory_mode: str = "auto"  # auto | gpu | model_cpu_offload | sequential (models/offload.py)
    resident_blocks: int = 0  # sequential: transformer blocks kept on the device (0 = as many as fit)
    fp8_mode: str = "quality"  # models/quant.py; only with an fp8 storage_dtype
    plan: object = None  # the models.memory.Plan the transformer was loaded for (None until then)
    companion: Path | None = None  # single-file transformer: the model folder lending VAE, text encoder, scheduler
    attention: str = "auto"  # auto | sdpa | sage | flash (models/attention.py)
    compile_blocks: bool = False  # torch.compile each transformer block (models/compile.py)
    # Run the offload machinery even on a CPU device (tests and benchmarks rehearse the GPU path; RAM holds both).
    offload_on_cpu: bool = False
    text_storage_dtype: torch.dtype | None = None  # fp8: the text encoders' big Linear weights (models/loading/text.py)
    # Encoded prompts: they live as long as this object, so a text encoder released after encoding (and reloaded)
    # still hits, and they go when ComfyUI drops the model.
    prompt_cache: PromptCache = field(default_factory=PromptCache, repr=False)
    _loaded: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)
    # Called as hook(components, name) after a component is released (nodes/bridge.py drops its ComfyUI record).
    on_release: list = field(default_factory=list, repr=False)

    @property
    def variant(self):
        return self.detection.variant

    @property
    def version(self) -> str:
        return self.detection.version

    def _folder_for(self, component: str) -> Path:
        if self.detection.layout != "single_file":
            return self.path
        if self.companion is None:
            raise FileNotFoundError(
                f"{self.path.name} is a single transformer file: it has no {component}, and no EasyAnimate "
                f"{self.version.upper()} model folder was found to take it from. Put one (e.g. "
                f"{'EasyAnimateV5.1-12b-zh' if self.version == 'v5.1' else 'EasyAnimateV5-12b-zh'}, with vae/, "
                "text_encoder/, tokenizer/ ...) into models/EasyAnimate/."
            )
        return self.companion

    def _source(self, name: str) -> Path | None:
        """The files component `name` is read from (two objects with the same source would hold two copies)."""
        if name == "transformer":
            return self.path
        try:
            return self._folder_for(name)
        except FileNotFoundError:
            return None

    def _get(self, name: str, build):
        with self._lock:
            if name not in self._loaded:
                release_other_copies(self, name)  # before the new copy is read: never two in RAM
                self._loaded[name] = build()
                from .memory import release_host_memory

                release_host_memory()  # the loader's read buffers and any freed copy go back to the OS now
            return self._loaded[name]

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def get_ram_usage(self) -> int:
        """Bytes of loaded weights (ComfyUI's RAM-pressure cache reads this to pick what to evict)."""
        total = 0
        for component in list(self._loaded.values()):
            modules = (
                [component]
                if isinstance(component, torch.nn.Module)
                else list(getattr(component, "models", {}).values())
            )
            for module in modules:
                total += sum(t.numel() * t.element_size() for t in module.state_dict().values())
        return total

    def transformer(
        self,
        device="cpu",
        progress=None,
        interrupt=None,
        size: tuple[int, int, int] | None = None,
        free_vram: int | None = None,
        log=print,
    ):
        """The transformer, loaded for a memory plan: `size` (width, height, frames) and `free_vram` (bytes on a
        CUDA device) let memory_mode "auto" pick the fastest mode (and, with "same as precision", fp8 storage)
        that fits; the plan is printed and kept in `self.plan`. Offload modes load to the CPU (RAM pre-flight)."""
        return self._get(
            "transformer", lambda: self._load_transformer(device, progress, interrupt, size, free_vram, log)
        )

    def make_plan(self, device, size: tuple[int, int, int] | None, free_vram: int | None):
        from .memory import STORAGE_DTYPES, Plan, model_bytes_for_transformer_files, plan_memory

        device = torch.device(device)
        storage = self.storage_dtype or self.dtype
        label = next(k for k, v in STORAGE_DTYPES.items() if v == storage)
        mode = self.memory_mode
        planned = mode == "auto" or (mode == "sequential" and not self.resident_blocks)
        if not planned or device.type != "cuda" or free_vram is None:
            mode = "gpu" if mode == "auto" else mode
            return Plan(mode, label, self.resident_blocks, 0, 0, 0, True, [f"EasyAnimate memory mode: {mode}"])
        storages = (label,) if self.storage_dtype is not None or mode != "auto" else (label, "fp8_e4m3fn")
        modes = None if mode == "auto" else (mode,)
        weights = model_bytes_for_transformer_files(
            self.path,
            self.dtype,
            storages,
            self.fp8_mode,
            self.version,
            None if self.detection.layout == "single_file" else self.path,
        )
        width, height, frames = size or (DEFAULT_WIDTH, DEFAULT_HEIGHT, DEFAULT_FRAMES)
        plan = plan_memory(weights, width, height, frames, free_vram, storages, compute_dtype=self.dtype, modes=modes)
        if self.resident_blocks:
            plan.resident_blocks = self.resident_blocks
        return plan

    def _load_transformer(self, device, progress, interrupt, size, free_vram, log):
        from .loading.transformer import load_transformer
        from .memory import STORAGE_DTYPES, check_ram, transformer_weight_bytes

        plan = self.plan = self.make_plan(device, size, free_vram)
        log(plan.summary())
        storage = STORAGE_DTYPES[plan.storage]
        load_device = device if plan.mode == "gpu" else "cpu"
        if torch.device(load_device).type == "cpu":  # weights will live in RAM: refuse early if they cannot
            needed = transformer_weight_bytes(self.path, self.dtype, storage, self.fp8_mode)
            check_ram(
                needed,
                f"the EasyAnimate transformer ({plan.storage})",
                self.path,
                "Choose weight_storage fp8_e4m3fn (half the bytes), close other programs, or add swap/RAM.",
            )
        from .attention import resolve_attention

        backend, attention = resolve_attention(self.attention, device, self.dtype, log)
        model = load_transformer(
            self.path,
            dtype=self.dtype,
            storage_dtype=storage,
            fp8_mode=self.fp8_mode,
            device=load_device,
            progress=progress,
            interrupt=interrupt,
            attention=attention,
        )
        model.attention_backend = backend
        if self.compile_blocks:
            from .compile import compile_blocks

            compile_blocks(model, log=log)
        return model

    def placement(self, transformer, device, stats=None):
        """Context manager putting the transformer where the plan wants it for one sampling run."""
        from .offload import transformer_placement

        plan = self.plan
        mode = "gpu" if plan is None else plan.mode
        if torch.device(device).type == "cpu" and not self.offload_on_cpu:
            mode = "gpu"  # offloading from RAM to RAM would only hold a second copy
        resident = 0 if plan is None else plan.resident_blocks
        return transformer_placement(transformer, mode, device, resident, stats)

    @property
    def offloading(self) -> bool:
        return self.plan is not None and self.plan.mode != "gpu"

    def vae(self, device="cpu"):
        from .vae import load_vae

        if self.offloading:  # rests in RAM; the node runs it under models.offload.on_device
            device = "cpu"

        # The reference runs the VAE in the pipeline dtype (bf16 by default); load_vae upcasts V5 fp16 itself.
        return self._get("vae", lambda: load_vae(self._folder_for("VAE"), dtype=self.dtype, device=device))

    def text_encoder(self, device="cpu"):
        from .text import load_text_encoder

        folder = self._folder_for("text encoder")
        return self._get(
            "text_encoder",
            lambda: load_text_encoder(
                folder,
                self.version,
                dtype=self.dtype,
                storage_dtype=self.text_storage_dtype,
                device=device,
                lazy=True,
                cache=self.prompt_cache,
            ),
        )

    def scheduler_config(self) -> dict | None:
        """The checkpoint's own scheduler_config.json (None → the released one for this version)."""
        if self.detection.layout == "single_file" and self.companion is None:
            return None
        file = self._folder_for("scheduler") / "scheduler" / "scheduler_config.json"
        return json.loads(file.read_text()) if file.exists() else None

    def release(self, name: str | None = None) -> None:
        """Drop one component (or all, and the prompt cache with them) and give the memory back; the next request
        loads it again."""
        from .memory import release_host_memory

        with self._lock:
            if name is None:
                self.prompt_cache.clear()
            dropped = 0
            for key in [name] if name else list(self._loaded):
                component = self._loaded.pop(key, None)
                if component is None:
                    continue
                dropped += 1
                if key == "text_encoder":
                    component.release()
                if key == "transformer":
                    self.plan = None
                del component
                for hook in list(self.on_release):
                    hook(self, key)
        if dropped:
            release_host_memory()

    def __repr__(self) -> str:
        d = self.detection
        storage = "" if self.storage_dtype is None else f", storage {self.storage_dtype}"
        return f"EasyAnimate({self.path.name}: {d.version} {d.size} {d.kind}, {d.layout}, {self.dtype}{storage})"


# (path, settings) -> the live components object: weak, so ComfyUI's cache alone decides how long it lives.
_live: "weakref.WeakValueDictionary[tuple, ModelComponents]" = weakref.WeakValueDictionary()
_live_lock = threading.Lock()


def live_components() -> list[ModelComponents]:
    with _live_lock:
        return list(_live.values())


def release_other_copies(keep: ModelComponents, name: str) -> None:
    """Release component `name` of every other live object reading the same files (different settings)."""
    source = keep._source(name)
    for other in live_components():
        if other is not keep and other.is_loaded(name) and other._source(name) == source:
            other.release(name)


def open_model(
    path: str | Path,
    precision: str = "bf16",
    weight_storage: str | None = None,
    memory_mode: str = "auto",
    resident_blocks: int = 0,
    fp8_mode: str = "quality",
    companion_candidates: list[Path] = (),
    attention: str = "auto",
    compile_blocks: bool = False,
    text_encoder_storage: str | None = None,
) -> ModelComponents:
    """Detect the model at `path` and return its (shared) components object for these settings.

    A single transformer file borrows its VAE, text encoder and scheduler from the first of `companion_candidates`
    (model folders) of the same version."""
    from .offload import MEMORY_MODES
    from .quant import FP8_MODES

    path = Path(path).resolve()
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    if memory_mode not in ("auto",) + MEMORY_MODES:
        raise ValueError(f"memory_mode must be auto or one of {MEMORY_MODES}, got {memory_mode!r}")
    if fp8_mode not in FP8_MODES:
        raise ValueError(f"fp8_mode must be one of {FP8_MODES}, got {fp8_mode!r}")
    storage = STORAGE_DTYPES.get(weight_storage) if weight_storage else None
    if text_encoder_storage not in (None, *STORAGE_DTYPES):
        raise ValueError(
            f"text_encoder_storage must be None or one of {sorted(STORAGE_DTYPES)}, got {text_encoder_storage!r}"
        )
    text_storage = STORAGE_DTYPES.get(text_encoder_storage) if text_encoder_storage else None
    fp8_mode = fp8_mode if storage is not None else "quality"  # only matters with fp8 storage
    from .attention import ATTENTION_CHOICES

    if attention not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {attention!r}")
    key = (
        str(path),
        precision,
        str(storage),
        memory_mode,
        int(resident_blocks),
        fp8_mode,
        path.stat().st_mtime_ns,
        attention,
        bool(compile_blocks),
        str(text_storage),
    )
    with _live_lock:
        components = _live.get(key)
    if components is not None:
        return components
    from .preflight import check_component_files

    detection = detect(path)
    companion = _companion(detection, companion_candidates) if detection.layout == "single_file" else None
    folder = companion if detection.layout == "single_file" else path
    if folder is not None:
        check_component_files(folder)  # truncated VAE / text encoder / tokenizer files: named now, not at sampling
    components = ModelComponents(
        path,
        detection,
        DTYPES[precision],
        storage,
        memory_mode,
        int(resident_blocks),
        fp8_mode,
        companion=companion,
        attention=attention,
        compile_blocks=bool(compile_blocks),
        text_storage_dtype=text_storage,
    )
    with _live_lock:
        return _live.setdefault(key, components)


def _companion(detection: Detection, candidates) -> Path | None:
    """The first candidate folder holding a complete model of the same version (its own transformer is not used)."""
    for folder in candidates:
        try:
            if detect(folder).version == detection.version:
                return Path(folder).resolve()
        except (OSError, ValueError, RuntimeError):  # incomplete or foreign folders are skipped
            continue
    return None
