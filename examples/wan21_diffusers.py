"""Text-to-video with diffusers' Wan 2.1 pipeline and Pyramid Sparse Attention.

    python examples/wan21_diffusers.py --model-dir /models/Wan2.1-T2V-1.3B-Diffusers \
        --prompt "A cat walks on the grass, realistic" --output cat.mp4

The model directory is a local copy of a diffusers-format Wan 2.1 checkpoint (nothing is
downloaded). --preset picks a PSA preset (psa.list_presets() lists them); --dense runs the
unpatched pipeline for comparison; --stats writes per-call plan statistics as JSON lines.
"""

import argparse
import time

import torch

import psa.integrations.diffusers as psa_diffusers


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="local diffusers-format Wan 2.1 model")
    parser.add_argument("--prompt", default="A cat walks on the grass, realistic")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--preset", default="Wan2.1_1.3b:psa_balanced")
    parser.add_argument("--dense", action="store_true", help="run without PSA")
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=832)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stats", default=None, help="JSON-lines file of plan statistics")
    parser.add_argument("--output", default="wan21_psa.mp4")
    return parser.parse_args()


def main():
    args = parse_args()
    from diffusers import AutoencoderKLWan, WanPipeline
    from diffusers.utils import export_to_video

    # Wan's VAE is kept in float32 as its authors recommend; the transformer runs in bf16.
    vae = AutoencoderKLWan.from_pretrained(args.model_dir, subfolder="vae",
                                           torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(args.model_dir, vae=vae, torch_dtype=torch.bfloat16)
    pipe.to("cuda")

    if not args.dense:
        handle = psa_diffusers.apply(pipe, preset=args.preset, stats_path=args.stats)
        print(f"PSA: {args.preset}, warm-up {handle.warmup_steps} dense steps, "
              f"rearrangement {handle.rearrange}, {handle.config}")

    generator = torch.Generator("cuda").manual_seed(args.seed)
    start = time.perf_counter()
    frames = pipe(prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height,
                  width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, generator=generator).frames[0]
    torch.cuda.synchronize()
    print(f"generated {len(frames)} frames in {time.perf_counter() - start:.1f} s")

    if not args.dense:
        psa_diffusers.remove(pipe)
    export_to_video(frames, args.output, fps=16)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
