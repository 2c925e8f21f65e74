"""Attention backends (models/attention.py): the transformer calls the attention of its ops namespace; the loader's
choice resolves to an installed backend or falls back to SDPA with a message. Backend accuracy on a GPU is in
tests/test_gpu.py."""

import pytest
import torch
from tiny_checkpoints import tiny_transformer_params

from models import attention as attn
from models import ops as cast_ops
from models.transformer import EasyAnimateTransformer

PARAMS = tiny_transformer_params(num_layers=3, mmdit_layers=2)


def _qkv(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, 40, 16, generator=g).to(dtype) for _ in range(3)]


def _inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([300.0]), torch.randn(1, 6, 64, generator=g)


def _reference_attention(q, k, v):
    """softmax(q kᵀ / √d) v written out: the oracle for every backend."""
    weights = torch.softmax((q.double() @ k.double().transpose(-1, -2)) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v.double()).to(q.dtype)


def test_sdpa_is_softmax_attention_over_heads_and_tokens():
    q, k, v = _qkv()
    torch.testing.assert_close(attn.sdpa(q, k, v), _reference_attention(q, k, v), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sage", "flash"])
def test_optional_backends_fall_back_to_sdpa_off_cuda_or_in_fp32(backend):
    q, k, v = _qkv()
    assert torch.equal(attn.BACKENDS[backend](q, k, v), attn.sdpa(q, k, v))


def test_the_transformer_calls_its_namespaces_attention_once_per_block():
    calls = []

    def recording(q, k, v):
        calls.append(tuple(q.shape))
        return attn.sdpa(q, k, v)

    torch.manual_seed(0)
    plain = EasyAnimateTransformer(PARAMS).eval()
    torch.manual_seed(0)
    recorded = EasyAnimateTransformer(PARAMS, attn.with_attention(cast_ops.cast, recording)).eval()
    with torch.inference_mode():
        expected, got = plain(*_inputs()), recorded(*_inputs())
    assert calls == [(1, 2, 6 + 2 * 4 * 4, 16)] * PARAMS.num_layers  # [B, heads, text + video tokens, head_dim]
    assert torch.equal(got, expected)


def test_the_injected_attention_really_decides_the_output():
    torch.manual_seed(0)
    plain = EasyAnimateTransformer(PARAMS).eval()
    torch.manual_seed(0)
    uniform = EasyAnimateTransformer(
        PARAMS, attn.with_attention(cast_ops.cast, lambda q, k, v: v.mean(2, keepdim=True).expand_as(v))
    ).eval()
    with torch.inference_mode():
        assert (plain(*_inputs()) - uniform(*_inputs())).abs().max() > 1e-3


def test_default_namespace_attention_is_sdpa():
    assert cast_ops.cast.attention is attn.sdpa
    assert EasyAnimateTransformer(PARAMS).transformer_blocks[0].attention is attn.sdpa


@pytest.mark.parametrize("choice", ["sage", "flash"])
def test_a_backend_that_is_not_installed_falls_back_to_sdpa_with_the_pip_command(choice, monkeypatch):
    monkeypatch.setattr(attn.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(f"no {name}")))
    lines = []
    assert attn.resolve_attention(choice, "cuda", torch.bfloat16, lines.append) == ("sdpa", attn.sdpa)
    assert len(lines) == 1 and attn.PACKAGES[choice][1] in lines[0] and "SDPA" in lines[0]


def test_an_installed_backend_needs_cuda_and_half_precision(monkeypatch):
    monkeypatch.setattr(attn.importlib, "import_module", lambda name: object())
    lines = []
    assert attn.resolve_attention("sage", "cuda", torch.bfloat16, lines.append) == ("sage", attn.sage)
    assert lines == []
    assert attn.resolve_attention("sage", "cpu", torch.bfloat16, lines.append) == ("sdpa", attn.sdpa)
    assert attn.resolve_attention("flash", "cuda", torch.float32, lines.append) == ("sdpa", attn.sdpa)
    assert len(lines) == 2 and all("CUDA" in line for line in lines)


def test_auto_prefers_flash_attn_when_usable_and_never_picks_sage(monkeypatch):
    monkeypatch.setattr(attn.importlib, "import_module", lambda name: object())
    assert attn.resolve_attention("auto", "cuda", torch.float16, print)[0] == "flash"
    assert attn.resolve_attention("auto", "cpu", torch.float16, print)[0] == "sdpa"
    monkeypatch.setattr(attn.importlib, "import_module", lambda name: (_ for _ in ()).throw(ImportError(name)))
    assert attn.resolve_attention("auto", "cuda", torch.float16, print)[0] == "sdpa"


def test_unknown_choice_is_refused():
    with pytest.raises(ValueError, match="attention must be one of"):
        attn.resolve_attention("xformers", "cpu", torch.float32)


def test_loader_lists_the_attention_choices_of_the_models(pack):
    optional = pack.NODE_CLASS_MAPPINGS["EasyAnimateModelLoader"].INPUT_TYPES()["optional"]
    names = list(optional)  # appended after fp8_mode, in this order; later inputs are appended after them
    assert names[names.index("fp8_mode") + 1 : names.index("fp8_mode") + 3] == ["attention", "compile"]
    assert tuple(optional["attention"][0]) == attn.ATTENTION_CHOICES
    assert optional["compile"][0] == "BOOLEAN" and optional["compile"][1]["default"] is False


def test_open_model_loads_the_chosen_backend_or_says_why_not(tiny_root):
    from models.components import open_model

    model = open_model(tiny_root / "tiny-EasyAnimateV5.1-12b-zh", "fp32", attention="sage")
    lines = []
    transformer = model.transformer(device="cpu", log=lines.append)
    assert transformer.attention_backend == "sdpa"
    assert any("sage" in line and "SDPA" in line for line in lines)
    assert all(block.attention is attn.sdpa for block in transformer.transformer_blocks)
    with pytest.raises(ValueError, match="attention must be one of"):
        open_model(tiny_root / "tiny-EasyAnimateV5.1-12b-zh", "fp32", attention="fastest")
