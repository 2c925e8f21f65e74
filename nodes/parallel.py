"""EasyAnimate Parallel Options: sample on several GPUs (sequence / CFG parallel) from the ComfyUI process.

An optional settings node (kijai-style) plugged into the sampler's `parallel` input; the worker processes, their
process group and the parallel forward live in models/ (models/parallel_workers.py, docs/parallel.md).
"""

from __future__ import annotations


class EasyAnimateParallelOptions:
    CATEGORY = "EasyAnimate"
    FUNCTION = "options"
    RETURN_TYPES = ("EASYANIMATE_PARALLEL",)
    RETURN_NAMES = ("parallel",)
    DESCRIPTION = (
        "Runs the sampler's transformer on several GPUs at once: one worker process per device, joined in a "
        "torch.distributed group (NCCL), each holding the weights. Video tokens are split over the devices "
        "(sequence parallel); with cfg_parallel the negative and positive prompt halves run on two device groups. "
        "Workers start on the first run and are reused; Cancel stops all of them."
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "devices": (
                    "STRING",
                    {
                        "default": "cuda:0,cuda:1",
                        "tooltip": "Comma-separated devices, one worker each (cpu,cpu for testing).",
                    },
                ),
                "sequence_parallel": (
                    "INT",
                    {
                        "default": 0,
                        "min": 0,
                        "max": 64,
                        "tooltip": "Ranks splitting the video tokens; 0 = all devices not taken by cfg_parallel.",
                    },
                ),
                "cfg_parallel": (
                    "BOOLEAN",
                    {
                        "default": False,
                        "tooltip": "Negative and positive halves on two device groups "
                        "(needs an even device count and cfg > 1).",
                    },
                ),
            }
        }

    @classmethod
    def VALIDATE_INPUTS(cls, devices, sequence_parallel, cfg_parallel):
        from ..models.parallel_workers import parse_devices

        try:
            count = len(parse_devices(devices))
        except ValueError as error:
            return str(error)
        ranks = (sequence_parallel or count // (2 if cfg_parallel else 1)) * (2 if cfg_parallel else 1)
        if ranks != count:
            return (
                f"sequence_parallel {sequence_parallel} x cfg {2 if cfg_parallel else 1} = {ranks} ranks, but "
                f"{count} devices are listed; they must match (0 = automatic)"
            )
        return True

    def options(self, devices, sequence_parallel, cfg_parallel):
        return ({"devices": devices, "sp": sequence_parallel or None, "cfg_parallel": bool(cfg_parallel)},)


NODE_CLASS_MAPPINGS = {"EasyAnimateParallelOptions": EasyAnimateParallelOptions}
NODE_DISPLAY_NAME_MAPPINGS = {"EasyAnimateParallelOptions": "EasyAnimate Parallel Options"}
