"""EasyAnimate Sampler: text-, image-, video- and control-to-video on one pipeline (models/pipeline.py)."""

from __future__ import annotations

import logging

from ..models.defaults import (
    AUTO_SCHEDULER,
    DEFAULT_FPS,
    DEFAULT_FRAMES,
    DEFAULT_GUIDANCE,
    DEFAULT_SCHEDULER,
    DEFAULT_SEED,
    DEFAULT_STEPS,
    DEFAULT_TEACACHE_THRESHOLD,
    MAX_FRAMES,
    MAX_GUIDANCE,
    MAX_STEPS,
    SCHEDULER_CHOICES,
    SEED_MAX,
    VERSIONS,
)
from .bridge import Progress, check_interrupt, free_memory, free_vram, hold_on_device, is_out_of_memory, torch_device
from .widgets import size_inputs

SCHEDULERS = list(SCHEDULER_CHOICES)
AUTO_TOOLTIP = "auto: " + ", ".join(f"{DEFAULT_SCHEDULER[v]} for {v.upper()}" for v in reversed(VERSIONS))


def _latent_preview(latents):
    """A cheap RGB look at the middle latent frame (first three channels), for the progress bar."""
    import numpy as np
    from PIL import Image

    frame = latents[0, :3, latents.shape[2] // 2].float().clamp(-2.0, 2.0) / 4.0 + 0.5
    pixels = (frame.permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
    image = Image.fromarray(pixels).resize((pixels.shape[1] * 8, pixels.shape[0] * 8), Image.NEAREST)
    return ("JPEG", image, 512)


def _text_streams(embeddings, do_cfg: bool):
    if do_cfg:
        return tuple(embeddings.guidance_batch(i) for i in range(len(embeddings.streams)))
    return tuple(embeddings.positive)


class EasyAnimateVideoSampler:
    CATEGORY = "EasyAnimate"
    FUNCTION = "sample"
    RETURN_TYPES = ("EASYANIMATE_LATENT",)
    RETURN_NAMES = ("latents",)
    DESCRIPTION = (
        "Generates a video latent. Text-to-video with any model; connect start_image (and end_image) for an InP "
        "model, input_video + denoise_strength < 1 for video-to-video, control_video (+ reference_image for V5.1) "
        "for a Control model. Frames must be 1 or 4k+1, width and height multiples of 16."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("EASYANIMATE_MODEL",),
                "embeddings": ("EASYANIMATE_EMBEDS",),
                **size_inputs(f"1 or 4k+1 up to {MAX_FRAMES}; {DEFAULT_FRAMES} trained"),
                "steps": ("INT", {"default": DEFAULT_STEPS, "min": 1, "max": MAX_STEPS}),
                "cfg": (
                    "FLOAT",
                    {"default": DEFAULT_GUIDANCE, "min": 0.0, "max": MAX_GUIDANCE, "step": 0.1, "round": 0.01},
                ),
                "seed": ("INT", {"default": DEFAULT_SEED, "min": 0, "max": SEED_MAX, "control_after_generate": True}),
                "scheduler": (SCHEDULERS, {"default": AUTO_SCHEDULER, "tooltip": AUTO_TOOLTIP}),
                "teacache_threshold": (
                    "FLOAT",
                    {
                        "default": DEFAULT_TEACACHE_THRESHOLD,
                        "min": 0.0,
                        "max": 1.0,
                        "step": 0.005,
                        "tooltip": "TeaCache: skip steps whose input barely changed (0 = off; V5.1 only).",
                    },
                ),
                "teacache_skip_start": (
                    "INT",
                    {"default": 0, "min": 0, "max": 200, "tooltip": "Always compute this many first steps."},
                ),
            },
            "optional": {
                "start_image": ("IMAGE", {"tooltip": "InP models: first frame(s)."}),
                "end_image": ("IMAGE", {"tooltip": "InP models: last frame(s)."}),
                "input_video": ("IMAGE", {"tooltip": "Video-to-video source (use with denoise_strength < 1)."}),
                "denoise_strength": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01}),
                "control_video": ("IMAGE", {"tooltip": "Control models: pose/canny/depth... frames."}),
                "reference_image": ("IMAGE", {"tooltip": "V5.1 Control models: appearance reference."}),
                "guidance_rescale": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}),
                # issue-15: camera paths and region-mask editing (appended; never reorder)
                "camera": ("EASYANIMATE_CAMERA", {"tooltip": "Control-Camera models: a camera move or pose file."}),
                "mask": ("MASK", {"tooltip": "InP models with input_video (or start_image): 1 = regenerate."}),
                "mask_composite": (
                    "BOOLEAN",
                    {
                        "default": True,
                        "tooltip": "Mask edits: paste the input back outside the mask (off = the "
                        "original's output, where the model re-renders everything).",
                    },
                ),
                "mask_feather": (
                    "INT",
                    {"default": 8, "min": 0, "max": 256, "tooltip": "Mask edits: width in pixels of the blended edge."},
                ),
                "parallel": ("EASYANIMATE_PARALLEL", {"tooltip": "EasyAnimate Parallel Options: several GPUs."}),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, frames):
        """frames only: ComfyUI reports this message once per input named here, and skips its own min/max for them
        (width and height keep ComfyUI's bounds; their multiple-of-16 rule is checked first thing in `sample`)."""
        from ..models.preflight import frames_problem

        return True if frames is None else (frames_problem(frames) or True)

    def sample(
        self,
        model,
        embeddings,
        width,
        height,
        frames,
        steps,
        cfg,
        seed,
        scheduler,
        teacache_threshold,
        teacache_skip_start,
        start_image=None,
        end_image=None,
        input_video=None,
        denoise_strength=1.0,
        control_video=None,
        reference_image=None,
        guidance_rescale=0.0,
        camera=None,
        mask=None,
        mask_composite=True,
        mask_feather=8,
        parallel=None,
    ):
        from ..models import pipeline
        from ..models.frames import fit_clip_length  # clips of any length (VHS): docs/compatibility.md, clip length
        from ..models.preflight import input_problems
        from ..models.runplan import plan_run

        problems = input_problems(width, height, frames)  # before any worker process starts
        if problems:
            raise ValueError("; ".join(problems.values()))
        if parallel is not None:  # the transformer runs in worker processes (nodes/parallel.py)
            from ..models.parallel_workers import ParallelModel

            model = ParallelModel(model, parallel["devices"], parallel["sp"], parallel["cfg_parallel"])
        clips = {"input_video": input_video, "control_video": control_video}
        frames, notes = fit_clip_length(frames, {k: len(v) for k, v in clips.items() if v is not None})
        for note in notes:  # logging, not print: ComfyUI's stdout wrapper holds prints back until its buffer fills
            logging.getLogger("EasyAnimate").info(f"[EasyAnimate Sampler] {note}")

        def frames_of(images, count=None):
            if images is None:
                return None
            resized = pipeline.resize_frames(images, height, width)
            return resized if count is None else pipeline.fit_frames(resized, count)

        request = pipeline.Request(
            width=width,
            height=height,
            frames=frames,
            steps=steps,
            guidance_scale=cfg,
            seed=seed,
            scheduler=scheduler,
            guidance_rescale=guidance_rescale,
            start_images=frames_of(start_image),
            end_images=frames_of(end_image),
            input_video=frames_of(input_video, frames),
            denoise_strength=denoise_strength,
            control_video=frames_of(control_video, frames),
            reference_image=None if reference_image is None else frames_of(reference_image)[:1],
            camera=camera,
        )
        if mask is not None:
            from ..models.editing import prepare_mask

            request.input_mask = prepare_mask(mask, frames, height, width)
        # Validated and priced before loading: a wrong input or a request that cannot fit is refused in seconds.
        run = plan_run(model, request, embeddings.version, torch_device(), free_vram)
        variant, device = run.variant, run.device
        progress = Progress(steps)
        latest = {}

        def report(done, total):
            preview = _latent_preview(latest["latents"]) if progress.active and "latents" in latest else None
            progress.callback(done, total, preview)

        try:
            transformer = run.load_transformer(interrupt=check_interrupt)
            hold_on_device(model, "transformer", run.residency(transformer), device)
            run.recheck(free_vram(device))
            with model.placement(transformer, device):
                latents = pipeline.generate(
                    transformer,
                    model.vae(device=device),
                    _text_streams(embeddings, run.cfg),
                    run.request,
                    variant=variant,
                    scheduler_config=model.scheduler_config(),
                    device=device,
                    dtype=model.dtype,
                    teacache_threshold=teacache_threshold,
                    teacache_skip_start=teacache_skip_start,
                    interrupt=check_interrupt,
                    on_step=lambda i, x: latest.__setitem__("latents", x),
                    progress=report,
                )
        except Exception as error:
            if not is_out_of_memory(error):
                raise
            latest.clear()
            error.__traceback__ = None  # its frames hold the failed step's tensors: drop them before freeing
            free_memory()
            raise RuntimeError(run.oom_message()) from None
        finally:
            free_memory()
        result = {"samples": latents, "version": variant.version, "model": model.path.name, "fps": DEFAULT_FPS}
        if mask is not None and mask_composite:
            from ..models.editing import composite_plan

            result["composite"] = composite_plan(  # applied by VAE Decode
                request.input_video, request.input_mask, request.start_images, frames, mask_feather
            )
        return (result,)


NODE_CLASS_MAPPINGS = {"EasyAnimateVideoSampler": EasyAnimateVideoSampler}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimateVideoSampler": "EasyAnimate Sampler"}
