"""Empty problems (B, Hq, Lq or Lk = 0) give what torch.nn.functional.scaled_dot_product_attention
gives: outputs of the right shape, zeros where rows have no key (Lk = 0; SDPA's math and flash
CPU backends both return 0 there, not NaN), LSE -inf for those rows, and zero gradients. Through
the torch custom ops (forward, backward, fake kernels by opcheck) and the NumPy path."""

import numpy as np
import pytest

from helpers import needs_cuda, psa, random_qkv, torch

# (B, Hq, Hkv, Lq, Lk)
CASES = {
    "no_query_rows": (1, 4, 2, 0, 96),
    "no_keys": (1, 4, 2, 80, 0),
    "no_queries_nor_keys": (2, 4, 2, 0, 0),
    "no_batch": (0, 4, 2, 80, 96),
    "no_heads": (1, 0, 0, 80, 96),
    "no_query_heads": (1, 0, 2, 80, 96),
}
DIM = 64


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("name", list(CASES))
def test_torch_forward_backward(name, causal):
    """What SDPA returns for these shapes (checked against torch 2.15's CPU SDPA: zeros, and zero
    gradients), written out: torch 2.11's CPU SDPA, the GPU machine's, dies with SIGFPE on some
    of them, so the test does not call it."""
    b, hq, hkv, lq, lk = CASES[name]
    q, k, v = random_qkv(1, b, hq, hkv, lq, lk, DIM)
    mine = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out, lse = psa.attention(*mine, causal=causal, return_lse=True)
    assert out.shape == q.shape and lse.shape == q.shape[:3]
    assert torch.equal(out, torch.zeros_like(q))
    assert torch.equal(lse, torch.full_like(lse, -torch.inf))
    out.backward(torch.randn_like(out))
    for got, t in zip(mine, (q, k, v)):
        assert got.grad is not None and got.grad.shape == t.shape
        assert torch.equal(got.grad, torch.zeros_like(t))


@needs_cuda
@pytest.mark.parametrize("name", ["no_query_rows", "no_keys", "no_query_heads"])
def test_cuda_forward_backward(name):
    """bf16 on the GPU: the fills of O, LSE and the gradients run on the device (cuda::fill)."""
    b, hq, hkv, lq, lk = CASES[name]
    q, k, v = (t.to("cuda", torch.bfloat16).requires_grad_(True)
               for t in random_qkv(5, b, hq, hkv, lq, lk, DIM))
    out, lse = psa.attention(q, k, v, return_lse=True)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    assert torch.equal(out, torch.zeros_like(out))
    assert torch.equal(lse, torch.full_like(lse, -torch.inf))
    out.backward(torch.randn_like(out))
    for t in (q, k, v):
        assert torch.equal(t.grad, torch.zeros_like(t))


@pytest.mark.parametrize("name", list(CASES))
def test_dense_and_numpy(name):
    b, hq, hkv, lq, lk = CASES[name]
    q, k, v = random_qkv(2, b, hq, hkv, lq, lk, DIM)
    dense, lse = psa.dense_attention(q, k, v, return_lse=True)
    assert torch.equal(dense, torch.zeros_like(q))
    assert torch.equal(lse, torch.full_like(lse, -torch.inf))
    arrays = [t.numpy() for t in (q, k, v)]
    out, lse = psa.attention(*arrays, return_lse=True)
    assert out.shape == q.shape and out.dtype == np.float32
    assert (out == 0).all() and (lse == -np.inf).all()
    plan = psa.plan(*arrays[:2])
    assert plan.shape[:2] == (b, hq) and (plan.counts == 0).all()


@pytest.mark.parametrize("name", ["no_query_rows", "no_keys", "no_batch"])
def test_opcheck(name):
    """Schema, fake kernels and autograd registration of the ops on empty inputs."""
    b, hq, hkv, lq, lk = CASES[name]
    q, k, v = random_qkv(3, b, hq, hkv, lq, lk, DIM)
    config = psa.Config(block_m=64, block_n=32)
    counts, blocks = torch.ops.psa.plan(q, k, config.key, False, 0.0)
    assert counts.shape == (b, hq, -(-lq // 64), 4) and blocks.shape[3] == -(-lk // 32)
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    ops = torch.ops.psa
    torch.library.opcheck(ops.plan.default, (q, k, config.key, False, 0.0))
    torch.library.opcheck(ops.attention_forward.default,
                          (qg, kg, vg, counts, blocks, 64, 32, False, 0.0))
    torch.library.opcheck(ops.dense_attention_forward.default, (qg, kg, vg, True, 0.0))


def test_still_rejected():
    """A head dimension of 0 and key/value heads of 0 under query heads stay errors."""
    q, k, v = random_qkv(4, 1, 2, 2, 8, 8, 0)
    with pytest.raises(ValueError, match="head dimension D >= 1"):
        psa.dense_attention(q, k, v)
    q, k, v = random_qkv(4, 1, 2, 0, 8, 8, 8)
    with pytest.raises(ValueError, match="Hkv = 0"):
        psa.dense_attention(q, k, v)
