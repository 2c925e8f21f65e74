"""tools/tiny_checkpoints.py takes its key sets and shapes from the pack's own transformer and VAE; diffusers (a
test-only, independent writer of the same architectures) must agree on every key and shape, and the generator must
run on requirements.txt alone (no diffusers import)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_checkpoints import (
    KINDS_BY_VERSION,
    TINY_VAE,
    tiny_transformer_config,
    tiny_vae_config,
    transformer_tensors,
    vae_tensors,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = [
    (version, size, kind) for version, kinds in KINDS_BY_VERSION.items() for size in ("12b", "7b") for kind in kinds
]


def shapes(tensors: dict) -> dict:
    return {key: tuple(value.shape) for key, value in tensors.items()}


@pytest.mark.parametrize("version,size,kind", VARIANTS, ids=["-".join(v) for v in VARIANTS])
def test_transformer_keys_and_shapes_match_diffusers_model_renamed_to_original_keys(version, size, kind):
    from diffusers import EasyAnimateTransformer3DModel

    from models.loading.keys import diffusers_to_original_key

    config = tiny_transformer_config(version, size, kind)
    accepted = inspect.signature(EasyAnimateTransformer3DModel.__init__).parameters
    kwargs = {key: value for key, value in config.items() if key in accepted}
    kwargs["add_norm_text_encoder"] = version == "v5.1"
    with torch.device("meta"):
        oracle = EasyAnimateTransformer3DModel(**kwargs)
    expected = {diffusers_to_original_key(key): tuple(value.shape) for key, value in oracle.state_dict().items()}
    assert shapes(transformer_tensors(version, size, kind, seed=1)) == expected


@pytest.mark.parametrize("version", list(KINDS_BY_VERSION))
def test_vae_keys_and_shapes_match_diffusers_plus_the_v5_mid_attention(version):
    from diffusers import AutoencoderKLMagvit

    with torch.device("meta"):
        oracle = AutoencoderKLMagvit(**{k: v for k, v in TINY_VAE.items() if k != "ch"})
    expected = {key: tuple(value.shape) for key, value in oracle.state_dict().items()}
    if version == "v5":  # the released V5 VAE has one spatial attention in each mid block (diffusers dropped it)
        width = TINY_VAE["block_out_channels"][-1]
        for part in ("encoder", "decoder"):
            prefix = f"{part}.mid_block.attentions.0."
            expected[prefix + "group_norm.weight"] = expected[prefix + "group_norm.bias"] = (width,)
            for projection in ("to_q", "to_k", "to_v", "to_out"):
                expected[f"{prefix}{projection}.weight"] = (width, width)
                expected[f"{prefix}{projection}.bias"] = (width,)
    assert tiny_vae_config(version)["mid_block_use_attention"] == (version == "v5")
    assert shapes(vae_tensors(version, seed=1)) == expected


def test_generator_never_imports_diffusers(tmp_path):
    """Build one model folder in a child process where `import diffusers` fails, as on an end-user install."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "diffusers.py").write_text("raise ImportError('diffusers is a test-only dependency')\n")
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[2])\n"
        "import tiny_checkpoints as t\n"
        "t.write_tiny_model(Path(sys.argv[3]), 'tiny-EasyAnimateV5-7b-zh-InP')\n"
        "assert 'diffusers' not in sys.modules or not hasattr(sys.modules['diffusers'], '__version__')\n"
    )
    out = tmp_path / "model"
    done = subprocess.run(
        [sys.executable, "-c", script, str(blocker), str(REPO_ROOT / "tools"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "transformer" / "diffusion_pytorch_model.safetensors").stat().st_size > 0
    assert (out / "vae" / "diffusion_pytorch_model.safetensors").stat().st_size > 0
