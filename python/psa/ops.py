"""PyTorch custom ops over the C++ library (torch.library.custom_op).

Each op has a fake (meta) implementation, so torch.compile(fullgraph=True) traces through it, and
attention has an autograd formula that calls the C++ backward. Outputs are allocated here with
torch.empty and handed to the library, which writes them in place on the caller's current CUDA
stream. Ops:

  psa::plan(q, k, config, causal, softmax_scale) -> (counts, blocks)       estimator + planner
  psa::plan_from_levels(levels, k?, seq_q, seq_k, config) -> (counts, blocks)
  psa::plan_to_levels(counts, blocks, block_m, block_n, seq_q, seq_k) -> levels
  psa::attention_forward(q, k, v, counts, blocks, block_m, block_n, causal, softmax_scale,
      deterministic=True) -> (out, lse)
  psa::attention_backward(dout, q, k, v, out, lse, counts, blocks, block_m, block_n, causal,
      softmax_scale, deterministic=True) -> (dq, dk, dv)
  psa::dense_attention_forward / psa::dense_attention_backward

Shapes: q (B, Hq, Lq, D), k and v (B, Hkv, Lk, D), counts (B, Hq, Mq, 4) int32, blocks
(B, Hq, Mq, Nk) int32, levels (B, Hq, Mq, Nk) uint8, lse (B, Hq, Lq) float32.

`deterministic` concerns the backward only (Config.deterministic): True gives bitwise the same
gradients on every run; False lets the CUDA backward accumulate dK and dV in whatever order its
blocks finish, which is faster. The forward takes it so that autograd can hand it to the backward.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from psa import _C
from psa.config import Config

_POOL_FACTORS = (2, 4, 8)


def _stream(t: Tensor) -> int:
    # The library enqueues on the caller's current stream and never synchronises.
    return torch.cuda.current_stream(t.device).cuda_stream if t.is_cuda else 0


def _plain(t: Optional[Tensor]) -> Optional[Tensor]:
    # DLPack refuses tensors that require grad; the library never needs the autograd graph.
    return None if t is None else t.detach()


def _ceil_div(a, b):
    return (a + b - 1) // b


def _native_config(config: str, causal: bool, softmax_scale: float) -> "_C.NativeConfig":
    native = Config.from_key(config).to_native()
    native.causal = causal
    native.softmax_scale = softmax_scale
    return native


def _call_config(block_m: int, block_n: int, causal: bool, softmax_scale: float,
                 deterministic: bool = True):
    native = _C.NativeConfig()
    native.block_m = block_m
    native.block_n = block_n
    native.tile_n = min(native.tile_n, block_n)
    native.causal = causal
    native.softmax_scale = softmax_scale
    native.deterministic = deterministic
    return native


def _plan_buffers(like: Tensor, batch, heads, num_q_blocks, num_k_blocks) -> Tuple[Tensor, Tensor]:
    counts = like.new_empty((batch, heads, num_q_blocks, 4), dtype=torch.int32)
    blocks = like.new_empty((batch, heads, num_q_blocks, num_k_blocks), dtype=torch.int32)
    return counts, blocks


def _levels_buffer(blocks: Tensor) -> Tensor:
    return blocks.new_empty(blocks.shape, dtype=torch.uint8)


def build_pyramid(k: Tensor, v: Tensor) -> Tuple[List[Tensor], List[Tensor]]:
    """Pooled keys and values of factors 2, 4, 8: each (B, Hkv, ceil(Lk / f), D), dtype of k."""
    k, v = _plain(k), _plain(v)
    batch, heads, seq, dim = k.shape
    k_levels = [k.new_empty((batch, heads, _ceil_div(seq, f), dim)) for f in _POOL_FACTORS]
    v_levels = [v.new_empty((batch, heads, _ceil_div(seq, f), dim)) for f in _POOL_FACTORS]
    _C.build_pyramid(k_levels, v_levels, k, v, _stream(k))
    return k_levels, v_levels


# ---- Planning (constant for the backward pass: no autograd) ----------------------------------


@torch.library.custom_op("psa::plan", mutates_args=())
def plan(q: Tensor, k: Tensor, config: str, causal: bool,
         softmax_scale: float) -> Tuple[Tensor, Tensor]:
    """Estimator + planner for q, k under `config` (a Config.key) with causal/scale overridden."""
    q, k = _plain(q), _plain(k)
    native = _native_config(config, causal, softmax_scale)
    batch, heads, seq_q, _ = q.shape
    seq_k = k.shape[2]
    num_q_blocks = _ceil_div(seq_q, native.block_m)
    num_k_blocks = _ceil_div(seq_k, native.block_n)
    scores = q.new_empty((batch, heads, num_q_blocks, num_k_blocks), dtype=torch.float32)
    stream = _stream(q)
    _C.estimate_importance(scores, q, k, native, stream)
    counts, blocks = _plan_buffers(q, batch, heads, num_q_blocks, num_k_blocks)
    workspace = None
    if q.is_cuda:
        nbytes = _C.plan_workspace_bytes(batch, heads, num_q_blocks, num_k_blocks, True)
        workspace = q.new_empty((max(nbytes, 1),), dtype=torch.uint8)
    _C.plan_from_scores(counts, blocks, native.block_m, native.block_n, seq_q, seq_k, scores, k,
                        native, workspace, stream)
    return counts, blocks


@plan.register_fake
def _(q, k, config, causal, softmax_scale):
    parsed = Config.from_key(config)
    batch, heads, seq_q, _ = q.shape
    return _plan_buffers(q, batch, heads, _ceil_div(seq_q, parsed.block_m),
                         _ceil_div(k.shape[2], parsed.block_n))


@torch.library.custom_op("psa::plan_from_levels", mutates_args=())
def plan_from_levels(levels: Tensor, k: Optional[Tensor], seq_q: int, seq_k: int,
                     config: str) -> Tuple[Tensor, Tensor]:
    """A caller's level map (B, Hq, Mq, Nk) uint8 to a plan (validated by the library)."""
    native = Config.from_key(config).to_native()
    batch, heads, num_q_blocks, num_k_blocks = levels.shape
    counts, blocks = _plan_buffers(levels, batch, heads, num_q_blocks, num_k_blocks)
    _C.plan_from_levels(counts, blocks, native.block_m, native.block_n, seq_q, seq_k,
                        _plain(levels), _plain(k), native, _stream(levels))
    return counts, blocks


@plan_from_levels.register_fake
def _(levels, k, seq_q, seq_k, config):
    return _plan_buffers(levels, *levels.shape)


@torch.library.custom_op("psa::plan_to_levels", mutates_args=())
def plan_to_levels(counts: Tensor, blocks: Tensor, block_m: int, block_n: int, seq_q: int,
                   seq_k: int) -> Tensor:
    """The plan expanded to its level map (B, Hq, Mq, Nk) uint8."""
    levels = _levels_buffer(blocks)
    _C.plan_to_levels(levels, counts, blocks, block_m, block_n, seq_q, seq_k, _stream(blocks))
    return levels


@plan_to_levels.register_fake
def _(counts, blocks, block_m, block_n, seq_q, seq_k):
    return _levels_buffer(blocks)


# ---- Attention on a plan ---------------------------------------------------------------------


def _attention_outputs(q: Tensor) -> Tuple[Tensor, Tensor]:
    # out keeps q's layout (a (B, L, H, D) buffer viewed as (B, H, L, D) stays so).
    out = torch.empty_like(q)
    lse = q.new_empty(q.shape[:3], dtype=torch.float32)
    return out, lse


@torch.library.custom_op("psa::attention_forward", mutates_args=())
def attention_forward(q: Tensor, k: Tensor, v: Tensor, counts: Tensor, blocks: Tensor,
                      block_m: int, block_n: int, causal: bool, softmax_scale: float,
                      deterministic: bool = True) -> Tuple[Tensor, Tensor]:
    q, k, v = _plain(q), _plain(k), _plain(v)
    out, lse = _attention_outputs(q)
    k_levels, v_levels = build_pyramid(k, v)
    _C.attention_forward(out, lse, q, k, v, k_levels, v_levels, counts, blocks, block_m, block_n,
                         _call_config(block_m, block_n, causal, softmax_scale), _stream(q))
    return out, lse


@attention_forward.register_fake
def _(q, k, v, counts, blocks, block_m, block_n, causal, softmax_scale, deterministic=True):
    return _attention_outputs(q)


def _gradient_buffers(q: Tensor, k: Tensor, v: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    # dq, dk, dv keep the layout of q, k, v (unit stride on the head dim, as the library needs).
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _backward_workspace(q: Tensor, nbytes: int) -> Tensor:
    # Device scratch of the backward (the pyramid, fp32 dK/dV accumulators, row terms; 0 bytes on
    # the CPU), left uninitialised: the library must not rely on its contents (the tests fill it
    # with 0xFF bytes, NaN as fp32). One byte at least, so that the buffer always has an address.
    return q.new_empty((max(nbytes, 1),), dtype=torch.uint8)


@torch.library.custom_op("psa::attention_backward", mutates_args=())
def attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       counts: Tensor, blocks: Tensor, block_m: int, block_n: int, causal: bool,
                       softmax_scale: float,
                       deterministic: bool = True) -> Tuple[Tensor, Tensor, Tensor]:
    # dout may be an expanded view (out.sum().backward() gives stride 0 everywhere): the library
    # reads any strides, so it is passed as it is, without a copy.
    dout, q, k, v, out = _plain(dout), _plain(q), _plain(k), _plain(v), _plain(out)
    dq, dk, dv = _gradient_buffers(q, k, v)
    config = _call_config(block_m, block_n, causal, softmax_scale, deterministic)
    workspace = _backward_workspace(q, _C.attention_backward_workspace_bytes(
        dout, q, k, counts, blocks, block_m, block_n, config))
    _C.attention_backward(dq, dk, dv, dout, q, k, v, out, lse, counts, blocks, block_m, block_n,
                          config, workspace, _stream(q))
    return dq, dk, dv


@attention_backward.register_fake
def _(dout, q, k, v, out, lse, counts, blocks, block_m, block_n, causal, softmax_scale,
      deterministic=True):
    return _gradient_buffers(q, k, v)


def _setup_attention(ctx, inputs, output):
    q, k, v, counts, blocks, block_m, block_n, causal, softmax_scale, deterministic = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, counts, blocks)
    ctx.params = (block_m, block_n, causal, softmax_scale, deterministic)
    # The C++ backward takes no gradient for the LSE; it is returned for inspection only.
    ctx.mark_non_differentiable(lse)


def _attention_grad(ctx, dout, dlse):
    del dlse  # non-differentiable output
    q, k, v, out, lse, counts, blocks = ctx.saved_tensors
    dq, dk, dv = attention_backward(dout, q, k, v, out, lse, counts, blocks, *ctx.params)
    return dq, dk, dv, None, None, None, None, None, None, None


attention_forward.register_autograd(_attention_grad, setup_context=_setup_attention)


# ---- Dense attention (the reference for all-level-1 plans, and dense presets) ----------------


@torch.library.custom_op("psa::dense_attention_forward", mutates_args=())
def dense_attention_forward(q: Tensor, k: Tensor, v: Tensor, causal: bool,
                            softmax_scale: float) -> Tuple[Tensor, Tensor]:
    q, k, v = _plain(q), _plain(k), _plain(v)
    out, lse = _attention_outputs(q)
    _C.dense_attention_forward(out, lse, q, k, v, causal, softmax_scale, _stream(q))
    return out, lse


@dense_attention_forward.register_fake
def _(q, k, v, causal, softmax_scale):
    return _attention_outputs(q)


@torch.library.custom_op("psa::dense_attention_backward", mutates_args=())
def dense_attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor,
                             lse: Tensor, causal: bool,
                             softmax_scale: float) -> Tuple[Tensor, Tensor, Tensor]:
    dout, q, k, v, out = _plain(dout), _plain(q), _plain(k), _plain(v), _plain(out)
    dq, dk, dv = _gradient_buffers(q, k, v)
    _C.dense_attention_backward(dq, dk, dv, dout, q, k, v, out, lse, causal, softmax_scale,
                                _stream(q))
    return dq, dk, dv


@dense_attention_backward.register_fake
def _(dout, q, k, v, out, lse, causal, softmax_scale):
    return _gradient_buffers(q, k, v)


def _setup_dense(ctx, inputs, output):
    q, k, v, causal, softmax_scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.params = (causal, softmax_scale)
    ctx.mark_non_differentiable(lse)


def _dense_grad(ctx, dout, dlse):
    del dlse
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = dense_attention_backward(dout, q, k, v, out, lse, *ctx.params)
    return dq, dk, dv, None, None


dense_attention_forward.register_autograd(_dense_grad, setup_context=_setup_dense)
