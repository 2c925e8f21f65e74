"""Old import path of the checkpoint machinery, which now lives in models/loading/ (one module per concept):
headers.py (safetensors headers, errors), files.py (the weight-file finder), keys.py (original <-> diffusers key
names), detect.py (version / size / kind / layout), stream.py (the streaming loader)."""

from .loading.detect import STRUCTURAL_FIELDS, Detection, InferredTransformer, detect, infer_transformer
from .loading.files import FoundWeights, find_weights, weight_files
from .loading.headers import (
    PICKLE_SUFFIXES,
    CheckpointError,
    MissingFilesError,
    TensorInfo,
    UnsafeCheckpointError,
    pickle_refusal,
    read_headers,
    read_safetensors_header,
)
from .loading.keys import diffusers_to_original_key, key_mapper, original_to_diffusers_key
from .loading.stream import LoadReport, load_state_streaming

__all__ = [
    "PICKLE_SUFFIXES",
    "STRUCTURAL_FIELDS",
    "CheckpointError",
    "Detection",
    "FoundWeights",
    "InferredTransformer",
    "LoadReport",
    "MissingFilesError",
    "TensorInfo",
    "UnsafeCheckpointError",
    "detect",
    "diffusers_to_original_key",
    "find_weights",
    "infer_transformer",
    "key_mapper",
    "load_state_streaming",
    "original_to_diffusers_key",
    "pickle_refusal",
    "read_headers",
    "read_safetensors_header",
    "weight_files",
]
