"""Sequence parallelism for PSA over torch.distributed: Ulysses (DeepSpeed-Ulysses) all-to-alls.

    out = psa.distributed.ulysses_attention(q, k, v)       # each rank: its shard of the sequence

Every rank of the group holds a contiguous shard of the sequence, in rank order, with all heads:
q (B, Hq, L_r, D), k and v (B, Hkv, L_r, D). An all-to-all trades the sequence split for a head
split, so that rank r holds the whole sequence for heads [r Hq/W, (r+1) Hq/W) of q and
[r Hkv/W, (r+1) Hkv/W) of k and v (W ranks); PSA plans and runs on the whole sequence there, and
the reverse all-to-all returns each rank its shard of the output with all heads. The estimator's
random draws are keyed by the global head (Config.head_offset), so every rank computes exactly the
plan a single process computes on the gathered tensors, and the output is that process's output.

Shards may have different lengths (L_r = 0 too): the ranks exchange them, or the caller passes
them. Hq and Hkv must be divisible by W. The sequence is attended as it is gathered: a token order
(Gilbert curve) or text tokens that the plan must keep full are the caller's business, applied to
the gathered sequence (psa.integrations.diffusers does so between sequence_to_heads and
heads_to_sequence).

sequence_to_heads and heads_to_sequence are the two all-to-alls on their own, with autograd (the
backward of one is the other), for callers that work on the gathered sequence themselves. The
collectives are torch.distributed's: NCCL for CUDA tensors, gloo for CPU tensors.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Union

import torch
import torch.distributed as dist

from psa.config import Config, Preset
from psa.functional import _check_qkv, _effective_scale, _flag, _resolve, attention

__all__ = ["heads_to_sequence", "sequence_to_heads", "shard_lengths", "ulysses_attention"]


def _group_rank_world(group):
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("psa.distributed needs an initialised torch.distributed process group: "
                           "call torch.distributed.init_process_group() first (torchrun sets up "
                           "its environment)")
    rank = dist.get_rank(group)
    if rank < 0:
        raise ValueError("this process is not a member of `group`")
    return rank, dist.get_world_size(group)


def shard_lengths(seq_len: int, world: int) -> List[int]:
    """Lengths of the contiguous shards torch.tensor_split(x, world) makes of seq_len tokens: the
    first seq_len % world shards have one token more. This is how diffusers' context parallelism
    splits a sequence (the equal split when world divides seq_len)."""
    seq_len, world = int(seq_len), int(world)
    if seq_len < 0 or world < 1:
        raise ValueError(f"shard_lengths needs seq_len >= 0 and world >= 1, got {seq_len}, {world}")
    base, extra = divmod(seq_len, world)
    return [base + (1 if r < extra else 0) for r in range(world)]


def _as_lengths(lens, world: int) -> List[int]:
    try:
        lens = [int(n) for n in lens]
    except (TypeError, ValueError):
        raise ValueError(f"shard_lens must be a sequence of {world} ints, got {lens!r}") from None
    if len(lens) != world or min(lens) < 0:
        raise ValueError(f"shard_lens must hold {world} lengths >= 0 (one per rank of the group), "
                         f"got {lens}")
    return lens


def _check_local(lens: List[int], rank: int, local: int) -> List[int]:
    if lens[rank] != local:
        raise ValueError(f"shard_lens[{rank}] = {lens[rank]} but this rank's shard has {local} "
                         "tokens")
    return lens


def _all_gather_ints(values: List[int], like: torch.Tensor, group, world: int) -> List[List[int]]:
    """Every rank's `values` (the same count on every rank), in rank order. On the CPU when the
    group has a CPU backend (gloo), else on like's device, where reading the result back waits
    for the device."""
    backend = str(dist.get_backend(group))
    on_cpu = not like.is_cuda or "cpu" in backend or backend == "gloo"
    mine = torch.tensor(values, dtype=torch.int64,
                        device=torch.device("cpu") if on_cpu else like.device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    return torch.stack(every).cpu().tolist()


def _exchange_lengths(q, k, group, world: int) -> List[int]:
    """Every rank's shard length, with a check that B, Hq, Hkv and D agree across the ranks."""
    batch, heads_q, seq, dim = q.shape
    table = _all_gather_ints([seq, batch, heads_q, k.shape[1], dim], q, group, world)
    if len({tuple(row[1:]) for row in table}) != 1:
        described = "; ".join(f"rank {r}: (B, Hq, Hkv, D) = {tuple(row[1:])}"
                              for r, row in enumerate(table))
        raise ValueError("ulysses_attention needs the same batch, head counts and head dim on "
                         f"every rank, got {described}")
    return [row[0] for row in table]


def _receive_buffer(like: torch.Tensor, shape) -> torch.Tensor:
    # Every element is written by the all-to-all (the tests fill it with NaN first to check so).
    return like.new_empty(shape)


def _all_to_all(output, inputs, output_split_sizes, input_split_sizes, group):
    dist.all_to_all_single(output, inputs, output_split_sizes=output_split_sizes,
                           input_split_sizes=input_split_sizes, group=group)


def _seq_to_heads(x, lens: List[int], rank: int, group):
    # x (B, H, L_r, D), any strides -> (B, H/W, L, D), a view of an (L, B, H/W, D) buffer (for
    # B = 1 the (L, H, D) layout of a model's projections).
    world = len(lens)
    batch, heads, local, dim = x.shape
    part = heads // world
    # (W, L_r, B, H/W, D): the block for rank j first, in the row order the receiver stacks.
    send = x.reshape(batch, world, part, local, dim).permute(1, 3, 0, 2, 4).contiguous()
    recv = _receive_buffer(x, (sum(lens), batch, part, dim))
    _all_to_all(recv, send.view(world * local, batch, part, dim), lens, [local] * world, group)
    return recv.permute(1, 2, 0, 3)


def _heads_to_seq(y, lens: List[int], rank: int, group):
    # y (B, H/W, L, D), any strides -> (B, H, L_r, D), a view of a (B, L_r, H, D) buffer.
    world = len(lens)
    batch, part, _, dim = y.shape
    local = lens[rank]
    send = y.permute(2, 0, 1, 3).contiguous()  # (L, B, H/W, D): rank j's rows are contiguous
    recv = _receive_buffer(y, (world, local, batch, part, dim))  # from rank i: its heads, my rows
    _all_to_all(recv.view(world * local, batch, part, dim), send, [local] * world, lens, group)
    return recv.permute(2, 1, 0, 3, 4).reshape(batch, local, world * part, dim).transpose(1, 2)


class _SequenceToHeads(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, lens, rank, group):
        ctx.args = (lens, rank, group)
        return _seq_to_heads(x, lens, rank, group)

    @staticmethod
    def backward(ctx, grad):
        return _heads_to_seq(grad, *ctx.args), None, None, None


class _HeadsToSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y, lens, rank, group):
        ctx.args = (lens, rank, group)
        return _heads_to_seq(y, lens, rank, group)

    @staticmethod
    def backward(ctx, grad):
        return _seq_to_heads(grad, *ctx.args), None, None, None


class _GatherHeads(torch.autograd.Function):
    """(B, H/W, T, D) on every rank -> (B, H, T, D), rank r's block at heads [r H/W, (r+1) H/W).
    For tokens every rank holds in full (text tokens kept on every rank): their downstream copies
    are all used, so the gradient of a rank's block is the sum of every rank's gradient for it."""

    @staticmethod
    def forward(ctx, x, rank, world, group):
        ctx.args = (rank, world, group)
        parts = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=1)

    @staticmethod
    def backward(ctx, grad):
        rank, world, group = ctx.args
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad, group=group)
        part = grad.shape[1] // world
        return grad[:, rank * part:(rank + 1) * part], None, None, None


def _check_tensor(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        what = f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a torch.Tensor of rank 4, got {what}")


def sequence_to_heads(x: torch.Tensor, shard_lens: Sequence[int], *, group=None) -> torch.Tensor:
    """The first all-to-all of Ulysses: this rank's shard x (B, H, L_r, D) of a sequence split in
    rank order to the whole sequence (B, H/W, L, D) for heads [r H/W, (r+1) H/W).

    shard_lens: every rank's L_r, in rank order (the same list on every rank). Differentiable: the
    backward is heads_to_sequence. The result is a view of an (L, B, H/W, D) buffer."""
    _check_tensor("x", x)
    rank, world = _group_rank_world(group)
    if x.shape[1] % world:
        raise ValueError(f"x has {x.shape[1]} heads, which the {world} ranks of the group cannot "
                         "share: the head count must be divisible by the group size")
    lens = _check_local(_as_lengths(shard_lens, world), rank, x.shape[2])
    return _SequenceToHeads.apply(x, lens, rank, group)


def heads_to_sequence(y: torch.Tensor, shard_lens: Sequence[int], *, group=None) -> torch.Tensor:
    """The reverse all-to-all: y (B, H/W, L, D), the whole sequence for this rank's heads, to this
    rank's shard (B, H, L_r, D) with all heads. The result is a view of a (B, L_r, H, D) buffer.
    Differentiable: the backward is sequence_to_heads."""
    _check_tensor("y", y)
    rank, world = _group_rank_world(group)
    lens = _as_lengths(shard_lens, world)
    if y.shape[2] != sum(lens):
        raise ValueError(f"y has {y.shape[2]} tokens but shard_lens {lens} add up to {sum(lens)}")
    return _HeadsToSequence.apply(y, lens, rank, group)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, group=None,
                      config: Optional[Config] = None, preset: Union[None, str, Preset] = None,
                      causal: bool = False, scale: Optional[float] = None,
                      shard_lens: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Pyramid Sparse Attention of a sequence split over the ranks of `group` (default: the world).

    q (B, Hq, L_r, D), k and v (B, Hkv, L_r, D): this rank's contiguous shard of the sequence, the
    shards in rank order. Returns this rank's shard of the output, (B, Hq, L_r, D), equal to the
    same rows of psa.attention(q, k, v, ...) on the gathered tensors: same plan, same values.
    config, preset, causal and scale are psa.attention's. Autograd flows through the all-to-alls.

    Hq and Hkv must be divisible by the group size W (ValueError otherwise). Shards may have
    different lengths: shard_lens gives them (every rank's L_r in rank order, the same list on
    every rank); None exchanges them, with a check that B, Hq, Hkv and D agree across the ranks,
    in one small all_gather (on the CPU when the group has a gloo backend, else on the device,
    whose result the host then waits for).
    """
    _check_qkv(q, k, v)
    if not isinstance(q, torch.Tensor):
        raise ValueError("ulysses_attention takes torch tensors, got numpy arrays")
    batch, heads_q, local, dim = q.shape
    if (k.shape[0], k.shape[2], k.shape[3]) != (batch, local, dim) or v.shape != k.shape:
        raise ValueError("k and v must have shape (B, Hkv, L_r, D) with q's B, L_r and D: q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    # Argument errors before any collective, so that every rank raises at the same point.
    cfg, dense = _resolve(config, preset)
    causal = _flag("causal", causal)
    _effective_scale(scale, cfg)
    rank, world = _group_rank_world(group)
    heads_kv = k.shape[1]
    if heads_q % world or heads_kv % world:
        common = math.gcd(heads_q, heads_kv)
        raise ValueError(
            f"ulysses_attention splits the heads over the {world} ranks of the group: q has "
            f"{heads_q} heads and k, v have {heads_kv}; both must be divisible by the group size "
            f"(use a group whose size divides {common})")
    if world > 1:
        if shard_lens is None:
            lens = _exchange_lengths(q, k, group, world)
        else:
            lens = _check_local(_as_lengths(shard_lens, world), rank, local)
        q, k, v = (_SequenceToHeads.apply(t, lens, rank, group) for t in (q, k, v))
    if dense:
        out = attention(q, k, v, preset=preset, causal=causal, scale=scale)
    else:
        # Local head h is global head h + offset: the estimator draws what one process draws.
        shifted = cfg.replace(head_offset=cfg.head_offset + rank * (heads_q // world))
        out = attention(q, k, v, config=shifted, causal=causal, scale=scale)
    return _HeadsToSequence.apply(out, lens, rank, group) if world > 1 else out
