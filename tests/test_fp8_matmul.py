"""fp8 compute with torch._scaled_mm (models/quant.py ScaledLinear): activations rounded to e4m3 with a per-tensor
scale, weights per-tensor-scaled e4m3, products accumulated in higher precision. It CHANGES the output; the GPU run
measures by how much (benchmarks/gpu.py). torch._scaled_mm also runs on this CPU build, so the arithmetic is
checked here against the formula written out by hand."""

import pytest
import torch

from models.quant import fp8_matmul_supported, quantize_scaled, scaled_ops

E4M3_MAX = 448.0


def _linear(seed=0, fp8_matmul=True, in_features=64, out_features=32):
    torch.manual_seed(seed)
    linear = scaled_ops(fp8_matmul).Linear(in_features, out_features)
    weight, scale = quantize_scaled(linear.weight.data)
    linear._parameters["weight"] = torch.nn.Parameter(weight, requires_grad=False)
    linear.register_buffer("weight_scale", scale, persistent=False)
    linear.bias.data = linear.bias.data.to(torch.bfloat16)
    return linear


def _by_hand(linear, x):
    """y = (round_e4m3(x / sx) · sx) (W8 · sw)ᵀ + b, sx = amax(x) / 448, in float64."""
    flat = x.reshape(-1, x.shape[-1]).double()
    sx = flat.abs().max() / E4M3_MAX
    x8 = (flat / sx).float().to(torch.float8_e4m3fn).double() * sx
    w = linear.weight.double() * linear.weight_scale.double()
    return (x8 @ w.t() + linear.bias.double()).reshape(*x.shape[:-1], -1)


def test_scaled_mm_forward_is_the_fp8_formula():
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this torch build has no torch._scaled_mm")
    linear = _linear()
    x = torch.randn(2, 5, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = linear._scaled_mm_forward(x, linear.weight_scale)
    assert out.shape == (2, 5, 32) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), _by_hand(linear, x), rtol=1e-2, atol=1e-2)  # bf16 output rounding


def test_scaled_mm_changes_the_output_compared_with_dequantized_bf16():
    if not hasattr(torch, "_scaled_mm"):
        pytest.skip("this torch build has no torch._scaled_mm")
    linear = _linear(seed=2)
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    fp8_compute = linear._scaled_mm_forward(x, linear.weight_scale).float()
    dequantized = linear.forward(x).float()  # on the CPU forward() takes the dequantizing path
    relative = (fp8_compute - dequantized).norm() / dequantized.norm()
    assert 1e-4 < relative < 0.1


def test_fp8_matmul_is_used_only_on_sm89_or_newer_cuda_devices():
    assert not fp8_matmul_supported("cpu")
    linear = _linear(seed=4)
    x = torch.randn(3, 64).to(torch.bfloat16)
    calls = []
    linear._scaled_mm_forward = lambda *a: calls.append(a)  # would record a call on this CPU
    linear.forward(x)
    assert calls == []
