"""After an out-of-memory error the sampler node's message must not keep the failed step alive: the traceback of
the original error references every frame of the step (and so its activations); the node drops it before freeing
memory. Checked on the CPU with a simulated torch.cuda.OutOfMemoryError (tests/test_gpu.py does it on a GPU)."""

import importlib
import weakref

import pytest
import torch


def test_sampler_oom_message_does_not_keep_the_failed_steps_tensors_alive(pack, tiny_root, monkeypatch):
    sampler = importlib.import_module(f"{pack.__name__}.nodes.sampler")
    components = importlib.import_module(f"{pack.__name__}.models.components")
    pipeline = importlib.import_module(f"{pack.__name__}.models.pipeline")
    text = importlib.import_module(f"{pack.__name__}.models.text")
    activations = []

    def failing_generate(*args, **kwargs):
        activation = torch.empty(1024, 1024)  # a tensor only the failing frame holds
        activations.append(weakref.ref(activation))
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(pipeline, "generate", failing_generate)
    model = components.open_model(tiny_root / "tiny-EasyAnimateV5.1-12b-zh", "fp32", memory_mode="gpu")
    hidden, mask = torch.zeros(1, 4, 64), torch.ones(1, 4, dtype=torch.long)
    embeddings = text.PromptEmbeddings("v5.1", ("qwen",), (hidden,), (hidden,), (mask,), (mask,), ("a",), ("",), "k")
    with pytest.raises(RuntimeError, match="ran out of GPU memory") as raised:
        sampler.EasyAnimateVideoSampler().sample(model, embeddings, 64, 64, 5, 1, 6.0, 0, "Flow", 0.0, 0)
    assert raised.value.__context__ is not None  # the original error is still reachable, for debugging ...
    assert activations and activations[0]() is None  # ... but not the tensors of the step that failed
