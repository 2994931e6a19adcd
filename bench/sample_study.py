#!/usr/bin/env python3
"""How the estimator's sample counts trade error for plan time (issue 8 item 1), on the GPU.

On the video-DiT-like workload generator (WORKLOADS.md) at the full model shapes: Wan2.1 1.3B
(21 x 30 x 52, 12 heads x 128), CogVideoX 5B (226 text tokens first + 13 x 30 x 45, 48 heads x
64) and Wan2.1 14B (21 x 45 x 80, 40 heads x 128; errors on --heads-14b of them, 8 by default, to
keep the fp32 reference and the run short: the generator's head kinds cycle, so 8 heads hold every
kind; the plan is timed on all 40 heads, the 8 repeated).
For every configuration and every (samples_m, samples_n):
  - the plan stage on the full shape (all heads): estimator + planner (psa.plan), median of
    CUDA-event timings, also as a fraction of cuDNN dense attention time measured in the same run;
  - the PSA output against dense attention: relative L2 error and mean / 1st-percentile cosine
    similarity per row. The reference is fp32 SDPA (memory-efficient backend) on the bf16 inputs
    upcast to fp32;
  - the yardstick: binary block-sparse attention (levels 1 and 0 only) at the same density row by
    row (each row keeps its round(density * Nk) highest-scoring blocks by the same estimate).
Configurations: the default topk (.1/.15/.15/.35) at block_n 64 and 128, and two thresholdbound
presets at block_n 128, Wan2.1_1.3b:psa_balanced (similarity cap on) and Wan2.1_14b:psa_balanced
(cap off). Sample counts at block 128 x 64: (32,16) (block/4: the original's default, ours before this
study, and the base every point is compared with), (16,16), (16,8), (8,8), (8,4); at block_n 128:
(32,32) (block/4), (16,16), (16,8).

Prints a table with each point's change against its configuration's default, writes JSON and a
PNG (error against plan time), by default bench/results/sample_study_<card>.{json,png}. About two
minutes on an H200.

    python3 bench/sample_study.py --chart-tool build/release/bench/psa_chart

Needs: torch with CUDA and psa (the wheel) on PYTHONPATH.
"""
import argparse
import json
import os
import re
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

import psa
import psa.workload
from psa import _C

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chart import write_chart  # noqa: E402

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")

# name: (label, frames, height, width, text tokens first, heads, head dim)
SHAPES = {
    "wan1.3b": ("Wan2.1 1.3B", 21, 30, 52, 0, 12, 128),
    "cogvideox": ("CogVideoX 5B", 13, 30, 45, 226, 48, 64),
    "wan14b": ("Wan2.1 14B", 21, 45, 80, 0, 40, 128),
}
SAMPLES = {
    64: [(32, 16), (16, 16), (16, 8), (8, 8), (8, 4)],
    128: [(32, 32), (16, 16), (16, 8)],
}
# name: (config source, block_n): None is the plug-and-play default.
CONFIGS = {
    "topk bn64": (None, 64),
    "topk bn128": (None, 128),
    "tb+cap bn128": ("Wan2.1_1.3b:psa_balanced", 128),
    "tb bn128": ("Wan2.1_14b:psa_balanced", 128),
}
PLAN_RUNS = 7


def card_slug(name):
    match = re.search(r"\b([A-Z]+\d+[A-Za-z]*)\b", name)
    return match.group(1).lower() if match else "device"


def events_median(fn, runs):
    """Median milliseconds of fn() on the device, after one warm-up call."""
    fn()
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(runs):
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def cudnn_ms(heads, seq, dim):
    q, k, v = (torch.randn(1, heads, seq, dim, device="cuda", dtype=torch.bfloat16)
               for _ in range(3))
    with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
        ms = events_median(lambda: F.scaled_dot_product_attention(q, k, v), 5)
    del q, k, v
    torch.cuda.empty_cache()
    return ms


def reference(q, k, v):
    """Dense attention in fp32 on the upcast inputs, head by head (memory-efficient SDPA)."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        for h in range(q.shape[1]):
            out[:, h:h + 1] = F.scaled_dot_product_attention(
                q[:, h:h + 1].float(), k[:, h:h + 1].float(), v[:, h:h + 1].float())
    return out


def errors(out, ref):
    """Relative L2 error, and the mean and 1st percentile of the cosine similarity per row."""
    out = out.float()
    rel = float((out - ref).norm() / ref.norm())
    cos = F.cosine_similarity(out, ref, dim=-1).flatten()
    return rel, float(cos.mean()), float(torch.quantile(cos, 0.01))


def scores_of(q, k, config):
    """The estimator's block scores (B, H, Mq, Nk) fp32 under `config`."""
    b, h, lq, _ = q.shape
    lk = k.shape[2]
    mq, nk = -(-lq // config.block_m), -(-lk // config.block_n)
    scores = torch.empty(b, h, mq, nk, device=q.device, dtype=torch.float32)
    _C.estimate_importance(scores, q, k, config.to_native(), psa.ops._stream(q))
    return scores


def binary_at_density(q, k, v, plan, config):
    """Binary block-sparse attention keeping, in each row, round(row density * Nk) blocks (at
    least one), the highest-scoring by the same estimate."""
    nk = plan.shape[3]
    weights = torch.tensor([1.0, 0.5, 0.25, 0.125], dtype=torch.float64, device=q.device)
    row_density = (plan.counts.to(torch.float64) * weights).sum(-1) / nk
    keep = torch.clamp(torch.round(row_density * nk), min=1).to(torch.int64)
    order = scores_of(q, k, config).argsort(dim=-1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(nk, device=q.device).expand_as(order).contiguous())
    levels = (rank < keep[..., None]).to(torch.uint8)
    binary_config = config.replace(sim_cap=False)
    binary = psa.plan_from_levels(levels, binary_config, seq_q=q.shape[2], seq_k=k.shape[2])
    return psa.attention(q, k, v, plan=binary)


def study_shape(name, heads_14b, seed):
    label, frames, height, width, text, heads, dim = SHAPES[name]
    full_heads = heads
    if name == "wan14b":
        heads = min(heads, heads_14b)
    t0 = time.time()
    q, k, v = (torch.from_numpy(np.ascontiguousarray(t)).to("cuda", torch.bfloat16)
               for t in psa.workload.video_workload(frames, height, width, heads, dim,
                                                    text_len=text, text_position="start",
                                                    seed=seed))
    seq = q.shape[2]
    generated_s = time.time() - t0
    # The plan is timed on the full shape: a subset of heads repeated up to all of them.
    reps = -(-full_heads // heads)
    q_time, k_time = (t.repeat(1, reps, 1, 1)[:, :full_heads].contiguous() for t in (q, k))
    dense_ms = cudnn_ms(full_heads, seq, dim)
    ref = reference(q, k, v)
    assert torch.isfinite(ref).all() and ref.norm() > 0, "the dense reference is empty"
    head_note = "" if heads == full_heads else f", {heads} of its {full_heads} heads"
    print(f"\n{label}: (1, {heads}, {seq}, {dim}){head_note}; workload {generated_s:.1f} s; "
          f"cuDNN dense (all {full_heads} heads) {dense_ms:.3f} ms", flush=True)
    print(f"{'config':<14} {'samples':>8} {'density':>7} {'plan ms':>8} {'x default':>9} "
          f"{'plan/cuDNN':>10} {'rel L2':>8} {'d rel L2':>8} {'cos':>8} {'cos p01':>8} "
          f"{'binary L2':>9}")
    points = []
    for config_name, (selector, block_n) in CONFIGS.items():
        base = psa.default_config() if selector is None else psa.load_preset(selector).config
        base = base.replace(block_n=block_n, tile_n=min(base.tile_n, block_n))
        if text:
            base = base.replace(text_len=text, text_position="start")
        default = None
        for samples_m, samples_n in SAMPLES[block_n]:
            config = base.replace(samples_m=samples_m, samples_n=samples_n)
            plan = psa.plan(q, k, config)
            plan_ms = events_median(lambda: psa.plan(q_time, k_time, config), PLAN_RUNS)
            out = psa.attention(q, k, v, plan=plan)
            rel, cos, cos_p01 = errors(out, ref)
            binary_rel, _, _ = errors(binary_at_density(q, k, v, plan, config), ref)
            point = dict(shape=name, heads=heads, full_heads=full_heads, seq=seq, head_dim=dim,
                         config=config_name, preset=selector or "default", block_n=block_n,
                         mode=config.mode, sim_cap=config.sim_cap, samples_m=samples_m,
                         samples_n=samples_n, density=float(plan.density), plan_ms=plan_ms,
                         cudnn_ms=dense_ms,
                         plan_over_cudnn=plan_ms / dense_ms,
                         rel_l2=rel, cos_mean=cos, cos_p01=cos_p01, binary_rel_l2=binary_rel)
            if default is None:
                default = point
            point["rel_l2_change"] = rel - default["rel_l2"]
            point["plan_time_ratio"] = plan_ms / default["plan_ms"]
            points.append(point)
            print(f"{config_name:<14} {f'{samples_m}x{samples_n}':>8} {point['density']:>7.4f} "
                  f"{plan_ms:>8.3f} {point['plan_time_ratio']:>9.2f} "
                  f"{point['plan_over_cudnn']:>10.4f} {rel:>8.4f} {point['rel_l2_change']:>+8.4f} "
                  f"{cos:>8.5f} {cos_p01:>8.5f} {binary_rel:>9.4f}", flush=True)
    del q, k, v, ref, q_time, k_time
    torch.cuda.empty_cache()
    return points


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--heads-14b", type=int, default=8,
                        help="heads of the Wan2.1 14B shape to study (40 = all)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--json", default="",
                        help="default: bench/results/sample_study_<card>.json")
    parser.add_argument("--png", default="", help="default: the JSON path with .png")
    parser.add_argument("--chart-tool", default="",
                        help="psa_chart, for the PNG where matplotlib is missing")
    args = parser.parse_args()
    names = [s for s in args.shapes.split(",") if s]
    unknown = [s for s in names if s not in SHAPES]
    if unknown:
        parser.error(f"--shapes: unknown {', '.join(unknown)} (known: {', '.join(SHAPES)})")
    if not psa.cuda_available():
        sys.exit("sample_study.py needs a Hopper GPU and psa built with CUDA")

    device = torch.cuda.get_device_name()
    t0 = time.time()
    print(f"device: {device}; reference: fp32 SDPA on the upcast bf16 inputs; plan time: "
          f"estimator + planner (psa.plan), median of {PLAN_RUNS}")
    points = []
    for name in names:
        points += study_shape(name, args.heads_14b, args.seed)

    json_path = args.json or os.path.join(RESULTS_DIR, f"sample_study_{card_slug(device)}.json")
    png_path = args.png or os.path.splitext(json_path)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(dict(card=device, reference="fp32 SDPA (memory-efficient) on upcast bf16 inputs",
                       plan_time="estimator + planner (psa.plan), CUDA events, median",
                       heads_14b=args.heads_14b, seed=args.seed, points=points,
                       wall_s=time.time() - t0), f, indent=2)
    print(f"\nwrote {json_path} ({time.time() - t0:.0f} s)")

    series = {}
    for p in points:
        s = series.setdefault(f"{p['shape']} {p['config']}", {"x": [], "y": []})
        s["x"].append(p["plan_over_cudnn"])
        s["y"].append(p["rel_l2"])
    how = write_chart({"title": f"PSA error against plan time by sample count ({device})",
                       "x_label": "plan time / cuDNN dense time",
                       "y_label": "relative L2 error vs dense", "y_from_zero": False,
                       "series": [dict(name=n, **s) for n, s in series.items()]},
                      png_path, args.chart_tool)
    if how:
        print(f"wrote {png_path} ({how})")


if __name__ == "__main__":
    main()
