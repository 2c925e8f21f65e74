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

Weights are streamed from safetensors into a parameter-less skeleton, one tensor at a time, in the compute dtype
(or, for the big encoders' Linear weights, in fp8 with per-layer upcast through `ops.Linear`). Pickle checkpoints
are refused. Embeddings come back on the CPU in a `PromptEmbeddings`, and identical texts are not encoded twice.
"""

from __future__ import annotations

import gc
import hashlib
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from . import ops
from .variants import V5, V5_1

from .defaults import MAX_SEQUENCE_LENGTH  # both versions: docs/faithfulness.md, text encoders

# RoPE position ids of Qwen pad tokens. "reference": cumsum(mask) - 1 with pads set to 1, the text-only rule of
# transformers 4.x (checked in 4.57.1, docs/faithfulness.md, text encoders), the major version EasyAnimate V5.1 was
# trained and released with. "sequential": 0..255 for every token, what transformers 5.x (and so diffusers running
# on it) does for text-only input, because its Qwen2-VL no longer derives text positions from the mask.
# Real tokens get identical embeddings either way (causal attention never looks at a later pad); pad rows differ.
QWEN_PAD_POSITIONS = ("reference", "sequential")

FP8_STORAGE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

ProgressFn = Callable[[int, int], None]
InterruptFn = Callable[[], None]


class TextEncoderFilesError(FileNotFoundError):
    """A tokenizer / text-encoder file is missing, unusable, or a pickle checkpoint was found instead."""


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
            version=self.version, streams=self.streams,
            positive=move(self.positive, True), negative=move(self.negative, True),
            positive_mask=move(self.positive_mask, False), negative_mask=move(self.negative_mask, False),
            prompts=self.prompts, negative_prompts=self.negative_prompts, cache_key=self.cache_key,
        )


# Encoded single texts, shared by every encoder instance so a released-and-reloaded encoder still hits:
# key -> (hidden states per stream [1, L, D], masks per stream [1, L]), all on the CPU.
CACHE_SIZE = 32
_text_cache: OrderedDict[str, tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]] = OrderedDict()
_text_cache_lock = threading.Lock()


def clear_prompt_cache() -> None:
    with _text_cache_lock:
        _text_cache.clear()


def _cache_get(key: str):
    with _text_cache_lock:
        if key in _text_cache:
            _text_cache.move_to_end(key)
            return _text_cache[key]
    return None


def _cache_put(key: str, value) -> None:
    with _text_cache_lock:
        _text_cache[key] = value
        _text_cache.move_to_end(key)
        while len(_text_cache) > CACHE_SIZE:
            _text_cache.popitem(last=False)


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False, default=str).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class _StreamFiles:
    stream: str  # "bert" | "t5" | "qwen"
    tokenizer_dir: Path
    encoder_dir: Path
    weight_files: tuple[Path, ...]


# stream -> (tokenizer folder, encoder folder, what the encoder is, required tokenizer files and their contents)
_LAYOUT = {
    "bert": ("tokenizer", "text_encoder", "Bert text encoder (V5 encoder 1)", {
        "vocab.txt": "the Bert WordPiece vocabulary",
        "tokenizer_config.json": "the Bert tokenizer settings (model_max_length 77, lower-casing)",
    }),
    "t5": ("tokenizer_2", "text_encoder_2", "mT5 text encoder (V5 encoder 2)", {
        "spiece.model": "the mT5 SentencePiece model",
    }),
    "qwen": ("tokenizer", "text_encoder", "Qwen2-VL text encoder (V5.1)", {
        "vocab.json": "the Qwen2 byte-level BPE vocabulary",
        "merges.txt": "the Qwen2 BPE merges",
        "tokenizer_config.json": "the Qwen2 tokenizer settings (pad token, chat template)",
    }),
}
_STREAMS = {V5: ("bert", "t5"), V5_1: ("qwen",)}


def normalize_version(version: str) -> str:
    """'v5' / 'V5' / '5' -> 'v5'; 'v5.1' / 'V5.1' / '5.1' -> 'v5.1'."""
    text = str(version).strip().lower().removeprefix("easyanimate").strip().removeprefix("v")
    if text == "5":
        return V5
    if text == "5.1":
        return V5_1
    raise ValueError(f"unknown EasyAnimate text-encoder version {version!r}; expected 'v5' (Bert + mT5) or "
                     f"'v5.1' (Qwen2-VL)")


def detect_text_version(model_dir: str | Path) -> str:
    """V5 ships tokenizer_2/ + text_encoder_2/ (mT5); V5.1 a Qwen2-VL text_encoder/ (docs/checkpoints.md, folder
    layouts)."""
    model_dir = Path(model_dir)
    if (model_dir / "text_encoder_2").is_dir() or (model_dir / "tokenizer_2").is_dir():
        return V5
    config = model_dir / "text_encoder" / "config.json"
    if (model_dir / "tokenizer" / "vocab.json").is_file() or (
            config.is_file() and "qwen2_vl" in config.read_text(encoding="utf-8")):
        return V5_1
    raise TextEncoderFilesError(
        f"cannot tell which EasyAnimate text encoders {model_dir} holds: expected tokenizer_2/ and text_encoder_2/ "
        f"(V5, Bert + mT5) or a Qwen2-VL text_encoder/ with tokenizer/vocab.json (V5.1). Download the complete "
        f"model folder (for example alibaba-pai/EasyAnimateV5.1-12b-zh) into {model_dir}.")


def _weight_files(encoder_dir: Path, what: str, problems: list[str]) -> tuple[Path, ...]:
    """The encoder's safetensors files: an index + its shards, or one model.safetensors. Pickles are refused."""
    index = encoder_dir / "model.safetensors.index.json"
    single = encoder_dir / "model.safetensors"
    if index.is_file():
        try:
            shard_names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (ValueError, KeyError) as error:
            problems.append(f"{index}  ({what}: unreadable index, {error})")
            return ()
        shards = tuple(encoder_dir / name for name in shard_names)
        problems.extend(f"{shard}  ({what}: weight shard listed in {index.name})" for shard in shards
                        if not shard.is_file())
        return shards
    if single.is_file():
        return (single,)
    pickles = sorted(p.name for p in encoder_dir.glob("*") if p.suffix in PICKLE_SUFFIXES) if encoder_dir.is_dir() \
        else []
    if pickles:
        problems.append(f"{single}  ({what} weights): found only {', '.join(pickles)}, pickle checkpoints can run "
                        f"code when loaded and are refused; use the .safetensors files of the release")
    else:
        problems.append(f"{single} or {index} + its shards  ({what} weights)")
    return ()


def text_encoder_files(model_dir: str | Path, version: str) -> tuple[_StreamFiles, ...]:
    """Check every file the version's tokenizers and encoders need; one error lists everything missing."""
    model_dir = Path(model_dir)
    version = normalize_version(version)
    problems: list[str] = []
    streams = []
    for stream in _STREAMS[version]:
        tokenizer_name, encoder_name, what, tokenizer_files = _LAYOUT[stream]
        tokenizer_dir, encoder_dir = model_dir / tokenizer_name, model_dir / encoder_name
        problems.extend(f"{tokenizer_dir / name}  ({contents})" for name, contents in tokenizer_files.items()
                        if not (tokenizer_dir / name).is_file())
        if not (encoder_dir / "config.json").is_file():
            problems.append(f"{encoder_dir / 'config.json'}  ({what} config)")
        streams.append(_StreamFiles(stream, tokenizer_dir, encoder_dir, _weight_files(encoder_dir, what, problems)))
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        folders = sorted({f.tokenizer_dir.name for f in streams} | {f.encoder_dir.name for f in streams})
        raise TextEncoderFilesError(
            f"EasyAnimate {version.upper()} text encoder files are missing or unusable in {model_dir}:\n{listing}\n"
            f"Download the complete model folder, keeping its {', '.join(f + '/' for f in folders)} subfolders, "
            f"into {model_dir}.")
    return tuple(streams)


def _fingerprint(files: Sequence[_StreamFiles], version: str) -> str:
    """Identity of the encoder files on disk (path, size, mtime), so cached embeddings never outlive them."""
    entries = [version]
    for stream in files:
        paths = sorted(p for p in stream.tokenizer_dir.iterdir() if p.is_file())
        paths += [stream.encoder_dir / "config.json", *stream.weight_files]
        entries += [(stream.stream, str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return _digest(*entries)


# ----------------------------------------------------------------------------------------------------------------
# Loading


@contextmanager
def _parameters_on_meta():
    """Build modules with shape-only (meta) parameters but real buffers (RoPE tables, position ids).

    The checkpoint supplies every parameter right after, so allocating and randomly initialising them first would
    only cost time and memory. Not thread-safe: it swaps `nn.Module.register_parameter` while active.
    """
    register = torch.nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def _fp8_linear_weights(model: torch.nn.Module, skip_suffixes: tuple[str, ...]) -> set[str]:
    """Weights of the plain Linear layers that may be stored in fp8 (embeddings and norms stay in compute dtype)."""
    return {f"{name}.weight" for name, module in model.named_modules()
            if type(module) is torch.nn.Linear and not name.endswith(skip_suffixes)}


def _stream_weights(model: torch.nn.Module, files: _StreamFiles, checkpoint_to_module: Callable[[str], str | None],
                    dtype: torch.dtype, storage_dtype: torch.dtype | None, fp8_keys: set[str],
                    device: torch.device, aliases: dict[str, str] | None = None) -> None:
    """Read exactly the tensors `model` needs, one at a time, cast them, and assign them into the skeleton."""
    expected = {name for name, _ in model.named_parameters(remove_duplicate=False)}  # buffers are built, not read
    aliases = aliases or {}  # module key -> module key holding the same (tied) tensor
    state: dict[str, torch.Tensor] = {}
    for path in files.weight_files:
        with safe_open(str(path), framework="pt", device="cpu") as checkpoint:
            for key in checkpoint.keys():
                module_key = checkpoint_to_module(key)
                if module_key is None or module_key not in expected or module_key in state:
                    continue  # never read: vision tower, LM head, skipped last layer, pooler, ...
                tensor = checkpoint.get_tensor(key).to(device)
                if module_key in fp8_keys:
                    limit = torch.finfo(storage_dtype).max  # fp8 casts do not saturate: clamp first
                    tensor = tensor.clamp(-limit, limit).to(storage_dtype)
                elif tensor.is_floating_point():
                    tensor = tensor.to(dtype)
                state[module_key] = tensor
    for module_key, source in aliases.items():
        if module_key not in state and source in state:
            state[module_key] = state[source]
    missing = sorted(expected - state.keys())
    if missing:
        shown = ", ".join(missing[:8]) + (f", ... ({len(missing)} in all)" if len(missing) > 8 else "")
        raise TextEncoderFilesError(
            f"the {_LAYOUT[files.stream][2]} weights in {files.encoder_dir} lack tensors the model needs: {shown}. "
            f"The files are incomplete or belong to a different model; download {files.encoder_dir.name}/ again.")
    result = model.load_state_dict(state, strict=False, assign=True)
    if result.unexpected_keys or any(p.is_meta for p in model.parameters()):  # a bug here, not in the files
        raise RuntimeError(f"text encoder skeleton and weights disagree: {result}")
    for name, module in model.named_modules():
        if f"{name}.weight" in fp8_keys:
            module.__class__ = ops.Linear  # upcasts the fp8 weight to the activation dtype per call
    model.eval().requires_grad_(False)


def _load_config(files: _StreamFiles, model_types: tuple[str, ...]):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(files.encoder_dir), local_files_only=True, trust_remote_code=False)
    if config.model_type not in model_types:
        raise TextEncoderFilesError(
            f"{files.encoder_dir / 'config.json'} describes a '{config.model_type}' model, but EasyAnimate's "
            f"{_LAYOUT[files.stream][2]} must be {' or '.join(model_types)}; the folder holds a different model.")
    return config


def _load_bert(files: _StreamFiles, dtype, storage_dtype, device) -> torch.nn.Module:
    from transformers import BertModel

    config = _load_config(files, ("bert",))
    with _parameters_on_meta():
        model = BertModel(config, add_pooling_layer=False)  # only last_hidden_state is used: pooler never read
    _stream_weights(model, files, lambda key: key.removeprefix("bert."), dtype, None, set(), device)
    return model


def _load_t5(files: _StreamFiles, dtype, storage_dtype, device) -> torch.nn.Module:
    from transformers import MT5EncoderModel, T5EncoderModel

    config = _load_config(files, ("mt5", "t5"))
    # Eager attention on every transformers version: 4.x has nothing else for T5, 5.x would pick SDPA, which moves
    # the embeddings away from the original (docs/compatibility.md, transformers versions).
    config._attn_implementation = "eager"
    with _parameters_on_meta():
        model = (MT5EncoderModel if config.model_type == "mt5" else T5EncoderModel)(config)
    # `wo` stays in compute dtype: T5's feed-forward casts its activations to wo.weight's dtype.
    fp8_keys = _fp8_linear_weights(model.encoder, (".wo",)) if storage_dtype is not None else set()
    fp8_keys = {f"encoder.{key}" for key in fp8_keys}
    tied = {"encoder.embed_tokens.weight": "shared.weight", "shared.weight": "encoder.embed_tokens.weight"}
    _stream_weights(model, files, lambda key: key, dtype, storage_dtype, fp8_keys, device, aliases=tied)
    return model


def _qwen_checkpoint_to_text_model(key: str) -> str | None:
    """Released layout `model.layers.*` (or transformers >= 4.52's `model.language_model.*`) -> text-model keys."""
    for prefix in ("model.language_model.", "model."):
        if key.startswith(prefix):
            rest = key[len(prefix):]
            return None if rest.startswith(("visual.", "language_model.")) else rest
    return None  # visual.*, lm_head.*


def _load_qwen(files: _StreamFiles, dtype, storage_dtype, device) -> torch.nn.Module:
    import copy

    import transformers

    try:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextModel
    except ImportError as error:
        raise RuntimeError(f"EasyAnimate V5.1 text encoding needs transformers >= 4.52 (Qwen2VLTextModel); "
                           f"found transformers {transformers.__version__}. Update it with "
                           f"`pip install -U transformers`.") from error
    config = _load_config(files, ("qwen2_vl",))
    text_config = copy.deepcopy(config.text_config)
    # hidden_states[-2] is the raw output of layer N-2: build layers 0..N-2 only and no final norm.
    kept_layers = text_config.num_hidden_layers - 1
    text_config.num_hidden_layers = kept_layers
    if getattr(text_config, "layer_types", None) is not None:
        text_config.layer_types = list(text_config.layer_types[:kept_layers])
    with _parameters_on_meta():
        model = Qwen2VLTextModel(text_config)
    model.norm = torch.nn.Identity()
    fp8_keys = _fp8_linear_weights(model.layers, ()) if storage_dtype is not None else set()
    fp8_keys = {f"layers.{key}" for key in fp8_keys}
    _stream_weights(model, files, _qwen_checkpoint_to_text_model, dtype, storage_dtype, fp8_keys, device)
    return model


_LOADERS = {"bert": _load_bert, "t5": _load_t5, "qwen": _load_qwen}


def _load_tokenizer(files: _StreamFiles):
    from transformers import BertTokenizer, Qwen2Tokenizer, T5Tokenizer

    tokenizer_class = {"bert": BertTokenizer, "t5": T5Tokenizer, "qwen": Qwen2Tokenizer}[files.stream]
    try:
        tokenizer = tokenizer_class.from_pretrained(str(files.tokenizer_dir), local_files_only=True)
    except Exception as error:  # a corrupt vocabulary surfaces as many different exception types
        raise TextEncoderFilesError(f"could not load the {files.stream} tokenizer from {files.tokenizer_dir}: "
                                    f"{error}") from error
    if files.stream == "qwen":
        # reference: right padding, right truncation (docs/faithfulness.md, text encoders)
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        if tokenizer.chat_template is None:
            template_file = files.tokenizer_dir / "chat_template.json"
            if not template_file.is_file():
                raise TextEncoderFilesError(
                    f"the Qwen2-VL tokenizer in {files.tokenizer_dir} has no chat template: expected "
                    f"'chat_template' in tokenizer_config.json or {template_file}")
            tokenizer.chat_template = json.loads(template_file.read_text(encoding="utf-8"))["chat_template"]
    return tokenizer


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

    def __init__(self, model_dir: Path, version: str, files: tuple[_StreamFiles, ...], dtype: torch.dtype,
                 storage_dtype: torch.dtype | None, device: torch.device, qwen_pad_positions: str):
        self.model_dir = model_dir
        self.version = version
        self.files = files
        self.streams = tuple(f.stream for f in files)
        self.dtype = dtype
        self.storage_dtype = storage_dtype
        self.device = device
        self.qwen_pad_positions = qwen_pad_positions
        self.tokenizers = {f.stream: _load_tokenizer(f) for f in files}
        self.models: dict[str, torch.nn.Module] = {}
        self.fingerprint = _digest(_fingerprint(files, version), str(dtype), str(storage_dtype), device.type,
                                   qwen_pad_positions)

    @property
    def loaded(self) -> bool:
        return bool(self.models)

    def load(self) -> None:
        """Stream the encoder weights in (done lazily by `encode` when needed)."""
        for files in self.files:
            if files.stream not in self.models:
                self.models[files.stream] = _LOADERS[files.stream](files, self.dtype, self.storage_dtype, self.device)

    def release(self) -> None:
        """Drop the encoder weights (tokenizers and the embeddings cache stay); `encode` reloads on demand."""
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
            tokens = tokenizer(text_in, padding="max_length", max_length=self.max_length(stream), truncation=True,
                               return_attention_mask=True, return_tensors="pt")
            input_ids, mask = tokens.input_ids.to(self.device), tokens.attention_mask
            if stream == "qwen":
                mask_on_device = mask.to(self.device)
                output = model(input_ids=input_ids, attention_mask=mask_on_device,
                               position_ids=qwen_position_ids(mask_on_device, self.qwen_pad_positions),
                               use_cache=False)
            else:
                # no attention mask: V5 reference (docs/faithfulness.md, text encoders)
                output = model(input_ids=input_ids)
            hidden_states.append(output.last_hidden_state.to(device="cpu", dtype=self.dtype))
            masks.append(mask.to("cpu"))
        return tuple(hidden_states), tuple(masks)

    def encode(self, prompts: str | Sequence[str], negative: str | Sequence[str] = "", *,
               progress: ProgressFn | None = None, interrupt: InterruptFn | None = None, use_cache: bool = True,
               release_after: bool = False) -> PromptEmbeddings:
        """Encode a batch of prompts and their negatives, each text on its own (never merged into one chat)."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if not prompts:
            raise ValueError("encode() needs at least one prompt")
        if len(negatives) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(negatives)} negative prompts; pass one negative "
                             f"prompt (a string) for all, or a list with one per prompt")
        if not all(isinstance(t, str) for t in prompts + negatives):
            raise TypeError("prompts and negative prompts must be strings (use '' for an empty negative prompt)")

        encoded: dict[str, tuple] = {}
        to_encode = []
        for text in dict.fromkeys(prompts + negatives):  # unique, in order
            hit = _cache_get(self.text_key(text)) if use_cache else None
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
                    _cache_put(self.text_key(text), encoded[text])
                if progress is not None:
                    progress(done + 1, len(to_encode))
        if release_after:
            self.release()

        def stack(texts, part):
            return tuple(torch.cat([encoded[t][part][i] for t in texts], dim=0) for i in range(len(self.streams)))

        return PromptEmbeddings(
            version=self.version, streams=self.streams,
            positive=stack(prompts, 0), negative=stack(negatives, 0),
            positive_mask=stack(prompts, 1), negative_mask=stack(negatives, 1),
            prompts=tuple(prompts), negative_prompts=tuple(negatives),
            cache_key=_digest(self.fingerprint, prompts, negatives),
        )


def load_text_encoder(model_dir: str | Path, version: str | None = None, dtype: torch.dtype = torch.bfloat16,
                      storage_dtype: torch.dtype | None = None, device: torch.device | str = "cpu", *,
                      qwen_pad_positions: str = "reference", lazy: bool = False) -> TextEncoder:
    """The tokenizers and text encoders of an EasyAnimate model folder (its tokenizer*/ and text_encoder*/).

    dtype: compute dtype and storage dtype of everything not stored in fp8 (bf16, fp16 or fp32).
    storage_dtype: torch.float8_e4m3fn (or e5m2) stores the Linear weights of the big encoders (mT5, Qwen2-VL) in
        fp8, upcast per layer to `dtype`; None keeps them in `dtype`. Bert is small and always stays in `dtype`.
    qwen_pad_positions: see QWEN_PAD_POSITIONS. lazy: read weights on the first `encode` that misses the cache.
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
    encoder = TextEncoder(model_dir, version, files, dtype, storage_dtype, torch.device(device), qwen_pad_positions)
    if not lazy:
        encoder.load()
    return encoder
