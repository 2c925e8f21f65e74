"""Prompt encoding for EasyAnimate V5 (Bert + mT5) and V5.1 (Qwen2-VL), through transformers.

What each version hands the transformer (docs/faithfulness.md, text encoders; docs/faithfulness.md, text streams):

    V5    two streams, Bert first. Each prompt is tokenized to a fixed length (Bert: min(model_max_length, 256) = 77,
          mT5: 256) with special tokens, and both encoders run WITHOUT an attention mask, so pads attend and are
          attended. Feature = last hidden state (mT5: after the encoder's final layer norm).
    V5.1  one stream. Each prompt becomes its own one-message Qwen2-VL conversation (chat template + generation
          prompt), right-padded / truncated to 256 tokens, run WITH the mask. Feature = hidden_states[-2], the raw
          output of the second-to-last decoder layer, so the last layer, final norm and LM head are never loaded,
          and neither is the vision tower.

The transformer ignores the text masks: padded positions are real inputs to it, so pad embeddings must be produced
exactly as the model saw them in training. For Qwen that includes the pad positions' RoPE ids (see
`QWEN_PAD_POSITIONS`).

Files and weights are found and loaded by models/loading/text.py (meta-built encoders filled by the one streaming
loader; fp8 Linear storage through the ops namespace). Embeddings come back on the CPU in a `PromptEmbeddings`, and
identical texts are not encoded twice.
"""

from __future__ import annotations

import gc
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .defaults import MAX_SEQUENCE_LENGTH  # both versions: docs/faithfulness.md, text encoders
from .loading.text import (
    FP8_STORAGE_DTYPES,
    StreamFiles,
    TextEncoderFilesError,  # noqa: F401 (re-exported: raised to text.py's callers)
    detect_text_version,
    load_stream_model,
    load_tokenizer,
    normalize_version,
    text_encoder_files,
)

# RoPE position ids of Qwen pad tokens. "reference": cumsum(mask) - 1 with pads set to 1, the text-only rule of
# transformers 4.x (checked in 4.57.1, docs/faithfulness.md, text encoders), the major version EasyAnimate V5.1 was
# trained and released with. "sequential": 0..255 for every token, what transformers 5.x (and so diffusers running
# on it) does for text-only input, because its Qwen2-VL no longer derives text positions from the mask.
# Real tokens get identical embeddings either way (causal attention never looks at a later pad); pad rows differ.
QWEN_PAD_POSITIONS = ("reference", "sequential")


ProgressFn = Callable[[int, int], None]
InterruptFn = Callable[[], None]


# ----------------------------------------------------------------------------------------------------------------
# Embeddings


@dataclass(frozen=True, eq=False)
class PromptEmbeddings:
    """Text conditioning for one batch of prompts, on the CPU, ready for the transformer.

    `positive[i]` / `negative[i]` hold stream i's hidden states [B, L_i, D_i]; streams are ("bert", "t5") for V5
    (Bert first, the transformer's concatenation order) and ("qwen",) for V5.1. `positive_mask[i]` /
    `negative_mask[i]` are the tokenizer masks [B, L_i] (1 = real token); the transformer does not use them
    (docs/faithfulness.md, text streams), they record lengths. `cache_key` identifies encoder, settings and texts.
    """

    version: str
    streams: tuple[str, ...]
    positive: tuple[torch.Tensor, ...]
    negative: tuple[torch.Tensor, ...]
    positive_mask: tuple[torch.Tensor, ...]
    negative_mask: tuple[torch.Tensor, ...]
    prompts: tuple[str, ...]
    negative_prompts: tuple[str, ...]
    cache_key: str

    @property
    def batch_size(self) -> int:
        return self.positive[0].shape[0]

    @property
    def positive_lengths(self) -> tuple[torch.Tensor, ...]:
        """Real (non-pad) tokens per prompt [B], per stream."""
        return tuple(mask.sum(dim=-1) for mask in self.positive_mask)

    @property
    def negative_lengths(self) -> tuple[torch.Tensor, ...]:
        return tuple(mask.sum(dim=-1) for mask in self.negative_mask)

    def stream_index(self, stream: int | str) -> int:
        if isinstance(stream, int):
            return stream
        if stream not in self.streams:
            raise KeyError(f"no text stream {stream!r} in {self.version} embeddings; streams are {self.streams}")
        return self.streams.index(stream)

    def guidance_batch(self, stream: int | str = 0) -> torch.Tensor:
        """[negative; positive] on the batch axis: the reference CFG order (docs/faithfulness.md, text encoders)."""
        index = self.stream_index(stream)
        return torch.cat([self.negative[index], self.positive[index]], dim=0)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> PromptEmbeddings:
        """A copy with hidden states moved / cast (masks only moved)."""

        def move(tensors, cast):
            return tuple(t.to(device=device, dtype=dtype if cast else None) for t in tensors)

        return PromptEmbeddings(
            version=self.version,
            streams=self.streams,
            positive=move(self.positive, True),
            negative=move(self.negative, True),
            positive_mask=move(self.positive_mask, False),
            negative_mask=move(self.negative_mask, False),
            prompts=self.prompts,
            negative_prompts=self.negative_prompts,
            cache_key=self.cache_key,
        )


CACHE_SIZE = 32  # encoded texts kept per model


class PromptCache:
    """Encoded single texts, least recently used dropped first: key -> (hidden states per stream [1, L, D], masks per
    stream [1, L]), all on the CPU. Its owner is the model object (models/components.py) that ComfyUI's node cache
    holds, not this module: the cache outlives a released-and-reloaded encoder, and goes with the model."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._entries: OrderedDict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str):
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key]
        return None

    def put(self, key: str, value) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()


def _fingerprint(files: Sequence[StreamFiles], version: str) -> str:
    """Identity of the encoder files on disk (path, size, mtime), so cached embeddings never outlive them."""
    entries = [version]
    for stream in files:
        paths = sorted(p for p in stream.tokenizer_dir.iterdir() if p.is_file())
        paths += [stream.encoder_dir / "config.json", *stream.weight_files]
        entries += [(stream.stream, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return _digest(*entries)


# ----------------------------------------------------------------------------------------------------------------
# Encoding


def qwen_position_ids(attention_mask: torch.Tensor, pad_positions: str = "reference") -> torch.Tensor:
    """Text-only M-RoPE ids [3, B, L] for a right-padded batch (the same ids in all three sections)."""
    if pad_positions == "reference":
        positions = attention_mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(attention_mask == 0, 1)
    elif pad_positions == "sequential":
        positions = torch.arange(attention_mask.shape[-1], device=attention_mask.device).expand_as(attention_mask)
    else:
        raise ValueError(f"qwen_pad_positions must be one of {QWEN_PAD_POSITIONS}, got {pad_positions!r}")
    return positions.unsqueeze(0).expand(3, -1, -1)


class TextEncoder:
    """The text encoders of one EasyAnimate model folder. Use `load_text_encoder` to make one."""

    def __init__(
        self,
        model_dir: Path,
        version: str,
        files: tuple[StreamFiles, ...],
        dtype: torch.dtype,
        storage_dtype: torch.dtype | None,
        device: torch.device,
        qwen_pad_positions: str,
        cache: PromptCache | None = None,
    ):
        self.model_dir = model_dir
        self.version = version
        self.files = files
        self.streams = tuple(f.stream for f in files)
        self.dtype = dtype
        self.storage_dtype = storage_dtype
        self.device = device
        self.qwen_pad_positions = qwen_pad_positions
        self.tokenizers = {f.stream: load_tokenizer(f) for f in files}
        self.models: dict[str, torch.nn.Module] = {}
        self.cache = PromptCache() if cache is None else cache
        self.fingerprint = _digest(
            _fingerprint(files, version), str(dtype), str(storage_dtype), device.type, qwen_pad_positions
        )

    @property
    def loaded(self) -> bool:
        return bool(self.models)

    def load(self) -> None:
        """Stream the encoder weights in (done lazily by `encode` when needed)."""
        for files in self.files:
            if files.stream not in self.models:
                self.models[files.stream] = load_stream_model(files, self.dtype, self.storage_dtype, self.device)

    def release(self) -> None:
        """Drop the encoder weights (tokenizers and the prompt cache stay); `encode` reloads on demand."""
        self.models.clear()
        gc.collect()

    def max_length(self, stream: str) -> int:
        if stream == "qwen":
            return MAX_SEQUENCE_LENGTH
        return min(self.tokenizers[stream].model_max_length, MAX_SEQUENCE_LENGTH)  # Bert 77, mT5 256

    def text_key(self, text: str) -> str:
        return _digest(self.fingerprint, text)

    @torch.no_grad()
    def _encode_text(self, text: str) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """One text -> (hidden states [1, L, D] per stream, masks [1, L] per stream), on the CPU."""
        hidden_states, masks = [], []
        for stream in self.streams:
            tokenizer, model = self.tokenizers[stream], self.models[stream]
            if stream == "qwen":
                messages = [{"role": "user", "content": [{"type": "text", "text": text}]}]
                text_in = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            else:
                text_in = text
            tokens = tokenizer(
                text_in,
                padding="max_length",
                max_length=self.max_length(stream),
                truncation=True,
                return_attention_mask=True,
                return_tensors="pt",
            )
            input_ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask
            if stream == "qwen":
                mask_on_device = mask.to(self.device)
                output = model(
                    input_ids=input_ids,
                    attention_mask=mask_on_device,
                    position_ids=qwen_position_ids(mask_on_device, self.qwen_pad_positions),
                    use_cache=False,
                )
            else:
                # no attention mask: V5 reference (docs/faithfulness.md, text encoders)
                output = model(input_ids=input_ids)
            hidden_states.append(output.last_hidden_state.to(device="cpu", dtype=self.dtype))
            masks.append(mask.to("cpu"))
        return tuple(hidden_states), tuple(masks)

    def encode(
        self,
        prompts: str | Sequence[str],
        negative: str | Sequence[str] = "",
        *,
        progress: ProgressFn | None = None,
        interrupt: InterruptFn | None = None,
        use_cache: bool = True,
        release_after: bool = False,
    ) -> PromptEmbeddings:
        """Encode a batch of prompts and their negatives, each text on its own (never merged into one chat)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        if len(negatives) != len(prompts):
            raise ValueError(
                f"got {len(prompts)} prompts but {len(negatives)} negative prompts; pass one negative "
                f"prompt (a string) for all, or a list with one per prompt"
            )
        if not all(isinstance(t, str) for t in prompts + negatives):
            raise TypeError("prompts and negative prompts must be strings (use '' for an empty negative prompt)")

        encoded: dict[str, tuple] = {}
        to_encode = []
        for text in dict.fromkeys(prompts + negatives):  # unique, in order
            hit = self.cache.get(self.text_key(text)) if use_cache else None
            if hit is not None:
                encoded[text] = hit
            else:
                to_encode.append(text)
        if to_encode:
            self.load()
            for done, text in enumerate(to_encode):
                if interrupt is not None:
                    interrupt()
                encoded[text] = self._encode_text(text)
                if use_cache:
                    self.cache.put(self.text_key(text), encoded[text])
                if progress is not None:
                    progress(done + 1, len(to_encode))
        if release_after:
            self.release()

        def stack(texts, part):
            return tuple(torch.cat([encoded[t][part][i] for t in texts], dim=0) for i in range(len(self.streams)))

        return PromptEmbeddings(
            version=self.version,
            streams=self.streams,
            positive=stack(prompts, 0),
            negative=stack(negatives, 0),
            positive_mask=stack(prompts, 1),
            negative_mask=stack(negatives, 1),
            prompts=tuple(prompts),
            negative_prompts=tuple(negatives),
            cache_key=_digest(self.fingerprint, prompts, negatives),
        )


def load_text_encoder(
    model_dir: str | Path,
    version: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
    storage_dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    *,
    qwen_pad_positions: str = "reference",
    lazy: bool = False,
    cache: PromptCache | None = None,
) -> TextEncoder:
    """The tokenizers and text encoders of an EasyAnimate model folder (its tokenizer*/ and text_encoder*/).

    dtype: compute dtype and storage dtype of everything not stored in fp8 (bf16, fp16 or fp32).
    storage_dtype: torch.float8_e4m3fn (or e5m2) stores the Linear weights of the big encoders (mT5, Qwen2-VL) in
        fp8, upcast per layer to `dtype`; None keeps them in `dtype`. Bert is small and always stays in `dtype`.
    qwen_pad_positions: see QWEN_PAD_POSITIONS. lazy: read weights on the first `encode` that misses the cache.
    cache: the PromptCache to use, so that it outlives this encoder (the model object passes its own); None: a new one.
    """
    model_dir = Path(model_dir)
    version = normalize_version(version) if version is not None else detect_text_version(model_dir)
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"text encoder dtype must be bfloat16, float16 or float32, got {dtype}")
    if storage_dtype == dtype:
        storage_dtype = None
    if storage_dtype is not None and storage_dtype not in FP8_STORAGE_DTYPES:
        raise ValueError(f"storage_dtype must be None or one of {FP8_STORAGE_DTYPES}, got {storage_dtype}")
    if qwen_pad_positions not in QWEN_PAD_POSITIONS:
        raise ValueError(f"qwen_pad_positions must be one of {QWEN_PAD_POSITIONS}, got {qwen_pad_positions!r}")
    files = text_encoder_files(model_dir, version)
    encoder = TextEncoder(
        model_dir, version, files, dtype, storage_dtype, torch.device(device), qwen_pad_positions, cache
    )
    if not lazy:
        encoder.load()
    return encoder
