"""Training with PSA: the backward on every kind of plan, bitwise determinism, opcheck with the
backward, torch.compile of a whole training step, and torch.utils.checkpoint.

CUDA gradients are compared with the library's CPU backward on the same inputs: its float64 run is
the reference, and its run in the GPU's dtype measures what rounding to 16 bits costs by itself.
The CPU variants compare the CPU backward with the independent float64 autograd reference
(reference.py). Every buffer the ops allocate is poisoned (conftest.py), the backward's workspace
included, so an element a kernel fails to write is NaN, never a lucky zero.
"""

import dataclasses

import pytest

import reference
from helpers import (generator, needs_cuda_backward, psa, random_qkv, rel_l2, replay_hint,
                     seed_from_env, torch)

# fp32 CPU backward against float64 autograd: sums over a few hundred units per row and over Lq
# rows per key; 1e-4 relative keeps a margin of ~100x over what we observe (as test_ops.py).
FP32_TOL = 1e-4
# A 16-bit GPU backward rounds its inputs, its outputs and, like every fast attention backward,
# the probabilities and dS tiles that feed its tensor-core matrix products; the CPU run in the
# same dtype rounds only its inputs and outputs. Within 3x that CPU error is the budget: a wrong
# unit, a missed block or a mis-pooled gradient costs far more (errors of 1e-1 and up).
GPU_ERROR_FACTOR = 3.0
HALF_DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


@dataclasses.dataclass(frozen=True)
class Case:
    """One backward problem: shapes, blocks, causality and how the inputs are laid out."""

    name: str
    batch: int = 1
    heads_q: int = 4
    heads_kv: int = 2
    seq_q: int = 300
    seq_k: int = 437
    dim: int = 64
    block_m: int = 64
    block_n: int = 64
    causal: bool = False
    empty_rows: bool = False  # some query blocks of the plan attend nothing (zero gradient)
    layout: str = "bhld"  # "bhld" contiguous, "blhd" (B, L, H, D) buffers viewed as (B, H, L, D)
    expanded_dout: bool = False  # out.sum().backward(): dout is a stride-0 expanded tensor

    @property
    def config(self):
        return psa.Config(block_m=self.block_m, block_n=self.block_n,
                          tile_n=min(32, self.block_n))


def _block_cases(dim):
    # Every block size pair the CUDA kernels support, GQA, Lq != Lk and ragged tails (300 and 437
    # are multiples of none of them), with and without causal attention.
    return [Case(f"d{dim}_m{bm}_n{bn}_{'causal' if causal else 'full'}", dim=dim, block_m=bm,
                 block_n=bn, causal=causal)
            for bm in (64, 128) for bn in (32, 64, 128) for causal in (False, True)]


BLOCK_CASES = _block_cases(64) + _block_cases(128)

SPECIAL_CASES = [
    # Causal with Lq > Lk (bottom-right aligned): the first 250 rows see no key at all.
    Case("causal_lq_gt_lk", heads_q=2, heads_kv=1, seq_q=400, seq_k=150, causal=True),
    # Causal prefill against a longer cache, 4 query heads per KV head.
    Case("causal_prefill", heads_q=8, heads_kv=2, seq_q=190, seq_k=517, causal=True, block_n=32),
    Case("empty_rows", empty_rows=True, block_m=64, block_n=128),
    Case("empty_rows_causal", empty_rows=True, causal=True, dim=128, block_m=128, block_n=32),
    Case("blhd_views", batch=2, layout="blhd", dim=128, block_m=128, block_n=64),
    Case("expanded_dout", expanded_dout=True, causal=True, block_m=128, block_n=128),
    Case("expanded_dout_blhd", expanded_dout=True, layout="blhd", dim=128, block_n=32),
]


def _levels(case, seed):
    shape = [case.batch, case.heads_q, -(-case.seq_q // case.block_m),
             -(-case.seq_k // case.block_n)]
    levels = reference.random_levels(generator(seed + 1), shape)
    if case.empty_rows:
        # Query blocks 0 and 2 of every head attend nothing: the plan has empty rows.
        levels[:, :, 0::2] = 0
    return levels


def _inputs(case, seed, dtype, device):
    """q, k, v (B, H, L, D) in `dtype` on `device`, in the case's layout, from one seed."""
    q, k, v = random_qkv(seed, case.batch, case.heads_q, case.heads_kv, case.seq_q, case.seq_k,
                         case.dim, dtype=torch.float64)
    if case.layout == "blhd":
        q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
        assert not q.is_contiguous()
    return tuple(t.to(dtype=dtype, device=device) for t in (q, k, v))


def _grads(case, q, k, v, plan, dout):
    """(out, dq, dk, dv) of psa.attention on `plan`; dout None means out.sum().backward()."""
    leaves = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
              for t in (q, k, v)]
    if case.layout == "blhd":
        assert leaves[0].stride() == q.stride()
    out = psa.attention(*leaves, plan=plan, causal=case.causal)
    if dout is None:
        out.sum().backward()
    else:
        out.backward(dout)
    return (out.detach(),) + tuple(t.grad for t in leaves)


def _dout(case, seed, dtype, device):
    if case.expanded_dout:
        return None
    shape = (case.batch, case.heads_q, case.seq_q, case.dim)
    return torch.randn(shape, generator=generator(seed + 2), dtype=torch.float64).to(device, dtype)


def _check_empty_rows(case, levels, dq, seed, request):
    if case.empty_rows:
        rows = torch.arange(case.seq_q) // case.block_m
        empty = (levels == 0).all(dim=3)[:, :, rows]  # (B, Hq, Lq)
        assert empty.any()
        assert torch.equal(dq[empty].cpu(), torch.zeros_like(dq[empty].cpu())), \
            "non-zero dq on an empty row: " + replay_hint(seed, request)


# ---- CPU: the backward against the independent float64 reference ------------------------------


def _reference_grads(case, q, k, v, levels, dout):
    """float64 autograd through reference.py. Rows of empty query blocks have O = 0 whatever the
    inputs (SPEC 6), so they contribute no gradient; the reference sees them as level-1 rows with
    a zero output gradient, which gives exactly that, without the NaN that autograd of an all -inf
    logsumexp would produce."""
    leaves = [t.detach().to(torch.float64).requires_grad_(True) for t in (q, k, v)]
    dout = torch.ones(q.shape, dtype=torch.float64) if dout is None else dout.to(torch.float64)
    if case.empty_rows:
        empty_blocks = (levels == 0).all(dim=3)
        levels = levels.clone()
        levels[empty_blocks] = 1
        rows = torch.arange(case.seq_q) // case.block_m
        dout = dout.masked_fill(empty_blocks[:, :, rows][..., None], 0.0)
    out, _ = reference.attention(*leaves, levels, case.block_m, case.block_n, case.causal)
    out.backward(dout)
    return [t.grad for t in leaves]


@pytest.mark.parametrize("case", SPECIAL_CASES + BLOCK_CASES[:2] + BLOCK_CASES[-2:],
                         ids=lambda c: c.name)
def test_cpu_backward_matches_reference(case, request):
    seed = seed_from_env(60000 + sum(map(ord, case.name)))
    q, k, v = _inputs(case, seed, torch.float32, "cpu")
    levels = _levels(case, seed)
    plan = psa.plan_from_levels(levels, case.config, seq_q=case.seq_q, seq_k=case.seq_k)
    dout = _dout(case, seed, torch.float32, "cpu")
    _, dq, dk, dv = _grads(case, q, k, v, plan, dout)
    expected = _reference_grads(case, q, k, v, levels, dout)
    for name, mine, ref in zip(("dq", "dk", "dv"), (dq, dk, dv), expected):
        assert ref.norm() > 0, f"{name} reference is zero: " + replay_hint(seed, request)
        assert rel_l2(mine, ref) < FP32_TOL, f"{name}: " + replay_hint(seed, request)
    _check_empty_rows(case, levels, dq, seed, request)


def test_cpu_backward_is_bitwise_reproducible(request):
    seed = seed_from_env(61000)
    case = Case("repeat", causal=True)
    q, k, v = _inputs(case, seed, torch.float32, "cpu")
    plan = psa.plan_from_levels(_levels(case, seed), case.config, seq_q=case.seq_q,
                                seq_k=case.seq_k)
    dout = _dout(case, seed, torch.float32, "cpu")
    first = _grads(case, q, k, v, plan, dout)
    second = _grads(case, q, k, v, plan, dout)
    for a, b in zip(first, second):
        assert torch.equal(a, b), replay_hint(seed, request)


def test_deterministic_reaches_the_backward_op(monkeypatch, request):
    """Config.deterministic travels through psa.attention and autograd to the backward op."""
    seed = seed_from_env(62000)
    seen = []
    real = psa.ops.attention_backward

    def spy(*args):
        seen.append(args[-1])
        return real(*args)

    monkeypatch.setattr(psa.ops, "attention_backward", spy)
    q, k, v = (t.requires_grad_(True) for t in random_qkv(seed, 1, 2, 1, 96, 96, 32))
    for deterministic in (True, False):
        config = psa.Config(block_m=64, block_n=32, deterministic=deterministic)
        psa.attention(q, k, v, config=config).sum().backward()
        plan = psa.plan(q, k, config)
        psa.attention(q, k, v, plan=plan).sum().backward()
    assert seen == [True, True, False, False], replay_hint(seed, request)


# ---- CUDA: the GPU backward against the CPU backward --------------------------------------------


def _check_cuda_against_cpu(case, dtype, seed, request):
    levels = _levels(case, seed)
    plan = psa.plan_from_levels(levels, case.config, seq_q=case.seq_q, seq_k=case.seq_k)
    q, k, v = _inputs(case, seed, dtype, "cuda")
    dout = _dout(case, seed, dtype, "cuda")
    _, *gpu = _grads(case, q, k, v, plan.to("cuda"), dout)
    cpu_inputs = [t.cpu() for t in (q, k, v)]
    cpu_dout = None if dout is None else dout.cpu()
    # The same rounded inputs, computed in float64 (the reference) and in the GPU's dtype.
    _, *exact = _grads(case, *(t.double() for t in cpu_inputs), plan,
                       None if cpu_dout is None else cpu_dout.double())
    _, *same_precision = _grads(case, *cpu_inputs, plan, cpu_dout)
    for name, mine, ref, cpu in zip(("dq", "dk", "dv"), gpu, exact, same_precision):
        assert ref.norm() > 0, f"{name} reference is zero: " + replay_hint(seed, request)
        assert torch.isfinite(mine).all(), f"{name} not finite: " + replay_hint(seed, request)
        budget = GPU_ERROR_FACTOR * rel_l2(cpu, ref)
        error = rel_l2(mine.cpu(), ref)
        assert error <= budget, (f"{name}: GPU error {error:.3g} > {GPU_ERROR_FACTOR} x CPU "
                                 f"{dtype} error {budget / GPU_ERROR_FACTOR:.3g}: "
                                 + replay_hint(seed, request))
    _check_empty_rows(case, levels, gpu[0], seed, request)


@needs_cuda_backward
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: c.name)
def test_cuda_backward_block_sizes(case, dtype, request):
    _check_cuda_against_cpu(case, dtype, seed_from_env(63000 + BLOCK_CASES.index(case)), request)


@needs_cuda_backward
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("case", SPECIAL_CASES, ids=lambda c: c.name)
def test_cuda_backward_special_cases(case, dtype, request):
    _check_cuda_against_cpu(case, dtype, seed_from_env(64000 + SPECIAL_CASES.index(case)),
                            request)


@needs_cuda_backward
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_cuda_backward_is_bitwise_reproducible(causal, request):
    """deterministic=True (the default): the same inputs give bitwise the same gradients, on a
    problem where many query blocks and 4 query heads per KV head add into every dK and dV."""
    seed = seed_from_env(65000 + causal)
    q, k, v = random_qkv(seed, 1, 8, 2, 4096, 4096, 128, dtype=torch.bfloat16, device="cuda")
    dout = torch.randn(q.shape, generator=generator(seed + 2)).to("cuda", torch.bfloat16)
    config = psa.Config(block_m=128, block_n=64, causal=causal)
    case = Case("deterministic", causal=causal)
    plan = psa.plan(q, k, config)
    first = _grads(case, q, k, v, plan, dout)
    assert first[2].norm() > 0
    for _ in range(2):
        again = _grads(case, q, k, v, plan, dout)
        for name, a, b in zip(("out", "dq", "dk", "dv"), first, again):
            assert torch.equal(a, b), f"{name} differs between runs: " + replay_hint(seed, request)
    # deterministic=False may only change the order of fp32 accumulation before the final bf16
    # rounding: at most about one bf16 ulp (2^-8 relative) on some elements.
    fast = psa.plan_from_levels(plan.levels, config.replace(deterministic=False),
                                seq_q=plan.seq_q, seq_k=plan.seq_k)
    fast_grads = _grads(case, q, k, v, fast, dout)
    for name, a, b in zip(("dq", "dk", "dv"), first[1:], fast_grads[1:]):
        assert rel_l2(b, a) < 2 ** -8, f"{name}: " + replay_hint(seed, request)


@needs_cuda_backward
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "fast"])
def test_cuda_opcheck_with_backward(causal, deterministic):
    seed = seed_from_env(66000)
    q, k, v = random_qkv(seed, 1, 4, 2, 200, 300, 64, dtype=torch.bfloat16, device="cuda")
    case = Case("opcheck", seq_q=200, seq_k=300, block_m=64, block_n=64, causal=causal)
    plan = psa.plan_from_levels(_levels(case, seed), case.config, seq_q=200,
                                seq_k=300).to("cuda")
    ops = torch.ops.psa
    leaves = [t.clone().requires_grad_(True) for t in (q, k, v)]
    torch.library.opcheck(ops.attention_forward.default,
                          (*leaves, plan.counts, plan.blocks, 64, 64, causal, 0.0, deterministic))
    out, lse = ops.attention_forward(q, k, v, plan.counts, plan.blocks, 64, 64, causal, 0.0,
                                     deterministic)
    for dout in (torch.randn_like(out), torch.ones(()).to(out).expand_as(out)):
        torch.library.opcheck(ops.attention_backward.default,
                              (dout, q, k, v, out, lse, plan.counts, plan.blocks, 64, 64, causal,
                               0.0, deterministic))


# ---- A training step: torch.compile and torch.utils.checkpoint ---------------------------------


class _Block(torch.nn.Module):
    """A transformer attention block: fused qkv projection, PSA on (B, L, H, D) views, output
    projection, residual."""

    def __init__(self, width, heads, config):
        super().__init__()
        self.heads = heads
        self.config = config
        self.qkv = torch.nn.Linear(width, 3 * width)
        self.out = torch.nn.Linear(width, width)

    def forward(self, x):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.heads, -1)).unbind(2)  # (B, L, H, D) each
        attended = psa.attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                 config=self.config)
        return x + self.out(attended.transpose(1, 2).flatten(2))


def _block(seed, device, dtype, width=128, heads=2):
    torch.manual_seed(seed)
    config = psa.Config(block_m=64, block_n=64, ends=(0.25, 0.5, 0.6, 0.8))
    return _Block(width, heads, config).to(device, dtype)


def _training_step(model, lr):
    params = list(model.parameters())

    def step(x, target):
        # The loss in fp32: a bf16 loss (resolution 2^-7 near 2) hides one step's decrease.
        loss = torch.nn.functional.mse_loss(model(x).float(), target.float())
        loss.backward()
        with torch.no_grad():
            torch._foreach_add_(params, [p.grad for p in params], alpha=-lr)
            for p in params:
                p.grad = None
        return loss.detach()

    return step


def _compile_case(device):
    if device == "cpu":
        # aot_eager: the CPU has no reliable C++ toolchain in CI; the graphs are those inductor
        # gets. fp32, same kernels as eager, so only decompositions may reorder sums.
        return "aot_eager", torch.float32, lambda a, b: rel_l2(a, b) < 1e-5
    # bf16 elementwise ops fused by inductor round differently (2^-8 relative per rounding).
    return "inductor", torch.bfloat16, lambda a, b: rel_l2(a, b) < 2e-2


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda_backward)])
def test_compile_fullgraph_training_step(device, request):
    """Forward, loss, backward and an SGD update in one torch.compile(fullgraph=True) region."""
    if not hasattr(torch._dynamo.config, "trace_autograd_ops"):
        pytest.skip(f"torch {torch.__version__} cannot trace Tensor.backward() in a graph; "
                    "test_compile_training_step_regions covers training with compile")
    seed = seed_from_env(67000)
    backend, dtype, close = _compile_case(device)
    eager, compiled = _block(seed, device, dtype), _block(seed, device, dtype)
    g = generator(seed + 1)
    x = torch.randn(2, 192, 128, generator=g).to(device, dtype)
    target = torch.randn(2, 192, 128, generator=g).to(device, dtype)
    eager_step = _training_step(eager, lr=0.5)
    with torch._dynamo.config.patch(trace_autograd_ops=True):
        compiled_step = torch.compile(_training_step(compiled, lr=0.5), fullgraph=True,
                                      backend=backend)
        losses = [(eager_step(x, target), compiled_step(x, target)) for _ in range(3)]
    assert losses[0][0] > 0 and losses[-1][0] < losses[0][0], replay_hint(seed, request)
    for eager_loss, compiled_loss in losses:
        assert close(compiled_loss, eager_loss), replay_hint(seed, request)
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert close(b.detach(), a.detach()), f"{name}: " + replay_hint(seed, request)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda_backward)])
def test_compile_training_step_regions(device, request):
    """The form every torch version supports: forward + loss compiled with fullgraph=True (its
    backward graph, with PSA's backward op in it, is compiled by AOTAutograd and runs in
    loss.backward()), and the parameter update compiled with fullgraph=True."""
    seed = seed_from_env(68000)
    backend, dtype, close = _compile_case(device)
    eager, compiled = _block(seed, device, dtype), _block(seed, device, dtype)
    g = generator(seed + 1)
    x = torch.randn(2, 192, 128, generator=g).to(device, dtype)
    target = torch.randn(2, 192, 128, generator=g).to(device, dtype)

    def loss_fn(model, x, target):
        return torch.nn.functional.mse_loss(model(x), target)

    def update(params, grads):
        torch._foreach_add_(params, grads, alpha=-0.5)

    compiled_loss = torch.compile(loss_fn, fullgraph=True, backend=backend)
    compiled_update = torch.compile(update, fullgraph=True, backend=backend)
    for _ in range(3):
        for model, loss_of, update_of in ((eager, loss_fn, update),
                                          (compiled, compiled_loss, compiled_update)):
            params = list(model.parameters())
            loss_of(model, x, target).backward()
            with torch.no_grad():
                update_of(params, [p.grad for p in params])
            for p in params:
                p.grad = None
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        assert close(b.detach(), a.detach()), f"{name}: " + replay_hint(seed, request)
    assert not torch.equal(eager.qkv.weight, _block(seed, device, dtype).qkv.weight)


@pytest.mark.parametrize("use_reentrant", [False, True], ids=["non_reentrant", "reentrant"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda_backward)])
def test_checkpoint_gives_the_same_gradients(device, use_reentrant, request):
    """A block that calls psa under torch.utils.checkpoint recomputes the same plan and forward
    in the backward pass, so its gradients are bitwise those of the block run without it
    (deterministic backward; the same cuBLAS calls on one stream)."""
    seed = seed_from_env(69000)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = _block(seed, device, dtype)
    g = generator(seed + 1)
    x = torch.randn(2, 300, 128, generator=g).to(device, dtype)

    def gradients(checkpointed):
        leaf = x.clone().requires_grad_(True)
        if checkpointed:
            y = torch.utils.checkpoint.checkpoint(model, leaf, use_reentrant=use_reentrant)
        else:
            y = model(leaf)
        (y.float() ** 2).mean().backward()
        grads = [leaf.grad] + [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        return grads

    plain = gradients(False)
    checkpointed = gradients(True)
    for i, (a, b) in enumerate(zip(plain, checkpointed)):
        assert a.norm() > 0
        assert torch.equal(a, b), f"gradient {i}: " + replay_hint(seed, request)
