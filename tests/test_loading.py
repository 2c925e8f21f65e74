"""One streaming loader and one finder for every component (models/loading/), numerics only through the ops namespace:
no device moves hidden in a layer, no process-wide patch while a text encoder is built."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models import ops
from models.loading import stream
from models.loading.transformer import load_transformer
from models.text import load_text_encoder
from models.vae import load_vae

V5 = "tiny-EasyAnimateV5-12b-zh-InP"
V51 = "tiny-EasyAnimateV5.1-12b-zh-InP"


def distinct_tensors(module: nn.Module) -> int:
    """Parameters and persistent buffers, a tied tensor counted once."""
    seen = {id(p) for p in module.parameters()}
    for owner in module.modules():
        seen |= {
            id(b)
            for name, b in owner._buffers.items()
            if b is not None and name not in owner._non_persistent_buffers_set
        }
    return len(seen)


@pytest.fixture()
def reads(monkeypatch):
    """Every tensor read by the one streaming loader, as (file name, key); any other reader fails the test.

    Other readers are replaced wherever they are bound, including names copied by `from safetensors import
    safe_open` into modules imported earlier. A module first imported during the test (transformers' modeling
    files, when pytest-randomly runs this test first) copies the stand-in instead: the teardown gives every such
    module the real reader back, or later tests would fail in it."""
    import sys

    import safetensors
    import safetensors.torch

    seen: list[tuple[str, str]] = []
    real_read_tensor = stream._read_tensor

    def recording_read_tensor(handle, file, key, *args):
        seen.append((file.name, key))
        return real_read_tensor(handle, file, key, *args)

    def stand_in(real):
        def no_other_reader(*args, **kwargs):
            raise AssertionError("a weight file was read outside models/loading/stream.py")

        no_other_reader.real = real
        return no_other_reader

    monkeypatch.setattr(stream, "_read_tensor", recording_read_tensor)
    stand_ins = {id(real): stand_in(real) for real in (safetensors.safe_open, safetensors.torch.load_file, torch.load)}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if module is stream or not isinstance(namespace, dict):
            continue
        for name, value in list(namespace.items()):
            if id(value) in stand_ins:
                monkeypatch.setattr(module, name, stand_ins[id(value)])
    yield seen
    monkeypatch.undo()
    replaced = {id(f): f.real for f in stand_ins.values()}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        if isinstance(namespace, dict):
            for name, value in list(namespace.items()):
                if id(value) in replaced:
                    setattr(module, name, replaced[id(value)])


@pytest.mark.parametrize("name", [V5, V51])
def test_transformer_vae_and_text_encoders_read_every_tensor_through_the_one_streaming_loader(tiny_root, reads, name):
    transformer = load_transformer(tiny_root / name, dtype=torch.float32)
    assert len(reads) == distinct_tensors(transformer) > 50
    reads.clear()

    vae = load_vae(tiny_root / name, dtype=torch.float32)
    assert len(reads) == distinct_tensors(vae) > 50
    reads.clear()

    encoder = load_text_encoder(tiny_root / name, dtype=torch.float32)
    assert len(reads) == sum(distinct_tensors(model) for model in encoder.models.values()) > 20
    assert len(set(reads)) == len(reads)  # each tensor read once (T5's tied embedding included)


def test_tied_t5_embedding_is_read_once_and_stays_one_tensor(tiny_root):
    t5 = load_text_encoder(tiny_root / V5, dtype=torch.float32).models["t5"]
    assert t5.shared.weight is t5.encoder.embed_tokens.weight
    assert not t5.shared.weight.is_meta


@pytest.mark.parametrize(
    "layer",
    [
        lambda: ops.Linear(4, 3),
        lambda: ops.LayerNorm(4),
        lambda: ops.RMSNorm(4),
        lambda: ops.GroupNorm(2, 4),
    ],
)
def test_a_layer_whose_weight_is_on_another_device_fails_instead_of_copying_it(layer):
    module = layer().to("meta")  # stands for "left on the host while the input is on the GPU"
    with pytest.raises(ops.MisplacedWeightError, match="weight is on meta but the layer's input is on cpu"):
        module(torch.randn(2, 4))


def test_cast_like_changes_only_the_dtype():
    weight = torch.randn(3, 4, dtype=torch.bfloat16)
    assert ops.cast_like(weight, torch.zeros(1, dtype=torch.bfloat16)) is weight
    upcast = ops.cast_like(weight, torch.zeros(1))
    assert upcast.dtype == torch.float32 and torch.equal(upcast, weight.float())
    with pytest.raises(ops.MisplacedWeightError):
        ops.cast_like(weight, torch.zeros(1, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_host_weight_never_becomes_a_per_call_copy_to_the_gpu():
    layer = ops.Linear(4, 3)  # on the host
    with pytest.raises(ops.MisplacedWeightError, match="weight is on cpu but the layer's input is on cuda"):
        layer(torch.randn(2, 4, device="cuda"))


@pytest.mark.parametrize(
    "name,stream_name,fp8_layer",
    [
        (V51, "qwen", lambda m: m.layers[0].self_attn.q_proj),
        (V5, "t5", lambda m: m.encoder.block[0].layer[0].SelfAttention.q),
    ],
)
def test_text_encoder_fp8_storage_comes_from_the_ops_linear_without_patching_nn_module(
    tiny_root, reads, monkeypatch, name, stream_name, fp8_layer
):
    original = nn.Module.register_parameter
    during_load = []
    real_read, real_linear_init = stream._read_tensor, nn.Linear.__init__

    def read_and_check(*args):  # nn.Module must be untouched while the encoder is filled ...
        during_load.append(nn.Module.register_parameter is original)
        return real_read(*args)

    def build_and_check(self, *args, **kwargs):  # ... and while it is built
        during_load.append(nn.Module.register_parameter is original)
        real_linear_init(self, *args, **kwargs)

    monkeypatch.setattr(stream, "_read_tensor", read_and_check)
    monkeypatch.setattr(nn.Linear, "__init__", build_and_check)
    encoder = load_text_encoder(tiny_root / name, dtype=torch.bfloat16, storage_dtype=torch.float8_e4m3fn)
    assert during_load and all(during_load)
    assert nn.Module.register_parameter is original

    model = encoder.models[stream_name]
    layer = fp8_layer(model)
    assert type(layer) is ops.cast.Linear and layer.weight.dtype == torch.float8_e4m3fn
    plain = [m for m in model.modules() if type(m) is nn.Linear]
    assert all(m.weight.dtype == torch.bfloat16 for m in plain)  # e.g. T5's `wo`, kept in the compute dtype
    assert not any(
        isinstance(m, nn.Linear) and m.weight.dtype == torch.float8_e4m3fn and type(m) is nn.Linear
        for m in model.modules()
    )
    assert encoder.encode("a cat").positive[0].isfinite().all()


def test_the_loader_node_reaches_text_encoder_fp8_storage(pack, tiny_root, monkeypatch):
    loader = pack.nodes.loaders
    spec = loader.EasyAnimateModelLoader.INPUT_TYPES()["optional"]["text_encoder_storage"]
    assert spec[0] == list(loader.WEIGHT_STORAGES) and spec[1]["default"] == loader.SAME_AS_PRECISION

    monkeypatch.setenv("EASYANIMATE_MODELS_DIR", str(tiny_root))
    node = loader.EasyAnimateModelLoader()
    (default,) = node.load(V51, "bf16", "same as precision")
    (fp8,) = node.load(V51, "bf16", "same as precision", text_encoder_storage="fp8_e4m3fn")
    assert default is not fp8 and default.text_storage_dtype is None
    assert fp8.text_storage_dtype == torch.float8_e4m3fn
    for components, held in ((fp8, torch.float8_e4m3fn), (default, torch.bfloat16)):
        encoder = components.text_encoder()
        assert not encoder.loaded  # lazy: nothing read before the first encode
        encoder.load()
        assert encoder.models["qwen"].layers[0].self_attn.q_proj.weight.dtype == held
        components.release()


def test_open_model_refuses_an_unknown_text_encoder_storage(tiny_root):
    from models.components import open_model

    with pytest.raises(ValueError, match="text_encoder_storage must be None or one of"):
        open_model(tiny_root / V51, "bf16", text_encoder_storage="int4")


def test_the_vae_has_no_fp8_case_a_storage_dtype_it_cannot_compute_in_needs_a_compute_dtype(tiny_root):
    with pytest.raises(ValueError, match="Pass compute_dtype"):
        load_vae(tiny_root / V51, dtype=torch.float8_e4m3fn)
    reference = load_vae(tiny_root / V51, dtype=torch.float32)
    fp8 = load_vae(tiny_root / V51, dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)
    assert fp8.post_quant_conv.weight.dtype == torch.float8_e4m3fn  # held in fp8, upcast per call by the ops layers
    latents = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference.decode(latents), fp8.decode(latents)
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert 0 < (got - expected).norm() <= 0.1 * expected.norm()  # measured 0.051 (e4m3 weights)


@pytest.mark.parametrize("storage", [None, torch.float8_e4m3fn], ids=["compute dtype", "fp8"])
@pytest.mark.parametrize("name", [V5, V51])
def test_text_encoder_bytes_priced_from_the_headers_are_what_the_loaded_encoders_hold(tiny_root, name, storage):
    """The memory plan prices the text encoders from their headers (models/loading/text.py text_weight_bytes): every
    tensor the loaders read, the fp8 Linear weights at one byte. The loaded models' weights are exactly that."""
    from models.loading.text import text_weight_bytes

    encoder = load_text_encoder(tiny_root / name, dtype=torch.float32, storage_dtype=storage)
    held = sum(
        t.numel() * t.element_size()
        for model in encoder.models.values()
        for t in {p.data_ptr(): p for p in model.parameters()}.values()  # T5's tied embedding once
    )
    if storage is not None:
        assert any(t.dtype == storage for model in encoder.models.values() for t in model.state_dict().values())
    assert text_weight_bytes(tiny_root / name, encoder.version, torch.float32, storage) == held
