"""Prompt encoding (models/text.py) against the reference behaviour, on tiny real tokenizers and encoders.

V5.1 is checked against diffusers 0.42.1 `EasyAnimatePipeline.encode_prompt` (the test-time oracle), V5 against a
direct transformers computation written here from docs/faithfulness.md, text encoders. Tiny folders come from
tools/tiny_text.py.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))  # tools/tiny_text.py

import tiny_text  # noqa: E402

from models import text  # noqa: E402

SEED = 7
LONG_PROMPT = "A young woman walks along the beach at sunset, slow motion, cinematic lighting. " * 30
PROMPTS = ["A cat walks along the beach, slow motion.", "", "一只猫走在海滩上，电影感灯光。", LONG_PROMPT]
NEGATIVES = ["ugly, error", "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。", "", "blurry"]


def max_abs(tensor: torch.Tensor) -> float:
    return tensor.abs().max().item()


@pytest.fixture(scope="module")
def v5_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-EasyAnimateV5-12b-zh")
    tiny_text.write_v5_text(folder, seed=SEED)
    return folder


@pytest.fixture(scope="module")
def v51_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny-EasyAnimateV5.1-12b-zh")
    tiny_text.write_v51_text(folder, seed=SEED)
    return folder


@pytest.fixture(scope="module")
def v51_embeddings(v51_dir) -> text.PromptEmbeddings:
    """PROMPTS / NEGATIVES through the V5.1 encoder with default settings (reference pad positions), fp32."""
    return text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32).encode(PROMPTS, NEGATIVES, use_cache=False)


@pytest.fixture(scope="module")
def v5_embeddings(v5_dir) -> text.PromptEmbeddings:
    return text.load_text_encoder(v5_dir, "v5", dtype=torch.float32).encode(PROMPTS, NEGATIVES, use_cache=False)


@pytest.fixture(scope="module")
def diffusers_v51(v51_dir):
    """diffusers' encode_prompt on a pipeline holding only the Qwen tokenizer and text encoder (fp32)."""
    from diffusers import EasyAnimatePipeline
    from transformers import Qwen2Tokenizer, Qwen2VLForConditionalGeneration

    tokenizer = Qwen2Tokenizer.from_pretrained(str(v51_dir / "tokenizer"))
    text_encoder = Qwen2VLForConditionalGeneration.from_pretrained(
        str(v51_dir / "text_encoder"), dtype=torch.float32
    ).eval()
    pipeline = EasyAnimatePipeline(
        vae=None, text_encoder=text_encoder, tokenizer=tokenizer, transformer=None, scheduler=None
    )
    positive, negative, positive_mask, negative_mask = pipeline.encode_prompt(
        PROMPTS, negative_prompt=NEGATIVES, device=torch.device("cpu"), dtype=torch.float32
    )
    return {
        "positive": positive,
        "negative": negative,
        "positive_mask": positive_mask,
        "negative_mask": negative_mask,
        "text_encoder": text_encoder,
    }


# ----------------------------------------------------------------------------------------------------------------
# V5.1 (Qwen2-VL)


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


# The oracle itself changed: diffusers' encode_prompt gives Qwen pads the transformers-4 positions on 4.x and
# sequential positions on 5.x (see models/text.py, QWEN_PAD_POSITIONS).
DIFFUSERS_PAD_POSITIONS = "reference" if transformers_major() < 5 else "sequential"


def test_v51_matches_diffusers_encode_prompt_exactly_with_the_pad_rule_of_this_transformers(v51_dir, diffusers_v51):
    encoder = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, qwen_pad_positions=DIFFUSERS_PAD_POSITIONS)
    embeddings = encoder.encode(PROMPTS, NEGATIVES)
    reference = diffusers_v51
    assert embeddings.positive[0].shape == (4, 256, 64)
    assert max_abs(embeddings.positive[0] - reference["positive"]) <= 1e-6 * max_abs(reference["positive"])
    assert max_abs(embeddings.negative[0] - reference["negative"]) <= 1e-6 * max_abs(reference["negative"])
    assert torch.equal(embeddings.positive_mask[0], reference["positive_mask"])
    assert torch.equal(embeddings.negative_mask[0], reference["negative_mask"])


def test_v51_prompt_set_covers_empty_and_truncated_prompts(diffusers_v51):
    lengths = diffusers_v51["positive_mask"].sum(-1).tolist()
    assert lengths[3] == 256  # the long prompt is cut at 256 tokens
    assert 0 < lengths[1] < lengths[0] < 256  # the empty prompt still carries the chat template


def test_v51_reference_pad_positions_keep_real_tokens_identical_to_diffusers(v51_embeddings, diffusers_v51):
    embeddings = v51_embeddings
    real = diffusers_v51["positive_mask"].bool()
    delta = (embeddings.positive[0] - diffusers_v51["positive"])[real]
    assert max_abs(delta) <= 1e-6 * max_abs(diffusers_v51["positive"])


def test_qwen_reference_position_ids_are_the_transformers_4_text_only_values():
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    expected = torch.tensor([[0, 1, 2, 3, 1, 1], [0, 1, 1, 1, 1, 1], [0, 1, 2, 3, 4, 5]])  # by hand: pads at 1
    positions = text.qwen_position_ids(mask)
    assert positions.shape == (3, 3, 6)  # the same ids for the 3 mrope sections
    assert all(torch.equal(section, expected) for section in positions)
    sequential = text.qwen_position_ids(mask, "sequential")
    assert all(torch.equal(section, torch.arange(6).expand(3, 6)) for section in sequential)


def test_v51_reference_pad_positions_follow_the_transformers_4_rule(v51_dir, v51_embeddings, diffusers_v51):
    """Pads get RoPE position 1, real tokens 0..n-1 (transformers 4.x text-only rule), as when V5.1 was trained."""
    embeddings = v51_embeddings
    mask = diffusers_v51["positive_mask"]
    # built token by token from the rule as stated, not with the code's cumsum formula
    positions = torch.tensor([[index if index < row.sum() else 1 for index in range(row.numel())] for row in mask])
    assert positions[0, -1].item() == 1 and positions[0, 0].item() == 0
    from transformers import Qwen2Tokenizer

    tokenizer = Qwen2Tokenizer.from_pretrained(str(v51_dir / "tokenizer"))
    chats = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": [{"type": "text", "text": p}]}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    tokens = tokenizer(
        chats, padding="max_length", max_length=256, truncation=True, padding_side="right", return_tensors="pt"
    )
    with torch.no_grad():
        expected = diffusers_v51["text_encoder"](
            input_ids=tokens.input_ids,
            attention_mask=tokens.attention_mask,
            position_ids=positions.unsqueeze(0).expand(3, -1, -1),
            output_hidden_states=True,
        ).hidden_states[-2]
    assert max_abs(embeddings.positive[0] - expected) <= 1e-6 * max_abs(expected)
    sequential = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, qwen_pad_positions="sequential")
    pad_delta = (embeddings.positive[0] - sequential.encode(PROMPTS, NEGATIVES).positive[0])[~mask.bool()]
    assert max_abs(pad_delta) > 1e-2 * max_abs(expected)  # the two pad rules really differ


def test_v51_runs_only_the_layers_before_the_last_and_no_final_norm(v51_dir):
    encoder = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32)
    model = encoder.models["qwen"]
    assert len(model.layers) == tiny_text.QWEN_LAYERS - 1
    assert isinstance(model.norm, torch.nn.Identity)


def test_v51_loading_never_reads_vision_tower_lm_head_or_last_layer(v51_dir, monkeypatch):
    from models.loading import stream

    read_keys: list[str] = []
    real_read_tensor = stream._read_tensor

    def recording_read_tensor(handle, file, key, *args):  # every tensor the one streaming loader reads
        read_keys.append(key)
        return real_read_tensor(handle, file, key, *args)

    monkeypatch.setattr(stream, "_read_tensor", recording_read_tensor)
    text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32)

    weight_map = json.loads((v51_dir / "text_encoder" / "model.safetensors.index.json").read_text())["weight_map"]
    on_disk_visual = [k for k in weight_map if k.startswith("visual.")]
    assert len(on_disk_visual) == 19  # the vision tower is really there, sharing shard 1 with the text model
    assert {weight_map[k] for k in on_disk_visual} == {weight_map["model.embed_tokens.weight"]}
    last = tiny_text.QWEN_LAYERS - 1
    expected = {
        k
        for k in weight_map
        if k == "model.embed_tokens.weight"
        or (k.startswith("model.layers.") and not k.startswith(f"model.layers.{last}."))
    }
    assert sorted(read_keys) == sorted(expected)  # each needed tensor read once, nothing else
    assert not [k for k in read_keys if k.startswith(("visual.", "lm_head.", "model.norm."))]


def test_v51_encodes_each_prompt_as_its_own_conversation(v51_dir, v51_embeddings):
    encoder = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32)
    batch = v51_embeddings
    for row, (prompt, negative) in enumerate(zip(PROMPTS[:3], NEGATIVES[:3])):
        single = encoder.encode(prompt, negative, use_cache=False)
        assert max_abs(batch.positive[0][row] - single.positive[0][0]) <= 1e-6 * max_abs(single.positive[0])
        assert max_abs(batch.negative[0][row] - single.negative[0][0]) <= 1e-6 * max_abs(single.negative[0])


def test_v51_fp8_storage_stays_within_10_percent_of_bf16(v51_dir):
    """Plain e4m3 casts (3 mantissa bits) as in the reference qfloat8 mode; measured ‖Δ‖/‖ref‖ = 0.069."""
    bf16 = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.bfloat16).encode(PROMPTS)
    fp8_encoder = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
    fp8 = fp8_encoder.encode(PROMPTS)
    q_proj = fp8_encoder.models["qwen"].layers[0].self_attn.q_proj
    assert q_proj.weight.dtype == torch.float8_e4m3fn and q_proj.bias.dtype == torch.bfloat16
    assert fp8_encoder.models["qwen"].embed_tokens.weight.dtype == torch.bfloat16
    assert fp8.positive[0].dtype == torch.bfloat16 and fp8.positive[0].device.type == "cpu"
    reference = bf16.positive[0].float()
    delta = fp8.positive[0].float() - reference
    assert delta.norm() <= 0.10 * reference.norm()
    assert max_abs(delta) <= 0.15 * max_abs(reference)
    assert max_abs(delta) > 0  # the weights really are stored in fp8


# ----------------------------------------------------------------------------------------------------------------
# V5 (Bert + mT5)


def v5_reference(v5_dir: Path, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/faithfulness.md, text encoders: fixed-length padding, special tokens, no attention mask, last hidden
    state."""
    from transformers import BertModel, BertTokenizer, T5EncoderModel, T5Tokenizer

    outputs = []
    for tokenizer_class, model_class, tokenizer_dir, encoder_dir, max_length in (
        (BertTokenizer, BertModel, "tokenizer", "text_encoder", 77),
        (T5Tokenizer, T5EncoderModel, "tokenizer_2", "text_encoder_2", 256),
    ):
        tokenizer = tokenizer_class.from_pretrained(str(v5_dir / tokenizer_dir))
        # eager: what the original ran (transformers 4.x); transformers 5 would pick SDPA for T5
        model = model_class.from_pretrained(
            str(v5_dir / encoder_dir), dtype=torch.float32, attn_implementation="eager"
        ).eval()
        assert min(tokenizer.model_max_length, 256) == max_length
        tokens = tokenizer(prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
        with torch.no_grad():
            outputs.append(model(input_ids=tokens.input_ids)[0])
    return outputs[0], outputs[1]


def test_v5_matches_bert_and_mt5_run_without_masks(v5_dir, v5_embeddings):
    embeddings = v5_embeddings
    bert, t5 = v5_reference(v5_dir, PROMPTS)
    negative_bert, negative_t5 = v5_reference(v5_dir, NEGATIVES)
    assert embeddings.streams == ("bert", "t5")
    assert embeddings.positive[0].shape == (4, 77, 32) and embeddings.positive[1].shape == (4, 256, 48)
    assert max_abs(embeddings.positive[0] - bert) <= 1e-6 * max_abs(bert)
    assert max_abs(embeddings.positive[1] - t5) <= 1e-6 * max_abs(t5)
    assert max_abs(embeddings.negative[0] - negative_bert) <= 1e-6 * max_abs(negative_bert)
    assert max_abs(embeddings.negative[1] - negative_t5) <= 1e-6 * max_abs(negative_t5)


def test_v5_masks_record_special_tokens_and_truncation(v5_embeddings):
    bert_lengths, t5_lengths = v5_embeddings.positive_lengths
    assert bert_lengths[1].item() == 2  # "" -> [CLS] [SEP]
    assert t5_lengths[1].item() == 1  # "" -> </s>
    assert bert_lengths[3].item() == 77 and t5_lengths[3].item() == 256  # the long prompt fills both


def test_v5_pad_tokens_change_the_embeddings_because_no_mask_is_used(v5_dir):
    """Without a mask every real token attends to the pads, so max_length padding changes real-token outputs."""
    from transformers import BertModel, BertTokenizer

    tokenizer = BertTokenizer.from_pretrained(str(v5_dir / "tokenizer"))
    model = BertModel.from_pretrained(str(v5_dir / "text_encoder"), dtype=torch.float32).eval()
    tokens = tokenizer(PROMPTS[0], return_tensors="pt")  # unpadded
    with torch.no_grad():
        unpadded = model(input_ids=tokens.input_ids)[0][0]
    embeddings = text.load_text_encoder(v5_dir, "v5", dtype=torch.float32).encode(PROMPTS[0])
    real = embeddings.positive[0][0, : unpadded.shape[0]]
    assert max_abs(real - unpadded) > 1e-3 * max_abs(unpadded)


def test_v5_fp8_storage_keeps_bert_and_t5_wo_in_compute_dtype_and_stays_within_20_percent(v5_dir):
    """Random tiny mT5 amplifies weight rounding (T5 attention has no 1/sqrt(d) scale); measured ‖Δ‖/‖ref‖ = 0.12."""
    bf16 = text.load_text_encoder(v5_dir, "v5", dtype=torch.bfloat16).encode(PROMPTS)
    fp8_encoder = text.load_text_encoder(v5_dir, "v5", dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
    fp8 = fp8_encoder.encode(PROMPTS)
    block = fp8_encoder.models["t5"].encoder.block[0]
    assert block.layer[0].SelfAttention.q.weight.dtype == torch.float8_e4m3fn
    assert block.layer[1].DenseReluDense.wi_0.weight.dtype == torch.float8_e4m3fn
    assert block.layer[1].DenseReluDense.wo.weight.dtype == torch.bfloat16
    assert fp8_encoder.models["bert"].encoder.layer[0].attention.self.query.weight.dtype == torch.bfloat16
    assert max_abs(fp8.positive[0].float() - bf16.positive[0].float()) == 0  # Bert untouched
    reference = bf16.positive[1].float()
    delta = fp8.positive[1].float() - reference
    assert delta.norm() <= 0.20 * reference.norm()
    assert max_abs(delta) <= 0.50 * max_abs(reference)
    assert max_abs(delta) > 0


# ----------------------------------------------------------------------------------------------------------------
# Embeddings object, cache, release, callbacks


def test_prompt_embeddings_guidance_batch_puts_negative_first(v5_dir):
    embeddings = text.load_text_encoder(v5_dir, "v5", dtype=torch.float32).encode(["a cat", "a dog"], "ugly")
    batch = embeddings.guidance_batch("t5")
    assert batch.shape == (4, 256, 48)
    assert torch.equal(batch[:2], embeddings.negative[1]) and torch.equal(batch[2:], embeddings.positive[1])
    assert embeddings.batch_size == 2 and embeddings.negative_prompts == ("ugly", "ugly")


def test_cached_prompts_are_served_without_loading_the_encoder(v51_dir):
    cache = text.PromptCache()
    first = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, cache=cache).encode(PROMPTS[:2], "ugly")
    lazy = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, lazy=True, cache=cache)
    again = lazy.encode(PROMPTS[:2], "ugly")
    assert not lazy.loaded
    assert torch.equal(again.positive[0], first.positive[0]) and again.cache_key == first.cache_key
    unshared = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, lazy=True)  # no module-wide cache
    unshared.encode(PROMPTS[:2], "ugly")
    assert unshared.loaded


def test_prompt_cache_drops_the_least_recently_used_text_beyond_its_size():
    cache = text.PromptCache(size=2)
    for key in ("a", "b"):
        cache.put(key, key)
    assert cache.get("a") == "a"  # now "b" is the oldest
    cache.put("c", "c")
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == ("a", None, "c", 2)


def test_cache_key_changes_with_dtype_and_texts(v51_dir):
    fp32 = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, lazy=True)
    bf16 = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.bfloat16, lazy=True)
    assert fp32.text_key("a cat") != bf16.text_key("a cat")
    assert fp32.text_key("a cat") != fp32.text_key("a dog")
    embeddings = bf16.encode("a cat")
    assert bf16.loaded and embeddings.positive[0].dtype == torch.bfloat16


def test_release_drops_weights_and_encode_reloads_them(v5_dir):
    encoder = text.load_text_encoder(v5_dir, "v5", dtype=torch.float32)
    before = encoder.encode("a cat", use_cache=False, release_after=True)
    assert not encoder.loaded and encoder.models == {}
    after = encoder.encode("a cat", use_cache=False)
    assert encoder.loaded and torch.equal(before.positive[1], after.positive[1])


def test_progress_counts_unique_texts_and_interrupt_aborts(v51_dir):
    encoder = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32)
    calls = []
    encoder.encode(["a", "b", "a"], "", progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]  # "a", "b", ""

    class Stop(Exception):
        pass

    def interrupt():
        raise Stop

    with pytest.raises(Stop):
        encoder.encode("a new prompt", interrupt=interrupt)


def test_mismatched_negative_prompt_count_is_rejected(v51_dir):
    encoder = text.load_text_encoder(v51_dir, "v5.1", dtype=torch.float32, lazy=True)
    with pytest.raises(ValueError, match="2 prompts but 3 negative prompts"):
        encoder.encode(["a", "b"], ["x", "y", "z"])


# ----------------------------------------------------------------------------------------------------------------
# Files and errors


def test_version_is_detected_from_the_folder_layout(v5_dir, v51_dir):
    assert text.detect_text_version(v5_dir) == "v5"
    assert text.detect_text_version(v51_dir) == "v5.1"
    assert text.normalize_version("V5.1") == "v5.1" and text.normalize_version("5") == "v5"


def test_missing_files_error_names_every_missing_path(v51_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(v51_dir, broken)
    (broken / "tokenizer" / "vocab.json").unlink()
    (broken / "text_encoder" / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(text.TextEncoderFilesError) as error:
        text.load_text_encoder(broken, "v5.1")
    message = str(error.value)
    assert f"{broken / 'tokenizer' / 'vocab.json'}  (the Qwen2 byte-level BPE vocabulary)" in message
    assert str(broken / "text_encoder" / "model-00002-of-00003.safetensors") in message
    assert "merges.txt" not in message  # only what is really missing


def test_missing_v5_encoder_folder_is_reported_with_its_contents(v5_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(v5_dir, broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(text.TextEncoderFilesError) as error:
        text.load_text_encoder(broken, "v5")
    message = str(error.value)
    assert f"{broken / 'text_encoder_2' / 'config.json'}  (mT5 text encoder (V5 encoder 2) config)" in message
    assert str(broken / "text_encoder_2" / "model.safetensors") in message


def test_pickle_checkpoints_are_refused(v5_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(v5_dir, broken)
    (broken / "text_encoder" / "model.safetensors").rename(broken / "text_encoder" / "pytorch_model.bin")
    with pytest.raises(text.TextEncoderFilesError, match="pytorch_model.bin, pickle checkpoints .* are refused"):
        text.load_text_encoder(broken, "v5")


# ----------------------------------------------------------------------------------------------------------------
# The tiny builders themselves (other helpers' fixtures rely on them)


def test_tiny_builders_are_deterministic_in_the_seed(tmp_path):
    for name in ("a", "b"):
        tiny_text.write_v51_text(tmp_path / name, seed=3)
    tiny_text.write_v51_text(tmp_path / "other", seed=4)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    shard = Path("text_encoder") / "model-00001-of-00003.safetensors"
    assert (tmp_path / "a" / shard).read_bytes() != (tmp_path / "other" / shard).read_bytes()
    vocab = Path("tokenizer") / "vocab.json"
    assert (tmp_path / "a" / vocab).read_bytes() == (tmp_path / "other" / vocab).read_bytes()


def test_tiny_folders_have_the_released_layout_and_load_with_auto_classes(v5_dir, v51_dir):
    from transformers import AutoTokenizer

    assert sorted(p.name for p in (v5_dir / "text_encoder_2").iterdir()) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]
    for name in (
        "chat_template.json",
        "generation_config.json",
        "preprocessor_config.json",
        "model.safetensors.index.json",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
    ):
        assert (v51_dir / "text_encoder" / name).is_file(), name
    assert AutoTokenizer.from_pretrained(str(v5_dir / "tokenizer")).model_max_length == 77
    assert AutoTokenizer.from_pretrained(str(v5_dir / "tokenizer_2")).tokenize("一只猫")  # sentencepiece, Chinese
    qwen = AutoTokenizer.from_pretrained(str(v51_dir / "tokenizer"))
    assert qwen.pad_token == "<|endoftext|>"
    chat = qwen.apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], tokenize=False, add_generation_prompt=True
    )
    assert chat == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------------------------------------------
# V5's mT5 runs eager attention on every transformers version (transformers 5 would pick SDPA: 9e-6 relative away
# on these tiny weights). The oracle is the T5 encoder written out here from its formula, not transformers' code.


def t5_encoder_by_formula(encoder_dir: Path, input_ids: torch.Tensor) -> torch.Tensor:
    """mT5 encoder: pre-RMSNorm blocks, unscaled attention + relative position bias (block 0's, shared), gated-GELU
    (tanh) feed-forward, final RMSNorm; fp32 throughout."""
    from safetensors.torch import load_file

    config = json.loads((encoder_dir / "config.json").read_text())
    weights = {}
    for shard in sorted(encoder_dir.glob("*.safetensors")):
        weights.update({k: v.float() for k, v in load_file(str(shard)).items()})
    eps, heads, d_kv = config["layer_norm_epsilon"], config["num_heads"], config["d_kv"]

    def rms_norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    length = input_ids.shape[1]
    distance = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # key position - query position
    half = config["relative_attention_num_buckets"] // 2
    exact = half // 2
    far = (
        exact
        + (
            torch.log(distance.abs().float().clamp(min=1) / exact)
            / math.log(config["relative_attention_max_distance"] / exact)
            * (half - exact)
        ).long()
    )
    bucket = (distance > 0).long() * half + torch.where(distance.abs() < exact, distance.abs(), far.clamp(max=half - 1))
    table = weights["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]  # [buckets, heads]
    bias = table[bucket].permute(2, 0, 1)  # [heads, query, key]

    hidden = weights["shared.weight"][input_ids]
    for block in range(config["num_layers"]):
        prefix = f"encoder.block.{block}.layer."
        x = rms_norm(hidden, weights[prefix + "0.layer_norm.weight"])
        q, k, v = (
            torch.einsum("bld,ed->ble", x, weights[f"{prefix}0.SelfAttention.{n}.weight"])
            .unflatten(-1, (heads, d_kv))
            .transpose(1, 2)
            for n in "qkv"
        )
        attention = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1)  # no 1/sqrt(d) in T5
        mixed = (attention @ v).transpose(1, 2).flatten(2)
        hidden = hidden + mixed @ weights[prefix + "0.SelfAttention.o.weight"].T
        x = rms_norm(hidden, weights[prefix + "1.layer_norm.weight"])
        gate = torch.nn.functional.gelu(x @ weights[prefix + "1.DenseReluDense.wi_0.weight"].T, approximate="tanh")
        hidden = (
            hidden
            + (gate * (x @ weights[prefix + "1.DenseReluDense.wi_1.weight"].T))
            @ weights[prefix + "1.DenseReluDense.wo.weight"].T
        )
    return rms_norm(hidden, weights["encoder.final_layer_norm.weight"])


def test_v5_mt5_stream_equals_the_t5_formula_with_eager_attention_on_this_transformers(v5_dir, v5_embeddings):
    from transformers import T5Tokenizer

    tokenizer = T5Tokenizer.from_pretrained(str(v5_dir / "tokenizer_2"))
    ids = tokenizer(PROMPTS, padding="max_length", max_length=256, truncation=True, return_tensors="pt").input_ids
    expected = t5_encoder_by_formula(v5_dir / "text_encoder_2", ids)
    assert max_abs(v5_embeddings.positive[1] - expected) <= 1e-6 * max_abs(expected)
    encoder = text.load_text_encoder(v5_dir, "v5", dtype=torch.float32)
    encoder.load()
    assert encoder.models["t5"].config._attn_implementation == "eager"
