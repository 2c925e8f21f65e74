"""Sequence- and CFG-parallel transformer calls over torch.distributed (NCCL on GPUs, gloo on CPU).

Layout of the world (docs/parallel.md): `cfg` groups of 2 at most (negative / positive half of the CFG batch), each
split into a sequence-parallel (SP) group of `sp` ranks; rank = cfg_rank * sp + sp_rank. Every rank runs the same
pipeline (same seed, same scheduler steps); only the transformer call is split:

* video tokens are cut into contiguous shards (first N % sp ranks take one more), RoPE rows with them;
* text tokens stay replicated (small; the original order [text, video] is rebuilt inside attention);
* attention: Ulysses all-to-all from token shards to head shards when heads divide by sp, else an all-gather of
  the video K/V (every rank attends its own queries to all keys);
* the output is gathered once per call, after proj_out; the CFG halves are gathered over the CFG group;
* TeaCache's indicator change is reduced over every rank, so all ranks take the same skip decisions.

No ComfyUI import. `ParallelTransformer` is a drop-in for the transformer in models.pipeline.denoise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from einops import rearrange

from .transformer_options import NO_OPTIONS, TransformerOptions

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # q, k, v [B, heads, tokens, D]


@dataclass
class CommStats:
    """Bytes this rank sent, per collective kind (own chunk excluded), over its lifetime or since `reset`."""

    sent: dict = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.sent[kind] = self.sent.get(kind, 0) + int(nbytes)

    def reset(self) -> None:
        self.sent.clear()

    @property
    def total(self) -> int:
        return sum(self.sent.values())


@dataclass
class ParallelGroups:
    """This rank's place in the SP x CFG layout and its process groups (None where a group has one rank)."""

    rank: int
    world_size: int
    sp_size: int
    cfg_size: int
    sp_group: object = None
    cfg_group: object = None
    stats: CommStats = field(default_factory=CommStats)

    @property
    def sp_rank(self) -> int:
        return self.rank % self.sp_size

    @property
    def cfg_rank(self) -> int:
        return self.rank // self.sp_size

    def sequence_shard(self, tokens: int) -> "SequenceShard | None":
        """The transformer's hook: how this rank splits `tokens` video tokens (None: no sequence parallelism)."""
        return None if self.sp_size == 1 else SequenceShard(self, tokens)


def init_distributed(backend: str | None = None, device: torch.device | None = None) -> bool:
    """Join the process group torchrun describes (env RANK/WORLD_SIZE/MASTER_ADDR...); False when run alone."""
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return False
    if backend is None:
        backend = "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if backend == "nccl" else None)
    return True


def make_groups(sp: int | None = None, cfg_parallel: bool = False) -> ParallelGroups:
    """Split the initialised world into CFG x SP groups. `sp` None = every rank not used by CFG parallelism."""
    if not dist.is_initialized():
        if (sp or 1) != 1 or cfg_parallel:
            raise RuntimeError(
                "--sp > 1 or --cfg-parallel need several processes: start with torchrun --nproc-per-node N"
            )
        return ParallelGroups(0, 1, 1, 1)
    world, rank = dist.get_world_size(), dist.get_rank()
    cfg = 2 if cfg_parallel else 1
    if world % cfg:
        raise ValueError(f"CFG parallelism needs an even number of processes; got {world}")
    sp = world // cfg if sp is None else sp
    if sp * cfg != world:
        raise ValueError(f"sp {sp} x cfg {cfg} = {sp * cfg} ranks, but {world} processes were started; they must match")
    groups = ParallelGroups(rank, world, sp, cfg)
    # every rank must create every group, in the same order
    for c in range(cfg):
        group = dist.new_group(list(range(c * sp, (c + 1) * sp))) if sp > 1 else None
        if c == groups.cfg_rank:
            groups.sp_group = group
    for s in range(sp):
        group = dist.new_group([s, sp + s]) if cfg > 1 else None
        if s == groups.sp_rank:
            groups.cfg_group = group
    return groups


# -- collectives that count what they send ------------------------------------------------------------------------------


def _all_to_all(stats: CommStats, group, tensor: torch.Tensor, send: list[int], receive: list[int], rank: int):
    """all_to_all_single along dim 0 with (possibly uneven) split sizes."""
    out = tensor.new_empty((sum(receive), *tensor.shape[1:]))
    dist.all_to_all_single(out, tensor.contiguous(), receive, send, group=group)
    row_bytes = tensor[:1].numel() * tensor.element_size() if tensor.shape[0] else 0
    stats.add("all_to_all", (tensor.shape[0] - send[rank]) * row_bytes)
    return out


def _all_gather(stats: CommStats, group, tensor: torch.Tensor, size: int) -> list[torch.Tensor]:
    chunks = [torch.empty_like(tensor) for _ in range(size)]
    dist.all_gather(chunks, tensor.contiguous(), group=group)
    stats.add("all_gather", (size - 1) * tensor.numel() * tensor.element_size())
    return chunks


class SequenceShard:
    """One transformer call's split of N video tokens over the SP group."""

    def __init__(self, groups: ParallelGroups, tokens: int):
        self.groups, self.size, self.rank = groups, groups.sp_size, groups.sp_rank
        base, extra = divmod(tokens, self.size)
        self.counts = [base + (r < extra) for r in range(self.size)]
        self.start = sum(self.counts[: self.rank])
        self.count = self.counts[self.rank]

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return x.narrow(dim, self.start, self.count)

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's tokens along `dim` → all N tokens (padded to the largest shard for all_gather)."""
        longest = max(self.counts)
        padded = F.pad(x.movedim(dim, -1), (0, longest - self.count)).movedim(-1, dim)
        chunks = _all_gather(self.groups.stats, self.groups.sp_group, padded, self.size)
        return torch.cat([c.narrow(dim, 0, n) for c, n in zip(chunks, self.counts)], dim=dim)

    def attention(self, text_tokens: int, heads: int, inner: Attention) -> Attention:
        """The attention the blocks call on this rank's [text, video shard] q/k/v (docs/parallel.md, attention)."""
        if heads % self.size == 0:
            return lambda q, k, v: self._ulysses(q, k, v, text_tokens, inner)
        return lambda q, k, v: self._gathered_kv(q, k, v, text_tokens, inner)

    def _ulysses(self, q, k, v, text_tokens: int, inner: Attention) -> torch.Tensor:
        stats, group, size, rank = self.groups.stats, self.groups.sp_group, self.size, self.rank
        qkv = torch.stack([q, k, v])  # [3, B, H, T + n, D]
        heads = qkv.shape[2] // size
        text, video = qkv[:, :, :, :text_tokens], qkv[:, :, :, text_tokens:]
        send = rearrange(video, "s b (p h) n d -> (p n) s b h d", p=size)  # to rank p: its heads, my tokens
        received = _all_to_all(stats, group, send, [self.count] * size, self.counts, rank)  # [N, 3, B, h, D]
        video = rearrange(received, "n s b h d -> s b h n d")
        my_text = text[:, :, rank * heads : (rank + 1) * heads]  # text is replicated: no exchange
        q, k, v = torch.cat([my_text, video], dim=3)  # order [text, video], all N video tokens, my heads
        out = inner(q, k, v)  # [B, h, T + N, D]
        text_out = torch.cat(_all_gather(stats, group, out[:, :, :text_tokens], size), dim=1)  # [B, H, T, D]
        back = rearrange(out[:, :, text_tokens:], "b h n d -> n b h d")
        mine = _all_to_all(stats, group, back, self.counts, [self.count] * size, rank)  # [p * n, B, h, D]
        return torch.cat([text_out, rearrange(mine, "(p n) b h d -> b (p h) n d", p=size)], dim=2)

    def _gathered_kv(self, q, k, v, text_tokens: int, inner: Attention) -> torch.Tensor:
        kv = torch.stack([k, v])[:, :, :, text_tokens:]  # [2, B, H, n, D]
        video_k, video_v = self.gather(kv, dim=3)  # [B, H, N, D] each
        k = torch.cat([k[:, :, :text_tokens], video_k], dim=2)
        v = torch.cat([v[:, :, :text_tokens], video_v], dim=2)
        return inner(q, k, v)  # my [text, video shard] queries against every key


# -- the pipeline-facing wrapper ------------------------------------------------------------------------------------------


class AgreedInterrupt:
    """Wraps an interrupt callable so that every rank stops at the same block: the local request is OR-reduced over
    the world before anyone raises (a rank raising alone would leave the others waiting in a collective)."""

    def __init__(self, interrupt: Callable[[], None], device: torch.device):
        self.interrupt, self.device = interrupt, device  # NCCL reduces CUDA tensors only

    def __call__(self) -> None:
        error = None
        try:
            self.interrupt()
        except BaseException as raised:  # noqa: BLE001 - re-raised below once every rank knows
            error = raised
        flag = torch.tensor([0.0 if error is None else 1.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if error is not None:
            raise error
        if flag.item():
            raise InterruptedError("another parallel rank was interrupted")


def global_relative_l1(previous: torch.Tensor, current: torch.Tensor) -> float:
    """TeaCache's mean|current - previous| / mean|previous| over the tensor split across every rank (the counts
    cancel: a ratio of sums), then rank 0's value for everyone, so all ranks take the same decision."""
    sums = torch.stack([(current - previous).abs().sum(), previous.abs().sum()]).double()
    dist.all_reduce(sums)
    dist.broadcast(sums, src=0)
    return (sums[0] / sums[1]).item()


class ParallelTransformer:
    """Callable like the transformer (models.pipeline.denoise's contract); splits the CFG batch over the CFG group
    and the video tokens over the SP group, and returns the full prediction on every rank."""

    BATCHED = ("text_t5", "inpaint_latents", "control_latents", "ref_latents")

    def __init__(self, model, groups: ParallelGroups):
        self.model, self.groups = model, groups

    def __getattr__(self, name):  # compute_dtype, params, ... of the wrapped model
        return getattr(self.model, name)

    def __call__(self, latents, timestep, text, text_t5=None, *, options: TransformerOptions | None = None, **kwargs):
        groups = self.groups
        batch = latents.shape[0]
        split = groups.cfg_size == 2 and batch % 2 == 0  # batch 1 (no CFG): both CFG ranks compute it
        kwargs["text_t5"] = text_t5
        if split:
            half = lambda t: t if t is None else t.chunk(2)[groups.cfg_rank]  # noqa: E731
            latents, text = half(latents), half(text)
            timestep = torch.as_tensor(timestep)
            timestep = half(timestep) if timestep.ndim and timestep.shape[0] == batch else timestep
            kwargs.update({name: half(kwargs.get(name)) for name in self.BATCHED})
        options = NO_OPTIONS if options is None else options
        if options.teacache is not None:
            options.teacache.relative_l1 = global_relative_l1
        interrupt = options.interrupt
        if interrupt is not None and groups.world_size > 1:
            interrupt = AgreedInterrupt(interrupt, latents.device)
        options = options.replace(interrupt=interrupt, parallel=groups)
        out = self.model(latents, timestep, text, options=options, **kwargs)
        if split:
            out = torch.cat(_all_gather(groups.stats, groups.cfg_group, out, 2), dim=0)
        return out


# -- cost model (docs/parallel.md, cost model) ---------------------------------------------------------------------------


def comm_bytes_per_call(
    text_tokens: int,
    video_tokens: int,
    heads: int,
    head_dim: int,
    layers: int,
    sp: int,
    cfg_parallel: bool = False,
    cfg_batch: int = 2,
    element_bytes: int = 2,
    out_channels: int = 64,
) -> int:
    """Bytes one rank sends during one transformer call (one sampling step), as implemented above.

    Per block, Ulysses (heads % sp == 0): q/k/v all-to-all 3·b·n·(h/sp)·D·(sp-1), text output all-gather
    b·T·(h/sp)·D·(sp-1), output all-to-all back b·n·(h/sp)·D·(sp-1); fallback: K/V all-gather 2·b·h·n·D·(sp-1).
    Once per call: the output all-gather b·n·out_channels·(sp-1), and with CFG parallelism the half-batch
    prediction to the other CFG rank b·N·out_channels. b = rows of the CFG batch this rank computes, n = its
    (largest) shard of the N video tokens, out_channels = patch² x 16 latent channels."""
    batch = cfg_batch // 2 if cfg_parallel else cfg_batch
    shard = -(-video_tokens // sp)
    if sp == 1:
        per_block = 0
    elif heads % sp == 0:
        per_block = batch * (heads // sp) * head_dim * (sp - 1) * (4 * shard + text_tokens)
    else:
        per_block = 2 * batch * heads * shard * head_dim * (sp - 1)
    total = layers * per_block + batch * shard * out_channels * (sp - 1)
    if cfg_parallel:
        total += batch * video_tokens * out_channels
    return total * element_bytes
