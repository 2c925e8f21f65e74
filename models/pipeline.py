"""Conditioning assembly and the denoising loop (docs/faithfulness.md, conditioning / schedulers), shared by the sampler
node and tests.

Plain functions over our transformer, VAE and samplers; no ComfyUI import. Videos and images enter as tensors in
[0, 1] already at the sampling size (the node resizes); masks are 1 where the model generates and 0 where a pixel is
known, as the reference's mask processor produces them from its 255/0 masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .camera import CameraPath, camera_rays
from .defaults import LATENT_CHANNELS, SIDE_MULTIPLE, VAE_SCALING_FACTOR, VAE_SPATIAL_SCALE, VAE_TEMPORAL_SCALE
from .editing import keep_start_frames
from .schedulers import make_scheduler, randn
from .teacache import TeaCache, coefficients_for
from .transformer_options import TransformerOptions

# VAE scales, latent channels and the ×0.7125 latent scaling (the mask channel is scaled the same) come from the
# registry (models/defaults.py; docs/faithfulness.md, conditioning).
SPATIAL_RATIO, TEMPORAL_RATIO, SIZE_MULTIPLE = VAE_SPATIAL_SCALE, VAE_TEMPORAL_SCALE, SIDE_MULTIPLE
NOISE_AUG_STRENGTH = 0.0563  # fixed σ of the inference-time masked-video noise (docs/faithfulness.md, conditioning)
CAMERA_SCALE = 6.0  # Plücker channels are multiplied by 6, not VAE-encoded (docs/faithfulness.md, conditioning)

Progress = Callable[[int, int], None]
Interrupt = Callable[[], None]


# -- validation --------------------------------------------------------------------------------------------------------


def size_problems(width: int, height: int, frames: int) -> list[str]:
    """Human-readable problems with a requested video size; empty when valid (frames 1 or 4k+1, sides ÷16)."""
    problems = []
    for name, value in (("width", width), ("height", height)):
        if value < SIZE_MULTIPLE or value % SIZE_MULTIPLE:
            lower = max(SIZE_MULTIPLE, value // SIZE_MULTIPLE * SIZE_MULTIPLE)
            problems.append(
                f"{name} {value} must be a multiple of {SIZE_MULTIPLE} (e.g. {lower} or {lower + SIZE_MULTIPLE})"
            )
    if frames < 1 or (frames - 1) % TEMPORAL_RATIO:
        lower = max(1, (frames - 1) // TEMPORAL_RATIO * TEMPORAL_RATIO + 1)
        problems.append(
            f"frames {frames} must be 1 or 4k+1 (1, 5, 9, ..., 49); nearest valid: {lower} or {lower + TEMPORAL_RATIO}"
        )
    return problems


def latent_shape(width: int, height: int, frames: int, batch: int = 1) -> tuple[int, int, int, int, int]:
    problems = size_problems(width, height, frames)
    if problems:
        raise ValueError("; ".join(problems))
    return (batch, LATENT_CHANNELS, (frames - 1) // TEMPORAL_RATIO + 1, height // SPATIAL_RATIO, width // SPATIAL_RATIO)


# -- conditioning (docs/faithfulness.md, conditioning) ----------------------------------------------------------------


def resize_mask(mask: torch.Tensor, latent_frames: int, latent_h: int, latent_w: int) -> torch.Tensor:
    """[B, C, T, H, W] → [B, C, F, h, w]: frame 0 resized alone, frames 1.. to F-1 frames, trilinear
    (docs/faithfulness.md, conditioning).

    A single source frame (a one-pose camera path) also stands for the rest, where the original fails."""
    first = F.interpolate(mask[:, :, :1], size=(1, latent_h, latent_w), mode="trilinear", align_corners=False)
    if latent_frames == 1:
        return first
    rest = F.interpolate(
        mask[:, :, 1:] if mask.shape[2] > 1 else mask,
        size=(latent_frames - 1, latent_h, latent_w),
        mode="trilinear",
        align_corners=False,
    )
    return torch.cat([first, rest], dim=2)


def image_to_video(
    start: torch.Tensor | None, end: torch.Tensor | None, frames: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Start/end images [N, 3, H, W] in [0,1] → (video [1, 3, T, H, W], mask [1, 1, T, H, W], 1 = generate).

    Start frames fill the first N frames (the first one tiled over the clip), end frames the last ones; no start
    image means no conditioning video (pure text-to-video), as `get_image_to_video_latent` does (docs/faithfulness.md,
    conditioning)."""
    if start is None:
        return None, None
    video = start[:1].unsqueeze(2).repeat(1, 1, frames, 1, 1)
    count = min(start.shape[0], frames)
    video[:, :, :count] = start[:count].permute(1, 0, 2, 3).unsqueeze(0)
    mask = torch.ones_like(video[:, :1])
    mask[:, :, :count] = 0
    if end is not None:
        tail = min(end.shape[0], frames)
        video[:, :, frames - tail :] = end[-tail:].permute(1, 0, 2, 3).unsqueeze(0)
        mask[:, :, frames - tail :] = 0
    return video, mask


def inpaint_latents(
    vae_encode: Callable[[torch.Tensor], torch.Tensor],
    video: torch.Tensor | None,
    mask: torch.Tensor | None,
    shape: tuple[int, ...],
    generator: torch.Generator | None,
    add_noise: bool,
    noise_aug_strength: float = NOISE_AUG_STRENGTH,
) -> torch.Tensor:
    """[1 | 16] inpaint channels: (1 − mask)·0.7125 resized, and the VAE latent of the known pixels
    (docs/faithfulness.md, conditioning).

    `vae_encode` maps [B,3,T,H,W] in [-1,1] to scaled latents. Without a video or with nothing known the channels are
    zeros and the VAE is not called (T2V with an InP model). Noise augmentation draws from `generator`, so the
    caller must draw the initial latent noise first (reference order)."""
    batch, _, latent_frames, latent_h, latent_w = shape
    if video is None or mask is None or bool((mask > 0.5).all()):
        return torch.zeros(batch, 1 + LATENT_CHANNELS, latent_frames, latent_h, latent_w)
    pixels = video * 2.0 - 1.0
    masked = torch.where(mask < 0.5, pixels, torch.full_like(pixels, -1.0))  # unknown pixels → −1
    if add_noise:
        noise = torch.randn(masked.shape, generator=generator, dtype=masked.dtype) * noise_aug_strength
        masked = masked + torch.where(masked == -1, torch.zeros_like(noise), noise)
    latents = vae_encode(masked)
    mask_channel = resize_mask(1.0 - mask, latent_frames, latent_h, latent_w) * VAE_SCALING_FACTOR
    return torch.cat([mask_channel.to(latents.dtype), latents], dim=1).expand(batch, -1, -1, -1, -1)


def control_latents(
    vae_encode: Callable[[torch.Tensor], torch.Tensor],
    control_video: torch.Tensor | None,
    shape: tuple[int, ...],
    camera: torch.Tensor | None = None,
) -> torch.Tensor:
    """Control channels (docs/faithfulness.md, conditioning): VAE latent of the control video in [-1,1] (16 ch), or
    Plücker rays [1,6,T,H,W] resized like the mask and ×6 (6 ch, Control-Camera); zeros when absent."""
    batch, _, latent_frames, latent_h, latent_w = shape
    if camera is not None:
        return resize_mask(camera, latent_frames, latent_h, latent_w) * CAMERA_SCALE
    if control_video is None:
        return torch.zeros(batch, LATENT_CHANNELS, latent_frames, latent_h, latent_w)
    return vae_encode(control_video * 2.0 - 1.0)


def reference_latents(
    vae_encode: Callable[[torch.Tensor], torch.Tensor], reference: torch.Tensor | None, shape: tuple[int, ...]
) -> torch.Tensor:
    """V5.1 control reference image [1,3,H,W] in [0,1] → its latent at latent frame 0 of a zero tensor
    (docs/faithfulness.md, conditioning).

    As in the reference, a one-latent-frame video keeps the zeros."""
    batch, _, latent_frames, latent_h, latent_w = shape
    out = torch.zeros(batch, LATENT_CHANNELS, latent_frames, latent_h, latent_w)
    if reference is not None and latent_frames != 1:
        out[:, :, :1] = vae_encode(reference.unsqueeze(2) * 2.0 - 1.0)
    return out


# -- denoising (docs/faithfulness.md, schedulers) ---------------------------------------------------------------------


def guidance(uncond: torch.Tensor, cond: torch.Tensor, scale: float, rescale: float = 0.0) -> torch.Tensor:
    """CFG u + g·(c − u), with the optional guidance rescale φ (docs/faithfulness.md, guidance)."""
    pred = uncond + scale * (cond - uncond)
    if rescale > 0.0:
        dims = list(range(1, cond.ndim))
        rescaled = pred * (cond.std(dim=dims, keepdim=True) / pred.std(dim=dims, keepdim=True))
        pred = rescale * rescaled + (1.0 - rescale) * pred
    return pred


@dataclass
class Conditioning:
    """Channels concatenated after the noisy latent, each [1, C, F, h, w] (None when the model takes none)."""

    inpaint: torch.Tensor | None = None
    control: torch.Tensor | None = None
    ref: torch.Tensor | None = None


def denoise(
    transformer,
    sampler,
    text: tuple[torch.Tensor, ...],
    latents: torch.Tensor,
    conditioning: Conditioning,
    guidance_scale: float,
    guidance_rescale: float = 0.0,
    generator: torch.Generator | None = None,
    teacache=None,
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Run the sampler's steps. `text` holds the streams already in CFG order ([negative; positive] on the batch
    axis when guidance_scale > 1, else the positive ones); `latents` [1,16,F,h,w] are the initial latents."""
    do_cfg = guidance_scale > 1.0
    copies = 2 if do_cfg else 1
    dtype = latents.dtype
    device = latents.device
    cond = {
        name: None if t is None else torch.cat([t.to(device=device, dtype=dtype)] * copies)
        for name, t in (
            ("inpaint_latents", conditioning.inpaint),
            ("control_latents", conditioning.control),
            ("ref_latents", conditioning.ref),
        )
    }
    text = tuple(t.to(device=device, dtype=dtype) for t in text)
    total = sampler.num_model_calls
    for i in range(total):
        if interrupt is not None:
            interrupt()
        model_input = sampler.scale_input(torch.cat([latents] * copies), i)
        timestep = sampler.model_timestep(i, model_input.shape[0], dtype)
        options = TransformerOptions(step_index=i, teacache=teacache, interrupt=interrupt)
        text_t5 = text[1] if len(text) > 1 else None
        prediction = transformer(model_input, timestep, text[0], text_t5, **cond, options=options)
        if do_cfg:
            uncond, positive = prediction.chunk(2)
            prediction = guidance(uncond, positive, guidance_scale, guidance_rescale)
        latents = sampler.step(prediction, i, latents, generator=generator)
        if on_step is not None:
            on_step(i, latents)
        if progress is not None:
            progress(i + 1, total)
    return latents


@dataclass
class Request:
    """Everything one generation needs besides the models. Images/videos: [N or T, 3, H, W] in [0,1] at (height,
    width); `input_video` + `denoise_strength` < 1 is video-to-video; masks 1 = generate."""

    width: int
    height: int
    frames: int
    steps: int
    guidance_scale: float
    seed: int
    scheduler: str
    guidance_rescale: float = 0.0
    start_images: torch.Tensor | None = None
    end_images: torch.Tensor | None = None
    input_video: torch.Tensor | None = None
    input_mask: torch.Tensor | None = None  # [T, 1, H, W], for inpainting an input video
    denoise_strength: float = 1.0
    control_video: torch.Tensor | None = None
    camera: CameraPath | None = None  # Control-Camera models: the camera path (models/camera.py)
    reference_image: torch.Tensor | None = None  # [1, 3, H, W]
    noise_aug_strength: float = NOISE_AUG_STRENGTH


def check_request(variant, request: Request) -> None:
    """Refuse inputs the model cannot take, before anything is loaded (clear errors, not a channel mismatch)."""
    kind = variant.kind
    if kind != "inp" and (request.start_images is not None or request.end_images is not None):
        raise ValueError(
            f"start/end images need an InP (image-to-video) model; {variant.name} is a {kind} model. Load an "
            "...-InP model, or leave the images unconnected."
        )
    if kind not in ("control", "control_camera") and request.control_video is not None:
        raise ValueError(f"a control video needs a Control model; {variant.name} is a {kind} model.")
    if kind != "control_camera" and request.camera is not None:
        raise ValueError(
            f"a camera path needs a Control-Camera model (EasyAnimateV5.1-...-Control-Camera); {variant.name} is a "
            f"{kind} model. Load a Control-Camera model, or disconnect the camera input."
        )
    if kind == "control_camera" and request.camera is None:
        raise ValueError(
            f"{variant.name} is a Control-Camera model: connect a camera path (EasyAnimate Camera Preset or "
            "Camera Pose File) to the sampler's camera input."
        )
    if kind == "control_camera" and request.control_video is not None:
        raise ValueError(
            f"{variant.name} is steered by the camera input; a Control-Camera model takes no control "
            "video. Disconnect control_video, or load a Control model."
        )
    takes_reference = kind in ("control", "control_camera") and variant.add_ref_latent_in_control_model
    if request.reference_image is not None and not takes_reference:  # other kinds would ignore it silently
        raise ValueError(f"a reference image needs a V5.1 Control model; {variant.name} does not take one.")
    if request.denoise_strength < 1.0 and request.input_video is None:
        raise ValueError("denoise strength < 1 needs an input video (video-to-video); connect one or set it to 1.0")
    nothing_to_edit = request.input_video is None and request.start_images is None
    if request.input_mask is not None and (kind != "inp" or nothing_to_edit):
        raise ValueError(
            f"a mask edits an input video (or animates part of start images) with an InP model; {variant.name} is a "
            f"{kind} model{'' if kind != 'inp' else ' and neither input_video nor start_image is connected'}."
        )


def generate(
    transformer,
    vae,
    text_streams: tuple[torch.Tensor, ...],
    request: Request,
    *,
    variant,
    scheduler_config: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.bfloat16,
    initial_noise: torch.Tensor | None = None,
    teacache_threshold: float = 0.0,
    teacache_skip_start: int = 0,
    vae_kwargs: dict | None = None,
    progress: Progress | None = None,
    interrupt: Interrupt | None = None,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Assemble the conditioning for `variant` (a models.variants.Variant) and denoise; returns latents [1,16,F,h,w]
    on the CPU in float32. `text_streams` are in CFG order (see `denoise`)."""
    shape = latent_shape(request.width, request.height, request.frames)
    sampler = make_scheduler(
        request.scheduler,
        variant.version,
        request.steps,
        device=device,
        strength=request.denoise_strength,
        config=scheduler_config,
    )
    generator = torch.Generator("cpu").manual_seed(request.seed)
    noise = initial_noise if initial_noise is not None else randn(shape, generator, "cpu", torch.float32)
    kind = variant.kind

    def encode(video: torch.Tensor) -> torch.Tensor:
        return vae.encode(video, device=device, interrupt=interrupt, **(vae_kwargs or {})).cpu()

    check_request(variant, request)

    x0 = None
    if request.input_video is not None and request.denoise_strength < 1.0:
        x0 = encode(_video(request.input_video) * 2.0 - 1.0)

    conditioning = Conditioning()
    if kind == "inp":
        if request.input_video is not None or request.input_mask is not None:  # mask edit / video-to-video
            source = request.input_video if request.input_video is not None else request.start_images
            mask = request.input_mask
            if mask is None:
                mask = torch.ones(request.frames, 1, *source.shape[-2:])
            if request.start_images is not None:  # keep frames 0..K-1 (extend, or animate part of an image)
                source, mask = keep_start_frames(request.input_video, mask, request.start_images, request.frames)
            video, mask = _video(source), _video(mask)
        else:
            video, mask = image_to_video(request.start_images, request.end_images, request.frames)
        conditioning.inpaint = inpaint_latents(
            encode, video, mask, shape, generator, variant.add_noise_in_inpaint_model, request.noise_aug_strength
        )
    elif kind in ("control", "control_camera"):
        camera = None
        if request.camera is not None:
            camera = _video(camera_rays(request.camera, request.frames, request.width, request.height))
        control = None if request.control_video is None else _video(request.control_video)
        conditioning.control = control_latents(encode, control, shape, camera)
        if variant.add_ref_latent_in_control_model:
            conditioning.ref = reference_latents(encode, request.reference_image, shape)

    latents = sampler.initial_latents(noise, x0).to(device=device, dtype=dtype)
    teacache = None
    coefficients = coefficients_for(variant.version, variant.size)
    # V5 has no published coefficients (docs/faithfulness.md, TeaCache)
    if teacache_threshold > 0.0 and coefficients is not None:
        teacache = TeaCache(coefficients, teacache_threshold, sampler.num_model_calls, skip_start=teacache_skip_start)
    latents = denoise(
        transformer,
        sampler,
        text_streams,
        latents,
        conditioning,
        request.guidance_scale,
        request.guidance_rescale,
        generator,
        teacache,
        progress,
        interrupt,
        on_step,
    )
    return latents.float().cpu()


def resize_frames(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """ComfyUI IMAGE [N, H, W, 3] in [0,1] → [N, 3, height, width] (bicubic with antialiasing, like the reference's
    PIL resize), clamped to [0,1]."""
    frames = images[..., :3].permute(0, 3, 1, 2).float()
    if frames.shape[-2:] != (height, width):
        frames = F.interpolate(frames, size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return frames.clamp(0.0, 1.0)


def fit_frames(frames: torch.Tensor, count: int) -> torch.Tensor:
    """The first `count` frames; a shorter clip repeats its last frame (reference truncates to video_length)."""
    if frames.shape[0] >= count:
        return frames[:count]
    return torch.cat([frames, frames[-1:].expand(count - frames.shape[0], -1, -1, -1)])


def _video(frames: torch.Tensor) -> torch.Tensor:
    """[T, C, H, W] → [1, C, T, H, W]."""
    return frames.permute(1, 0, 2, 3).unsqueeze(0)
