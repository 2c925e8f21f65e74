"""qfloat8 (models/quant.py): storage bytes, which tensors stay in bf16, and the scaled-fp8 error advantage."""

import pytest
import torch

from models.loading.transformer import load_transformer
from models.quant import (
    allocated_bytes,
    dequantize,
    fp8_matmul_supported,
    is_precision_sensitive,
    quantize_scaled,
)

MODELS = ["tiny-EasyAnimateV5.1-12b-zh", "tiny-EasyAnimateV5-7b-zh-InP", "tiny-EasyAnimateV5.1-7b-zh-Control"]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("fp8", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3fn", "e5m2"])
def test_reference_exact_fp8_holds_half_the_bf16_bytes(tiny_root, name, fp8):
    bf16 = allocated_bytes(load_transformer(tiny_root / name, dtype=torch.bfloat16))
    quantized = load_transformer(tiny_root / name, dtype=torch.bfloat16, storage_dtype=fp8, fp8_mode="reference exact")
    ratio = allocated_bytes(quantized) / bf16
    assert abs(ratio - 0.50) <= 0.01 * 0.50
    assert {t.dtype for t in quantized.state_dict().values()} == {fp8}  # every tensor, norms and biases included


def test_quality_mode_keeps_norms_embeddings_modulation_and_projections_in_bf16(tiny_root):
    model = load_transformer(
        tiny_root / MODELS[0], dtype=torch.bfloat16, fp8_mode="quality", storage_dtype=torch.float8_e4m3fn
    )
    dtypes = {name: t.dtype for name, t in model.state_dict().items()}
    for name in (
        "proj.weight",
        "proj_out.weight",
        "time_embedding.linear_1.weight",
        "text_proj.0.weight",
        "text_proj.1.weight",
        "norm_final.weight",
        "norm_out.linear.weight",
        "transformer_blocks.0.norm1.linear.weight",
        "transformer_blocks.0.attn1.norm_q.weight",
        "transformer_blocks.1.attn2.to_q.bias",
    ):
        assert dtypes[name] == torch.bfloat16, name
    for name in (
        "transformer_blocks.0.attn1.to_q.weight",
        "transformer_blocks.0.attn2.to_out.0.weight",
        "transformer_blocks.1.ff.net.0.proj.weight",
        "transformer_blocks.1.txt_ff.net.2.weight",
    ):
        assert dtypes[name] == torch.float8_e4m3fn, name
    assert not is_precision_sensitive("transformer_blocks.3.ff.net.0.proj.weight")  # FF up-projection is not `proj`


def _linear_weights(model):
    return {n: t for n, t in model.state_dict().items() if n.endswith("weight") and t.ndim == 2}


def test_scaled_fp8_weight_error_is_lower_than_the_plain_cast(tiny_root):
    weights = _linear_weights(load_transformer(tiny_root / MODELS[0], dtype=torch.float32))
    plain_error = scaled_error = 0.0
    for w in weights.values():
        w = w * 0.02  # released weights are small (std ~0.02): where the plain cast loses most to subnormals
        quantized, scale = quantize_scaled(w)
        scaled_error += (dequantize(quantized, scale, torch.float32) - w).pow(2).sum().item()
        plain_error += (w.to(torch.float8_e4m3fn).float() - w).pow(2).sum().item()
    assert scaled_error < 0.5 * plain_error


def test_scaled_fp8_model_output_is_closer_to_bf16_than_plain_fp8(tiny_root):
    path = tiny_root / MODELS[0]
    g = torch.Generator().manual_seed(0)
    latents, text = torch.randn(1, 16, 2, 8, 8, generator=g), torch.randn(1, 6, 64, generator=g)

    def run(model):
        return model(latents, torch.tensor([500.0]), text).float()

    reference = run(load_transformer(path, dtype=torch.float32))
    errors = {}
    for mode in ("quality", "scaled"):
        out = run(load_transformer(path, dtype=torch.float32, fp8_mode=mode, storage_dtype=torch.float8_e4m3fn))
        errors[mode] = ((out - reference).abs().max() / reference.abs().max()).item()
    assert errors["scaled"] < errors["quality"]
    assert errors["quality"] < 0.1


def test_scaled_mode_stores_fp8_weights_with_one_fp32_scale_each(tiny_root):
    model = load_transformer(
        tiny_root / MODELS[0], dtype=torch.bfloat16, fp8_mode="scaled", storage_dtype=torch.float8_e4m3fn
    )
    linear = model.transformer_blocks[0].attn1.to_q
    assert linear.weight.dtype == torch.float8_e4m3fn
    assert linear.weight_scale.dtype == torch.float32 and linear.weight_scale.numel() == 1
    assert model.proj_out.weight.dtype == torch.bfloat16 and getattr(model.proj_out, "weight_scale", None) is None


def test_fp8_matmul_is_not_offered_without_an_sm89_gpu():
    assert fp8_matmul_supported("cpu") is False
