#!/usr/bin/env python3
"""One denoising step of Wan2.1-shaped transformers, random weights, bf16, on the GPU: the
unpatched model (its own dense attention) against the same model with PSA applied through
psa.integrations.diffusers, in the same process, one forward per timing (CUDA events, median).

  wan1.3b  Wan2.1 1.3B at 480p (81 frames: 21 x 30 x 52 = 32,760 tokens), 30 layers;
  wan14b   Wan2.1 14B at 720p (81 frames: 21 x 45 x 80 = 75,600 tokens), 40 heads x 128, 5120 dim;
           --layers-14b (default 40, the full model) takes fewer layers where memory or time
           requires; every block is identical, so the ratio of a shorter stack is that of the full
           model up to the embedding and output layers. The output and the JSON say how many.

Prints the two times and their ratio per model, and writes JSON with --json. About 2 minutes on an
H200 for both models.

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

# diffusers' Wan2.1-T2V-1.3B and Wan2.1-T2V-14B transformer configurations.
WAN21_13B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                 in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960,
                 num_layers=30, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                 rope_max_seq_len=1024)
WAN21_14B = dict(WAN21_13B, num_attention_heads=40, ffn_dim=13824, num_layers=40)

# name: (label, config, latent frames, latent height, latent width)
MODELS = {
    "wan1.3b": ("Wan2.1 1.3B, 480p", WAN21_13B, 21, 60, 104),
    "wan14b": ("Wan2.1 14B, 720p", WAN21_14B, 21, 90, 160),
}


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


def build_model(config):
    """Random weights created on the GPU in bf16 (a 14B model initialised on the CPU in fp32 would
    take minutes and 56 GB)."""
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = diffusers.WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    return model.to("cuda", torch.bfloat16).eval()


def run_model(name, layers, preset, iters):
    label, config, frames, height, width = MODELS[name]
    full_layers = config["num_layers"]
    layers = full_layers if layers <= 0 else min(layers, full_layers)
    model = build_model(dict(config, num_layers=layers))
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = dict(
        hidden_states=torch.randn(1, 16, frames, height, width, generator=g, device="cuda",
                                  dtype=torch.bfloat16),
        timestep=torch.tensor([500], device="cuda"),
        encoder_hidden_states=torch.randn(1, 512, 4096, generator=g, device="cuda",
                                          dtype=torch.bfloat16),
        return_dict=False)
    tokens = frames * (height // 2) * (width // 2)

    t0 = time.time()
    dense_ms = time_step(model, inputs, iters)
    handle = psa_diffusers.apply(model, preset=preset or None, warmup_steps=0)
    handle.set_step(0)
    psa_ms = time_step(model, inputs, iters)
    calls, fallback_calls = handle.calls, handle.fallback_calls
    psa_diffusers.remove(model)
    # The density from one more forward with statistics on, outside the timing (the statistics
    # copy plan figures to the host after every call).
    stats_path = os.path.join(tempfile.mkdtemp(), "stats.jsonl")
    handle = psa_diffusers.apply(model, preset=preset or None, warmup_steps=0,
                                 stats_path=stats_path)
    handle.set_step(0)
    with torch.no_grad():
        model(**inputs)
    psa_diffusers.remove(model)
    with open(stats_path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    densities = [r["density"] for r in records]
    density = sum(densities) / max(len(densities), 1)
    result = dict(model=name, label=label, tokens=tokens, layers=layers, full_layers=full_layers,
                  heads=config["num_attention_heads"], head_dim=config["attention_head_dim"],
                  preset=preset or "plug-and-play default", mean_density=density,
                  dense_step_ms=dense_ms, psa_step_ms=psa_ms, ratio=psa_ms / dense_ms,
                  psa_calls=calls, fallback_calls=fallback_calls,
                  wall_s=time.time() - t0)
    layer_note = "" if layers == full_layers else f", {layers} of its {full_layers} layers"
    print(f"{label}-shaped transformer step, {tokens} tokens{layer_note}, bf16, "
          f"{torch.cuda.get_device_name()}")
    print(f"  dense (model's own attention): {dense_ms:8.1f} ms")
    print(f"  PSA ({result['preset']}, mean density {density:.3f}): {psa_ms:8.1f} ms   "
          f"ratio {psa_ms / dense_ms:.3f}")
    print(f"  PSA calls {calls}, fallback calls {fallback_calls}", flush=True)
    del model, inputs
    torch.cuda.empty_cache()
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="wan1.3b,wan14b",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--preset", default="",
                        help="model:name (default: the plug-and-play topk configuration)")
    parser.add_argument("--layers-14b", type=int, default=40,
                        help="transformer blocks of the 14B model (40 = all)")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: {', '.join(MODELS)})")

    steps = [run_model(name, args.layers_14b if name == "wan14b" else 0, args.preset, args.iters)
             for name in names]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), steps=steps), f, indent=2)


if __name__ == "__main__":
    main()
