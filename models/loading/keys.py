"""Transformer key names: the original layout (attn2.*) vs the diffusers layout (attn1.add_*_proj), and the
`rename` functions the streaming loader takes (docs/checkpoints.md, transformer keys)."""

from __future__ import annotations

import re
from typing import Callable

_ORIGINAL_TO_DIFFUSERS = {
    "to_q": "add_q_proj",
    "to_k": "add_k_proj",
    "to_v": "add_v_proj",
    "to_out.0": "to_add_out",
    "norm_q": "norm_added_q",
    "norm_k": "norm_added_k",
}
_DIFFUSERS_TO_ORIGINAL = {v: k for k, v in _ORIGINAL_TO_DIFFUSERS.items()}
_ORIGINAL_KEY = re.compile(
    r"^((?:.*\.)?transformer_blocks\.\d+\.)attn2\.(to_q|to_k|to_v|to_out\.0|norm_q|norm_k)\.(.+)$"
)
_DIFFUSERS_KEY = re.compile(
    r"^((?:.*\.)?transformer_blocks\.\d+\.)attn1\.(add_q_proj|add_k_proj|add_v_proj|to_add_out|norm_added_q|"
    r"norm_added_k)\.(.+)$"
)


def original_to_diffusers_key(key: str) -> str:
    """`transformer_blocks.i.attn2.to_q.weight` -> `transformer_blocks.i.attn1.add_q_proj.weight`; others unchanged."""
    match = _ORIGINAL_KEY.match(key)
    if not match:
        return key
    return f"{match[1]}attn1.{_ORIGINAL_TO_DIFFUSERS[match[2]]}.{match[3]}"


def diffusers_to_original_key(key: str) -> str:
    """`transformer_blocks.i.attn1.add_q_proj.weight` -> `transformer_blocks.i.attn2.to_q.weight`; others unchanged."""
    match = _DIFFUSERS_KEY.match(key)
    if not match:
        return key
    return f"{match[1]}attn2.{_DIFFUSERS_TO_ORIGINAL[match[2]]}.{match[3]}"


def key_mapper(key_format: str, key_prefix: str = "", target: str = "original") -> Callable[[str], str | None]:
    """A `rename` for load_state_streaming: strip `key_prefix` (keys without it are skipped: they belong to other
    models in an all-in-one file) and convert `key_format` key names to `target` ("original" | "diffusers")."""
    if {key_format, target} - {"original", "diffusers"}:
        raise ValueError(f"key formats are 'original' or 'diffusers', got {key_format!r} -> {target!r}")
    convert = {
        ("diffusers", "original"): diffusers_to_original_key,
        ("original", "diffusers"): original_to_diffusers_key,
    }.get((key_format, target), lambda key: key)

    def rename(key: str) -> str | None:
        if not key.startswith(key_prefix):
            return None
        return convert(key[len(key_prefix) :])

    return rename
