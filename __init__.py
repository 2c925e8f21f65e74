"""EasyAnimate V5 / V5.1 nodes for ComfyUI.

ComfyUI imports this folder as a package. Registering the nodes must stay cheap (< 1 s): node modules import torch,
transformers, OpenCV and our models only inside the functions that run them.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
