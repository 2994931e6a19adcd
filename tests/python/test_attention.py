"""psa.attention against the independent float64 reference (reference.py) on the CPU."""

import numpy as np
import pytest

import reference
from helpers import generator, psa, random_qkv, rel_l2, replay_hint, seed_from_env, torch

# fp32 compute with fp32 accumulation over a few hundred units: errors ~1e-6 relative; 1e-4 leaves
# room for the different summation order without hiding a wrong unit (that costs > 1e-2).
FP32_TOL = 1e-4
# 16-bit inputs are rounded before both computations; the output's own rounding (bf16 has 8 bits of
# mantissa: 2^-8 ~ 4e-3 relative) dominates.
HALF_TOL = {torch.float16: 2e-3, torch.bfloat16: 1.2e-2}

CASES = [
    # name, B, Hq, Hkv, Lq, Lk, D, block_m, block_n, causal
    ("square", 1, 2, 2, 256, 256, 64, 128, 64, False),
    ("ragged", 2, 2, 1, 200, 333, 32, 64, 32, False),
    ("gqa_causal", 1, 4, 2, 190, 190, 64, 64, 64, True),
    ("prefill_causal", 1, 2, 1, 77, 301, 64, 64, 32, True),
    ("short_k", 1, 1, 1, 64, 19, 64, 128, 64, False),
]


def _levels_for(seed, b, hq, lq, lk, block_m, block_n):
    shape = [b, hq, -(-lq // block_m), -(-lk // block_n)]
    return reference.random_levels(generator(seed + 1), shape)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_random_levels_match_reference(case, request):
    name, b, hq, hkv, lq, lk, d, bm, bn, causal = case
    seed = seed_from_env(1000 + CASES.index(case))
    q, k, v = random_qkv(seed, b, hq, hkv, lq, lk, d)
    levels = _levels_for(seed, b, hq, lq, lk, bm, bn)
    config = psa.Config(block_m=bm, block_n=bn, tile_n=min(32, bn))
    plan = psa.plan_from_levels(levels, config, seq_q=lq, seq_k=lk)
    assert torch.equal(plan.levels, levels), replay_hint(seed, request)
    out, lse = psa.attention(q, k, v, plan=plan, causal=causal, return_lse=True)
    ref_out, ref_lse = reference.attention(q, k, v, levels, bm, bn, causal)
    assert ref_out.norm() > 0
    assert rel_l2(out, ref_out) < FP32_TOL, replay_hint(seed, request)
    finite = torch.isfinite(ref_lse)
    assert torch.equal(torch.isfinite(lse), finite), replay_hint(seed, request)
    assert torch.allclose(lse[finite].double(), ref_lse[finite], atol=1e-4), \
        replay_hint(seed, request)


@pytest.mark.parametrize("causal", [False, True])
def test_all_level_one_is_dense(causal, request):
    seed = seed_from_env(2000 + causal)
    q, k, v = random_qkv(seed, 1, 2, 1, 150, 230, 64)
    config = psa.Config(block_m=64, block_n=32)
    levels = torch.ones(1, 2, 3, 8, dtype=torch.uint8)
    plan = psa.plan_from_levels(levels, config, seq_q=150, seq_k=230)
    out = psa.attention(q, k, v, plan=plan, causal=causal)
    ref_out, _ = reference.dense(q, k, v, causal)
    assert ref_out.norm() > 0
    assert rel_l2(out, ref_out) < FP32_TOL, replay_hint(seed, request)
    # PyTorch's SDPA is top-left causal; with Lq != Lk pass the bottom-right mask explicitly.
    shift = 230 - 150
    mask = torch.arange(230)[None, :] <= torch.arange(150)[:, None] + shift if causal else None
    sdpa = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=mask)
    assert rel_l2(out, sdpa) < FP32_TOL, replay_hint(seed, request)
    dense = psa.dense_attention(q, k, v, causal=causal)
    assert rel_l2(out, dense) < FP32_TOL, replay_hint(seed, request)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision(dtype, request):
    seed = seed_from_env(3000)
    q, k, v = random_qkv(seed, 1, 2, 2, 130, 200, 64)
    levels = _levels_for(seed, 1, 2, 130, 200, 64, 32)
    plan = psa.plan_from_levels(levels, psa.Config(block_m=64, block_n=32), seq_q=130, seq_k=200)
    out = psa.attention(q.to(dtype), k.to(dtype), v.to(dtype), plan=plan)
    assert out.dtype == dtype
    ref_out, _ = reference.attention(q.to(dtype), k.to(dtype), v.to(dtype), levels, 64, 32)
    assert ref_out.norm() > 0
    assert rel_l2(out, ref_out) < HALF_TOL[dtype], replay_hint(seed, request)


def test_strided_views_need_no_copy(request):
    """A (B, L, H, D) buffer viewed as (B, H, L, D) gives the same result as a contiguous copy."""
    seed = seed_from_env(4000)
    q, k, v = random_qkv(seed, 2, 4, 2, 160, 160, 64)
    qt, kt, vt = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in (q, k, v))
    assert not qt.is_contiguous()
    config = psa.Config(block_m=64, block_n=32)
    plan = psa.plan(q, k, config)
    plan_t = psa.plan(qt, kt, config)
    assert torch.equal(plan.levels, plan_t.levels), replay_hint(seed, request)
    out = psa.attention(q, k, v, plan=plan)
    out_t = psa.attention(qt, kt, vt, plan=plan)
    assert out_t.stride() == qt.stride()  # the output keeps q's layout
    assert torch.equal(out, out_t), replay_hint(seed, request)


def test_numpy_matches_torch(request):
    seed = seed_from_env(5000)
    q, k, v = random_qkv(seed, 1, 2, 1, 180, 250, 32)
    config = psa.Config(block_m=64, block_n=32, mode="thresholdbound", ends=(0.3, 0.5, 0.6, 0.8))
    out_t, lse_t = psa.attention(q, k, v, config=config, return_lse=True, causal=True)
    qn, kn, vn = (t.numpy() for t in (q, k, v))
    out_n, lse_n = psa.attention(qn, kn, vn, config=config, return_lse=True, causal=True)
    assert isinstance(out_n, np.ndarray) and out_n.dtype == np.float32
    np.testing.assert_array_equal(out_n, out_t.numpy(), err_msg=replay_hint(seed, request))
    np.testing.assert_array_equal(lse_n, lse_t.numpy(), err_msg=replay_hint(seed, request))
    plan_n = psa.plan(qn, kn, config, causal=True)
    plan_t = psa.plan(q, k, config, causal=True)
    np.testing.assert_array_equal(plan_n.levels, plan_t.levels.numpy())


@pytest.mark.parametrize("mode", ["topk", "thresholdbound"])
def test_planned_attention_matches_reference_on_its_plan(mode, request):
    """The whole pipeline (estimate, plan, attention) equals the reference on its own plan."""
    seed = seed_from_env(6000)
    q, k, v = random_qkv(seed, 1, 3, 3, 300, 300, 64, scale=2.0)
    config = psa.Config(block_m=64, block_n=32, mode=mode, ends=(0.2, 0.3, 0.5, 0.7), seed=seed)
    plan = psa.plan(q, k, config)
    out = psa.attention(q, k, v, plan=plan)
    assert torch.equal(out, psa.attention(q, k, v, config=config)), replay_hint(seed, request)
    ref_out, _ = reference.attention(q, k, v, plan.levels, 64, 32)
    assert ref_out.norm() > 0
    assert rel_l2(out, ref_out) < FP32_TOL, replay_hint(seed, request)
    # Every row keeps at least one block at level 1 (SPEC 5).
    assert bool((plan.counts[..., 0] >= 1).all()), replay_hint(seed, request)


def test_plan_statistics(request):
    seed = seed_from_env(7000)
    q, k, _ = random_qkv(seed, 2, 3, 1, 256, 640, 64)
    config = psa.Config(block_m=64, block_n=64)
    plan = psa.plan(q, k, config)
    levels = plan.levels.double()
    inv = torch.where(levels > 0, 1.0 / levels.clamp(min=1), torch.zeros_like(levels))
    row_density = inv.sum(-1) / levels.shape[-1]
    assert torch.allclose(plan.density_per_head, row_density.mean(dim=(0, 2)))
    fractions = plan.level_fractions
    for i, level in enumerate(psa.LEVELS):
        assert abs(float(fractions[i]) - float((plan.levels == level).double().mean())) < 1e-12
    # Non-causal topk without text or sim cap: every row has the density the config predicts.
    expected = config.topk_density(plan.shape[3])
    assert torch.allclose(row_density, torch.full_like(row_density, expected)), \
        replay_hint(seed, request)
    # The library's own statistics of the same plan agree.
    density, level_fraction, per_head = psa._C.plan_statistics(
        plan.counts, plan.blocks, 64, 64, 256, 640)
    assert abs(density - float(plan.density)) < 1e-12
    assert np.allclose(per_head, plan.density_per_head.numpy())
    assert np.allclose(level_fraction, fractions.numpy())
    stats = plan.statistics()
    assert set(stats["level_fractions"]) == {"0", "1", "2", "4", "8"}


def test_text_blocks_are_full(request):
    seed = seed_from_env(8000)
    q, k, _ = random_qkv(seed, 1, 2, 2, 256, 256, 32)
    config = psa.Config(block_m=64, block_n=32, text_len=40, text_position="start")
    levels = psa.plan(q, k, config).levels
    # Text tokens [0, 40) lie in key blocks 0 and 1 and in query block 0, which sees every block at
    # level 1.
    assert bool((levels[..., :2] == 1).all()), replay_hint(seed, request)
    assert bool((levels[:, :, 0] == 1).all()), replay_hint(seed, request)
    assert not bool((levels[:, :, 1:] == 1).all()), replay_hint(seed, request)


def test_text_rows_equal_dense_with_the_question_at_the_end(request):
    """The transformers integration's case: causal, keep_first_block, the last 32 tokens (the
    question) at full resolution. A text column is visible only to the text rows, so the rows must
    be forced too (SPEC 5): they equal dense attention."""
    seed = seed_from_env(8100)
    q, k, v = random_qkv(seed, 1, 2, 2, 700, 700, 64)
    base = psa.default_config().replace(causal=True, keep_first_block=True, text_position="end")
    out = psa.attention(q, k, v, config=base.replace(text_len=32))
    sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert rel_l2(out[..., -32:, :], sdpa[..., -32:, :]) < FP32_TOL, replay_hint(seed, request)
    # Without text the same rows are sparse: the check above is not vacuous.
    without = psa.attention(q, k, v, config=base)
    assert rel_l2(without[..., -32:, :], sdpa[..., -32:, :]) > 1e-2, replay_hint(seed, request)


def _poison(q, k):
    """Rows that meet a non-finite logit: q[0, 0, 5, 3] = NaN (every logit NaN) and
    q[0, 1, 20, 0] = +inf against keys whose dimension 0 is negative (every logit -inf, which must
    not pass for a row that sees nothing). Returns the (head, row) pairs."""
    k[..., 0] = -k[..., 0].abs() - 0.1
    q[0, 0, 5, 3] = float("nan")
    q[0, 1, 20, 0] = float("inf")
    return [(0, 5), (1, 20)]


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("all_full", [False, True], ids=["default_plan", "all_level_1"])
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_non_finite_query_gives_nan_rows(backend, all_full, causal, request):
    """A NaN or inf in q gives NaN in its row's output and LSE (as dense attention and SDPA do),
    never a silent zero row; the other rows stay finite."""
    seed = seed_from_env(8200)
    q, k, v = random_qkv(seed, 1, 2, 1, 300, 300, 32)
    bad = _poison(q, k)
    config = psa.default_config().replace(causal=causal)
    if all_full:
        config = config.replace(ends=(1.0, 1.0, 1.0, 1.0))
    args = (q, k, v) if backend == "torch" else tuple(t.numpy() for t in (q, k, v))
    out, lse = psa.attention(*args, config=config, return_lse=True)
    dense, dense_lse = psa.dense_attention(*args, causal=causal, return_lse=True)
    out, lse, dense, dense_lse = (torch.as_tensor(t) for t in (out, lse, dense, dense_lse))
    is_bad = torch.zeros(lse.shape, dtype=torch.bool)
    for h, i in bad:
        is_bad[0, h, i] = True
        assert bool(out[0, h, i].isnan().all()), (h, i, out[0, h, i], replay_hint(seed, request))
        assert bool(lse[0, h, i].isnan()), (h, i, float(lse[0, h, i]), replay_hint(seed, request))
        assert bool(dense[0, h, i].isnan().all()) and bool(dense_lse[0, h, i].isnan())
    assert bool(out[~is_bad].isfinite().all()), replay_hint(seed, request)
    assert bool(lse[~is_bad].isfinite().all()), replay_hint(seed, request)
    if all_full:
        # Every other row is still dense attention. (SDPA on the CPU returns zeros for the row
        # whose every logit is -inf, as for a fully masked row: the silent answer avoided here.)
        sdpa = torch.nn.functional.scaled_dot_product_attention(
            q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=causal)
        assert rel_l2(out[~is_bad], sdpa[~is_bad]) < FP32_TOL, replay_hint(seed, request)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_non_finite_query_gives_nan_gradients(causal, request):
    """The backward propagates too: NaN in dq of the poisoned rows and in dk, dv of keys they
    reach; dq of every other row stays finite."""
    seed = seed_from_env(8300)
    q, k, v = random_qkv(seed, 1, 2, 1, 300, 300, 32)
    bad = _poison(q, k)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    psa.attention(q, k, v, causal=causal).sum().backward()
    is_bad = torch.zeros(q.shape[:3], dtype=torch.bool)
    for h, i in bad:
        is_bad[0, h, i] = True
        assert bool(q.grad[0, h, i].isnan().all()), (h, i, replay_hint(seed, request))
    assert bool(q.grad[~is_bad].isfinite().all()), replay_hint(seed, request)
    # Every row keeps at least one block at level 1 (key block 0 when causal): row 5 reaches it.
    assert bool(k.grad.isnan().any()) and bool(v.grad.isnan().any()), replay_hint(seed, request)


def test_direct_bindings_write_poisoned_outputs(request):
    """The bindings write caller-owned buffers in place: poisoned NaN outputs come back clean."""
    seed = seed_from_env(9000)
    q, k, v = (t.numpy() for t in random_qkv(seed, 1, 2, 2, 100, 100, 32))
    config = psa.Config(block_m=64, block_n=32)
    levels = reference.random_levels(generator(seed), [1, 2, 2, 4]).numpy()
    plan = psa.plan_from_levels(levels, config, seq_q=100, seq_k=100)
    k_levels = [np.full((1, 2, -(-100 // f), 32), np.nan, np.float32) for f in (2, 4, 8)]
    v_levels = [np.full((1, 2, -(-100 // f), 32), np.nan, np.float32) for f in (2, 4, 8)]
    psa._C.build_pyramid(k_levels, v_levels, k, v)
    out = np.full(q.shape, np.nan, np.float32)
    lse = np.full(q.shape[:3], np.nan, np.float32)
    psa._C.attention_forward(out, lse, q, k, v, k_levels, v_levels, plan.counts, plan.blocks, 64,
                             32, config.to_native())
    assert not np.isnan(out).any() and not np.isnan(lse).any(), replay_hint(seed, request)
    ref_out, _ = reference.attention(*(torch.from_numpy(t) for t in (q, k, v)),
                                     torch.from_numpy(levels), 64, 32)
    assert rel_l2(torch.from_numpy(out), ref_out) < FP32_TOL, replay_hint(seed, request)
    np.testing.assert_allclose(k_levels[0][0, 0, 3], k[0, 0, 6:8].mean(0), rtol=1e-6)


def test_module(request):
    seed = seed_from_env(10000)
    q, k, v = random_qkv(seed, 1, 2, 2, 128, 128, 64)
    module = psa.PSAAttention(psa.Config(block_m=64, block_n=32))
    out = module(q, k, v)
    assert torch.equal(out, psa.attention(q, k, v, config=module.config))
    preset_module = psa.PSAAttention("Wan2.1_1.3b:psa_topk")
    assert preset_module.config.block_n == 32
    assert preset_module(q, k, v).shape == q.shape
    baseline = psa.PSAAttention("Wan2.1_1.3b:baseline")
    assert rel_l2(baseline(q, k, v), reference.dense(q, k, v)[0]) < FP32_TOL


@pytest.mark.parametrize("block_n,tile_n", [(32, 32), (128, 32), (64, 16)])
def test_topk_planner_matches_reference(block_n, tile_n, request):
    """The library's topk planner on the estimator's scores, rounded so that ties occur, against
    the independent reference planner (alignment and tie-breaking included)."""
    seed = seed_from_env(11000 + block_n + tile_n)
    q, k, _ = random_qkv(seed, 1, 2, 2, 256, 1000, 32)
    config = psa.Config(block_m=64, block_n=block_n, tile_n=tile_n, ends=(0.1, 0.25, 0.4, 0.7))
    mq, nk = 4, -(-1000 // block_n)
    scores = np.empty((1, 2, mq, nk), dtype=np.float32)
    psa._C.estimate_importance(scores, q.numpy(), k.numpy(), config.to_native())
    assert np.abs(scores).sum() > 0
    scores = np.round(scores * 40) / 40  # coarse values: many exact ties
    counts = np.full((1, 2, mq, 4), -1, dtype=np.int32)
    blocks = np.full((1, 2, mq, nk), -1, dtype=np.int32)
    psa._C.plan_from_scores(counts, blocks, 64, block_n, 256, 1000, scores, None,
                            config.to_native())
    plan = psa.Plan(counts, blocks, config, 256, 1000)
    expected = reference.topk_levels(torch.from_numpy(scores), config.ends, block_n, tile_n)
    np.testing.assert_array_equal(plan.levels, expected.numpy(),
                                  err_msg=replay_hint(seed, request))
