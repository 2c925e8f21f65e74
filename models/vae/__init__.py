"""EasyAnimate V5 / V5.1 causal 3D VAE (`AutoencoderKLMagvit`): video <-> latents, weight-compatible with the releases.

Module names equal the released state-dict keys, so loading is a plain key-for-key assignment for both the original
and the `-diffusers` layout (docs/checkpoints.md, VAE).

Memory stays flat in the number of frames: every temporal op is causal (a 3-frame conv whose history is the previous
input frames; nearest temporal up-sampling) and every normalisation / attention works per frame, so a clip can be
streamed chunk by chunk — first frame alone, then 4 frames (encoder) / 1 latent frame (decoder) — with a small
`CausalState` carried between chunks, and the result equals one pass over the whole clip (docs/memory.md, VAE).
On top of that, overlapping spatial tiles with linear blending bound the per-chunk memory for large frames.

Files: config.py (config.json fields, errors), blocks.py (layers and the causal state), causal.py (the VAE module and
its chunked executor), tiling.py (frame rule, tile planner), memory.py (working-memory estimate), loading.py.
Layers come from an injected `ops` namespace (models/ops.py); nothing here decides storage dtype or device.
"""

from .blocks import (
    CausalState,
    Decoder,
    DownBlock,
    Downsampler,
    Encoder,
    MidBlock,
    ResnetBlock,
    SpatialSelfAttention,
    UpBlock,
    Upsampler,
    causal_conv,
    frame_group_norm,
)
from .causal import VAE, VAEPass
from .config import (
    CONFIG_NAME,
    NORM_EPS,
    PICKLE_SUFFIXES,
    SPATIAL_DOWN,
    SPATIAL_UP,
    SPATIOTEMPORAL_DOWN,
    SPATIOTEMPORAL_UP,
    Interrupt,
    Progress,
    VAEConfig,
    VAEConfigError,
    VAEInputError,
)
from .loading import _attention_in_keys, _config_from_shapes, _find_vae_folder, load_vae
from .memory import (
    DECODE_MEMORY_FACTOR,
    ENCODE_MEMORY_FACTOR,
    MIN_TILE_LATENT,
    estimate_working_bytes,
    smallest_tile_working_bytes,
)
from .tiling import Tile, blend_ramps, latent_frame_count, pixel_frame_count, plan_tiles, tile_spans

__all__ = [
    "CONFIG_NAME",
    "DECODE_MEMORY_FACTOR",
    "ENCODE_MEMORY_FACTOR",
    "NORM_EPS",
    "PICKLE_SUFFIXES",
    "SPATIAL_DOWN",
    "SPATIAL_UP",
    "SPATIOTEMPORAL_DOWN",
    "SPATIOTEMPORAL_UP",
    "VAE",
    "CausalState",
    "Decoder",
    "DownBlock",
    "Downsampler",
    "Encoder",
    "Interrupt",
    "MidBlock",
    "Progress",
    "ResnetBlock",
    "SpatialSelfAttention",
    "Tile",
    "UpBlock",
    "Upsampler",
    "VAEConfig",
    "VAEConfigError",
    "VAEInputError",
    "VAEPass",
    "_attention_in_keys",
    "_config_from_shapes",
    "_find_vae_folder",
    "blend_ramps",
    "causal_conv",
    "estimate_working_bytes",
    "frame_group_norm",
    "latent_frame_count",
    "load_vae",
    "pixel_frame_count",
    "plan_tiles",
    "tile_spans",
    "MIN_TILE_LATENT",
    "smallest_tile_working_bytes",
]
