"""Shared test helpers: seeded random inputs, replay hints, skips with reasons."""

from __future__ import annotations

import os

import pytest


torch = pytest.importorskip("torch", reason="the torch tests need PyTorch (pip install torch)")

import psa  # noqa: E402


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
    reason="needs a CUDA device and a psa build with the CUDA backend (CI has neither; the lead "
           "runs these on the GPU machine)")
# The CUDA backward runs on compute capability 9.0 (Hopper) only.
needs_cuda_backward = pytest.mark.skipif(
    not (torch.cuda.is_available() and psa.cuda_available() and psa.cuda_backward_available()),
    reason="needs a CUDA device of compute capability 9.0 (Hopper, PSA_FORCE_PORTABLE unset) and a "
           "psa build with the CUDA backend: the CUDA backward runs there only")
