"""An independent PSA reference in plain PyTorch (float64), written from SPEC.md alone.

It shares no code with the C++ library: a plan's level map is expanded to a dense mask over the
concatenated pyramid [K, K_2, K_4, K_8] and attention is an ordinary masked softmax, so that bugs
the C++ reference and the kernels might share (pooling of a ragged tail, the causal rule for pooled
tokens, the ln(c) bias, GQA head mapping) show up as differences. Gradients come from autograd
through the same expression.
"""

from __future__ import annotations

import math
from typing import List, Tuple

import torch

FACTORS = (1, 2, 4, 8)


def pool(x: torch.Tensor, factor: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Mean of the real tokens [p*f, min((p+1)*f, L)) of x (B, H, L, D) and their counts c_p."""
    length = x.shape[2]
    pooled_len = math.ceil(length / factor)
    pad = pooled_len * factor - length
    padded = torch.nn.functional.pad(x, (0, 0, 0, pad))
    sums = padded.reshape(x.shape[0], x.shape[1], pooled_len, factor, x.shape[3]).sum(3)
    starts = torch.arange(pooled_len, dtype=torch.float64) * factor
    counts = torch.clamp(length - starts, max=factor)
    return sums / counts.to(x.dtype)[None, None, :, None], counts


def units(seq_k: int, block_n: int):
    """For every unit of the concatenated pyramid: (factor, key block, last real token, count)."""
    factor_of, block_of, last_of, count_of = [], [], [], []
    for f in FACTORS:
        pooled_len = math.ceil(seq_k / f)
        for p in range(pooled_len):
            factor_of.append(f)
            block_of.append((p * f) // block_n)
            last_of.append(min((p + 1) * f, seq_k) - 1)
            count_of.append(min(f, seq_k - p * f))
    as_tensor = lambda xs: torch.tensor(xs, dtype=torch.int64)  # noqa: E731
    return as_tensor(factor_of), as_tensor(block_of), as_tensor(last_of), as_tensor(count_of)


def dense_mask(levels: torch.Tensor, seq_q: int, seq_k: int, block_m: int, block_n: int,
               causal: bool) -> torch.Tensor:
    """(B, Hq, Lq, U) bool: which units of the concatenated pyramid query row i attends.

    A unit of factor f inside key block J is attended iff levels[b, h, i // block_m, J] == f;
    under causal attention it must also be visible: its last real constituent j satisfies
    j <= i + (Lk - Lq) (bottom-right alignment, SPEC 5 and 6).
    """
    levels = levels.to(torch.int64)
    factor_of, block_of, last_of, _ = units(seq_k, block_n)
    row_block = torch.arange(seq_q) // block_m                      # (Lq,)
    level_at = levels[:, :, row_block, :][..., block_of]            # (B, Hq, Lq, U)
    mask = level_at == factor_of
    if causal:
        visible = last_of[None, :] <= torch.arange(seq_q)[:, None] + (seq_k - seq_q)
        mask = mask & visible
    return mask


def attention(q, k, v, levels, block_m: int, block_n: int, causal: bool = False,
              scale: float = 0.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """(out, lse) of PSA on a level map, in float64. q (B, Hq, Lq, D), k, v (B, Hkv, Lk, D)."""
    q, k, v = q.to(torch.float64), k.to(torch.float64), v.to(torch.float64)
    batch, heads_q, seq_q, dim = q.shape
    heads_kv, seq_k = k.shape[1], k.shape[2]
    group = heads_q // heads_kv
    # Query head h reads key/value head h // group.
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scale = scale if scale else 1.0 / math.sqrt(dim)
    keys, values, biases = [], [], []
    for f in FACTORS:
        kf, counts = (k, torch.ones(seq_k, dtype=torch.float64)) if f == 1 else pool(k, f)
        vf = v if f == 1 else pool(v, f)[0]
        keys.append(kf)
        values.append(vf)
        biases.append(torch.log(counts))
    k_cat = torch.cat(keys, dim=2)
    v_cat = torch.cat(values, dim=2)
    bias = torch.cat(biases)
    logits = scale * torch.einsum("bhid,bhud->bhiu", q, k_cat) + bias
    mask = dense_mask(levels, seq_q, seq_k, block_m, block_n, causal)
    logits = logits.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    # A row with no visible unit has O = 0 and LSE = -inf (SPEC 6).
    safe_lse = torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))
    probs = torch.exp(logits - safe_lse[..., None])
    out = torch.einsum("bhiu,bhud->bhid", probs, v_cat)
    return out, lse


def dense(q, k, v, causal: bool = False, scale: float = 0.0):
    """Plain dense attention in float64, bottom-right causal."""
    batch, heads_q, seq_q, dim = q.shape
    seq_k = k.shape[2]
    levels = torch.ones(batch, heads_q, 1, 1, dtype=torch.uint8)
    return attention(q, k, v, levels, block_m=max(seq_q, 1), block_n=max(seq_k, 1),
                     causal=causal, scale=scale)


def random_levels(generator: torch.Generator, shape: List[int],
                  choices=(0, 1, 2, 4, 8)) -> torch.Tensor:
    """A random level map with at least one level-1 block per row (every row attends something)."""
    batch, heads, mq, nk = shape
    idx = torch.randint(0, len(choices), (batch, heads, mq, nk), generator=generator)
    levels = torch.tensor(choices, dtype=torch.uint8)[idx]
    first = torch.randint(0, nk, (batch, heads, mq), generator=generator)
    levels.scatter_(3, first[..., None], 1)
    return levels


def topk_levels(scores: torch.Tensor, ends, block_n: int, tile_n: int) -> torch.Tensor:
    """The topk planner of SPEC 5 on scores (B, H, Mq, Nk), non-causal, no text, no sim cap.

    Each row is sorted by score descending (ties to the lower block); level f takes the next
    min(Nk, floor(Nk * e_f)) - start blocks (level 1 at least one), rounded up to a multiple of
    a_f = ceil(f / (block_n / tile_n)), or down when that passes Nk.
    """
    batch, heads, mq, nk = scores.shape
    levels = torch.zeros(batch, heads, mq, nk, dtype=torch.uint8)
    tiles_per_block = block_n // tile_n
    for b in range(batch):
        for h in range(heads):
            for i in range(mq):
                row = scores[b, h, i].tolist()
                order = sorted(range(nk), key=lambda j: (-row[j], j))
                start = 0
                for index, factor in enumerate(FACTORS):
                    end = min(nk, math.floor(nk * ends[index]))
                    if index == 0:
                        end = max(end, 1)
                    align = -(-factor // tiles_per_block)
                    count = -(-max(end - start, 0) // align) * align
                    if start + count > nk:
                        count = ((nk - start) // align) * align
                    for j in order[start:start + count]:
                        levels[b, h, i, j] = factor
                    start += count
    return levels
