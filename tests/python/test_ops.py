"""The torch custom ops: autograd against the reference, opcheck, torch.compile; CUDA variants."""

import pytest

import reference
from helpers import (generator, needs_cuda, needs_cuda_backward, psa, random_qkv, rel_l2,
                     replay_hint, seed_from_env, torch)

# fp32 forward and backward against float64 autograd: the backward sums over a few hundred units
# per row and over Lq rows per key; 1e-4 relative keeps a margin of ~100x over what we observe.
GRAD_TOL = 1e-4


def _plan_case(seed, b=1, hq=4, hkv=2, lq=150, lk=210, bm=64, bn=32):
    levels = reference.random_levels(generator(seed + 1), [b, hq, -(-lq // bm), -(-lk // bn)])
    plan = psa.plan_from_levels(levels, psa.Config(block_m=bm, block_n=bn), seq_q=lq, seq_k=lk)
    return levels, plan


@pytest.mark.parametrize("causal", [False, True])
def test_backward_matches_reference(causal, request):
    seed = seed_from_env(20000 + causal)
    q, k, v = random_qkv(seed, 1, 4, 2, 150, 210, 32)
    levels, plan = _plan_case(seed)
    dout = torch.randn(q.shape, generator=generator(seed + 2))
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    out = psa.attention(*leaves, plan=plan, causal=causal)
    out.backward(dout)
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    ref_out, _ = reference.attention(*ref_leaves, levels, 64, 32, causal)
    ref_out.backward(dout.double())
    assert rel_l2(out.detach(), ref_out.detach()) < GRAD_TOL, replay_hint(seed, request)
    for name, mine, ref in zip("qkv", leaves, ref_leaves):
        assert ref.grad.norm() > 0
        assert rel_l2(mine.grad, ref.grad) < GRAD_TOL, f"d{name}: " + replay_hint(seed, request)


def test_gradient_through_planned_attention_and_lse(request):
    """The plan is a constant; the LSE is returned but not differentiable."""
    seed = seed_from_env(21000)
    q, k, v = (t.requires_grad_(True) for t in random_qkv(seed, 1, 2, 2, 128, 128, 32))
    out, lse = psa.attention(q, k, v, config=psa.Config(block_m=64, block_n=32), return_lse=True)
    assert not lse.requires_grad
    out.sum().backward()
    for t in (q, k, v):
        assert t.grad is not None and torch.isfinite(t.grad).all(), replay_hint(seed, request)


def test_dense_backward_matches_reference(request):
    seed = seed_from_env(22000)
    q, k, v = random_qkv(seed, 1, 2, 1, 70, 90, 32)
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    psa.dense_attention(*leaves, causal=True).sum().backward()
    ref_leaves = [t.double().requires_grad_(True) for t in (q, k, v)]
    reference.dense(*ref_leaves, causal=True)[0].sum().backward()
    for mine, ref in zip(leaves, ref_leaves):
        assert ref.grad.norm() > 0
        assert rel_l2(mine.grad, ref.grad) < GRAD_TOL, replay_hint(seed, request)


def _opcheck_args(seed, device="cpu", dtype=torch.float32, dim=32):
    q, k, v = random_qkv(seed, 1, 2, 1, 96, 100, dim, dtype=dtype, device=device)
    _, plan = _plan_case(seed, b=1, hq=2, lq=96, lk=100)
    plan = plan.to(device)
    return q, k, v, plan


def _opcheck_all(q, k, v, plan):
    ops = torch.ops.psa
    config = psa.Config(block_m=64, block_n=32)
    qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
    torch.library.opcheck(ops.attention_forward.default,
                          (qg, kg, vg, plan.counts, plan.blocks, 64, 32, False, 0.0))
    torch.library.opcheck(ops.attention_forward.default,
                          (qg, kg, vg, plan.counts, plan.blocks, 64, 32, True, 0.25))
    torch.library.opcheck(ops.plan.default, (q, k, config.key, False, 0.0))
    torch.library.opcheck(ops.plan_to_levels.default,
                          (plan.counts, plan.blocks, 64, 32, plan.seq_q, plan.seq_k))
    torch.library.opcheck(ops.plan_from_levels.default,
                          (plan.levels, None, plan.seq_q, plan.seq_k, config.key))
    if q.device.type == "cpu":  # dense attention is the CPU reference; CUDA refuses it by design
        torch.library.opcheck(ops.dense_attention_forward.default, (qg, kg, vg, True, 0.0))


def test_opcheck_cpu():
    q, k, v, plan = _opcheck_args(seed_from_env(23000))
    _opcheck_all(q, k, v, plan)


def _compiled_step(config):
    def step(q, k, v):
        out = psa.attention(q, k, v, config=config)
        return (out * out).sum()
    return step


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph_cpu(backend, request):
    seed = seed_from_env(24000)
    q, k, v = random_qkv(seed, 1, 2, 2, 128, 128, 32)
    config = psa.Config(block_m=64, block_n=32)
    step = _compiled_step(config)
    compiled = torch.compile(step, fullgraph=True, backend=backend)
    eager_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    compiled_leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    step(*eager_leaves).backward()
    try:
        loss = compiled(*compiled_leaves)
    except Exception as error:  # inductor needs a working C++ toolchain for CPU code
        if backend == "inductor" and "CppCompileError" in type(error).__name__:
            pytest.skip(f"inductor cannot compile CPU code here: {type(error).__name__}")
        raise
    loss.backward()
    for eager, compiled_leaf in zip(eager_leaves, compiled_leaves):
        # The same C++ kernels run in both; only the elementwise square may be fused differently.
        assert torch.allclose(eager.grad, compiled_leaf.grad, rtol=1e-5, atol=1e-6), \
            replay_hint(seed, request)


# ---- CUDA (skipped without a GPU build; they run on a GPU machine with `pytest -m gpu`) ---------


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_cuda_forward_matches_reference(dtype, request):
    seed = seed_from_env(30000)
    q, k, v = random_qkv(seed, 1, 4, 2, 300, 300, 64)
    levels, plan = _plan_case(seed, b=1, hq=4, hkv=2, lq=300, lk=300, bm=64, bn=64)
    qc, kc, vc = (t.to("cuda", dtype) for t in (q, k, v))
    out = psa.attention(qc, kc, vc, plan=plan.to("cuda"))
    ref_out, _ = reference.attention(qc.cpu(), kc.cpu(), vc.cpu(), levels, 64, 64)
    # The GPU rounds its output to 16 bits like the CPU run does; 2x the CPU's error budget.
    cpu_out = psa.attention(qc.cpu(), kc.cpu(), vc.cpu(), plan=plan)
    budget = max(2 * rel_l2(cpu_out, ref_out), 1e-3)
    assert rel_l2(out.cpu(), ref_out) < budget, replay_hint(seed, request)


@needs_cuda
def test_cuda_plan_matches_cpu(request):
    seed = seed_from_env(31000)
    q, k, _ = random_qkv(seed, 1, 4, 2, 512, 512, 64, dtype=torch.bfloat16)
    config = psa.Config(block_m=64, block_n=64)
    cpu = psa.plan(q, k, config)
    gpu = psa.plan(q.cuda(), k.cuda(), config)
    assert torch.equal(cpu.levels, gpu.levels.cpu()), replay_hint(seed, request)


@needs_cuda_backward
def test_cuda_opcheck_and_compile(request):
    seed = seed_from_env(33000)
    q, k, v, plan = _opcheck_args(seed, device="cuda", dtype=torch.bfloat16, dim=64)
    _opcheck_all(q, k, v, plan)
    config = psa.Config(block_m=64, block_n=64)
    qc, kc, vc = random_qkv(seed, 1, 4, 4, 512, 512, 64, dtype=torch.bfloat16, device="cuda")
    compiled = torch.compile(lambda a, b, c: psa.attention(a, b, c, config=config), fullgraph=True)
    assert torch.equal(compiled(qc, kc, vc), psa.attention(qc, kc, vc, config=config)), \
        replay_hint(seed, request)


@needs_cuda
def test_cuda_runs_on_current_stream(request):
    seed = seed_from_env(34000)
    q, k, v = random_qkv(seed, 1, 2, 2, 256, 256, 64, dtype=torch.bfloat16, device="cuda")
    config = psa.Config(block_m=64, block_n=64)
    expected = psa.attention(q, k, v, config=config)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = psa.attention(q, k, v, config=config)
    torch.cuda.current_stream().wait_stream(stream)
    assert torch.equal(out, expected), replay_hint(seed, request)
