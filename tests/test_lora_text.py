"""Specification of the V5 text-encoder LoRA (`lora_te_…`, models/lora_text.py) and of the LoRA bytes in the memory plan.

Oracle (tests/tiny_loras.py): the V5 Bert checkpoint file with the LoRA merged by the original formula
`W + m · alpha / rank · up @ down`, loaded as a plain text encoder. Nothing in it goes through the pack's LoRA code.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file
from tiny_loras import make_lora, merged_text_encoder_model

from models.lora import LoraError, load_lora_file
from models.lora_model import LoraModel, add_lora_bytes, lora_bytes, with_lora
from models.lora_text import LoraTextEncoder
from models.ops import LoraLinear
from models.text import load_text_encoder

V5 = "tiny-EasyAnimateV5-12b-zh"
V51 = "tiny-EasyAnimateV5.1-12b-zh"
PROMPT, NEGATIVE = "a red fox runs through fresh snow at dawn", "blurry"


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual.double() - expected.double()).norm() / expected.double().norm())


def _components(tiny_root, name=V5):
    from models.components import open_model

    components = open_model(tiny_root / name, "fp32")
    components.release()  # a fresh object state for this test (open_model shares objects per settings)
    return components


def _lora_file(tmp_path, name, *loras):
    """One .safetensors holding the tensors of every TinyLora given (e.g. a transformer part and a Bert part)."""
    tensors = {key: value for lora in loras for key, value in lora.tensors().items()}
    save_file(tensors, str(tmp_path / f"{name}.safetensors"))
    return load_lora_file(tmp_path / f"{name}.safetensors")


def _encode(model):
    return model.text_encoder().encode([PROMPT], NEGATIVE, use_cache=False, release_after=True)


@pytest.mark.parametrize("strength", [1.0, -0.7])
def test_text_encoder_lora_equals_bert_on_weights_merged_by_the_original_formula(tiny_root, tmp_path, strength):
    model_dir = tiny_root / V5
    text_lora = make_lora(model_dir, "kohya_te", rank=4, alpha=2.0, seed=1)
    weights = _lora_file(tmp_path, "style", make_lora(model_dir, seed=2), text_lora)
    oracle = load_text_encoder(
        merged_text_encoder_model(model_dir, tmp_path / "merged", [(text_lora, strength)]), "v5", dtype=torch.float32
    )
    expected = oracle.encode([PROMPT], NEGATIVE, use_cache=False)
    components = _components(tiny_root)
    base = _encode(components)
    actual = _encode(with_lora(components, weights, 0.5, text_strength=strength))
    for stream in (0, 1):  # stream 0 = Bert, 1 = mT5 (no LoRA: identical)
        for part in ("positive", "negative"):
            assert relative_error(getattr(actual, part)[stream], getattr(expected, part)[stream]) <= 1e-5
    assert relative_error(base.positive[0], expected.positive[0]) > 1e-2  # the LoRA really changes Bert's output
    assert torch.equal(actual.positive[1], base.positive[1])


def test_text_encoder_lora_leaves_the_shared_bert_untouched_and_the_base_encoder_unchanged(tiny_root, tmp_path):
    components = _components(tiny_root)
    weights = _lora_file(tmp_path, "te", make_lora(tiny_root / V5, "kohya_te", seed=3))
    lora_model = with_lora(components, weights, 1.0)
    encoder = components.text_encoder()
    encoder.load()
    bert = encoder.models["bert"]
    pristine = {key: value.clone() for key, value in bert.state_dict().items()}
    with_lora_embeds = lora_model.text_encoder().encode([PROMPT], NEGATIVE, use_cache=False)
    assert encoder.models["bert"] is bert  # the LoRA view encoded with the base's own Bert: no second copy loaded
    assert all(torch.equal(value, pristine[key]) for key, value in bert.state_dict().items())
    assert not any(isinstance(m, LoraLinear) or "lora_down" in m._buffers for m in bert.modules())
    plain = encoder.encode([PROMPT], NEGATIVE, use_cache=False)
    assert not torch.equal(plain.positive[0], with_lora_embeds.positive[0])
    lora_model.text_encoder().release()  # releasing through the view releases the base's models too
    assert not encoder.loaded


def test_text_strength_zero_is_bit_identical_to_no_lora(tiny_root, tmp_path):
    components = _components(tiny_root)
    weights = _lora_file(tmp_path, "te", make_lora(tiny_root / V5, "kohya_te", seed=4))
    base = _encode(components)
    off = _encode(with_lora(components, weights, 1.0, text_strength=0.0))
    assert all(torch.equal(a, b) for a, b in zip(off.positive + off.negative, base.positive + base.negative))


def test_text_strength_defaults_to_the_strength_like_the_original_plugin(tiny_root, tmp_path):
    components = _components(tiny_root)
    weights = _lora_file(tmp_path, "te", make_lora(tiny_root / V5, "kohya_te", seed=5))
    default = _encode(with_lora(components, weights, 0.4))
    explicit = _encode(with_lora(components, weights, 0.4, text_strength=0.4))
    other = _encode(with_lora(components, weights, 0.4, text_strength=1.0))
    assert torch.equal(default.positive[0], explicit.positive[0])
    assert not torch.equal(default.positive[0], other.positive[0])


def test_prompt_cache_never_serves_embeddings_of_another_text_lora_setting(tiny_root, tmp_path):
    components = _components(tiny_root)
    weights = _lora_file(tmp_path, "te", make_lora(tiny_root / V5, "kohya_te", seed=6))
    runs = {}
    models = {
        "base": components,
        "lora": with_lora(components, weights, 1.0),
        "half": with_lora(components, weights, 1.0, text_strength=0.5),
        "base again": components,
    }
    for label, model in models.items():
        runs[label] = model.text_encoder().encode([PROMPT], NEGATIVE, release_after=True)  # cache on
    assert torch.equal(runs["base"].positive[0], runs["base again"].positive[0])
    assert not torch.equal(runs["base"].positive[0], runs["lora"].positive[0])
    assert not torch.equal(runs["lora"].positive[0], runs["half"].positive[0])
    assert len({run.cache_key for run in runs.values()}) == 3


def test_a_v51_model_warns_that_text_encoder_entries_are_ignored(tiny_root, tmp_path):
    components = _components(tiny_root, V51)
    weights = _lora_file(tmp_path, "mixed", make_lora(tiny_root / V51, seed=7), make_lora(tiny_root / V5, "kohya_te"))
    messages = []
    model = with_lora(components, weights, 1.0, log=messages.append)
    assert len(messages) == 1 and "text-encoder entries (lora_te_)" in messages[0] and "ignored" in messages[0]
    assert "Qwen2-VL" in messages[0]
    assert model.text_encoder() is components.text_encoder()  # the Qwen encoder, untouched
    with_lora(components, weights, 1.0, log=pytest.fail, text_strength=0.0)  # switched off: nothing to warn about


def test_a_text_encoder_only_lora_on_v51_is_an_error(tiny_root, tmp_path):
    components = _components(tiny_root, V51)
    weights = _lora_file(tmp_path, "te_only", make_lora(tiny_root / V5, "kohya_te"))
    with pytest.raises(LoraError, match=r"te_only.safetensors.*Bert.*changes nothing"):
        with_lora(components, weights, 1.0)


def test_a_text_encoder_only_lora_on_v5_leaves_the_transformer_alone(tiny_root, tmp_path):
    components = _components(tiny_root)
    weights = _lora_file(tmp_path, "te_only", make_lora(tiny_root / V5, "kohya_te"))
    model = with_lora(components, weights, 1.0, log=pytest.fail)
    transformer = components.transformer()
    with model.placement(transformer, torch.device("cpu")):
        assert not any(isinstance(m, LoraLinear) for m in transformer.modules())


def test_unmatched_text_encoder_entries_warn_once_with_counts(tiny_root, tmp_path):
    components = _components(tiny_root)
    text_lora = make_lora(tiny_root / V5, "kohya_te", seed=8)
    down, up, alpha = text_lora.pairs["encoder.layer.0.attention.self.query"]
    text_lora.pairs["encoder.block.0.layer.0.SelfAttention.q"] = (down.clone(), up.clone(), alpha)  # an mT5 name
    messages = []
    model = with_lora(components, _lora_file(tmp_path, "t5ish", text_lora), 1.0)
    view = LoraTextEncoder(components.text_encoder(), model.text_loras, log=messages.append)
    view.encode([PROMPT], NEGATIVE, use_cache=False, release_after=True)
    entries = len(text_lora.pairs)
    assert messages == [
        f"EasyAnimate LoRA warning: t5ish.safetensors (V5 Bert text encoder): {entries - 1} of "
        f"{entries} entries applied; 1 unmatched (first: "
        "['lora_te_encoder_block_0_layer_0_SelfAttention_q'])."
    ]


# -- LoRA bytes in the memory plan ------------------------------------------------------------------------------------


def test_lora_bytes_count_every_attached_down_and_up_in_the_compute_dtype(tiny_root, tmp_path):
    components = _components(tiny_root, V51)
    lora = make_lora(tiny_root / V51, rank=4)
    weights = _lora_file(tmp_path, "a", lora)
    expected = sum(down.numel() + up.numel() for down, up, _ in lora.pairs.values()) * 4  # fp32
    assert lora_bytes(components) == 0
    assert lora_bytes(with_lora(components, weights, 1.0)) == expected
    stacked = with_lora(with_lora(components, weights, 1.0), weights, -0.5)
    assert lora_bytes(stacked) == 2 * expected
    assert lora_bytes(with_lora(components, weights, 0.0)) == 0  # strength 0: nothing attached
    merged = with_lora(stacked, weights, 1.0, merge=True)  # merge: one copy per targeted layer, however many LoRAs
    layer_sizes = [up.shape[0] * down.shape[1] for down, up, _ in lora.pairs.values()]
    assert lora_bytes(merged) == sum(layer_sizes) * 4


def test_the_preflight_plan_adds_the_lora_bytes_to_the_transformer(tiny_root, tmp_path):
    from models import preflight

    components = _components(tiny_root, V51)
    weights = _lora_file(tmp_path, "a", make_lora(tiny_root / V51, rank=4))
    model = with_lora(components, weights, 1.0)
    plain, with_loras = preflight.model_bytes(components, ("fp32",)), preflight.model_bytes(model, ("fp32",))
    extra = lora_bytes(model)
    assert with_loras.transformer["fp32"] - plain.transformer["fp32"] == extra > 0
    assert with_loras.block["fp32"] - plain.block["fp32"] == extra // plain.num_blocks  # streamed with its block
    assert add_lora_bytes(preflight.model_bytes(components, ("fp32",)), components).transformer == plain.transformer


def test_lora_model_stacks_text_strengths_alongside_the_transformer_strengths(tiny_root, tmp_path):
    components = _components(tiny_root)
    weights = _lora_file(tmp_path, "te", make_lora(tiny_root / V5, "kohya_te"))
    model = with_lora(with_lora(components, weights, 0.5), weights, 2.0, text_strength=-1.0)
    assert isinstance(model, LoraModel)
    assert [s for _, s in model.loras] == [0.5, 2.0] and [s for _, s in model.text_loras] == [0.5, -1.0]
