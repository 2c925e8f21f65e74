"""Node registry: every node family module contributes its own mappings."""

from . import camera, control, extend, loaders, lora, parallel, sampler, text, trajectory, vae
from .bridge import register_model_folders

register_model_folders()

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _module in (loaders, text, sampler, vae, control, camera, trajectory, extend, parallel, lora):
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)
