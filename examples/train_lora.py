"""Fine-tunes LoRA adapters of a Wan 2.1 transformer with Pyramid Sparse Attention in the loop.

    # a small model on synthetic data, on the CPU, in well under two minutes
    python examples/train_lora.py --tiny --device cpu --steps 30

    # Wan 2.1 1.3B at 480p (random weights unless --model-dir), PSA against dense attention
    python examples/train_lora.py --model wan2.1-1.3b --height 480 --width 832 --frames 81 \
        --attention psa
    python examples/train_lora.py --model wan2.1-1.3b --height 480 --width 832 --frames 81 \
        --attention dense --sdpa-backend cudnn

    # your data, starting from a local diffusers-format Wan 2.1 checkpoint
    python examples/train_lora.py --model-dir /models/Wan2.1-T2V-1.3B-Diffusers --data latents/ \
        --steps 2000 --output lora/

The transformer is a diffusers WanTransformer3DModel; psa.integrations.diffusers replaces the
self-attention of every block with PSA (its forward and its exact backward), and peft adds LoRA
adapters to the attention projections (to_q, to_k, to_v, to_out.0 of self- and cross-attention),
the only parameters trained. The loss is Wan's flow matching (rectified flow): for clean latents
x0, noise n and t in [0, 1], x_t = (1 - t) x0 + t n, and the model predicts the velocity n - x0 at
timestep 1000 t; t is drawn uniformly and shifted toward high noise with --shift (Wan's sampler
uses 3.0 at 480p), t' = s t / (1 + (s - 1) t).

Data (--data DIR): every *.pt or *.safetensors file in DIR holds one clip, a dict with
  latents      (C, T, H, W) float: VAE latents, normalised as the pipeline does
               ((z - latents_mean) / latents_std for Wan's VAE; C = 16 for Wan 2.1)
  text_embeds  (L, 4096) float: the umT5 embeddings of its prompt (Wan's pipeline pads them to
               L = 512 with zeros)
Files of one batch must have equal shapes (or use --batch-size 1). Without --data, a fixed set of
--samples synthetic clips (smooth random latents, random text embeddings) is used: small enough for
the model to fit, so the loss visibly drops.

The last line printed is `loss first=<a> last=<b>`: the mean training loss over the first and over
the last min(5, steps // 3) steps (at least one), which smooths the step-to-step noise of the
random t and n. On CUDA the mean step time after --timing-warmup steps is printed before it.
"""

import argparse
import contextlib
import dataclasses
import glob
import math
import os
import time

import torch

import psa
import psa.integrations.diffusers as psa_diffusers

# Wan 2.1's transformer configurations (diffusers' WanTransformer3DModel arguments). "tiny" keeps
# Wan's architecture at a size a CPU trains in seconds; head dim 64 is one the CUDA kernels support.
MODELS = {
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=64, in_channels=4,
                 out_channels=4, text_dim=32, freq_dim=32, ffn_dim=128, num_layers=2,
                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                 rope_max_seq_len=64),
    "wan2.1-1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128,
                        in_channels=16, out_channels=16, text_dim=4096, freq_dim=256,
                        ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
}
# Wan's VAE: 4x in time (plus the first frame), 8x in space.
VAE_TIME, VAE_SPACE = 4, 8
# Text tokens of the synthetic data: Wan's pipeline pads umT5 embeddings to 512.
TEXT_LEN = {"tiny": 16, "wan2.1-1.3b": 512}
# For the tiny model's short sequences (4 x 8 x 8 = 256 tokens): 4 query blocks of 64 and 8 key
# blocks of 32 per head, so that a plan has every level in it.
TINY_CONFIG = psa.Config(block_m=64, block_n=32, ends=(0.25, 0.4, 0.55, 0.75))
SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="LoRA fine-tuning of a Wan 2.1 transformer with Pyramid Sparse Attention.",
        epilog="The last line is `loss first=<a> last=<b>`, the mean training loss of the first "
               "and of the last min(5, steps // 3) steps (at least one), which smooths the noise "
               "of the random timesteps and noise of each step.")
    parser.add_argument("--model", choices=sorted(MODELS), default="wan2.1-1.3b",
                        help="transformer configuration (random weights unless --model-dir)")
    parser.add_argument("--tiny", action="store_true",
                        help="shorthand for --model tiny --height 128 --width 128 --frames 13")
    parser.add_argument("--model-dir", default=None,
                        help="local diffusers-format Wan 2.1 checkpoint to start from")
    parser.add_argument("--data", default=None,
                        help="folder of .pt/.safetensors clips (see the top of this file); "
                             "synthetic clips when not given")
    parser.add_argument("--samples", type=int, default=4, help="synthetic clips (without --data)")
    parser.add_argument("--height", type=int, default=None, help="pixels (default 480; tiny 128)")
    parser.add_argument("--width", type=int, default=None, help="pixels (default 832; tiny 128)")
    parser.add_argument("--frames", type=int, default=None, help="pixels (default 81; tiny 13)")
    parser.add_argument("--attention", choices=("psa", "dense"), default="psa",
                        help="psa: PSA in every block's self-attention; dense: the model as is")
    parser.add_argument("--preset", default=None,
                        help="PSA preset (default Wan2.1_1.3b:psa_balanced; the tiny model uses "
                             "a config for its short sequences); 'default' is the plug-and-play "
                             "topk configuration")
    parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                        help="bitwise reproducible PSA gradients (default); --no-deterministic "
                             "lets the CUDA backward accumulate in any order, which is faster")
    parser.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto",
                        help="SDPA kernel for dense attention (and PSA's cross-attention)")
    parser.add_argument("--steps", type=int, default=30, help="optimiser steps")
    parser.add_argument("--batch-size", type=int, default=1, help="clips per step")
    parser.add_argument("--lr", type=float, default=None,
                        help="AdamW learning rate (default 1e-4; tiny 3e-3)")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank (alpha = rank)")
    parser.add_argument("--shift", type=float, default=3.0, help="timestep shift")
    parser.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction,
                        default=None,
                        help="recompute each block in the backward (default: on for "
                             "wan2.1-1.3b, off for tiny)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                        help="weights and activations (default bf16 on CUDA, fp32 on the CPU); "
                             "LoRA weights stay fp32")
    parser.add_argument("--timing-warmup", type=int, default=3,
                        help="steps left out of the mean step time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--output", default=None,
                        help="folder to save the LoRA weights in (diffusers' format: "
                             "WanPipeline.load_lora_weights reads it)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.model = "tiny"
    small = args.model == "tiny"
    for name, big, tiny in (("height", 480, 128), ("width", 832, 128), ("frames", 81, 13)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if small else big)
    if args.lr is None:
        args.lr = 3e-3 if small else 1e-4
    if args.gradient_checkpointing is None:
        args.gradient_checkpointing = not small
    if args.dtype is None:
        args.dtype = "bf16" if args.device.startswith("cuda") else "fp32"
    if args.steps < 1 or args.batch_size < 1 or args.samples < 1:
        parser.error("--steps, --batch-size and --samples must be at least 1")
    return args


# ---- Data ----------------------------------------------------------------------------------------


def _load_clip(path):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        clip = load_file(path)
    else:
        clip = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"latents", "text_embeds"} - set(clip)
    if missing:
        raise ValueError(f"{path}: missing {', '.join(sorted(missing))} (expected latents "
                         f"(C, T, H, W) and text_embeds (L, D))")
    latents, text = clip["latents"], clip["text_embeds"]
    if latents.ndim != 4 or text.ndim != 2:
        raise ValueError(f"{path}: latents must be (C, T, H, W) and text_embeds (L, D), got "
                         f"{tuple(latents.shape)} and {tuple(text.shape)}")
    return latents.float(), text.float()


class FolderClips:
    """Clips from --data, read when used (a folder may hold more than fits in memory)."""

    def __init__(self, folder):
        self.paths = sorted(glob.glob(os.path.join(folder, "*.pt")) +
                            glob.glob(os.path.join(folder, "*.safetensors")))
        if not self.paths:
            raise ValueError(f"--data {folder}: no .pt or .safetensors files")

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return _load_clip(self.paths[index])


class SyntheticClips:
    """A fixed set of clips: latents are smooth random fields (trilinear upsampling of coarse
    noise, unit variance), like VAE latents in that neighbouring tokens are correlated, so that
    attention has structure to find; text embeddings are random."""

    def __init__(self, count, latent_shape, text_shape, seed):
        g = torch.Generator().manual_seed(seed)
        channels, frames, height, width = latent_shape
        coarse = (max(1, frames // 2), max(1, height // 4), max(1, width // 4))
        self.clips = []
        for _ in range(count):
            field = torch.randn(1, channels, *coarse, generator=g)
            field = torch.nn.functional.interpolate(field, size=(frames, height, width),
                                                    mode="trilinear", align_corners=False)[0]
            field = (field - field.mean()) / field.std()
            self.clips.append((field, torch.randn(*text_shape, generator=g)))

    def __len__(self):
        return len(self.clips)

    def __getitem__(self, index):
        return self.clips[index]


def batch_at(clips, step, batch_size, device, dtype):
    """Clips step * batch_size, ... (cycling), stacked: latents (B, C, T, H, W), text (B, L, D)."""
    items = [clips[(step * batch_size + i) % len(clips)] for i in range(batch_size)]
    shapes = {(tuple(a.shape), tuple(b.shape)) for a, b in items}
    if len(shapes) > 1:
        raise ValueError(f"clips of one batch differ in shape: {sorted(shapes)}; use "
                         "--batch-size 1 or equal shapes")
    latents = torch.stack([a for a, _ in items]).to(device, dtype)
    text = torch.stack([b for _, b in items]).to(device, dtype)
    return latents, text


# ---- Model ---------------------------------------------------------------------------------------


def build_transformer(args, dtype):
    from diffusers import WanTransformer3DModel

    if args.model_dir is not None:
        transformer = WanTransformer3DModel.from_pretrained(args.model_dir,
                                                            subfolder="transformer",
                                                            torch_dtype=dtype)
        return transformer.to(args.device)
    # Random weights, initialised on the device (1.3B parameters initialise in seconds there).
    torch.manual_seed(args.seed)
    with torch.device(args.device):
        transformer = WanTransformer3DModel(**MODELS[args.model])
    # As from_pretrained(torch_dtype=...) does: every weight and buffer in `dtype` but those of
    # the model's _keep_in_fp32_modules (rotary tables, time embedder, norms), which stay fp32.
    keep = set(transformer._keep_in_fp32_modules)
    for module_name, module in transformer.named_modules():
        for tensors in (module._parameters, module._buffers):
            for name, tensor in tensors.items():
                full_name = f"{module_name}.{name}".split(".")
                if tensor is not None and tensor.is_floating_point() and not keep & set(full_name):
                    tensor.data = tensor.data.to(dtype)
    return transformer


def add_lora(transformer, rank):
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    params = [p for p in transformer.parameters() if p.requires_grad]
    # LoRA weights train in fp32 (peft casts the input to their dtype and the result back).
    for p in params:
        p.data = p.data.float()
    return params


def apply_psa(transformer, args):
    if args.preset is None and args.model == "tiny":
        config = TINY_CONFIG.replace(deterministic=args.deterministic)
        return psa_diffusers.apply(transformer, config=config)
    if args.preset == "default":
        # The plug-and-play topk configuration (FLOP density 0.15 whatever the inputs): the one
        # to time with random weights, where a thresholdbound preset keeps most blocks.
        config = psa.default_config().replace(deterministic=args.deterministic)
        return psa_diffusers.apply(transformer, config=config, warmup_steps=0)
    preset = psa.load_preset(args.preset or "Wan2.1_1.3b:psa_balanced")
    preset = dataclasses.replace(preset,
                                 config=preset.config.replace(deterministic=args.deterministic))
    # Warm-up (dense attention for the first denoising steps) belongs to sampling: a bare
    # transformer in training has no scheduler step, so every training step runs PSA.
    return psa_diffusers.apply(transformer, preset=preset, warmup_steps=0)


def sdpa_context(backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if backend == "auto":
        return contextlib.nullcontext()
    names = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
             "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
    return sdpa_kernel([names[backend]])


# ---- Training ------------------------------------------------------------------------------------


def flow_matching_inputs(latents, generator, shift):
    """(x_t, timestep, target) of rectified flow for clean latents (B, C, T, H, W)."""
    batch = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=latents.device,
                        dtype=torch.float32)
    u = torch.rand(batch, generator=generator, device=latents.device, dtype=torch.float32)
    t = shift * u / (1 + (shift - 1) * u)
    t_b = t.view(batch, 1, 1, 1, 1)
    x0 = latents.float()
    x_t = (1 - t_b) * x0 + t_b * noise
    return x_t.to(latents.dtype), (t * 1000).to(latents.dtype), noise - x0


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    transformer = build_transformer(args, dtype)
    spec = transformer.config
    if args.data is not None:
        clips = FolderClips(args.data)
    else:
        latent_shape = (spec.in_channels, (args.frames - 1) // VAE_TIME + 1,
                        args.height // VAE_SPACE, args.width // VAE_SPACE)
        clips = SyntheticClips(args.samples, latent_shape,
                               (TEXT_LEN.get(args.model, 512), spec.text_dim), args.seed)
    latents, text = clips[0]
    if latents.shape[0] != spec.in_channels or text.shape[1] != spec.text_dim:
        raise ValueError(f"clips have {latents.shape[0]} latent channels and text width "
                         f"{text.shape[1]}; the model takes {spec.in_channels} and "
                         f"{spec.text_dim}")
    p_t, p_h, p_w = spec.patch_size
    grid = (latents.shape[1] // p_t, latents.shape[2] // p_h, latents.shape[3] // p_w)

    params = add_lora(transformer, args.rank)
    if args.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    handle = apply_psa(transformer, args) if args.attention == "psa" else None
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    generator = torch.Generator(args.device).manual_seed(args.seed)

    print(f"model {args.model}: {sum(p.numel() for p in transformer.parameters()) / 1e6:.1f}M "
          f"parameters, {sum(p.numel() for p in params) / 1e6:.2f}M trained (LoRA rank "
          f"{args.rank}); {len(clips)} clips, latents {tuple(latents.shape)}, "
          f"{math.prod(grid)} tokens per clip; attention {args.attention}"
          + (f" ({handle.config})" if handle else f" (SDPA {args.sdpa_backend})")
          + f"; {args.dtype}, gradient checkpointing "
          + ("on" if args.gradient_checkpointing else "off"), flush=True)

    losses, times = [], []
    with sdpa_context(args.sdpa_backend):
        for step in range(args.steps):
            start = time.perf_counter()
            latents, text = batch_at(clips, step, args.batch_size, args.device, dtype)
            x_t, timestep, target = flow_matching_inputs(latents, generator, args.shift)
            prediction = transformer(hidden_states=x_t, timestep=timestep,
                                     encoder_hidden_states=text, return_dict=False)[0]
            loss = torch.nn.functional.mse_loss(prediction.float(), target)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())  # synchronises: the step is complete
            times.append(time.perf_counter() - start)
            print(f"step {step + 1}/{args.steps} loss {losses[-1]:.4f} "
                  f"{times[-1]:.3f} s", flush=True)

    if handle is not None:
        print(f"PSA attention calls: {handle.calls} ({handle.calls / args.steps:g} per step), "
              f"handed to the model's own attention: {handle.fallback_calls}")
    if args.device.startswith("cuda"):
        timed = times[args.timing_warmup:]
        if timed:
            print(f"step time: {sum(timed) / len(timed):.3f} s mean over {len(timed)} steps after "
                  f"{args.timing_warmup} warm-up steps ({args.attention}, batch "
                  f"{args.batch_size}, {math.prod(grid)} tokens); peak memory "
                  f"{torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    if args.output is not None:
        from diffusers import WanPipeline
        from peft.utils import get_peft_model_state_dict

        if handle is not None:
            psa_diffusers.remove(transformer)
        WanPipeline.save_lora_weights(args.output,
                                      transformer_lora_layers=get_peft_model_state_dict(
                                          transformer))
        print(f"saved LoRA weights to {args.output}")

    window = max(1, min(5, args.steps // 3))
    first = sum(losses[:window]) / window
    last = sum(losses[-window:]) / window
    print(f"loss first={first:.4f} last={last:.4f}")


if __name__ == "__main__":
    main()
