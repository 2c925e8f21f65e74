"""The registry's constants: every default a node widget shows, every dropdown list, every limit and every VAE / text
number the pack uses. `models/variants.py` holds the released variants built from these; both are the single source
(docs/architecture.md, registry). Node modules, tools and models/ read them from here; nothing else spells them.

Plain data, no imports: anything may import this module.
"""

from __future__ import annotations

V5 = "v5"
V5_1 = "v5.1"
VERSIONS = (V5, V5_1)
SIZES = ("7b", "12b")
KINDS = ("t2v", "inp", "control", "control_camera")

# -- sampling defaults of the reference predict scripts (docs/faithfulness.md, schedulers / text encoders) ------------

DEFAULT_STEPS = 50
DEFAULT_GUIDANCE = 6.0
DEFAULT_HEIGHT = 384
DEFAULT_WIDTH = 672
DEFAULT_FRAMES = 49
DEFAULT_SEED = 43
DEFAULT_NEGATIVE_PROMPT = "扭曲的身体，肢体残缺，文本字幕，漫画，静止，丑陋，错误，乱码。"  # EA:predict_t2v.py:79
DEFAULT_TEACACHE_THRESHOLD = 0.08
DEFAULT_FPS = 8  # V5 / V5.1 were trained at 8 fps (docs/faithfulness.md, conditioning)

# Samplers per version, in dropdown order (docs/faithfulness.md, schedulers): Flow is the only V5.1 sampler upstream,
# "Flow UniPC" / "Flow DPM++" are the multistep solvers in flow mode; the DDPM family must not run V5.1, Flow not V5.
SCHEDULERS_BY_VERSION: dict[str, tuple[str, ...]] = {
    V5: ("DDIM", "Euler", "Euler A", "DPM++", "PNDM"),
    V5_1: ("Flow", "Flow UniPC", "Flow DPM++"),
}
DEFAULT_SCHEDULER = {V5: "DDIM", V5_1: "Flow"}
AUTO_SCHEDULER = "auto"  # the dropdown entry meaning DEFAULT_SCHEDULER[version]
# The sampler node's dropdown: auto, then V5.1's samplers, then V5's.
SCHEDULER_CHOICES = (AUTO_SCHEDULER, *SCHEDULERS_BY_VERSION[V5_1], *SCHEDULERS_BY_VERSION[V5])

# -- request limits every node and tool enforces (docs/reliability.md, limits) ----------------------------------------
# Sides a multiple of 16 (VAE 8x, patch 2), frames 1 or 4k+1 (causal VAE 4x), at most 2048 px a side and 253 frames
# (64 latent frames, 1.3x the trained 49x4), prompts at most 256 tokens per text stream (longer ones are cut and the
# node warns).
MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 16, 2048, 16
MIN_FRAMES, MAX_FRAMES, FRAME_STEP = 1, 253, 4
MAX_PROMPT_TOKENS = 256
MAX_STEPS = 200
MAX_GUIDANCE = 30.0
SEED_MAX = 0xFFFFFFFFFFFFFFFF

# -- text encoders (docs/faithfulness.md, text encoders) ---------------------------------------------------------------

# Tokens per stream (max_sequence_length, both versions); Bert's own tokenizer limit (77) cuts its stream shorter.
MAX_SEQUENCE_LENGTH = MAX_PROMPT_TOKENS
# Text tokens the transformer attends to beside the video: Bert + mT5 (V5), Qwen2-VL (V5.1).
TEXT_TOKENS = {V5: 2 * MAX_SEQUENCE_LENGTH, V5_1: MAX_SEQUENCE_LENGTH}

# -- VAE (docs/checkpoints.md, VAE config; docs/faithfulness.md, conditioning) ----------------------------------------

VAE_SPATIAL_SCALE = 8  # pixels per latent pixel
VAE_TEMPORAL_SCALE = 4  # pixel frames per latent frame (after the first)
VAE_SCALING_FACTOR = 0.7125  # latents = posterior mode x this; the inpaint mask channel is scaled the same
LATENT_CHANNELS = 16
PATCH_SIZE = 2  # transformer patch: one token per 2x2 latent pixels

# -- loader dropdowns ---------------------------------------------------------------------------------------------------

PRECISIONS = ("bf16", "fp16", "fp32")
SAME_AS_PRECISION = "same as precision"
FP8_STORAGES = ("fp8_e4m3fn", "fp8_e5m2")
WEIGHT_STORAGES = (SAME_AS_PRECISION, *FP8_STORAGES)
MEMORY_MODES = ("gpu", "model_cpu_offload", "sequential")  # docs/memory.md, memory modes
MEMORY_MODE_CHOICES = ("auto", *MEMORY_MODES)
FP8_MODES = ("quality", "reference exact", "scaled")  # docs/memory.md, loading
ATTENTION_CHOICES = ("auto", "sdpa", "sage", "flash")
