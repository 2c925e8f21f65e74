"""Whole-loop parity of models/pipeline.py against diffusers 0.42.1's EasyAnimate pipelines (test-only oracle).

Tiny V5.1 12B-like checkpoints (all blocks MMDiT, where diffusers matches the original), fp32, the same initial
noise, 4 Flow steps: ours loads the ORIGINAL folders, diffusers the `-diffusers` copies of the same weights.
"""

import json

import pytest
import torch

from models import pipeline
from models.loading.detect import detect
from models.loading.transformer import load_transformer
from models.vae import load_vae

# 2:3 like 480x720: the RoPE crop region starts at 0, where diffusers 0.42's rotary grid equals the original's
# (elsewhere diffusers' linspace(start, stop*(n-1)/n) differs from the original endpoint=False grid; the transformer
# tests cover that case against the original formula).
HEIGHT, WIDTH, FRAMES, STEPS, CFG, SEED = 64, 96, 5, 4, 6.0, 7
TEXT_LEN = 12
REL_TOL = 1e-4


def _relative_error(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


@pytest.fixture(scope="module")
def text_embeds():
    g = torch.Generator().manual_seed(3)
    positive = torch.randn(1, TEXT_LEN, 64, generator=g)
    negative = torch.randn(1, TEXT_LEN, 64, generator=g)
    return positive, negative


def _noise(shape):
    return torch.randn(shape, generator=torch.Generator().manual_seed(11))


def _frames(count, seed):
    return torch.rand(count, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def _ours(model_dir, text_embeds, request, given_noise=True):
    detection = detect(model_dir)
    transformer = load_transformer(model_dir, dtype=torch.float32)
    vae = load_vae(model_dir, dtype=torch.float32)
    config = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    positive, negative = text_embeds
    shape = pipeline.latent_shape(WIDTH, HEIGHT, FRAMES)
    return pipeline.generate(
        transformer,
        vae,
        (torch.cat([negative, positive]),),
        request,
        variant=detection.variant,
        scheduler_config=config,
        dtype=torch.float32,
        initial_noise=_noise(shape) if given_noise else None,
    )


def _theirs(pipeline_class, model_dir, text_embeds, given_noise=True, **kwargs):
    import diffusers

    folder = model_dir.parent / (model_dir.name + "-diffusers")
    transformer = diffusers.EasyAnimateTransformer3DModel.from_pretrained(folder / "transformer").float()
    vae = diffusers.AutoencoderKLMagvit.from_pretrained(folder / "vae").float()
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    pipe = pipeline_class(vae=vae, text_encoder=None, tokenizer=None, transformer=transformer, scheduler=scheduler)
    encode_prompt = pipe.encode_prompt

    def encode_prompt_without_index(*args, text_encoder_index=None, **kw):
        return encode_prompt(*args, **kw)  # diffusers 0.42.1's control pipeline passes an argument it does not take

    pipe.encode_prompt = encode_prompt_without_index
    positive, negative = text_embeds
    mask = torch.ones(1, TEXT_LEN, dtype=torch.long)
    shape = pipeline.latent_shape(WIDTH, HEIGHT, FRAMES)
    with torch.no_grad():
        out = pipe(
            prompt=None,
            prompt_embeds=positive,
            negative_prompt_embeds=negative,
            prompt_attention_mask=mask,
            negative_prompt_attention_mask=mask,
            num_frames=FRAMES,
            height=HEIGHT,
            width=WIDTH,
            num_inference_steps=STEPS,
            guidance_scale=CFG,
            latents=_noise(shape) if given_noise else None,
            generator=torch.Generator().manual_seed(SEED),
            output_type="latent",
            return_dict=False,
            **kwargs,
        )
    return out[0]


def _request(**kwargs):
    return pipeline.Request(
        width=WIDTH,
        height=HEIGHT,
        frames=FRAMES,
        steps=STEPS,
        guidance_scale=CFG,
        seed=SEED,
        scheduler="Flow",
        **kwargs,
    )


def test_text_to_video_matches_diffusers(tiny_root, text_embeds):
    import diffusers

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    ours = _ours(model_dir, text_embeds, _request())
    theirs = _theirs(diffusers.EasyAnimatePipeline, model_dir, text_embeds)
    assert ours.shape == theirs.shape == (1, 16, 2, HEIGHT // 8, WIDTH // 8)
    assert _relative_error(ours, theirs) <= REL_TOL


def reference_image_to_video(start: torch.Tensor, end: torch.Tensor | None, frames: int):
    """The reference's `get_image_to_video_latent`, written from its description (not from our code): the first start
    image tiled over every frame, start images over the first frames with mask 0 (keep), the end image over the last
    frame with mask 0; 255 (generate) elsewhere. Returns (video [1, 3, L, H, W] in [0, 1], mask [1, 1, L, H, W] in
    {0, 255})."""
    video = torch.tile(start[0][None, :, None], (1, 1, frames, 1, 1))
    mask = torch.full((1, 1, frames, *start.shape[2:]), 255.0)
    for index, image in enumerate(start):
        video[0, :, index] = image
        mask[0, :, index] = 0.0
    if end is not None:
        video[0, :, -1] = end[-1]
        mask[0, :, -1] = 0.0
    return video, mask


def test_image_to_video_tiles_the_start_image_and_keeps_the_end_frame():
    start, end = _frames(2, 1), _frames(1, 2)
    expected_video, expected_mask = reference_image_to_video(start, end, 9)
    video, mask = pipeline.image_to_video(start, end, 9)
    assert torch.equal(video, expected_video)
    assert torch.equal(mask * 255, expected_mask)
    assert torch.equal(video[0, :, 5], start[0])  # an unknown middle frame still holds the tiled start image


def test_image_to_video_with_start_and_end_image_matches_diffusers(tiny_root, text_embeds):
    import diffusers

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP"
    start, end = _frames(1, 1), _frames(1, 2)
    # both draw the initial noise and then the masked-video noise augmentation from one seeded generator
    ours = _ours(model_dir, text_embeds, _request(start_images=start, end_images=end), given_noise=False)
    video, mask = reference_image_to_video(start, end, FRAMES)
    theirs = _theirs(
        diffusers.EasyAnimateInpaintPipeline,
        model_dir,
        text_embeds,
        given_noise=False,
        video=video,
        mask_video=mask,
    )
    assert _relative_error(ours, theirs) <= REL_TOL
    # the end frame really took part (through the masked-video latent; the mask channel cannot show it)
    start_only = _ours(model_dir, text_embeds, _request(start_images=start), given_noise=False)
    assert _relative_error(start_only, theirs) > 10 * REL_TOL  # measured 6e-3 with these tiny random weights


def test_video_to_video_starts_from_the_encoded_input_video_like_diffusers(tiny_root, text_embeds, monkeypatch):
    import diffusers
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    # the original encodes the input video with the posterior mode; diffusers 0.42.1 samples it from the global RNG
    # (docs/faithfulness.md, video-to-video): the oracle follows the original
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP"
    clip = _frames(FRAMES, 6)  # [T, 3, H, W] in [0, 1]
    ours = _ours(model_dir, text_embeds, _request(input_video=clip, denoise_strength=0.5), given_noise=False)
    video = clip.permute(1, 0, 2, 3).unsqueeze(0)  # [1, 3, T, H, W]
    theirs = _theirs(
        diffusers.EasyAnimateInpaintPipeline,
        model_dir,
        text_embeds,
        given_noise=False,
        video=video,
        mask_video=torch.full((1, 1, FRAMES, HEIGHT, WIDTH), 255.0),
        strength=0.5,
    )
    assert _relative_error(ours, theirs) <= REL_TOL
    other_clip = _ours(
        model_dir, text_embeds, _request(input_video=_frames(FRAMES, 7), denoise_strength=0.5), given_noise=False
    )
    assert _relative_error(other_clip, theirs) > 100 * REL_TOL


def test_guidance_rescale_matches_diffusers_over_the_whole_loop(tiny_root, text_embeds):
    import diffusers

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh"
    ours = _ours(model_dir, text_embeds, _request(guidance_rescale=0.7))
    theirs = _theirs(diffusers.EasyAnimatePipeline, model_dir, text_embeds, guidance_rescale=0.7)
    assert _relative_error(ours, theirs) <= REL_TOL
    plain = _ours(model_dir, text_embeds, _request())
    assert _relative_error(plain, theirs) > 100 * REL_TOL


def test_guidance_rescale_equals_the_diffusers_formula():
    from diffusers.pipelines.easyanimate.pipeline_easyanimate import rescale_noise_cfg

    generator = torch.Generator().manual_seed(21)
    uncond, cond = torch.randn(2, 16, 3, 4, 6, generator=generator), torch.randn(2, 16, 3, 4, 6, generator=generator)
    cfg = uncond + 6.0 * (cond - uncond)
    expected = rescale_noise_cfg(cfg, cond, guidance_rescale=0.7)
    assert torch.allclose(pipeline.guidance(uncond, cond, 6.0, 0.7), expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(pipeline.guidance(uncond, cond, 6.0, 0.0), cfg)


def test_control_video_with_reference_image_matches_diffusers(tiny_root, text_embeds):
    import diffusers

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh-Control"
    control, reference = _frames(FRAMES, 4), _frames(1, 5)
    ours = _ours(model_dir, text_embeds, _request(control_video=control, reference_image=reference))
    theirs = _theirs(
        diffusers.EasyAnimateControlPipeline,
        model_dir,
        text_embeds,
        control_video=control.permute(1, 0, 2, 3).unsqueeze(0),
        ref_image=reference.unsqueeze(2),
    )
    assert _relative_error(ours, theirs) <= REL_TOL
    plain = _ours(model_dir, text_embeds, _request())
    assert _relative_error(plain, theirs) > 100 * REL_TOL


def test_inpaint_mask_channel_is_scaled_and_first_frame_resized_alone():
    video, mask = pipeline.image_to_video(torch.zeros(1, 3, 16, 16), torch.zeros(1, 3, 16, 16), 9)
    channel = pipeline.resize_mask(1.0 - mask, 3, 2, 2) * pipeline.VAE_SCALING_FACTOR
    # frame 0 known → 0.7125; the end frame is invisible after the trilinear 8→2 resize (docs/faithfulness.md,
    # conditioning)
    assert torch.allclose(channel[0, 0, :, 0, 0], torch.tensor([0.7125, 0.0, 0.0]))


@pytest.mark.parametrize(
    "width,height,frames,needle",
    [(50, 64, 5, "width 50"), (64, 72, 5, "height 72"), (64, 64, 6, "frames 6"), (64, 64, 0, "frames 0")],
)
def test_invalid_sizes_name_the_problem_and_nearest_valid_values(width, height, frames, needle):
    problems = pipeline.size_problems(width, height, frames)
    assert len(problems) == 1 and needle in problems[0]
    with pytest.raises(ValueError, match=needle):
        pipeline.latent_shape(width, height, frames)
