#!/usr/bin/env python3
"""Attention for training: PSA forward + backward against cuDNN in the same process.

Structured inputs from psa's video-DiT-like workload generator at the model shapes of WORKLOADS.md
(bf16, CUDA). For each shape, in one process:
  cuDNN   scaled_dot_product_attention under the cuDNN backend: forward, backward of (out * g).sum()
          with a random g, and the two together;
  PSA     the plug-and-play default plan (block 128 x 64, topk .1/.15/.15/.35; causal for the
          Qwen2.5-VL-like prefill): plan (estimator + planner), forward kernel, backward kernel in
          the deterministic and the order-dependent accumulation, and the whole forward + backward
          through psa.attention and autograd (plan included).
Prints times, ratios to cuDNN, density per level, and effective TFLOP/s: the backward's kept work
is density x the dense backward FLOPs (2.5 x the forward's 4 B H Lq Lk D; cuDNN causal counts
half of the dense FLOPs). CUDA events, median of --iters runs after --warmup, two input sets
rotated. --json writes the rows.

    python3 bench/train_bench.py --json train.json
"""
import argparse
import json
import sys

import numpy as np
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import psa
from psa import _C
from psa.workload import video_workload

# name: heads, kv heads, head dim, token grid (T, H, W), text tokens (first), causal, generated
# heads (the generator runs on the CPU; Wan2.1 14B's 40 heads repeat 8 generated ones).
SHAPES = {
    "wan1.3b": dict(heads=12, kv=12, dim=128, grid=(21, 30, 52), text=0, causal=False, gen=12),
    "cogvideox": dict(heads=48, kv=48, dim=64, grid=(13, 30, 45), text=226, causal=False, gen=48),
    "wan14b": dict(heads=40, kv=40, dim=128, grid=(21, 45, 80), text=0, causal=False, gen=8),
    "qwen-causal": dict(heads=28, kv=4, dim=128, grid=(16, 32, 32), text=0, causal=True, gen=28),
}


def structured_inputs(spec, seed):
    t, h, w = spec["grid"]
    gen = spec["gen"]
    gen_kv = gen * spec["kv"] // spec["heads"]
    q, k, v = video_workload(t, h, w, gen, spec["dim"], heads_kv=gen_kv, text_len=spec["text"],
                             text_position="start", seed=seed)
    reps = spec["heads"] // gen
    out = []
    for x in (q, k, v):
        x = torch.from_numpy(np.ascontiguousarray(x)).to("cuda", torch.bfloat16)
        out.append(x.repeat(1, reps, 1, 1).contiguous() if reps > 1 else x)
    return out


def timed(fn, sets, iters, warmup):
    """Median ms of fn(inputs) over rotated input sets (CUDA events)."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for it in range(warmup + iters):
        inputs = sets[it % len(sets)]
        start.record()
        fn(inputs)
        stop.record()
        stop.synchronize()
        if it >= warmup:
            times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def cudnn_times(sets, causal, group, iters, warmup):
    def expand(x):
        return x.repeat_interleave(group, dim=1) if group > 1 else x

    leaves = []
    for q, k, v, g in sets:
        leaves.append([q.detach().requires_grad_(), expand(k).detach().requires_grad_(),
                       expand(v).detach().requires_grad_(), g])

    def forward(x):
        with torch.no_grad():
            torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=causal)

    def both(x):
        out = torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=causal)
        torch.autograd.grad(out, x[:3], x[3])

    def backward(item):
        out, x = item
        torch.autograd.grad(out, x[:3], x[3], retain_graph=True)

    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        fwd = timed(forward, leaves, iters, warmup)
        graphs = []
        for x in leaves:
            out = torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2],
                                                                   is_causal=causal)
            graphs.append((out, x))
        bwd = timed(backward, graphs, iters, warmup)
        total = timed(both, leaves, iters, warmup)
    return fwd, bwd, total


def psa_backward_call(plan, q, k, v, out, lse, g, deterministic):
    """The backward kernel alone through the library (no autograd), in either accumulation."""
    native = plan.config.replace(deterministic=deterministic).to_native()
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    nbytes = _C.attention_backward_workspace_bytes(g, q, k, plan.counts, plan.blocks,
                                                   plan.block_m, plan.block_n, native)
    workspace = q.new_empty((max(nbytes, 1),), dtype=torch.uint8)
    stream = torch.cuda.current_stream().cuda_stream

    def run():
        _C.attention_backward(dq, dk, dv, g, q, k, v, out, lse, plan.counts, plan.blocks,
                              plan.block_m, plan.block_n, native, workspace, stream)
    return run, (dq, dk, dv)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    device = torch.cuda.get_device_name(0)
    print(f"device: {device}", flush=True)
    rows = []
    for name in [s for s in args.shapes.split(",") if s]:
        spec = SHAPES[name]
        causal, group = spec["causal"], spec["heads"] // spec["kv"]
        sets = []
        for seed in (0, 1):
            q, k, v = structured_inputs(spec, seed)
            sets.append((q, k, v, torch.randn_like(q)))
        b, h, l, d = sets[0][0].shape
        dense_fwd_flops = 4.0 * b * h * l * l * d
        cudnn_fwd, cudnn_bwd, cudnn_total = cudnn_times(sets, causal, group, args.iters,
                                                        args.warmup)
        cudnn_flops = dense_fwd_flops * (0.5 if causal else 1.0)
        config = psa.default_config().replace(causal=causal)

        plans = [psa.plan(x[0], x[1], config) for x in sets]
        plan_ms = timed(lambda x: psa.plan(x[0], x[1], config), sets, args.iters, args.warmup)
        stats = plans[0].statistics()
        density = stats["density"]
        fwd_ms = timed(lambda i: psa.attention(sets[i][0], sets[i][1], sets[i][2], plan=plans[i]),
                       [0, 1], args.iters, args.warmup)
        forwards = [psa.attention(x[0], x[1], x[2], plan=p, return_lse=True)
                    for x, p in zip(sets, plans)]
        bwd = {}
        for deterministic in (True, False):
            calls = [psa_backward_call(p, x[0], x[1], x[2], f[0], f[1], x[3], deterministic)[0]
                     for x, p, f in zip(sets, plans, forwards)]
            bwd[deterministic] = timed(lambda i: calls[i](), [0, 1], args.iters, args.warmup)

        leaves = [[x[0].detach().requires_grad_(), x[1].detach().requires_grad_(),
                   x[2].detach().requires_grad_(), x[3]] for x in sets]

        def whole(x):
            out = psa.attention(x[0], x[1], x[2], config=config)
            torch.autograd.grad(out, x[:3], x[3])
        total_ms = timed(whole, leaves, args.iters, args.warmup)

        kept_bwd_flops = 2.5 * dense_fwd_flops * density
        row = {
            "shape": name, "B_H_L_D": [b, h, l, d], "kv_heads": spec["kv"], "causal": causal,
            "density": density, "level_fractions": stats["level_fractions"],
            "cudnn_fwd_ms": cudnn_fwd, "cudnn_bwd_ms": cudnn_bwd, "cudnn_total_ms": cudnn_total,
            "cudnn_bwd_tflops": 2.5 * cudnn_flops / (cudnn_bwd * 1e-3) / 1e12,
            "psa_plan_ms": plan_ms, "psa_fwd_ms": fwd_ms, "psa_bwd_det_ms": bwd[True],
            "psa_bwd_nondet_ms": bwd[False], "psa_total_ms": total_ms,
        }
        row["psa_bwd_det_tflops"] = kept_bwd_flops / (bwd[True] * 1e-3) / 1e12
        row["psa_bwd_nondet_tflops"] = kept_bwd_flops / (bwd[False] * 1e-3) / 1e12
        row["total_ratio"] = total_ms / cudnn_total
        row["bwd_eff_ratio_det"] = row["psa_bwd_det_tflops"] / row["cudnn_bwd_tflops"]
        row["bwd_eff_ratio_nondet"] = row["psa_bwd_nondet_tflops"] / row["cudnn_bwd_tflops"]
        rows.append(row)
        levels = "/".join(f"{x:.3f}" for x in stats["level_fractions"].values())
        print(f"{name}: (B,H,L,D)=({b},{h},{l},{d}) kv={spec['kv']} causal={causal} "
              f"density {density:.4f} levels 0/1/2/4/8 {levels}", flush=True)
        print(f"  cuDNN fwd {cudnn_fwd:.3f} ms, bwd {cudnn_bwd:.3f} ms "
              f"({row['cudnn_bwd_tflops']:.0f} TFLOP/s), fwd+bwd {cudnn_total:.3f} ms", flush=True)
        print(f"  PSA plan {plan_ms:.3f}, fwd {fwd_ms:.3f}, bwd det {bwd[True]:.3f} "
              f"({row['psa_bwd_det_tflops']:.0f} eff TFLOP/s, {row['bwd_eff_ratio_det']:.2f} of "
              f"cuDNN's), bwd order-dependent {bwd[False]:.3f} ({row['bwd_eff_ratio_nondet']:.2f}),"
              f" fwd+bwd with plan {total_ms:.3f} ms = {row['total_ratio']:.3f} of cuDNN",
              flush=True)
        del sets, leaves, plans, forwards
        torch.cuda.empty_cache()

    print(f"\n{'shape':<12} {'density':>7} {'total/cuDNN':>11} {'bwd det eff/cuDNN':>17} "
          f"{'bwd nondet eff/cuDNN':>20}")
    for r in rows:
        print(f"{r['shape']:<12} {r['density']:>7.4f} {r['total_ratio']:>11.3f} "
              f"{r['bwd_eff_ratio_det']:>17.3f} {r['bwd_eff_ratio_nondet']:>20.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
