#!/usr/bin/env python3
"""PSA against cuDNN dense attention in the same process run (PERFORMANCE.md, issue 8).

Times torch.nn.functional.scaled_dot_product_attention under the cuDNN backend on the model shapes
(bf16, non-causal, CUDA events, median after warm-up, two input sets rotated), then runs the C++
harness (psa_bench) as a subprocess right after on the same shapes. Inputs are structured by
default (the video-DiT-like workload generator, WORKLOADS.md); --inputs random uses i.i.d. normal
data. Prints per row the PSA time / cuDNN time and the kernel's effective TFLOP/s (density x dense
FLOPs / time) against cuDNN's; per shape and block_n the whole call at the default config split
into the plan stage (pyramid + estimator + planner) and the kernel; the plan stage of every
shipped preset. Writes a PNG chart (kernel time / cuDNN against density) and a JSON record,
by default bench/results/<card>.json and .png (e.g. bench/results/h200.json).

    python3 bench/bench.py --harness build/release/bench/psa_bench

Needs: torch with CUDA, the built psa_bench (and psa_chart beside it, for the PNG where
matplotlib is missing). The psa Python package is not needed.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chart import write_chart  # noqa: E402

SHAPES = {
    "wan1.3b": (1, 12, 32760, 128),
    "cogvideox": (1, 48, 17776, 64),
    "wan14b": (1, 40, 75600, 128),
    "wan2.2-5b": (1, 24, 27280, 128),
    "cogvideox1.5": (1, 48, 45106, 64),
}
# Shapes of some presets only (no fixed-plan or default-config rows).
PRESET_ONLY_SHAPES = ("wan2.2-5b", "cogvideox1.5")
# The bars of issue 8 (PERFORMANCE.md, "The bar").
PLAN_BAR = 0.04
KERNEL_EFFICIENCY_BAR = 0.85
WHOLE_BAR = 0.22
RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


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


def card_slug(name):
    """'NVIDIA H200' -> 'h200'; the file name of a card's results."""
    match = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name)
    return match.group(1).lower() if match else "device"


def plan_ms(row):
    return row["pyramid_ms"] + row["estimate_ms"] + row["planner_ms"]


def stage_record(row, cudnn_ms, cudnn_tflops):
    """The ratios and stage times of a whole-call row."""
    return {
        "density": row["density"],
        "level_fraction": row["level_fraction"],
        "whole_over_cudnn": row["median_ms"] / cudnn_ms,
        "plan_over_cudnn": plan_ms(row) / cudnn_ms,
        "kernel_over_cudnn": row["attention_ms"] / cudnn_ms,
        "kernel_efficiency": row["effective_tflops"] / cudnn_tflops,
        "pyramid_ms": row["pyramid_ms"],
        "estimate_ms": row["estimate_ms"],
        "planner_ms": row["planner_ms"],
        "plan_ms": plan_ms(row),
        "attention_ms": row["attention_ms"],
        "whole_ms": row["median_ms"],
        "cudnn_ms": cudnn_ms,
    }


def mark(ok):
    return "ok" if ok else "MISS"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--harness", required=True, help="path of the psa_bench binary")
    parser.add_argument("--chart-tool", default="",
                        help="path of psa_chart (default: beside the harness)")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--plans", default="full,only8x,d0.10,d0.15,d0.30,call,presets")
    parser.add_argument("--block-n", default="64,128")
    parser.add_argument("--inputs", default="structured", choices=("structured", "random"))
    parser.add_argument("--fixed-plans", default="", choices=("", "scores", "random"),
                        help="block ranking of the fixed-density plans (default: scores on "
                             "structured inputs, random otherwise)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", default="", help="default: bench/results/<card>.json")
    parser.add_argument("--png", default="", help="default: the JSON path with .png")
    args = parser.parse_args()

    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    if "presets" not in args.plans.split(","):
        names = [s for s in names if s not in PRESET_ONLY_SHAPES]
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
               args.plans, "--block-n", args.block_n, "--inputs", args.inputs, "--iters",
               str(args.iters), "--warmup", str(args.warmup)]
        if args.fixed_plans:
            cmd += ["--fixed-plans", args.fixed_plans]
        subprocess.run(cmd, check=True)
        with open(harness_json) as f:
            psa = json.load(f)

    print(f"\ndevice: {device}, inputs: {args.inputs}")
    print(f"{'shape':<12} {'plan':<7} {'order':<7} {'bn':>4} {'density':>7} "
          f"{'levels 0/1/2/4/8':>29} {'psa ms':>8} {'cuDNN ms':>8} {'psa/cuDNN':>9} "
          f"{'eff TF/s':>8} {'eff/cuDNN':>9}")
    rows = []
    for r in psa["rows"]:
        base = cudnn[r["shape"]]
        r = dict(r)
        r["cudnn_ms"] = base["median_ms"]
        r["cudnn_tflops"] = base["tflops"]
        r["time_ratio"] = r["median_ms"] / base["median_ms"]
        r["effective_ratio"] = r["effective_tflops"] / base["tflops"]
        rows.append(r)
        if r["plan"] == "preset":
            continue
        levels = "/".join(f"{x:.3f}" for x in r["level_fraction"])
        print(f"{r['shape']:<12} {r['plan']:<7} {r['order']:<7} {r['block_n']:>4} "
              f"{r['density']:>7.4f} {levels:>29} {r['median_ms']:>8.3f} {base['median_ms']:>8.3f} "
              f"{r['time_ratio']:>9.3f} {r['effective_tflops']:>8.1f} {r['effective_ratio']:>9.3f}")

    results = {}
    calls = [r for r in rows if r["plan"] == "call"]
    if calls:
        print(f"\nwhole call at the plug-and-play default (block 128 x block_n, topk "
              f".1/.15/.15/.35), as fractions of cuDNN dense time (bars: plan <= {PLAN_BAR}, "
              f"kernel efficiency >= {KERNEL_EFFICIENCY_BAR}, whole <= {WHOLE_BAR}):")
        print(f"{'shape':<12} {'bn':>4} {'density':>7} {'pyramid':>8} {'estimate':>8} "
              f"{'planner':>8} {'plan':>6} {'':>4} {'kernel':>7} {'k eff':>6} {'':>4} "
              f"{'whole':>6} {'':>4}")
        for r in calls:
            rec = stage_record(r, r["cudnn_ms"], r["cudnn_tflops"])
            results.setdefault(r["shape"], {})[str(r["block_n"])] = rec
            base = r["cudnn_ms"]
            print(f"{r['shape']:<12} {r['block_n']:>4} {r['density']:>7.4f} "
                  f"{r['pyramid_ms'] / base:>8.3f} {r['estimate_ms'] / base:>8.3f} "
                  f"{r['planner_ms'] / base:>8.3f} {rec['plan_over_cudnn']:>6.3f} "
                  f"{mark(rec['plan_over_cudnn'] <= PLAN_BAR):>4} {rec['kernel_over_cudnn']:>7.3f} "
                  f"{rec['kernel_efficiency']:>6.3f} "
                  f"{mark(rec['kernel_efficiency'] >= KERNEL_EFFICIENCY_BAR):>4} "
                  f"{rec['whole_over_cudnn']:>6.3f} {mark(rec['whole_over_cudnn'] <= WHOLE_BAR):>4}")

    kernel_rows = {}
    for r in rows:
        if r["plan"] in ("d0.10", "d0.15", "d0.30"):
            kernel_rows.setdefault(r["shape"], {}).setdefault(str(r["block_n"]), {})[r["plan"]] = {
                "order": r["order"], "density": r["density"],
                "kernel_over_cudnn": r["time_ratio"], "kernel_efficiency": r["effective_ratio"],
                "attention_ms": r["attention_ms"]}

    presets = []
    preset_rows = [r for r in rows if r["plan"] == "preset"]
    if preset_rows:
        print(f"\nshipped presets on their model's shape, as fractions of cuDNN dense time "
              f"(bar: plan <= {PLAN_BAR}):")
        print(f"{'preset':<32} {'shape':<12} {'bn':>4} {'density':>7} {'pyramid':>8} "
              f"{'estimate':>8} {'planner':>8} {'plan':>6} {'':>4} {'kernel':>7} {'whole':>6}")
        for r in preset_rows:
            rec = stage_record(r, r["cudnn_ms"], r["cudnn_tflops"])
            rec.update(preset=r["preset"], shape=r["shape"], block_n=r["block_n"])
            presets.append(rec)
            base = r["cudnn_ms"]
            print(f"{r['preset']:<32} {r['shape']:<12} {r['block_n']:>4} {r['density']:>7.4f} "
                  f"{r['pyramid_ms'] / base:>8.3f} {r['estimate_ms'] / base:>8.3f} "
                  f"{r['planner_ms'] / base:>8.3f} {rec['plan_over_cudnn']:>6.3f} "
                  f"{mark(rec['plan_over_cudnn'] <= PLAN_BAR):>4} {rec['kernel_over_cudnn']:>7.3f} "
                  f"{rec['whole_over_cudnn']:>6.3f}")

    json_path = args.json or os.path.join(RESULTS_DIR, card_slug(device) + ".json")
    png_path = args.png or os.path.splitext(json_path)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    record = {"card": device, "device": device, "inputs": args.inputs,
              "fixed_plans": psa.get("fixed_plans"),
              "torch": torch.__version__, "cudnn": cudnn, "results": results,
              "kernel": kernel_rows, "presets": presets, "rows": rows}
    with open(json_path, "w") as f:
        json.dump(record, f, indent=2)
    print(f"\nwrote {json_path}")

    series = []
    for shape in results:
        for bn in results[shape]:
            points = kernel_rows.get(shape, {}).get(bn, {})
            xs = [p["density"] for p in points.values()] + [results[shape][bn]["density"]]
            ys = [p["kernel_over_cudnn"] for p in points.values()] + \
                 [results[shape][bn]["kernel_over_cudnn"]]
            series.append({"name": f"{shape} bn{bn}", "x": xs, "y": ys})
    if series:
        top = max(max(s["x"]) for s in series)
        series.append({"name": "cuDNN efficiency", "x": [0.0, top], "y": [0.0, top]})
        series.append({"name": f"{KERNEL_EFFICIENCY_BAR} of cuDNN", "x": [0.0, top],
                       "y": [0.0, top / KERNEL_EFFICIENCY_BAR]})
        chart_tool = args.chart_tool or os.path.join(os.path.dirname(args.harness), "psa_chart")
        how = write_chart({"title": f"PSA kernel time / cuDNN ({device}, {args.inputs} inputs)",
                           "x_label": "density", "y_label": "kernel time / cuDNN dense time",
                           "series": series}, png_path, chart_tool)
        if how:
            print(f"wrote {png_path} ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
