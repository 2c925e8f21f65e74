"""Region-mask editing and longer clips: mask preparation, the pixel-space composite, extend and cross-fade join.

Masks are 1 where the model generates. The composite (docs/editing.md) puts the input's pixels back outside the
mask with a feathered edge; without it the output is exactly the original pipeline's, where even the kept region
is re-rendered by the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_THRESHOLD = 0.5  # the original's mask processor binarizes at 0.5 (1 = generate)


def prepare_mask(mask: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """ComfyUI MASK [T, H', W'] or [H', W'] → binary [frames, 1, height, width] (1 = generate).

    One mask frame applies to every frame; a shorter mask repeats its last frame, a longer one is cut."""
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    if mask.ndim != 3:
        raise ValueError(f"a mask must be [frames, height, width] or [height, width]; got shape {list(mask.shape)}")
    mask = mask.float()[:frames]
    if mask.shape[0] < frames:
        mask = torch.cat([mask, mask[-1:].expand(frames - mask.shape[0], -1, -1)])
    mask = mask.unsqueeze(1)
    if mask.shape[-2:] != (height, width):
        mask = F.interpolate(mask, size=(height, width), mode="bilinear", align_corners=False)
    return (mask > MASK_THRESHOLD).float()


def keep_start_frames(
    video: torch.Tensor | None, mask: torch.Tensor, start: torch.Tensor | None, frames: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine a mask edit with start images. video [T, 3, H, W] (None: the first start image held still), mask
    [T, 1, H, W], start [K, 3, H, W] → frames 0..K-1 are the start images and fully kept (mask 0)."""
    if video is None:
        if start is None:
            raise ValueError("a mask needs an input video or start images to edit")
        video = start[:1].expand(frames, -1, -1, -1)
    video, mask = video.clone(), mask.clone()
    if start is not None:
        count = min(start.shape[0], frames)
        video[:count] = start[:count]
        mask[:count] = 0.0
    return video, mask


def feathered_weights(mask: torch.Tensor, feather: int) -> torch.Tensor:
    """Binary mask [T, 1, H, W] → generated-pixel weight: 1 inside the mask, falling linearly to 0 at `feather`
    pixels (Euclidean) outside it, exactly 0 beyond."""
    if feather <= 0:
        return mask.clone()
    import cv2
    import numpy as np

    weights = []
    for frame in mask[:, 0].numpy():
        outside = (frame < 0.5).astype(np.uint8)
        distance = cv2.distanceTransform(outside, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)  # 0 inside the mask
        weights.append(np.clip(1.0 - distance / float(feather), 0.0, 1.0))
    return torch.from_numpy(np.stack(weights)).float().unsqueeze(1)


def composite(generated: torch.Tensor, source: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """IMAGE [T, H, W, 3] generated and source → source + w·(generated − source); w = 0 gives the source
    exactly."""
    count = min(generated.shape[0], source.shape[0], weights.shape[0])
    out = generated.clone()
    w = weights[:count].permute(0, 2, 3, 1).to(generated.dtype)  # [T, H, W, 1]
    out[:count] = torch.lerp(source[:count].to(generated.dtype), generated[:count], w)
    return out


def last_frames(images: torch.Tensor, count: int) -> torch.Tensor:
    """The last `count` frames of IMAGE [T, H, W, 3], to start the next clip with."""
    if count < 1:
        raise ValueError("take at least one frame")
    return images[-count:].clone()


def crossfade_join(first: torch.Tensor, second: torch.Tensor, overlap: int) -> torch.Tensor:
    """Join two IMAGE clips whose `overlap` frames show the same moment (the second was generated from the first's
    last frames): the overlap fades linearly from the first to the second, weights k/(overlap+1), k = 1..overlap."""
    if first.shape[1:] != second.shape[1:]:
        raise ValueError(f"clips differ in size: {list(first.shape[1:3])} vs {list(second.shape[1:3])}")
    overlap = max(0, min(overlap, first.shape[0], second.shape[0]))
    if overlap == 0:
        return torch.cat([first, second])
    fade = torch.arange(1, overlap + 1, dtype=first.dtype) / (overlap + 1)
    blended = torch.lerp(first[-overlap:], second[:overlap].to(first.dtype), fade.view(-1, 1, 1, 1))
    return torch.cat([first[:-overlap], blended, second[overlap:].to(first.dtype)])


def composite_plan(
    video: torch.Tensor | None, mask: torch.Tensor, start: torch.Tensor | None, frames: int, feather: int
) -> dict:
    """What VAE Decode needs to paste the kept pixels back: source IMAGE [T, H, W, 3] (start frames included) and
    the generated-pixel weights [T, 1, H, W]."""
    source, mask = keep_start_frames(video, mask, start, frames)
    return {"source": source.permute(0, 2, 3, 1).contiguous(), "weights": feathered_weights(mask, feather)}


def apply_composite(images: torch.Tensor, plan: dict | None) -> torch.Tensor:
    """Decoded IMAGE [T, H, W, 3] with a sampler's composite plan applied (unchanged without one)."""
    if not plan:
        return images
    if plan["source"].shape[1:3] != images.shape[1:3]:
        raise ValueError(
            f"decoded size {list(images.shape[1:3])} differs from the edited video's {list(plan['source'].shape[1:3])}"
        )
    return composite(images, plan["source"], plan["weights"])
