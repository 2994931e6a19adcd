"""Shared test helpers: seeded random inputs, replay hints, skips with reasons."""

from __future__ import annotations

import os

import pytest


torch = pytest.importorskip("torch", reason="the torch tests need PyTorch (pip install torch)")

import psa  # noqa: E402

POISON_INT = 0x7F7F7F7F


def poison_buffers(patch) -> None:
    """Makes every buffer that the torch ops allocate for the library to fill, and that
    psa.distributed allocates for an all-to-all to fill, start as NaN (or an impossible count), so
    that an element left unwritten shows up instead of stale memory that happens to look right.
    patch(obj, name, value): monkeypatch.setattr in a test, setattr in a worker process."""
    import psa.distributed as distributed
    import psa.ops as ops

    real_attention_outputs = ops._attention_outputs
    real_gradient_buffers = ops._gradient_buffers
    real_plan_buffers = ops._plan_buffers
    real_levels_buffer = ops._levels_buffer
    real_backward_workspace = ops._backward_workspace
    real_receive_buffer = distributed._receive_buffer

    def attention_outputs(q):
        out, lse = real_attention_outputs(q)
        return out.fill_(float("nan")), lse.fill_(float("nan"))

    def gradient_buffers(q, k, v):
        return tuple(t.fill_(float("nan")) for t in real_gradient_buffers(q, k, v))

    def plan_buffers(like, *shape):
        return tuple(t.fill_(POISON_INT) for t in real_plan_buffers(like, *shape))

    def levels_buffer(blocks):
        return real_levels_buffer(blocks).fill_(0x7F)  # 127 is no level

    def backward_workspace(q, nbytes):
        return real_backward_workspace(q, nbytes).fill_(0xFF)  # NaN as fp32 accumulators

    def receive_buffer(like, shape):
        return real_receive_buffer(like, shape).fill_(float("nan"))

    patch(ops, "_attention_outputs", attention_outputs)
    patch(ops, "_gradient_buffers", gradient_buffers)
    patch(ops, "_plan_buffers", plan_buffers)
    patch(ops, "_levels_buffer", levels_buffer)
    patch(ops, "_backward_workspace", backward_workspace)
    patch(distributed, "_receive_buffer", receive_buffer)


def seed_from_env(fallback: int) -> int:
    """PSA_TEST_SEED from the environment when set, else `fallback` (mirrors tests/common)."""
    value = os.environ.get("PSA_TEST_SEED")
    return int(value) if value else fallback


def replay_hint(seed: int, request=None) -> str:
    node = request.node.nodeid if request is not None else "tests/python"
    return f"replay: PSA_TEST_SEED={seed} python -m pytest '{node}'"


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_qkv(seed: int, batch, heads_q, heads_kv, seq_q, seq_k, dim, dtype=torch.float32,
               scale: float = 1.0, device="cpu"):
    """Normal q, k, v from one seeded generator (never zeros)."""
    g = generator(seed)
    q = torch.randn(batch, heads_q, seq_q, dim, generator=g, dtype=torch.float64) * scale
    k = torch.randn(batch, heads_kv, seq_k, dim, generator=g, dtype=torch.float64) * scale
    v = torch.randn(batch, heads_kv, seq_k, dim, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype=dtype, device=device) for t in (q, k, v))


def rel_l2(a, b) -> float:
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    return float((a - b).norm() / b.norm())


needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and psa.cuda_available()),
    reason="needs a CUDA device and a psa build with the CUDA backend; these run on a GPU machine "
           "(pytest -m gpu tests/python)")
# The CUDA backward runs on compute capability 9.0 (Hopper) only.
needs_cuda_backward = pytest.mark.skipif(
    not (torch.cuda.is_available() and psa.cuda_available() and psa.cuda_backward_available()),
    reason="needs a CUDA device of compute capability 9.0 (Hopper, PSA_FORCE_PORTABLE unset) and a "
           "psa build with the CUDA backend: the CUDA backward runs there only")
