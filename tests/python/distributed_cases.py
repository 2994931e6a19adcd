"""The cases of test_distributed.py, run by every rank of a gloo process group on the CPU.

Each case builds the whole input from a seed on every rank, gives each rank its shard, and checks
the rank's result against one process's result on the whole input (psa.attention, or a diffusers
transformer without context parallelism), so that no gathering is needed to check. A case raises
AssertionError (or the error it tests for did not come); run() records "ok" or the traceback.

Run by hand (two ranks, all cases, results as JSON lines in OUT_DIR):
    python tests/python/distributed_cases.py OUT_DIR
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

import psa  # noqa: E402
from helpers import poison_buffers, random_qkv, rel_l2  # noqa: E402
from psa.distributed import (heads_to_sequence, sequence_to_heads, shard_lengths,  # noqa: E402
                             ulysses_attention)

WORLD = 2
# Sparse enough that plans matter: a rank planning its heads as if they were heads 0.. would get
# other levels (see forward).
SPARSE = psa.Config(block_m=64, block_n=32, ends=(0.2, 0.3, 0.4, 0.6))
# A diffusers transformer with and without context parallelism computes its projections on
# shards and on the whole sequence; fp32 matmuls of different row counts may round differently
# (about 1e-7 relative per op, a few layers deep). A plan that differed would give errors near
# the sparse-vs-dense difference (> 1e-2).
MODEL_TOL = 1e-5
# Seconds a collective waits for the other rank: a rank that raised mid-case fails the other
# rank's pending collective after this long instead of hanging it. Generous, because two ranks on
# a loaded 2-core machine can reach a collective many seconds apart.
COLLECTIVE_TIMEOUT = 60


def _shard(x, lens, rank, dim=2):
    return x.split(lens, dim=dim)[rank]


def _heads(x, rank, world=WORLD):
    part = x.shape[1] // world
    return x[:, rank * part:(rank + 1) * part]


def _same(name, got, expected):
    """Bitwise equality: each rank runs the same CPU reference arithmetic, per head and row, on
    the same values as one process does; only the memory layout differs."""
    assert expected.numel() == 0 or expected.abs().max() > 0, f"{name}: the reference is zero"
    assert got.shape == expected.shape, \
        f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    if not torch.equal(got, expected):
        raise AssertionError(f"{name}: differs from one process, max |diff| "
                             f"{(got - expected).abs().max().item():.3g}")


def _check_ulysses(rank, *, seed, heads_q, heads_kv, seq, lens=None, causal=False,
                   backward=True, config=SPARSE, preset=None, dtype=torch.float32,
                   pass_lens=False):
    q, k, v = random_qkv(seed, 1, heads_q, heads_kv, seq, seq, 32, dtype=dtype)
    lens = shard_lengths(seq, WORLD) if lens is None else lens
    kwargs = dict(causal=causal)
    kwargs.update(preset=preset) if preset is not None else kwargs.update(config=config)
    local = [_shard(t, lens, rank).clone().requires_grad_(backward) for t in (q, k, v)]
    out = ulysses_attention(*local, shard_lens=lens if pass_lens else None, **kwargs)
    full = [t.clone().requires_grad_(backward) for t in (q, k, v)]
    reference = psa.attention(*full, **kwargs)
    _same("out", out.detach(), _shard(reference.detach(), lens, rank))
    if not backward:
        return reference
    grad = torch.randn(reference.shape, generator=torch.Generator().manual_seed(seed + 1),
                       dtype=torch.float64).to(dtype)
    (out * _shard(grad, lens, rank)).sum().backward()
    (reference * grad).sum().backward()
    for name, got, expected in zip(("dq", "dk", "dv"), local, full):
        _same(name, got.grad, _shard(expected.grad, lens, rank))
    return reference


# ---- ulysses_attention --------------------------------------------------------------------------


def case_forward(rank):
    reference = _check_ulysses(rank, seed=70000, heads_q=4, heads_kv=4, seq=512, backward=False)
    q, k, v = random_qkv(70000, 1, 4, 4, 512, 512, 32)
    assert rel_l2(reference, psa.dense_attention(q, k, v)) > 1e-2, "the plan is not sparse"
    # What a rank would compute if it planned its heads as heads 0, 1 (no head offset): rank 1's
    # heads 2, 3 get other samples, other plans, another output. The check above sees that.
    naive = psa.attention(_heads(q, rank), _heads(k, rank), _heads(v, rank), config=SPARSE)
    assert torch.equal(naive, _heads(reference, rank)) == (rank == 0)


def case_backward(rank):
    _check_ulysses(rank, seed=71000, heads_q=4, heads_kv=4, seq=384)


def case_causal(rank):
    _check_ulysses(rank, seed=72000, heads_q=4, heads_kv=4, seq=384, causal=True)


def case_gqa(rank):
    # Hq/Hkv = 4: rank r holds q heads 4r..4r+3 and their one kv head r.
    _check_ulysses(rank, seed=73000, heads_q=8, heads_kv=2, seq=320)


def case_gqa_causal(rank):
    _check_ulysses(rank, seed=73500, heads_q=4, heads_kv=2, seq=320, causal=True)


def case_uneven_shards(rank):
    # 501 tokens: torch.tensor_split's 251 + 250, exchanged by the ranks.
    _check_ulysses(rank, seed=74000, heads_q=4, heads_kv=2, seq=501)
    # Any split, given by the caller (no exchange).
    _check_ulysses(rank, seed=74100, heads_q=4, heads_kv=4, seq=501, lens=[384, 117],
                   pass_lens=True)
    # A rank without tokens.
    _check_ulysses(rank, seed=74200, heads_q=4, heads_kv=4, seq=300, lens=[0, 300], causal=True)


def case_dense_preset(rank):
    _check_ulysses(rank, seed=75000, heads_q=4, heads_kv=4, seq=256,
                   preset="Wan2.1_1.3b:baseline")


def case_bfloat16(rank):
    _check_ulysses(rank, seed=76000, heads_q=4, heads_kv=4, seq=256, dtype=torch.bfloat16,
                   backward=False)


def case_all_to_all_round_trip(rank):
    lens = [70, 123]
    x = torch.randn(2, 6, sum(lens), 16, generator=torch.Generator().manual_seed(77000))
    mine = _shard(x, lens, rank).clone().requires_grad_()
    gathered = sequence_to_heads(mine, lens)
    _same("sequence_to_heads", gathered.detach(), _heads(x, rank))
    back = heads_to_sequence(gathered, lens)
    _same("heads_to_sequence", back.detach(), mine.detach())
    # The backward of the pair is the identity too.
    grad = torch.randn(back.shape, generator=torch.Generator().manual_seed(77001 + rank))
    back.backward(grad)
    _same("gradient", mine.grad, grad)


def _raises(match, call):
    try:
        call()
    except ValueError as error:
        if match not in str(error):
            raise AssertionError(f"ValueError without {match!r}: {error}") from error
        return
    raise AssertionError(f"no ValueError ({match!r})")


def _in_step():
    # A collective after the errors: both ranks reach it, so no rank entered one before raising.
    flag = torch.ones(1)
    dist.all_reduce(flag)
    assert flag.item() == WORLD


def case_bad_arguments(rank):
    q, k, v = random_qkv(78000, 1, 3, 3, 64, 64, 32)
    _raises("divisible by the group size", lambda: ulysses_attention(q, k, v))
    q, k, v = random_qkv(78000, 1, 4, 1, 64, 64, 32)
    _raises("use a group whose size divides 1", lambda: ulysses_attention(q, k, v))
    q, k, v = random_qkv(78000, 1, 4, 4, 64, 64, 32)
    _raises("shard_lens[", lambda: ulysses_attention(q, k, v, shard_lens=[32, 32]))
    _raises("2 lengths >= 0", lambda: ulysses_attention(q, k, v, shard_lens=[64, 64, 64]))
    _raises("with q's B, L_r and D", lambda: ulysses_attention(q, k[:, :, :32], v[:, :, :32]))
    _in_step()
    # A shape that differs between the ranks is found by the exchange, on every rank.
    q, k, v = random_qkv(78000, 1 + rank, 4, 4, 64, 64, 32)
    _raises("same batch, head counts and head dim", lambda: ulysses_attention(q, k, v))
    _in_step()


# ---- diffusers context parallelism ---------------------------------------------------------------


@contextlib.contextmanager
def _accelerator_count_at_least_one():
    """diffusers 0.42 picks a rank's device as torch.device(accelerator type, rank %
    torch.accelerator.device_count()), which divides by zero on a machine without an accelerator
    (ZeroDivisionError in ModelMixin._resolve_parallel_config). There, for the duration of
    enable_parallelism, the count reads 1; the device is recorded, not used, by context
    parallelism. Everything else is diffusers' own code: the split and gather hooks, the
    processors' _parallel_config."""
    real = torch.accelerator.device_count
    if real() == 0:
        torch.accelerator.device_count = lambda: 1
    try:
        yield
    finally:
        torch.accelerator.device_count = real


def _enable(model, cp_plan=None, **cp_kwargs):
    """model.enable_parallelism on the gloo ranks, over a CPU device mesh of (ring, ulysses)
    dimensions (diffusers' own mesh would be a CUDA one on a machine with a GPU)."""
    from diffusers import ContextParallelConfig
    from torch.distributed.device_mesh import init_device_mesh

    config = ContextParallelConfig(**cp_kwargs)
    config.mesh = init_device_mesh("cpu", config.mesh_shape, mesh_dim_names=config.mesh_dim_names)
    with _accelerator_count_at_least_one():
        model.enable_parallelism(config=config, cp_plan=cp_plan)


def _wan(seed, layers=2):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=32, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=layers,
        cross_attn_norm=True, rope_max_seq_len=64).eval()


def _wan_inputs(seed, frames=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, frames, size, size, generator=g), torch.tensor([500]),
            torch.randn(1, 8, 16, generator=g))


def _run_wan(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


def _close(name, got, expected, tol=MODEL_TOL):
    assert expected.abs().max() > 0, f"{name}: the reference is zero"
    error = rel_l2(got, expected)
    assert error < tol, f"{name}: relative L2 error {error:.3g} against one process (> {tol})"


def _wan_reference(seed, inputs):
    import psa.integrations.diffusers as integration

    model = _wan(seed)
    dense = _run_wan(model, inputs)
    integration.apply(model, config=SPARSE)
    sparse = _run_wan(model, inputs)
    integration.remove(model)
    assert rel_l2(sparse, dense) > 1e-3, "the plan is not sparse"
    return dense, sparse


def case_wan_context_parallel(rank):
    import psa.integrations.diffusers as integration

    seed = 79000
    inputs = _wan_inputs(seed)  # 3 x 8 x 8 = 192 tokens: 96 a rank
    _, reference = _wan_reference(seed, inputs)
    model = _wan(seed)
    _enable(model, ulysses_degree=WORLD)
    handle = integration.apply(model, config=SPARSE)
    _close("latents", _run_wan(model, inputs), reference)
    assert handle.calls == 2 and handle.fallback_calls == 0 and handle.grid == (3, 8, 8)


def _gather_uneven_proj_out(model):
    """diffusers' gather of uneven shards (ulysses_anything) calls dist.all_gather with tensors of
    different sizes, which gloo refuses ("ProcessGroupGloo::allgather: invalid tensor size");
    NCCL takes them. On gloo this hook gathers proj_out's (B, L_r, C) shards instead: padded to
    the longest, gathered, trimmed."""

    def gather(module, args, output):
        lens = [torch.zeros(1, dtype=torch.int64) for _ in range(WORLD)]
        dist.all_gather(lens, torch.tensor([output.shape[1]]))
        lens = [int(n) for n in lens]
        padded = output.new_zeros((output.shape[0], max(lens), output.shape[2]))
        padded[:, :output.shape[1]] = output
        parts = [torch.empty_like(padded) for _ in range(WORLD)]
        dist.all_gather(parts, padded)
        return torch.cat([part[:, :n] for part, n in zip(parts, lens)], dim=1)

    return model.proj_out.register_forward_hook(gather)


def case_wan_context_parallel_uneven_applied_first(rank):
    import psa.integrations.diffusers as integration

    seed = 79100
    inputs = _wan_inputs(seed, size=14)  # 3 x 7 x 7 = 147 tokens: 74 and 73
    dense, reference = _wan_reference(seed, inputs)
    model = _wan(seed)
    # PSA first, then parallelism: enable_parallelism hands its config to psa's processors,
    # which pass it on to the model's own processors for the dense warm-up.
    handle = integration.apply(model, config=SPARSE, warmup_steps=1)
    plan = {name: entry for name, entry in model._cp_plan.items() if name != "proj_out"}
    _enable(model, cp_plan=plan, ulysses_degree=WORLD, ulysses_anything=True)
    _gather_uneven_proj_out(model)
    handle.set_step(0)  # warm-up: diffusers' own Ulysses attention
    _close("warm-up latents", _run_wan(model, inputs), dense)
    assert handle.calls == 0
    handle.set_step(1)
    _close("latents", _run_wan(model, inputs), reference)
    assert handle.calls == 2
    integration.remove(model)
    _close("latents after remove", _run_wan(model, inputs), dense)


def case_wan_ring_is_refused(rank):
    import psa.integrations.diffusers as integration

    inputs = _wan_inputs(79200)
    model = _wan(79200)
    _enable(model, ring_degree=WORLD)
    _raises("Ulysses", lambda: integration.apply(model, config=SPARSE))
    model = _wan(79200)
    integration.apply(model, config=SPARSE)
    _enable(model, ring_degree=WORLD)
    _raises("ring_degree=1", lambda: _run_wan(model, inputs))
    _in_step()


def _cogvideox(seed, patch_size_t=None):
    import diffusers

    torch.manual_seed(seed)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
        time_embed_dim=32, text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16,
        sample_frames=9, patch_size=2, patch_size_t=patch_size_t, max_text_seq_length=12,
        use_rotary_positional_embeddings=True).eval()


def _cog_inputs(seed, transformer, frames, size):
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    g = torch.Generator().manual_seed(seed)
    p = transformer.config.patch_size
    p_t = transformer.config.patch_size_t or 1
    grid = (size // p, size // p)
    rope = get_3d_rotary_pos_embed(
        embed_dim=transformer.config.attention_head_dim, crops_coords=((0, 0), grid),
        grid_size=grid, temporal_size=-(-frames // p_t), device="cpu")
    return dict(hidden_states=torch.randn(1, frames, 4, size, size, generator=g),
                encoder_hidden_states=torch.randn(1, 12, 16, generator=g),
                timestep=torch.tensor([500]), image_rotary_emb=rope, return_dict=False)


def _run_cog(model, inputs):
    with torch.no_grad():
        return model(**inputs)[0]


def _check_cogvideox(rank, seed, patch_size_t, frames, size, anything):
    import psa.integrations.diffusers as integration

    model = _cogvideox(seed, patch_size_t)
    inputs = _cog_inputs(seed, model, frames, size)
    dense = _run_cog(model, inputs)
    integration.apply(model, config=SPARSE)
    reference = _run_cog(model, inputs)
    integration.remove(model)
    assert rel_l2(reference, dense) > 1e-3, "the plan is not sparse"
    model = _cogvideox(seed, patch_size_t)
    plan = integration.context_parallel_plan(model)
    if anything:
        plan = {name: entry for name, entry in plan.items() if name != "proj_out"}
    _enable(model, cp_plan=plan, ulysses_degree=WORLD, ulysses_anything=anything)
    if anything:
        _gather_uneven_proj_out(model)
    handle = integration.apply(model, config=SPARSE, warmup_steps=1)
    handle.set_step(0)  # warm-up: the all-to-all and dense attention by psa's processor
    _close("warm-up latents", _run_cog(model, inputs), dense)
    handle.set_step(1)
    _close("latents", _run_cog(model, inputs), reference)
    assert handle.calls == 2 and handle.text_len == 12


def case_cogvideox_context_parallel(rank):
    # CogVideoX 1.0: 3 x 8 x 8 = 192 video tokens (96 a rank) after 12 text tokens.
    _check_cogvideox(rank, 79300, None, frames=3, size=16, anything=False)


def case_cogvideox15_context_parallel_uneven(rank):
    # CogVideoX 1.5 (temporal patch 2): 6 frames of 14 x 14 are 3 x 7 x 7 = 147 video tokens,
    # 74 and 73 (diffusers' ulysses_anything split).
    _check_cogvideox(rank, 79400, 2, frames=6, size=14, anything=True)


CASES = [name[len("case_"):] for name in list(globals()) if name.startswith("case_")]


def _join(rank: int, init_file: str) -> None:
    dist.init_process_group("cpu:gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD,
                            timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))


def run(rank: int, init_file: str, out_dir: str, names) -> None:
    """One rank: joins the gloo group, runs the cases in order, writes rank<r>.jsonl lines
    {"case", "result" ("ok" or a traceback), "seconds"}. After each case the ranks compare notes
    through a file store; after a failure on either rank they start a fresh process group, since
    a rank that raised mid-case leaves the other's collectives unmatched (the other gives up
    after COLLECTIVE_TIMEOUT seconds)."""
    torch.set_num_threads(1)  # two ranks on a 2-core machine
    poison_buffers(setattr)
    _join(rank, init_file)
    notes = dist.FileStore(f"{init_file}.notes", WORLD)
    try:
        with open(os.path.join(out_dir, f"rank{rank}.jsonl"), "w", encoding="utf-8") as out:
            for name in names:
                start = time.perf_counter()
                try:
                    globals()[f"case_{name}"](rank)
                    result = "ok"
                except Exception:  # recorded for the test to report
                    result = traceback.format_exc()
                out.write(json.dumps({"case": name, "result": result,
                                      "seconds": time.perf_counter() - start}) + "\n")
                out.flush()
                notes.set(f"{name}/{rank}", "ok" if result == "ok" else "failed")
                keys = [f"{name}/{r}" for r in range(WORLD)]
                notes.wait(keys, datetime.timedelta(seconds=2 * COLLECTIVE_TIMEOUT))
                if any(notes.get(key) != b"ok" for key in keys):
                    dist.destroy_process_group()
                    _join(rank, f"{init_file}.after_{name}")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    import multiprocessing

    out_dir = sys.argv[1]
    os.makedirs(out_dir, exist_ok=True)
    context = multiprocessing.get_context("spawn")
    init_file = os.path.join(out_dir, "rendezvous")
    if os.path.exists(init_file):
        os.remove(init_file)
    workers = [context.Process(target=run, args=(r, init_file, out_dir, CASES))
               for r in range(WORLD)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
