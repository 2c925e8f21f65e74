"""Tiny, real, loadable text components in the released EasyAnimate folder layouts (test fixtures).

`write_v5_text(model_dir, seed)` writes what a V5 repo holds for its two text encoders and
`write_v51_text(model_dir, seed)` what a V5.1 repo holds for Qwen2-VL (docs/checkpoints.md):

    V5                                           V5.1
    tokenizer/       vocab.txt (WordPiece) ...   tokenizer/     vocab.json, merges.txt, tokenizer.json,
    text_encoder/    BertModel, 1 file                          tokenizer_config.json, chat_template.json, ...
    tokenizer_2/     spiece.model (mT5) ...      text_encoder/  Qwen2VLForConditionalGeneration, 3 shards + index,
    text_encoder_2/  mT5 encoder, 2 shards + index              vision tower included, tokenizer files again

The tokenizers are TRAINED offline on a small generated English + Chinese corpus (WordPiece, SentencePiece unigram,
byte-level BPE), so they split text the way the real ones do, only with tiny vocabularies. Weights are random but
deterministic in `seed`, with non-trivial norm weights and biases so a skipped norm or bias shows up in a test.
Dimensions follow the project's shared tiny sizes: Bert hidden 32, mT5 d_model 48, Qwen2-VL text hidden 64.
"""

from __future__ import annotations

import io
import json
import math
import random
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

# Shared tiny dimensions (kept in one place so other helpers' fixtures can read them).
BERT_HIDDEN = 32
BERT_LAYERS = 2
BERT_HEADS = 2
BERT_MAX_LENGTH = 77  # HunyuanDiT's Bert tokenizer declares model_max_length 77
T5_D_MODEL = 48
T5_LAYERS = 2
T5_HEADS = 2
QWEN_HIDDEN = 64
QWEN_LAYERS = 3
QWEN_HEADS = 4
QWEN_KV_HEADS = 2
QWEN_MROPE_SECTION = [2, 3, 3]  # sums to head_dim / 2 = (64 / 4) / 2

# Qwen2 / Qwen2-VL specials in the release's order (ids 151643.. there, right after the BPE vocabulary here).
QWEN_SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# The stock Qwen2-VL-Instruct chat template (data, shipped as chat_template.json in the release).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split (data from the Qwen2 tokenizer.json).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


# ----------------------------------------------------------------------------------------------------------------
# Corpus


_EN_SUBJECTS = [
    "a cat",
    "the dog",
    "a young woman",
    "an old man",
    "two birds",
    "a red car",
    "the ocean",
    "a robot",
    "a small boat",
    "the city",
    "a horse",
    "children",
    "a dancer",
    "the forest",
    "a golden fish",
]
_EN_VERBS = [
    "walks along",
    "runs across",
    "flies over",
    "sits beside",
    "jumps into",
    "looks at",
    "drives through",
    "floats on",
    "dances in",
    "swims under",
    "glows above",
    "rests near",
]
_EN_PLACES = [
    "the beach",
    "a quiet street",
    "the mountains",
    "a green field",
    "the river",
    "a bright city at night",
    "the snowy forest",
    "a wooden bridge",
    "the blue sky",
    "an empty room",
    "the garden",
    "a busy market",
]
_EN_STYLES = [
    "cinematic lighting",
    "slow motion",
    "high quality",
    "4k",
    "soft colors",
    "dramatic clouds",
    "sunset",
    "close-up shot",
    "wide angle",
    "realistic",
    "anime style",
    "smooth camera motion",
]
_ZH_SUBJECTS = [
    "一只猫",
    "一只狗",
    "年轻的女人",
    "老人",
    "两只鸟",
    "红色的汽车",
    "大海",
    "机器人",
    "小船",
    "城市",
    "一匹马",
    "孩子们",
    "舞者",
    "森林",
    "金鱼",
]
_ZH_VERBS = ["走在", "跑过", "飞过", "坐在", "跳进", "看着", "穿过", "漂浮在", "跳舞在", "游过", "发光在", "休息在"]
_ZH_PLACES = [
    "海滩上",
    "安静的街道",
    "山上",
    "绿色的田野",
    "河边",
    "夜晚明亮的城市",
    "雪中的森林",
    "木桥上",
    "蓝天下",
    "空房间里",
    "花园里",
    "热闹的市场",
]
_ZH_STYLES = [
    "电影感灯光",
    "慢动作",
    "高质量",
    "柔和的色彩",
    "戏剧性的云",
    "日落",
    "特写镜头",
    "广角",
    "写实",
    "动漫风格",
    "平滑的镜头运动",
]
# EasyAnimate's default negative prompts so their characters are in every vocabulary.
_NEGATIVE_PROMPTS = [
    "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。",
    "模糊，突变，变形，失真，画面暗，文本字幕，画面固定，连环画，漫画，线稿，没有主体。",
    "Twisted body, limb deformities, text captions, comic, static, ugly, error, messy code.",
]


# Words of the Qwen chat template, so the byte-level BPE learns them like the real vocabulary has.
_CHAT_LINES = ["system", "user", "assistant", "You are a helpful assistant."]


def training_corpus(n_sentences: int = 600) -> list[str]:
    """A small deterministic English + Chinese caption corpus (the same for every seed: tokenizers do not vary)."""
    rng = random.Random(20240917)
    lines = list(_NEGATIVE_PROMPTS) + _CHAT_LINES * 20
    for i in range(n_sentences):
        if i % 2 == 0:
            line = (
                f"{rng.choice(_EN_SUBJECTS).capitalize()} {rng.choice(_EN_VERBS)} {rng.choice(_EN_PLACES)}, "
                f"{rng.choice(_EN_STYLES)}, {rng.choice(_EN_STYLES)}. Frame {rng.randint(1, 99)}!"
            )
        else:
            line = (
                f"{rng.choice(_ZH_SUBJECTS)}{rng.choice(_ZH_VERBS)}{rng.choice(_ZH_PLACES)}，"
                f"{rng.choice(_ZH_STYLES)}，{rng.choice(_ZH_STYLES)}。"
            )
        if i % 7 == 0:  # mixed-language lines, like real bilingual prompts
            line += f" {rng.choice(_ZH_SUBJECTS)} and {rng.choice(_EN_SUBJECTS)}"
        lines.append(line)
    return lines


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _random_tensors(shapes: dict[str, tuple[int, ...]], seed: int, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Deterministic weights: norms near 1, small biases, fan-in scaled matrices, unit-ish embeddings."""
    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for name in sorted(shapes):
        shape = shapes[name]
        values = torch.randn(shape, generator=generator, dtype=torch.float32)
        leaf = name.rsplit(".", 2)[-2].lower()  # the module's own name, e.g. "layer_norm", "q_proj"
        if len(shape) == 1 and name.endswith("weight"):  # a norm's scale
            values = 1.0 + 0.1 * values
        elif name.endswith("bias"):
            values = 0.1 * values
        elif "embed" in leaf or leaf in ("shared", "relative_attention_bias"):
            values = 0.5 * values
        else:
            values = values / math.sqrt(math.prod(shape[1:]))
        tensors[name] = values.to(dtype).contiguous()
    return tensors


def _parameter_shapes(model_class, config) -> dict[str, tuple[int, ...]]:
    """Parameter names/shapes of a transformers model, built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        model = model_class(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def _save_sharded(folder: Path, tensors: dict[str, torch.Tensor], shards: list[list[str]]) -> None:
    """Write `model-0000i-of-0000n.safetensors` shards plus `model.safetensors.index.json`, like the release."""
    assigned = [key for shard in shards for key in shard]
    assert sorted(assigned) == sorted(tensors), "every tensor must land in exactly one shard"
    weight_map = {}
    for index, keys in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({key: tensors[key] for key in keys}, str(folder / filename), metadata={"format": "pt"})
        weight_map.update({key: filename for key in keys})
    total_size = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))},
    )


# ----------------------------------------------------------------------------------------------------------------
# V5: Bert (tokenizer/, text_encoder/) + mT5 encoder (tokenizer_2/, text_encoder_2/)


def _build_wordpiece_vocab(corpus: list[str], vocab_size: int = 700) -> list[str]:
    """A deterministic WordPiece vocabulary: specials, every character (and its `##` continuation), frequent words.

    Written out instead of trained because the `tokenizers` WordPiece trainer breaks count ties in hash order, so
    its vocabulary changes from run to run. Words missing here are split into `##` characters, as Bert does.
    """
    counts: dict[str, int] = {}
    for line in corpus:  # Bert's basic split for this corpus: lowercase words; punctuation and CJK one per token
        for word in re.findall(r"[a-z0-9]+|[^\sa-z0-9]", line.lower()):
            counts[word] = counts.get(word, 0) + 1
    characters = sorted({c for word in counts for c in word})
    continuations = sorted({"##" + c for word in counts for c in word[1:]})
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + characters + continuations
    by_frequency = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
    return vocab + by_frequency[: max(0, vocab_size - len(vocab))]


def _train_sentencepiece(corpus: list[str], vocab_size: int = 800) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,  # mT5's id layout
        num_threads=1,
        minloglevel=2,
        hard_vocab_limit=False,
    )
    return model.getvalue()


def write_v5_text(model_dir: Path, seed: int) -> None:
    """Write tokenizer/, text_encoder/ (Bert), tokenizer_2/, text_encoder_2/ (mT5 encoder) under `model_dir`."""
    from transformers import BertConfig, BertModel, MT5Config, MT5EncoderModel

    model_dir = Path(model_dir)
    corpus = training_corpus()

    # tokenizer/: WordPiece vocab + HunyuanDiT-style configs
    vocab = _build_wordpiece_vocab(corpus)
    tokenizer_dir = model_dir / "tokenizer"
    tokenizer_dir.mkdir(parents=True, exist_ok=True)
    (tokenizer_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    specials = {
        "cls_token": "[CLS]",
        "mask_token": "[MASK]",
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "unk_token": "[UNK]",
    }
    _write_json(tokenizer_dir / "special_tokens_map.json", specials)
    _write_json(
        tokenizer_dir / "tokenizer_config.json",
        {
            **specials,
            "clean_up_tokenization_spaces": True,
            "do_basic_tokenize": True,
            "do_lower_case": True,
            "model_max_length": BERT_MAX_LENGTH,
            "never_split": None,
            "strip_accents": None,
            "tokenize_chinese_chars": True,
            "tokenizer_class": "BertTokenizer",
        },
    )

    # text_encoder/: BertModel (with its pooler, as saved by BertModel), one fp32 file
    bert_config = {
        "architectures": ["BertModel"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": BERT_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 2 * BERT_HIDDEN,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": BERT_HEADS,
        "num_hidden_layers": BERT_LAYERS,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "vocab_size": len(vocab),
        "torch_dtype": "float32",
    }
    encoder_dir = model_dir / "text_encoder"
    _write_json(encoder_dir / "config.json", bert_config)
    shapes = _parameter_shapes(BertModel, BertConfig(**bert_config))
    save_file(
        _random_tensors(shapes, seed, torch.float32), str(encoder_dir / "model.safetensors"), metadata={"format": "pt"}
    )

    # tokenizer_2/: trained SentencePiece unigram model, mT5-style configs
    tokenizer_2_dir = model_dir / "tokenizer_2"
    tokenizer_2_dir.mkdir(parents=True, exist_ok=True)
    spiece = _train_sentencepiece(corpus)
    (tokenizer_2_dir / "spiece.model").write_bytes(spiece)
    specials_2 = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
    _write_json(tokenizer_2_dir / "special_tokens_map.json", specials_2)
    _write_json(
        tokenizer_2_dir / "tokenizer_config.json",
        {
            **specials_2,
            "additional_special_tokens": [],
            "extra_ids": 0,
            "legacy": True,
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
        },
    )

    # text_encoder_2/: mT5 encoder (gated-gelu), 2 fp32 shards + index
    import sentencepiece as spm

    sp_vocab_size = spm.SentencePieceProcessor(model_proto=spiece).get_piece_size()
    t5_config = {
        "architectures": ["T5EncoderModel"],
        "d_ff": 2 * T5_D_MODEL,
        "d_kv": T5_D_MODEL // T5_HEADS,
        "d_model": T5_D_MODEL,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu_new",
        "dropout_rate": 0.1,
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "initializer_factor": 1.0,
        "is_encoder_decoder": True,
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-6,
        "model_type": "mt5",
        "num_decoder_layers": T5_LAYERS,
        "num_heads": T5_HEADS,
        "num_layers": T5_LAYERS,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "tokenizer_class": "T5Tokenizer",
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": sp_vocab_size,
    }
    encoder_2_dir = model_dir / "text_encoder_2"
    _write_json(encoder_2_dir / "config.json", t5_config)
    shapes = _parameter_shapes(MT5EncoderModel, MT5Config(**t5_config))
    shapes.pop("encoder.embed_tokens.weight", None)  # tied to `shared`, stored once like the release
    tensors = _random_tensors(shapes, seed + 1, torch.float32)
    first = [k for k in tensors if k == "shared.weight" or k.startswith("encoder.block.0.")]
    _save_sharded(encoder_2_dir, tensors, [first, [k for k in tensors if k not in first]])


# ----------------------------------------------------------------------------------------------------------------
# V5.1: Qwen2-VL (tokenizer/, text_encoder/)


def _train_byte_level_bpe(corpus: list[str], vocab_size: int = 900):
    """A Qwen2-style byte-level BPE tokenizer (same normalizer / split regex / byte mapping), trained on `corpus`."""
    from tokenizers import (
        AddedToken,
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in QWEN_SPECIAL_TOKENS])
    return tokenizer


def _write_qwen_tokenizer_files(folder: Path, tokenizer) -> dict[str, int]:
    """vocab.json, merges.txt, tokenizer.json, tokenizer_config.json, chat_template.json, preprocessor_config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(folder / "tokenizer.json"))
    model = json.loads(tokenizer.to_str())["model"]
    special_ids = {token: tokenizer.token_to_id(token) for token in QWEN_SPECIAL_TOKENS}
    _write_json(folder / "vocab.json", model["vocab"])
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    added = {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t, i in special_ids.items()
    }
    _write_json(
        folder / "tokenizer_config.json",
        {
            "add_prefix_space": False,
            "added_tokens_decoder": added,
            "additional_special_tokens": QWEN_SPECIAL_TOKENS[1:],
            "bos_token": None,
            "chat_template": QWEN2_VL_CHAT_TEMPLATE,  # the release carries it here too: the tokenizer applies it
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "model_max_length": 32768,
            "pad_token": "<|endoftext|>",
            # Left on purpose: EasyAnimate asks for right padding explicitly, so a loader that relies on the
            # tokenizer's own default would be caught by the tests.
            "padding_side": "left",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    _write_json(folder / "chat_template.json", {"chat_template": QWEN2_VL_CHAT_TEMPLATE})
    _write_json(
        folder / "preprocessor_config.json",
        {
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_processor_type": "Qwen2VLImageProcessor",
            "image_std": [0.26862954, 0.26130258, 0.27577711],
            "max_pixels": 12845056,
            "merge_size": 2,
            "min_pixels": 3136,
            "patch_size": 14,
            "processor_class": "Qwen2VLProcessor",
            "temporal_patch_size": 2,
        },
    )
    return special_ids


def _legacy_qwen2_vl_key(name: str) -> str:
    """transformers >= 4.52 module names -> the names in the released Qwen2-VL safetensors."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


def write_v51_text(model_dir: Path, seed: int) -> None:
    """Write tokenizer/ and text_encoder/ (tiny Qwen2-VL incl. a vision tower, 3 bf16 shards) under `model_dir`."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    model_dir = Path(model_dir)
    tokenizer = _train_byte_level_bpe(training_corpus())
    encoder_dir = model_dir / "text_encoder"
    special_ids = _write_qwen_tokenizer_files(model_dir / "tokenizer", tokenizer)
    _write_qwen_tokenizer_files(encoder_dir, tokenizer)  # the release ships the tokenizer files here too

    vocab_size = 64 * math.ceil(tokenizer.get_vocab_size(with_added_tokens=True) / 64)  # padded like 152064
    config = {  # flat, like Qwen2-VL-7B-Instruct's config.json
        "architectures": ["Qwen2VLForConditionalGeneration"],
        "attention_dropout": 0.0,
        "bos_token_id": special_ids["<|endoftext|>"],
        "eos_token_id": special_ids["<|im_end|>"],
        "vision_start_token_id": special_ids["<|vision_start|>"],
        "vision_end_token_id": special_ids["<|vision_end|>"],
        "vision_token_id": special_ids["<|vision_pad|>"],
        "image_token_id": special_ids["<|image_pad|>"],
        "video_token_id": special_ids["<|video_pad|>"],
        "hidden_act": "silu",
        "hidden_size": QWEN_HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": 2 * QWEN_HIDDEN,
        "max_position_embeddings": 32768,
        "max_window_layers": QWEN_LAYERS,
        "model_type": "qwen2_vl",
        "num_attention_heads": QWEN_HEADS,
        "num_hidden_layers": QWEN_LAYERS,
        "num_key_value_heads": QWEN_KV_HEADS,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "sliding_window": 32768,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2",
        "use_cache": True,
        "use_sliding_window": False,
        "vision_config": {
            "depth": 1,
            "embed_dim": 16,
            "mlp_ratio": 2,
            "num_heads": 2,
            "in_chans": 3,
            "hidden_size": QWEN_HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "spatial_patch_size": 14,
            "temporal_patch_size": 2,
        },
        "rope_scaling": {"type": "mrope", "mrope_section": list(QWEN_MROPE_SECTION)},
        "vocab_size": vocab_size,
    }
    _write_json(encoder_dir / "config.json", config)
    _write_json(
        encoder_dir / "generation_config.json",
        {
            "bos_token_id": special_ids["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [special_ids["<|im_end|>"], special_ids["<|endoftext|>"]],
            "pad_token_id": special_ids["<|endoftext|>"],
            "repetition_penalty": 1.05,
            "temperature": 0.1,
            "top_k": 1,
            "top_p": 0.001,
            "transformers_version": "4.41.2",
        },
    )

    shapes = _parameter_shapes(Qwen2VLForConditionalGeneration, Qwen2VLConfig(**config))
    shapes = {_legacy_qwen2_vl_key(name): shape for name, shape in shapes.items()}
    tensors = _random_tensors(shapes, seed + 2, torch.bfloat16)
    # The vision tower shares shard 1 with language-model tensors, so "never read" must hold per key, not per file.
    first = [k for k in tensors if k.startswith(("visual.", "model.embed_tokens.", "model.layers.0."))]
    last = [k for k in tensors if k.startswith((f"model.layers.{QWEN_LAYERS - 1}.", "model.norm.", "lm_head."))]
    middle = [k for k in tensors if k not in first and k not in last]
    _save_sharded(encoder_dir, tensors, [first, middle, last])
