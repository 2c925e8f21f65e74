"""Region-mask editing (video inpainting), the feathered composite, and extend / cross-fade join."""

import math

import numpy as np
import pytest
import torch

from models import editing, pipeline

HEIGHT, WIDTH, FRAMES = 64, 96, 5


def box_mask(frames=None, top=16, bottom=48, left=32, right=80):
    """ComfyUI MASK, 1 = regenerate, a box; [H, W] when frames is None."""
    mask = torch.zeros(HEIGHT, WIDTH)
    mask[top:bottom, left:right] = 1.0
    return mask if frames is None else mask.expand(frames, -1, -1).clone()


def linear_weights(source, target):
    weights = np.zeros((target, source))
    for out in range(target):
        position = max((out + 0.5) * source / target - 0.5, 0.0)
        low = min(int(math.floor(position)), source - 1)
        high = min(low + 1, source - 1)
        weights[out, low] += 1 - (position - low)
        weights[out, high] += position - low
    return weights


def test_mask_channel_and_masked_video_follow_the_original_rule_on_a_box_mask():
    video = torch.rand(FRAMES, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    mask = editing.prepare_mask(box_mask() * 0.8, FRAMES, HEIGHT, WIDTH)  # 0.8 binarizes to 1
    seen = {}

    def spy_encode(pixels):
        seen["pixels"] = pixels.clone()
        return torch.zeros(1, 16, 2, HEIGHT // 8, WIDTH // 8)

    shape = pipeline.latent_shape(WIDTH, HEIGHT, FRAMES)
    channels = pipeline.inpaint_latents(
        spy_encode,
        pipeline._video(video),
        pipeline._video(mask),
        shape,
        torch.Generator().manual_seed(5),
        add_noise=True,
    )
    # independent: keep = 1 − mask; known pixels in [−1, 1] plus σ·N(0,1) noise, unknown exactly −1
    keep = np.ones((FRAMES, HEIGHT, WIDTH))
    keep[:, 16:48, 32:80] = 0
    noise = torch.randn((1, 3, FRAMES, HEIGHT, WIDTH), generator=torch.Generator().manual_seed(5)).numpy()[0]
    pixels = video.permute(1, 0, 2, 3).numpy() * 2 - 1
    expected_pixels = np.where(keep[None] > 0, pixels + 0.0563 * noise, -1.0)
    np.testing.assert_allclose(seen["pixels"][0].numpy(), expected_pixels, atol=1e-6)
    # mask channel: frame 0 resized alone, frames 1..4 → 1 latent frame, trilinear, × 0.7125
    rows, cols = linear_weights(HEIGHT, HEIGHT // 8), linear_weights(WIDTH, WIDTH // 8)
    spatial = np.einsum("hy,tyx,wx->thw", rows, keep, cols)
    expected = np.concatenate([spatial[:1], np.einsum("ft,thw->fhw", linear_weights(4, 1), spatial[1:])]) * 0.7125
    np.testing.assert_allclose(channels[0, 0].numpy(), expected, atol=1e-6)
    assert channels[0, 0, 0, 0, 0] == pytest.approx(0.7125) and channels[0, 0, 0, 4, 6] == 0.0


def test_mask_edit_run_matches_diffusers_inpaint_pipeline(tiny_root):
    import diffusers
    import test_pipeline as tp

    model_dir = tiny_root / "tiny-EasyAnimateV5.1-12b-zh-InP"
    embeds = (
        torch.randn(1, tp.TEXT_LEN, 64, generator=torch.Generator().manual_seed(3)),
        torch.randn(1, tp.TEXT_LEN, 64, generator=torch.Generator().manual_seed(4)),
    )
    video = tp._frames(FRAMES, 8)
    mask = editing.prepare_mask(box_mask(), FRAMES, HEIGHT, WIDTH)
    ours = tp._ours(model_dir, embeds, tp._request(input_video=video, input_mask=mask), given_noise=False)
    theirs = tp._theirs(
        diffusers.EasyAnimateInpaintPipeline,
        model_dir,
        embeds,
        given_noise=False,
        video=video.permute(1, 0, 2, 3).unsqueeze(0),
        mask_video=mask.permute(1, 0, 2, 3).unsqueeze(0) * 255,
    )
    assert tp._relative_error(ours, theirs) <= tp.REL_TOL
    unmasked = tp._ours(model_dir, embeds, tp._request(input_video=video), given_noise=False)
    assert tp._relative_error(unmasked, theirs) > 100 * tp.REL_TOL


def test_composite_keeps_the_input_exactly_beyond_the_feather_and_the_generation_inside():
    source = torch.rand(FRAMES, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(2))
    generated = torch.rand(FRAMES, HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(3))
    mask = editing.prepare_mask(box_mask(), FRAMES, HEIGHT, WIDTH)
    feather = 6
    plan = editing.composite_plan(source.permute(0, 3, 1, 2), mask, None, FRAMES, feather)
    out = editing.apply_composite(generated, plan)
    rows, cols = torch.arange(HEIGHT)[:, None], torch.arange(WIDTH)[None, :]
    # Euclidean distance (pixel centres) from the box [16, 48) × [32, 80)
    dy = torch.clamp(torch.maximum(16 - rows, rows - 47), min=0).float()
    dx = torch.clamp(torch.maximum(32 - cols, cols - 79), min=0).float()
    distance = torch.sqrt(dy**2 + dx**2).expand(HEIGHT, WIDTH)
    beyond, inside = distance >= feather, distance == 0
    band = ~beyond & ~inside
    assert torch.equal(out[:, beyond], source[:, beyond])
    assert torch.equal(out[:, inside], generated[:, inside])
    expected_band = torch.lerp(source, generated, (1 - distance / feather).clamp(0, 1)[None, :, :, None])
    torch.testing.assert_close(out[:, band], expected_band[:, band], atol=2e-3, rtol=0)
    assert editing.apply_composite(generated, None) is generated  # composite off: the original's output


def test_feather_zero_pastes_the_input_back_outside_the_mask_with_a_hard_edge():
    mask = editing.prepare_mask(box_mask(), 1, HEIGHT, WIDTH)
    assert torch.equal(editing.feathered_weights(mask, 0), mask)


def test_mask_with_start_images_keeps_the_first_frames_whole():
    video = torch.rand(FRAMES, 3, HEIGHT, WIDTH)
    start = torch.rand(2, 3, HEIGHT, WIDTH)
    mask = editing.prepare_mask(box_mask(), FRAMES, HEIGHT, WIDTH)
    kept_video, kept_mask = editing.keep_start_frames(video, mask, start, FRAMES)
    assert torch.equal(kept_video[:2], start) and torch.equal(kept_video[2:], video[2:])
    assert kept_mask[:2].sum() == 0 and torch.equal(kept_mask[2:], mask[2:])
    still, still_mask = editing.keep_start_frames(None, mask, start[:1], FRAMES)  # animate part of one image
    assert torch.equal(still, start[:1].expand(FRAMES, -1, -1, -1)) and torch.equal(still_mask[1:], mask[1:])


def test_prepare_mask_binarizes_resizes_and_repeats_frames():
    small = torch.zeros(2, 8, 12)
    small[0, 2:6, 3:9] = 0.6
    small[1, 2:6, 3:9] = 0.4
    mask = editing.prepare_mask(small, 4, 16, 24)
    assert mask.shape == (4, 1, 16, 24) and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask[0].sum() > 0 and mask[1:].sum() == 0  # 0.4 < 0.5 is kept; the last frame repeats
    assert editing.prepare_mask(box_mask(), 3, HEIGHT, WIDTH).shape == (3, 1, HEIGHT, WIDTH)


def test_crossfade_join_blends_the_overlap_linearly_and_shows_each_moment_once():
    first, second = torch.zeros(6, 2, 2, 3), torch.ones(5, 2, 2, 3)
    joined = editing.crossfade_join(first, second, 3)
    assert joined.shape[0] == 6 + 5 - 3
    assert torch.allclose(joined[3:6, 0, 0, 0], torch.tensor([0.25, 0.5, 0.75]))
    assert torch.equal(joined[:3], first[:3]) and torch.equal(joined[6:], second[3:])
    assert torch.equal(editing.last_frames(torch.arange(7.0).view(7, 1, 1, 1), 2).flatten(), torch.tensor([5.0, 6.0]))
