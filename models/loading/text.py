"""The text encoders' files and models: which files a version needs, and how each encoder (Bert, mT5, Qwen2-VL) is
built on the meta device and filled by the one streaming loader (models/loading/stream.py).

Weights are read tensor by tensor in the compute dtype; with an fp8 storage dtype the big encoders' Linear weights
are held in fp8 by layers of the injected `ops` namespace, which upcast them per call (docs/memory.md, text
encoders). Nothing process-wide is patched while a model is built.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .. import ops as layer_ops
from ..variants import V5, V5_1
from .files import find_weights
from .headers import CheckpointError
from .stream import load_state_streaming

FP8_STORAGE_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


class TextEncoderFilesError(FileNotFoundError):
    """A tokenizer / text-encoder file is missing, unusable, or a pickle checkpoint was found instead."""


@dataclass(frozen=True)
class StreamFiles:
    stream: str  # "bert" | "t5" | "qwen"
    tokenizer_dir: Path
    encoder_dir: Path
    weight_files: tuple[Path, ...]


# stream -> (tokenizer folder, encoder folder, what the encoder is, required tokenizer files and their contents)
LAYOUT = {
    "bert": (
        "tokenizer",
        "text_encoder",
        "Bert text encoder (V5 encoder 1)",
        {
            "vocab.txt": "the Bert WordPiece vocabulary",
            "tokenizer_config.json": "the Bert tokenizer settings (model_max_length 77, lower-casing)",
        },
    ),
    "t5": (
        "tokenizer_2",
        "text_encoder_2",
        "mT5 text encoder (V5 encoder 2)",
        {
            "spiece.model": "the mT5 SentencePiece model",
        },
    ),
    "qwen": (
        "tokenizer",
        "text_encoder",
        "Qwen2-VL text encoder (V5.1)",
        {
            "vocab.json": "the Qwen2 byte-level BPE vocabulary",
            "merges.txt": "the Qwen2 BPE merges",
            "tokenizer_config.json": "the Qwen2 tokenizer settings (pad token, chat template)",
        },
    ),
}
STREAMS = {V5: ("bert", "t5"), V5_1: ("qwen",)}


def normalize_version(version: str) -> str:
    """'v5' / 'V5' / '5' -> 'v5'; 'v5.1' / 'V5.1' / '5.1' -> 'v5.1'."""
    text = str(version).strip().lower().removeprefix("easyanimate").strip().removeprefix("v")
    if text == "5":
        return V5
    if text == "5.1":
        return V5_1
    raise ValueError(
        f"unknown EasyAnimate text-encoder version {version!r}; expected 'v5' (Bert + mT5) or 'v5.1' (Qwen2-VL)"
    )


def detect_text_version(model_dir: str | Path) -> str:
    """V5 ships tokenizer_2/ + text_encoder_2/ (mT5); V5.1 a Qwen2-VL text_encoder/ (docs/checkpoints.md, folder
    layouts)."""
    model_dir = Path(model_dir)
    if (model_dir / "text_encoder_2").is_dir() or (model_dir / "tokenizer_2").is_dir():
        return V5
    config = model_dir / "text_encoder" / "config.json"
    if (model_dir / "tokenizer" / "vocab.json").is_file() or (
        config.is_file() and "qwen2_vl" in config.read_text(encoding="utf-8")
    ):
        return V5_1
    raise TextEncoderFilesError(
        f"cannot tell which EasyAnimate text encoders {model_dir} holds: expected tokenizer_2/ and text_encoder_2/ "
        f"(V5, Bert + mT5) or a Qwen2-VL text_encoder/ with tokenizer/vocab.json (V5.1). Download the complete "
        f"model folder (for example alibaba-pai/EasyAnimateV5.1-12b-zh) into {model_dir}."
    )


def _encoder_weights(encoder_dir: Path, what: str, problems: list[str]) -> tuple[Path, ...]:
    """The encoder's safetensors files (models/loading/files.py); what is wrong is appended to `problems`."""
    single, index = encoder_dir / "model.safetensors", encoder_dir / "model.safetensors.index.json"
    try:
        found = find_weights(encoder_dir, single, f"{what} weights")
    except CheckpointError as error:  # an unreadable shard index
        problems.append(f"{index}  ({what}: {error})")
        return ()
    if found.pickles:
        problems.append(
            f"{single}  ({what} weights): found only {', '.join(p.name for p in found.pickles)}, pickle "
            f"checkpoints can run code when loaded and are refused; use the .safetensors files of the "
            f"release"
        )
    elif found.missing and not found.files and found.index is None:
        problems.append(f"{single} or {index} + its shards  ({what} weights)")
    else:
        problems.extend(f"{path}  ({description})" for path, description in found.missing)
    return tuple(found.files)


def text_encoder_files(model_dir: str | Path, version: str) -> tuple[StreamFiles, ...]:
    """Check every file the version's tokenizers and encoders need; one error lists everything missing."""
    model_dir = Path(model_dir)
    version = normalize_version(version)
    problems: list[str] = []
    streams = []
    for stream in STREAMS[version]:
        tokenizer_name, encoder_name, what, tokenizer_files = LAYOUT[stream]
        tokenizer_dir, encoder_dir = model_dir / tokenizer_name, model_dir / encoder_name
        problems.extend(
            f"{tokenizer_dir / name}  ({contents})"
            for name, contents in tokenizer_files.items()
            if not (tokenizer_dir / name).is_file()
        )
        if not (encoder_dir / "config.json").is_file():
            problems.append(f"{encoder_dir / 'config.json'}  ({what} config)")
        streams.append(StreamFiles(stream, tokenizer_dir, encoder_dir, _encoder_weights(encoder_dir, what, problems)))
    if problems:
        listing = "\n".join(f"  - {problem}" for problem in problems)
        folders = sorted({f.tokenizer_dir.name for f in streams} | {f.encoder_dir.name for f in streams})
        raise TextEncoderFilesError(
            f"EasyAnimate {version.upper()} text encoder files are missing or unusable in {model_dir}:\n{listing}\n"
            f"Download the complete model folder, keeping its {', '.join(f + '/' for f in folders)} subfolders, "
            f"into {model_dir}."
        )
    return tuple(streams)


# -- building and filling the encoders --------------------------------------------------------------------------------


# The Linear layers an fp8 text storage holds in fp8, per stream: (module prefix, layer names). T5's attention and
# feed-forward inputs, `wo` excepted (T5's feed-forward casts its activations to wo.weight's dtype); every Linear of
# Qwen2-VL's text layers. Bert, embeddings and norms stay in the compute dtype. The loaders pick these modules and the
# memory plan prices them (text_weight_bytes) from this one table.
_FP8_LINEARS = {
    "t5": ("encoder.", frozenset({"q", "k", "v", "o", "wi", "wi_0", "wi_1"})),
    "qwen": ("layers.", frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})),
}


def _fp8_linears(model: nn.Module, stream: str) -> list[str]:
    """Module names of the plain Linear layers of `stream`'s model that hold fp8 weights (_FP8_LINEARS)."""
    prefix, layer_names = _FP8_LINEARS[stream]
    return [
        name
        for name, module in model.named_modules()
        if name.startswith(prefix) and type(module) is nn.Linear and name.rpartition(".")[2] in layer_names
    ]


def _use_ops_linears(model: nn.Module, names: list[str], ops) -> None:
    """Replace the named Linear layers (still on meta) by the ops namespace's Linear of the same shape, on meta."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = parent.get_submodule(child)
        parent._modules[child] = ops.Linear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")


def _stream_in(
    model: nn.Module,
    files: StreamFiles,
    rename: Callable[[str], str | None],
    dtype: torch.dtype,
    storage_dtype: torch.dtype | None,
    fp8_layers: list[str],
    device: torch.device,
) -> nn.Module:
    """Give the fp8 layers the ops Linear, then fill every parameter from the files (models/loading/stream.py):
    tensors the model has no place for (vision tower, LM head, the skipped last layer, pooler) are never read."""
    fp8_weights = {f"{name}.weight" for name in fp8_layers} if storage_dtype is not None else set()
    if fp8_weights:
        _use_ops_linears(model, fp8_layers, layer_ops.cast)

    def keep_dtype(name: str) -> torch.dtype:  # fp8 only for the ops Linear weights; biases, norms: compute dtype
        return storage_dtype if name in fp8_weights else dtype

    try:
        load_state_streaming(
            model,
            files.weight_files,
            dtype,
            rename=rename,
            keep_dtype=keep_dtype,
            strict=False,
            device=device,
            saturate=True,
        )
    except CheckpointError as error:
        raise TextEncoderFilesError(
            f"the {LAYOUT[files.stream][2]} weights in {files.encoder_dir} do not fit the model: the files are "
            f"incomplete or belong to a different model; download {files.encoder_dir.name}/ again.\n{error}"
        ) from None
    still_meta = [name for name, buffer in model.named_buffers() if buffer.is_meta]
    if still_meta:  # a buffer the builder above did not rebuild: a bug here, not in the files
        raise RuntimeError(f"text encoder buffers never built: {still_meta}")
    return model.eval().requires_grad_(False)


def _load_config(files: StreamFiles, model_types: tuple[str, ...]):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(files.encoder_dir), local_files_only=True, trust_remote_code=False)
    if config.model_type not in model_types:
        raise TextEncoderFilesError(
            f"{files.encoder_dir / 'config.json'} describes a '{config.model_type}' model, but EasyAnimate's "
            f"{LAYOUT[files.stream][2]} must be {' or '.join(model_types)}; the folder holds a different model."
        )
    return config


def _load_bert(files: StreamFiles, dtype, storage_dtype, device) -> nn.Module:
    from transformers import BertModel

    config = _load_config(files, ("bert",))
    with torch.device("meta"):
        model = BertModel(config, add_pooling_layer=False)  # only last_hidden_state is used: pooler never read
    # the embeddings' index buffers, which a meta build leaves empty
    positions = torch.arange(config.max_position_embeddings, device=device).expand((1, -1))
    model.embeddings.register_buffer("position_ids", positions, persistent=False)
    model.embeddings.register_buffer("token_type_ids", torch.zeros_like(positions), persistent=False)
    return _stream_in(model, files, lambda key: key.removeprefix("bert."), dtype, None, [], device)


def _load_t5(files: StreamFiles, dtype, storage_dtype, device) -> nn.Module:
    from transformers import MT5EncoderModel, T5EncoderModel

    config = _load_config(files, ("mt5", "t5"))
    # Eager attention on every transformers version: 4.x has nothing else for T5, 5.x would pick SDPA, which moves
    # the embeddings away from the original (docs/compatibility.md, transformers versions).
    config._attn_implementation = "eager"
    with torch.device("meta"):
        model = (MT5EncoderModel if config.model_type == "mt5" else T5EncoderModel)(config)
    fp8_layers = _fp8_linears(model, "t5") if storage_dtype is not None else []
    return _stream_in(model, files, lambda key: key, dtype, storage_dtype, fp8_layers, device)


def _qwen_checkpoint_to_text_model(key: str) -> str | None:
    """Released layout `model.layers.*` (or transformers >= 4.52's `model.language_model.*`) -> text-model keys."""
    for prefix in ("model.language_model.", "model."):
        if key.startswith(prefix):
            rest = key[len(prefix) :]
            return None if rest.startswith(("visual.", "language_model.")) else rest
    return None  # visual.*, lm_head.*


def _load_qwen(files: StreamFiles, dtype, storage_dtype, device) -> nn.Module:
    import transformers

    try:
        from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLTextModel
    except ImportError as error:
        raise RuntimeError(
            f"EasyAnimate V5.1 text encoding needs transformers >= 4.52 (Qwen2VLTextModel); "
            f"found transformers {transformers.__version__}. Update it with "
            f"`pip install -U transformers`."
        ) from error
    config = _load_config(files, ("qwen2_vl",))
    text_config = copy.deepcopy(config.text_config)
    # hidden_states[-2] is the raw output of layer N-2: build layers 0..N-2 only and no final norm.
    kept_layers = text_config.num_hidden_layers - 1
    text_config.num_hidden_layers = kept_layers
    if getattr(text_config, "layer_types", None) is not None:
        text_config.layer_types = list(text_config.layer_types[:kept_layers])
    with torch.device("meta"):
        model = Qwen2VLTextModel(text_config)
    model.norm = nn.Identity()
    # The RoPE frequencies, which a meta build leaves empty (no parameters): the model's rotary module, and on
    # transformers 4.x also the unused copy each attention layer still builds.
    rotary = type(model.rotary_emb)
    with torch.device(device):
        for name, module in list(model.named_modules()):
            if isinstance(module, rotary):
                owner, _, attr = name.rpartition(".")
                setattr(model.get_submodule(owner) if owner else model, attr, rotary(config=text_config))
    fp8_layers = _fp8_linears(model, "qwen") if storage_dtype is not None else []
    return _stream_in(model, files, _qwen_checkpoint_to_text_model, dtype, storage_dtype, fp8_layers, device)


def _qwen_unread(files: StreamFiles) -> tuple[str, ...]:
    """Text-model keys of the released Qwen2-VL files that `_load_qwen` does not build: the last layer and the final
    norm (EasyAnimate reads hidden_states[-2])."""
    config = json.loads((files.encoder_dir / "config.json").read_text())
    layers = config.get("text_config", {}).get("num_hidden_layers", config.get("num_hidden_layers"))
    return (f"layers.{layers - 1}.", "norm.")


def text_weight_bytes(
    model_dir: str | Path, version: str, dtype: torch.dtype, storage_dtype: torch.dtype | None = None
) -> int:
    """Bytes of the weights the text encoders hold once loaded, from the safetensors headers alone: every tensor the
    loaders read, in `dtype`, and with an fp8 `storage_dtype` the fp8 Linear weights at one byte each (docs/memory.md,
    text encoders). Buffers that are not in the files (position ids, RoPE frequencies: kilobytes) are not counted.
    Raises TextEncoderFilesError like the loader when files are missing."""
    from .headers import read_headers

    itemsize = torch.empty((), dtype=dtype).element_size()
    total = 0
    for files in text_encoder_files(model_dir, version):
        rename, unread = (lambda key: key), ("pooler.", "decoder.", "lm_head.")  # Bert's pooler is not built
        if files.stream == "qwen":
            rename, unread = _qwen_checkpoint_to_text_model, _qwen_unread(files)
        prefix, fp8_names = _FP8_LINEARS.get(files.stream, ("", set()))
        headers = read_headers(list(files.weight_files))
        names = {rename(key): info for key, (info, _) in headers.items()}
        if "shared.weight" in names:  # T5's embedding, tied: one tensor under two names
            names.pop("encoder.embed_tokens.weight", None)
        for name, info in names.items():
            if name is None or name.startswith(unread):
                continue
            module, _, leaf = name.rpartition(".")
            fp8 = storage_dtype is not None and leaf == "weight" and module.startswith(prefix)
            total += info.numel * (1 if fp8 and module.rpartition(".")[2] in fp8_names else itemsize)
    return total


_BUILDERS = {"bert": _load_bert, "t5": _load_t5, "qwen": _load_qwen}


def load_stream_model(
    files: StreamFiles, dtype: torch.dtype, storage_dtype: torch.dtype | None, device: torch.device
) -> nn.Module:
    """One encoder of a text stream, built on meta and streamed in (fp8 `storage_dtype`: Bert ignores it)."""
    return _BUILDERS[files.stream](files, dtype, storage_dtype, device)


def load_tokenizer(files: StreamFiles):
    from transformers import BertTokenizer, Qwen2Tokenizer, T5Tokenizer

    tokenizer_class = {"bert": BertTokenizer, "t5": T5Tokenizer, "qwen": Qwen2Tokenizer}[files.stream]
    try:
        tokenizer = tokenizer_class.from_pretrained(str(files.tokenizer_dir), local_files_only=True)
    except Exception as error:  # a corrupt vocabulary surfaces as many different exception types
        raise TextEncoderFilesError(
            f"could not load the {files.stream} tokenizer from {files.tokenizer_dir}: {error}"
        ) from error
    if files.stream == "qwen":
        # reference: right padding, right truncation (docs/faithfulness.md, text encoders)
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        if tokenizer.chat_template is None:
            template_file = files.tokenizer_dir / "chat_template.json"
            if not template_file.is_file():
                raise TextEncoderFilesError(
                    f"the Qwen2-VL tokenizer in {files.tokenizer_dir} has no chat template: expected "
                    f"'chat_template' in tokenizer_config.json or {template_file}"
                )
            tokenizer.chat_template = json.loads(template_file.read_text(encoding="utf-8"))["chat_template"]
    return tokenizer
