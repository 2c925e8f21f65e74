"""EasyAnimate VAE Decode / Encode: latents ↔ ComfyUI IMAGE batches [T, H, W, 3] in [0, 1] on the CPU."""

from __future__ import annotations

from ..models.defaults import DEFAULT_FPS
from .bridge import Progress, check_interrupt, free_memory, free_vram, is_out_of_memory, torch_device

FPS = DEFAULT_FPS  # the rate the latents carry to the fps output (docs/faithfulness.md, conditioning)
TILE_TOOLTIP = "Spatial tile size in pixels (0 = automatic from free memory). Smaller tiles use less memory."


def _run_vae(model, method: str, tensor, tile_size: int):
    """vae.encode / vae.decode on ComfyUI's device, tiles from the memory plan's budget (or free VRAM), with
    progress, cancel, memory released afterwards and an actionable message on out-of-memory."""
    from ..models.runplan import vae_oom_message, vae_placement, vae_tile_budget

    device = torch_device()
    vae = model.vae(device=device)
    budget = None if tile_size else vae_tile_budget(model, free_vram(device))
    progress = Progress(1)
    try:
        with vae_placement(model, vae, device):
            return getattr(vae, method)(
                tensor,
                tile_size=tile_size or None,
                memory_budget=budget,
                device=device,
                progress=progress.callback,
                interrupt=check_interrupt,
            )
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        free_memory()
        raise RuntimeError(vae_oom_message(model, method, tuple(tensor.shape))) from None
    finally:
        free_memory()


def check_latents_match(model, latents) -> None:
    """Latents remember the model version that made them; another version's VAE would decode them to wrong colours
    without any error, so it is refused."""
    version = latents.get("version") if isinstance(latents, dict) else None
    if version is not None and version != model.version:
        source = latents.get("model") or f"an EasyAnimate {version} model"
        raise ValueError(
            f"these latents come from {source} ({version}), but this VAE Decode uses {model.path.name} "
            f"({model.version}): their VAEs differ. Connect the model that sampled the latents to VAE Decode."
        )


class EasyAnimateVAEDecode:
    CATEGORY = "EasyAnimate"
    FUNCTION = "decode"
    RETURN_TYPES = ("IMAGE", "INT", "FLOAT")
    RETURN_NAMES = ("images", "frame_count", "fps")
    DESCRIPTION = (
        "Decodes EasyAnimate latents to frames, chunk by chunk and in tiles, so memory does not grow with video "
        "length. Connect images to Video Combine (VideoHelperSuite) or Create Video with the fps output."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": ("EASYANIMATE_MODEL",), "latents": ("EASYANIMATE_LATENT",)},
            "optional": {
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16, "tooltip": TILE_TOOLTIP})
            },
        }

    def decode(self, model, latents, tile_size=0):
        check_latents_match(model, latents)
        video = _run_vae(model, "decode", latents["samples"], tile_size)
        images = video[0].permute(1, 2, 3, 0).float().cpu().contiguous()  # [3,T,H,W] → [T,H,W,3]
        if latents.get("composite"):  # issue-15: a mask edit pastes the kept pixels back
            from ..models.editing import apply_composite

            images = apply_composite(images, latents["composite"])
        return (images, images.shape[0], float(latents.get("fps", FPS)))


class EasyAnimateVAEEncode:
    CATEGORY = "EasyAnimate"
    FUNCTION = "encode"
    RETURN_TYPES = ("EASYANIMATE_LATENT",)
    RETURN_NAMES = ("latents",)
    DESCRIPTION = "Encodes frames (1 or 4k+1 of them, sides divisible by 8) into EasyAnimate latents."

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"model": ("EASYANIMATE_MODEL",), "images": ("IMAGE",)},
            "optional": {
                "tile_size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16, "tooltip": TILE_TOOLTIP})
            },
        }

    def encode(self, model, images, tile_size=0):
        video = images[..., :3].permute(3, 0, 1, 2).unsqueeze(0).float() * 2.0 - 1.0  # [1,3,T,H,W] in [-1,1]
        samples = _run_vae(model, "encode", video, tile_size)
        return ({"samples": samples.cpu(), "version": model.version, "model": model.path.name, "fps": FPS},)


NODE_CLASS_MAPPINGS = {"EasyAnimateVAEDecode": EasyAnimateVAEDecode, "EasyAnimateVAEEncode": EasyAnimateVAEEncode}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EasyAnimateVAEDecode": "EasyAnimate VAE Decode",
    "EasyAnimateVAEEncode": "EasyAnimate VAE Encode",
}
