"""Text-to-video with diffusers' Wan 2.1 pipeline on several GPUs: Ulysses sequence parallelism
(diffusers' context parallelism) with Pyramid Sparse Attention.

    torchrun --nproc-per-node 2 examples/wan21_multi_gpu.py \
        --model-dir /models/Wan2.1-T2V-14B-Diffusers --output cat.mp4

Every rank loads the whole pipeline and holds a contiguous shard of the video tokens in each
transformer block; in each self-attention psa's processor trades the sequence split for a head
split (all-to-all), plans and runs PSA on the whole sequence for its heads (the same plan one GPU
computes), and trades back. The lines a single-GPU script adds are marked "several GPUs". The
Ulysses degree must divide the number of attention heads (40 for Wan2.1 14B: 2, 4, 5 or 8 GPUs;
12 for 1.3B: 2, 3, 4 or 6).
"""

import argparse
import os
import time

import torch
import torch.distributed as dist

import psa.integrations.diffusers as psa_diffusers


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", required=True, help="local diffusers-format Wan 2.1 model")
    parser.add_argument("--prompt", default="A cat walks on the grass, realistic")
    parser.add_argument("--negative-prompt", default="")
    parser.add_argument("--preset", default="Wan2.1_14b:psa_balanced")
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="wan21_psa_multi_gpu.mp4")
    return parser.parse_args()


def main():
    args = parse_args()
    from diffusers import AutoencoderKLWan, ContextParallelConfig, WanPipeline
    from diffusers.utils import export_to_video

    # several GPUs: one process per GPU (torchrun sets the environment), NCCL between them.
    dist.init_process_group("cpu:gloo,cuda:nccl")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    torch.cuda.set_device(device)

    vae = AutoencoderKLWan.from_pretrained(args.model_dir, subfolder="vae",
                                           torch_dtype=torch.float32)
    pipe = WanPipeline.from_pretrained(args.model_dir, vae=vae, torch_dtype=torch.bfloat16)
    pipe.to(device)

    # several GPUs: split every block's tokens over the ranks (Ulysses; ring attention is not
    # supported with PSA), then PSA as on one GPU.
    pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=world))
    handle = psa_diffusers.apply(pipe, preset=args.preset)
    if rank == 0:
        print(f"PSA: {args.preset} on {world} GPUs, warm-up {handle.warmup_steps} dense steps, "
              f"rearrangement {handle.rearrange}")

    # The same seed on every rank: the ranks denoise the same latents.
    generator = torch.Generator(device).manual_seed(args.seed)
    start = time.perf_counter()
    frames = pipe(prompt=args.prompt, negative_prompt=args.negative_prompt, height=args.height,
                  width=args.width, num_frames=args.frames, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, generator=generator).frames[0]
    torch.cuda.synchronize()
    if rank == 0:
        print(f"generated {len(frames)} frames in {time.perf_counter() - start:.1f} s")
        export_to_video(frames, args.output, fps=16)
        print(f"wrote {args.output}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
