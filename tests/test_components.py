"""The lazily-loading model object: single transformer files borrow VAE, text encoder and scheduler from a folder."""

import pytest

from models.components import open_model

SINGLE_FILE = "tiny-EasyAnimateV5.1-12b-zh-InP.safetensors"


def test_single_file_borrows_its_other_parts_from_a_folder_of_the_same_version(tiny_root):
    candidates = [tiny_root / "tiny-EasyAnimateV5-12b-zh", tiny_root / "tiny-EasyAnimateV5.1-7b-zh"]
    model = open_model(tiny_root / SINGLE_FILE, "fp32", companion_candidates=candidates)
    assert model.detection.layout == "single_file" and model.version == "v5.1"
    assert model.companion == (tiny_root / "tiny-EasyAnimateV5.1-7b-zh").resolve()  # the V5 folder was skipped
    assert model.scheduler_config()["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert model.vae().config.latent_channels == 16
    embeddings = model.text_encoder().encode(["a cat"], "")
    assert embeddings.version == "v5.1"


def test_single_file_without_a_companion_says_where_to_put_one(tiny_root):
    model = open_model(tiny_root / SINGLE_FILE, "bf16", companion_candidates=[tiny_root / "tiny-EasyAnimateV5-7b-zh"])
    assert model.companion is None
    with pytest.raises(FileNotFoundError, match="models/EasyAnimate"):
        model.vae()


def test_the_model_object_owns_its_prompt_cache_and_nothing_outlives_it(tiny_root):
    """Prompts encoded through a model hit after its text encoder was released (the encoder is not read again), a
    model with other settings has a cache of its own, and the cache goes with the model: no module-wide cache."""
    import gc
    import weakref

    model = open_model(tiny_root / "tiny-EasyAnimateV5-12b-zh", "fp32")
    model.release()
    first = model.text_encoder().encode(["a cat"], "", release_after=True)
    model.release("text_encoder")
    encoder = model.text_encoder()
    again = encoder.encode(["a cat"], "")
    assert not encoder.loaded and again.cache_key == first.cache_key and len(model.prompt_cache) == 2
    other = open_model(tiny_root / "tiny-EasyAnimateV5-12b-zh", "bf16")
    assert other.prompt_cache is not model.prompt_cache
    cache = weakref.ref(model.prompt_cache)
    del model, encoder, other
    gc.collect()
    assert cache() is None
