#!/usr/bin/env python3
"""One denoising step of a Wan2.1 1.3B-shaped transformer at 480p (81 frames: 21 x 30 x 52 =
32,760 tokens), random weights, bf16, on the GPU: the unpatched model (its own dense attention)
against the same model with PSA applied through psa.integrations.diffusers, in the same process.
Prints the two times and their ratio, and writes JSON with --json.

    python3 bench/wan_step.py --json wan_step.json

The default is the plug-and-play topk configuration (density 0.15): with random weights attention
is nearly uniform, so a thresholdbound preset (which keeps a fraction of the attention mass) would
keep most blocks and say nothing about a trained model's speed.
"""
import argparse
import json
import os
import tempfile
import time

import torch

import diffusers
import psa.integrations.diffusers as psa_diffusers

# diffusers' Wan2.1-T2V-1.3B transformer configuration.
WAN21_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                 in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                 num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                 rope_max_seq_len=1024)


def time_step(model, inputs, iters):
    """Median milliseconds of one forward (CUDA events), after one warm-up forward."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    with torch.no_grad():
        model(**inputs)
        for _ in range(iters):
            start.record()
            model(**inputs)
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="",
                        help="model:name (default: the plug-and-play topk configuration)")
    parser.add_argument("--frames", type=int, default=21, help="latent frames (81 video frames)")
    parser.add_argument("--height", type=int, default=60, help="latent height (480 / 8)")
    parser.add_argument("--width", type=int, default=104, help="latent width (832 / 8)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = diffusers.WanTransformer3DModel(**WAN21_13B).to("cuda", torch.bfloat16).eval()
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, args.frames, args.height, args.width, generator=g,
                                  device="cuda", dtype=torch.bfloat16),
        timestep=torch.tensor([500], device="cuda"),
        encoder_hidden_states=torch.randn(1, 512, 4096, generator=g, device="cuda",
                                          dtype=torch.bfloat16),
        return_dict=False)
    tokens = args.frames * (args.height // 2) * (args.width // 2)

    t0 = time.time()
    dense_ms = time_step(model, inputs, args.iters)
    stats_path = os.path.join(tempfile.mkdtemp(), "stats.jsonl")
    handle = psa_diffusers.apply(model, preset=args.preset or None, warmup_steps=0,
                                 stats_path=stats_path)
    handle.set_step(0)
    psa_ms = time_step(model, inputs, args.iters)
    psa_diffusers.remove(model)
    with open(stats_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    densities = [r["density"] for r in records]
    density = sum(densities) / max(len(densities), 1)

    result = dict(device=torch.cuda.get_device_name(), tokens=tokens, layers=30,
                  preset=args.preset or "plug-and-play default", mean_density=density,
                  dense_step_ms=dense_ms, psa_step_ms=psa_ms,
                  ratio=psa_ms / dense_ms, psa_calls=handle.calls,
                  fallback_calls=handle.fallback_calls, wall_s=time.time() - t0)
    print(f"Wan2.1 1.3B-shaped transformer step, {tokens} tokens, bf16, {result['device']}")
    print(f"  dense (model's own attention): {dense_ms:8.1f} ms")
    print(f"  PSA ({result['preset']}, mean density {density:.3f}): {psa_ms:8.1f} ms   "
          f"ratio {psa_ms / dense_ms:.3f}")
    print(f"  PSA calls {handle.calls}, fallback calls {handle.fallback_calls}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
