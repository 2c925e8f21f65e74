"""The V5 text-encoder part of a LoRA (`lora_te_…` entries, for the Bert encoder) applied while prompts are encoded.

The original loader merges these entries into Bert's weights with the same multiplier as the transformer part. Here
the base weights are never written: for each text that is encoded, the entries are attached to Bert's Linears as a
delta in the forward (the same `LoraLinear` as the transformer's) and detached right after, error and Cancel
included. So the Bert model that the text-encode node loads and releases stays the base model: nothing is copied,
and nothing of the LoRA is left on it afterwards (docs/lora.md, text encoder).
"""

from __future__ import annotations

import hashlib

import torch

from .lora import loras_attached
from .text import TextEncoder


def text_lora_identity(stack) -> str:
    """A digest of the stack's text-encoder entries (content, not file name) and strengths: part of every cache key of
    the embeddings they produce, so a changed strength or file is never served from the prompt cache."""
    digest = hashlib.sha256()
    for weights, strength in stack:
        digest.update(f"{float(strength)!r};".encode())
        for key in sorted(weights.text_encoder):
            entry = weights.text_encoder[key]
            digest.update(f"{key};{entry.alpha!r};".encode())
            for tensor in (entry.down, entry.up):
                digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class LoraTextEncoder(TextEncoder):
    """A view of a loaded-on-demand TextEncoder that encodes through a stack of (LoraWeights, strength) text-encoder
    entries. It shares the base's tokenizers and its dict of loaded models (loading or releasing through either
    object is seen by both); only the cache fingerprint differs, so embeddings with and without the LoRA never mix."""

    def __init__(self, base: TextEncoder, stack, log=print):
        self.__dict__.update(base.__dict__)  # the same objects, not copies: `models` is the base's own dict
        self.text_loras = tuple(stack)
        self.said: set[str] = set()
        self.log = lambda line: line in self.said or self.said.add(line) or log(line)  # once per encoder, not per text
        self.fingerprint = f"{base.fingerprint}+lora_te:{text_lora_identity(self.text_loras)}"

    def _encode_text(self, text: str):
        with loras_attached(self.models["bert"], self.text_loras, log=self.log, part="text_encoder"):
            return super()._encode_text(text)
