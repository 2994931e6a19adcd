#!/usr/bin/env python3
"""PSA attention against cuDNN dense attention in the same process run (PERFORMANCE.md).

Times torch.nn.functional.scaled_dot_product_attention under the cuDNN backend on the WORKLOADS.md
shapes (bf16, non-causal, CUDA events, median after warm-up, two input sets rotated), then runs the
C++ harness (psa_bench) as a subprocess right after on the same shapes, and prints per plan: PSA
time / cuDNN time, effective TFLOP/s (density x dense FLOPs / time) and its ratio to cuDNN's
TFLOP/s, and the fraction of blocks per level. Writes everything as JSON with --json.

    python3 bench/bench.py --harness build/bench/psa_bench --json out.json
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = {
    "wan1.3b": (1, 12, 32760, 128),
    "cogvideox": (1, 48, 17776, 64),
    "wan14b": (1, 40, 75600, 128),
}


def time_cudnn(shape, iters, warmup):
    b, h, l, d = shape
    sets = [[torch.randn(b, h, l, d, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
            for _ in range(2)]
    times = []
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        for it in range(warmup + iters):
            q, k, v = sets[it % 2]
            start.record()
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
            stop.record()
            stop.synchronize()
            if it >= warmup:
                times.append(start.elapsed_time(stop))
    times.sort()
    del sets
    torch.cuda.empty_cache()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", required=True, help="path of the psa_bench binary")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--plans", default="full,only8x,d0.10,d0.15,d0.30,call")
    parser.add_argument("--block-n", default="64,128")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    names = [s for s in args.shapes.split(",") if s]
    device = torch.cuda.get_device_name(0)
    cudnn = {}
    for name in names:
        ms = time_cudnn(SHAPES[name], args.iters, args.warmup)
        b, h, l, d = SHAPES[name]
        cudnn[name] = {"median_ms": ms, "tflops": 4.0 * b * h * l * l * d / (ms * 1e-3) / 1e12}
        print(f"cuDNN {name}: {ms:.3f} ms, {cudnn[name]['tflops']:.1f} TFLOP/s", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        harness_json = os.path.join(tmp, "psa.json")
        cmd = [args.harness, "--json", harness_json, "--shapes", ",".join(names), "--plans",
               args.plans, "--block-n", args.block_n, "--iters", str(args.iters), "--warmup",
               str(args.warmup)]
        subprocess.run(cmd, check=True)
        with open(harness_json) as f:
            psa = json.load(f)

    print(f"\ndevice: {device}")
    header = (f"{'shape':<10} {'plan':<7} {'bn':>4} {'density':>7} {'levels 0/1/2/4/8':>29} "
              f"{'psa ms':>8} {'cuDNN ms':>8} {'psa/cuDNN':>9} {'eff TF/s':>8} {'eff/cuDNN':>9}")
    print(header)
    rows = []
    for r in psa["rows"]:
        base = cudnn[r["shape"]]
        r = dict(r)
        r["cudnn_ms"] = base["median_ms"]
        r["cudnn_tflops"] = base["tflops"]
        r["time_ratio"] = r["median_ms"] / base["median_ms"]
        r["effective_ratio"] = r["effective_tflops"] / base["tflops"]
        rows.append(r)
        levels = "/".join(f"{x:.3f}" for x in r["level_fraction"])
        print(f"{r['shape']:<10} {r['plan']:<7} {r['block_n']:>4} {r['density']:>7.4f} "
              f"{levels:>29} {r['median_ms']:>8.3f} {base['median_ms']:>8.3f} {r['time_ratio']:>9.3f} "
              f"{r['effective_tflops']:>8.1f} {r['effective_ratio']:>9.3f}")
    calls = [r for r in rows if r["plan"] == "call"]
    if calls:
        print("\nwhole call at the plug-and-play default (block 128x64, topk .1/.15/.15/.35), "
              "as fractions of cuDNN dense time:")
        print(f"{'shape':<10} {'density':>7} {'pyramid':>8} {'estimate':>8} {'planner':>8} "
              f"{'attention':>9} {'est+plan':>8} {'total':>8}")
        for r in calls:
            base = r["cudnn_ms"]
            plan_ms = r["estimate_ms"] + r["planner_ms"]
            r["plan_ratio"] = plan_ms / base
            print(f"{r['shape']:<10} {r['density']:>7.4f} {r['pyramid_ms'] / base:>8.3f} "
                  f"{r['estimate_ms'] / base:>8.3f} {r['planner_ms'] / base:>8.3f} "
                  f"{r['attention_ms'] / base:>9.3f} {plan_ms / base:>8.3f} "
                  f"{r['time_ratio']:>8.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "cudnn": cudnn, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
