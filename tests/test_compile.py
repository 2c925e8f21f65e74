"""torch.compile per transformer block (models/compile.py): compiled == eager, and block swap / a LoRA-style patched
Linear keep working without recompiling each pass.

CPU note: Dynamo is slow on the 2-core CI box, so the tests use the "aot_eager" backend (the same Dynamo capture and
AOT graph, no code generation) or a counting backend that runs the captured graph eagerly; one test runs the default
"inductor" backend on the tiny model.
"""

import torch
from tiny_checkpoints import tiny_transformer_params
from torch import nn

from models import ops as cast_ops
from models.compile import compile_blocks, uncompile_blocks
from models.offload import BlockSwap, OffloadStats
from models.transformer import EasyAnimateTransformer

PARAMS = tiny_transformer_params(num_layers=4, mmdit_layers=2)


def _model(ops=None, seed=0):
    torch.manual_seed(seed)
    return EasyAnimateTransformer(PARAMS, ops).eval().requires_grad_(False)


def _inputs(frames=2, size=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, 16, frames, size, size, generator=g),
        torch.tensor([500.0, 500.0]),
        torch.randn(2, 8, 64, generator=g),
    )


class CountingBackend:
    """A Dynamo backend that counts the graphs it is handed and runs them eagerly."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def test_compiled_blocks_match_eager_output():
    model = _model()
    latents, timestep, text = _inputs()
    with torch.inference_mode():
        eager = model(latents, timestep, text)
        compile_blocks(model, backend="aot_eager", log=lambda line: None)
        compiled = model(latents, timestep, text)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    assert all("forward" in block.__dict__ for block in model.transformer_blocks)


def test_inductor_compiled_blocks_match_eager_output():
    torch._dynamo.reset()
    model = _model(seed=3)
    latents, timestep, text = _inputs(frames=1)
    with torch.inference_mode():
        eager = model(latents, timestep, text)
        compile_blocks(model, log=lambda line: None)  # default backend: inductor (C++ code generation on the CPU)
        compiled = model(latents, timestep, text)
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_compile_time_is_reported_once_after_every_block_ran():
    lines = []
    model = _model()
    report = compile_blocks(model, backend=CountingBackend(), log=lines.append)
    latents, timestep, text = _inputs()
    with torch.inference_mode():
        for _ in range(3):
            model(latents, timestep, text)
    assert len(lines) == 1 and "4 transformer blocks compiled in" in lines[0]
    assert report.pending == set() and report.first_call_seconds > 0


def test_block_swap_runs_compiled_blocks_without_recompiling_each_pass():
    backend = CountingBackend()
    torch._dynamo.reset()
    model = _model(seed=4)
    latents, timestep, text = _inputs()
    with torch.inference_mode():
        eager = model(latents, timestep, text)
        compile_blocks(model, backend=backend, log=lambda line: None)
        stats = OffloadStats()
        with BlockSwap(model, "cpu", resident_blocks=1, stats=stats):
            first = model(latents, timestep, text)
            graphs_after_first_pass = backend.graphs
            second = model(latents, timestep, text)
            third = model(latents, timestep, text)
    assert stats.block_loads == 3 * 3  # blocks 1..3 streamed in on each of the three passes
    assert backend.graphs == graphs_after_first_pass  # fresh weight copies are graph inputs, not recompiles
    assert 1 <= graphs_after_first_pass <= 2  # MMDiT blocks share one graph, shared-weight blocks another
    for out in (first, second, third):
        torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


class DeltaLinear(cast_ops.Linear):
    """A LoRA-like injected Linear: y = x W^T + b + scale * x A^T B^T, with (A, B, scale) set after loading."""

    def forward(self, x):
        out = super().forward(x)
        down = getattr(self, "lora_down", None)
        if down is None:
            return out
        return out + self.lora_scale * (x @ down.t().to(x.dtype)) @ self.lora_up.t().to(x.dtype)


def test_a_delta_added_to_compiled_linears_after_compiling_changes_the_output_like_eager():
    ops = cast_ops.resolve(None)
    lora_ops = type(ops)(**{**vars(ops), "Linear": DeltaLinear})
    model = _model(lora_ops, seed=5)
    reference = _model(lora_ops, seed=5)
    latents, timestep, text = _inputs()
    backend = CountingBackend()
    compile_blocks(model, backend=backend, log=lambda line: None)
    with torch.inference_mode():
        before = model(latents, timestep, text)
        for target in (model, reference):
            g = torch.Generator().manual_seed(9)
            for module in target.transformer_blocks.modules():
                if isinstance(module, DeltaLinear):
                    module.lora_down = nn.Parameter(torch.randn(4, module.in_features, generator=g) * 0.1)
                    module.lora_up = nn.Parameter(torch.randn(module.out_features, 4, generator=g) * 0.1)
                    module.lora_scale = 0.5
        after = model(latents, timestep, text)
        expected = reference(latents, timestep, text)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)
    assert (after - before).abs().max() > 1e-3
    assert backend.graphs >= 1


def test_uncompile_restores_the_eager_forward():
    model = _model()
    compile_blocks(model, backend="aot_eager", log=lambda line: None)
    uncompile_blocks(model)
    assert all("forward" not in block.__dict__ for block in model.transformer_blocks)
