#!/usr/bin/env python3
"""Two-GPU check of psa's sequence parallelism (issue 9), started with torchrun:

    torchrun --nproc-per-node 2 scripts/multi_gpu_check.py [--json PATH] [--layers 4]

psa and diffusers are imported from the environment (PYTHONPATH). Sections, in the order run;
each runs even when an earlier one failed (its traceback goes into the JSON):

  ulysses    NCCL psa.distributed.ulysses_attention against one GPU's psa.attention on the
             gathered tensors, bf16, D = 128: output, dq/dk/dv and the plans (compared level for
             level); equal shards, GQA with unequal shards, causal.
  attention  timing, Wan2.1 14B 720p attention call (1, 40, 75600, 128), bf16, PSA's default
             config: one GPU's psa.attention against ulysses_attention on two, with the time of
             the all-to-alls alone (q, k, v in and the output back) and of the local attention.
  wan_cp     a small bf16 Wan transformer (8 heads of 128, 2 layers, random weights) with diffusers'
             context parallelism (ContextParallelConfig(ulysses_degree=2)) and psa against one
             GPU: equal shards (8192 tokens), unequal shards (ulysses_anything, 6727 tokens), and
             the dense warm-up step (diffusers' own Ulysses attention).
  step       timing, one denoising step of a Wan2.1 14B-shaped transformer (--layers layers,
             random weights, bf16) at 720p (75,600 tokens): dense and PSA, on one GPU and on two
             (context parallelism), and the two-GPU PSA latents against one GPU's.

--smoke runs every section on the CPU with gloo and tiny sizes (a check of the script itself,
about a minute on 2 cores): torchrun --nproc-per-node 2 scripts/multi_gpu_check.py --smoke

Success: every section "ok" in the table printed last. The comparisons: plans equal level for
level and outputs within BF16_TOL (relative L2) of one GPU's (they are usually bitwise equal:
every rank runs the same kernels on the same values per head). Rank 0 writes the JSON after every
section, so a run cut short keeps what it measured.
"""

import argparse
import contextlib
import datetime
import json
import os
import time
import traceback

import torch
import torch.distributed as dist

import psa
from psa.distributed import heads_to_sequence, sequence_to_heads, shard_lengths, ulysses_attention

# One GPU and two compute the projections of a transformer on row counts that differ, so cuBLAS
# may round differently: bf16 keeps 8 mantissa bits (2^-8 ~ 4e-3 per element).
BF16_TOL = 2e-2
WAN_SMALL = dict(patch_size=(1, 2, 2), num_attention_heads=8, attention_head_dim=128,
                 in_channels=16, out_channels=16, text_dim=64, freq_dim=256, ffn_dim=1024,
                 num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                 rope_max_seq_len=1024)
# diffusers' Wan2.1-T2V-14B transformer configuration (num_layers from --layers).
WAN21_14B = dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128,
                 in_channels=16, out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824,
                 cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
                 rope_max_seq_len=1024)
# 720p, 81 frames: latent 21 x 90 x 160, patches of 2 x 2: 21 x 45 x 80 = 75,600 tokens.
LATENT_720P = (21, 90, 160)

SIZES = {
    "gpu": dict(
        head_dim=128,
        # (name, Hq, Hkv, L, causal)
        ulysses=[("equal shards", 8, 8, 8192, False),
                 ("GQA 8/2, unequal shards", 8, 2, 8191, False),
                 ("causal", 8, 8, 4096, True)],
        attention=(1, 40, 75600, 128),
        wan_small=WAN_SMALL,
        wan_latents=((8, 64, 64), (7, 62, 62)),  # 8192 and 6727 tokens
        step=WAN21_14B, step_latent=LATENT_720P),
    "smoke": dict(
        head_dim=64,
        ulysses=[("equal shards", 4, 4, 512, False), ("GQA 4/2, unequal shards", 4, 2, 511, False),
                 ("causal", 4, 4, 256, True)],
        attention=(1, 4, 1200, 64),
        wan_small=dict(WAN_SMALL, num_attention_heads=2, attention_head_dim=64, freq_dim=64,
                       ffn_dim=128),
        wan_latents=((2, 16, 16), (3, 14, 14)),  # 128 and 147 tokens
        step=dict(WAN_SMALL, num_attention_heads=2, attention_head_dim=64, freq_dim=64,
                  ffn_dim=128, text_dim=64), step_latent=(2, 16, 16)),
}


def rel_l2(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


class Run:
    """The process group, the device, the sizes, this rank's results and the JSON."""

    def __init__(self, path, device, sizes):
        self.device = device
        self.sizes = sizes
        self.rank = dist.get_rank()
        self.world = dist.get_world_size()
        # Status exchange and barriers on the CPU, so that they cost no device synchronisation
        # and outlive a failed NCCL section.
        self.cpu = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=900))
        self.path = path
        self.results = {}

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def barrier(self):
        self.sync()
        dist.barrier(group=self.cpu)

    def gather(self, value):
        values = [None] * self.world
        dist.all_gather_object(values, value, group=self.cpu)
        return values

    @contextlib.contextmanager
    def section(self, name):
        start = time.perf_counter()
        entry = {"ok": True}
        if self.rank == 0:
            print(f"== {name}", flush=True)
        try:
            yield entry
        except Exception as error:  # recorded; the next section still runs
            entry["ok"] = False
            entry["error"] = f"{type(error).__name__}: {error}"
            entry["traceback"] = traceback.format_exc()
            print(f"rank {self.rank}: {name} failed: {entry['error']}", flush=True)
        entry["seconds"] = time.perf_counter() - start
        self.sync()
        per_rank = self.gather(entry)
        merged = dict(per_rank[0])
        merged["ok"] = all(e["ok"] for e in per_rank)
        for r, e in enumerate(per_rank[1:], start=1):
            if not e["ok"]:
                merged[f"rank{r}_error"] = e.get("error")
                merged[f"rank{r}_traceback"] = e.get("traceback")
        self.results[name] = merged
        if self.rank == 0:
            with open(self.path, "w") as f:
                json.dump(self.results, f, indent=2)

    def timed(self, fn, iters, ranks=None):
        """Median milliseconds of fn() over `iters` runs after one warm-up run. Every run starts
        after a barrier and ends when the device is done; a run's time is the slowest rank's.
        ranks: the ranks that run fn (default all); the others wait."""
        ranks = range(self.world) if ranks is None else ranks
        mine = self.rank in ranks
        if mine:
            fn()
        times = []
        for _ in range(iters):
            self.barrier()
            start = time.perf_counter()
            if mine:
                fn()
                self.sync()
            every = self.gather(1e3 * (time.perf_counter() - start) if mine else 0.0)
            times.append(max(every))
        times.sort()
        return times[len(times) // 2]

    def seeded(self, shape, seed, dtype=torch.bfloat16):
        g = torch.Generator(device=self.device).manual_seed(seed)
        return torch.randn(shape, generator=g, device=self.device, dtype=dtype)


def shard(x, lens, rank, dim=2):
    return x.split(lens, dim=dim)[rank].contiguous()


# ---- ulysses: correctness against one GPU ------------------------------------------------------


def check_ulysses(run, entry):
    config = psa.default_config()
    dim = run.sizes["head_dim"]
    for index, (name, heads_q, heads_kv, seq, causal) in enumerate(run.sizes["ulysses"]):
        q, k, v = (run.seeded((1, h, seq, dim), 100 * index + j)
                   for j, h in enumerate((heads_q, heads_kv, heads_kv)))
        grad = run.seeded((1, heads_q, seq, dim), 100 * index + 9)
        lens = shard_lengths(seq, run.world)
        local = [shard(t, lens, run.rank).requires_grad_() for t in (q, k, v)]
        out = ulysses_attention(*local, config=config, causal=causal)
        (out.float() * shard(grad, lens, run.rank).float()).sum().backward()
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        reference = psa.attention(*full, config=config, causal=causal)
        (reference.float() * grad.float()).sum().backward()
        # The plan this rank ran: psa.plan on its gathered heads with their global offset.
        part_q = heads_q // run.world
        gathered = [sequence_to_heads(t.detach(), lens) for t in (shard(q, lens, run.rank),
                                                                  shard(k, lens, run.rank))]
        mine = psa.plan(*gathered, config.replace(head_offset=run.rank * part_q), causal=causal)
        single = psa.plan(q, k, config, causal=causal)
        heads = slice(run.rank * part_q, (run.rank + 1) * part_q)
        result = {
            "plans_equal": bool(torch.equal(mine.levels, single.levels[:, heads])),
            "density": float(single.density),
            "out_rel_l2": rel_l2(out.detach(), shard(reference.detach(), lens, run.rank)),
            "out_bitwise": bool(torch.equal(out.detach(), shard(reference.detach(), lens,
                                                                 run.rank))),
        }
        for grad_name, got, expected in zip(("dq", "dk", "dv"), local, full):
            result[f"{grad_name}_rel_l2"] = rel_l2(got.grad, shard(expected.grad, lens, run.rank))
        every = run.gather(result)
        entry[name] = every
        errors = [r[key] for r in every for key in r if key.endswith("rel_l2")]
        if not all(r["plans_equal"] for r in every) or max(errors) > BF16_TOL:
            raise AssertionError(f"{name}: {every}")


# ---- attention: Wan2.1 14B 720p timing ----------------------------------------------------------


def time_attention(run, entry, iters):
    shape = run.sizes["attention"]
    entry["shape"] = shape
    config = psa.default_config()
    lens = shard_lengths(shape[2], run.world)
    q, k, v = (run.seeded(shape, 1000 + j) for j in range(3))
    local = [shard(t, lens, run.rank) for t in (q, k, v)]
    with torch.no_grad():
        entry["one_gpu_ms"] = run.timed(lambda: psa.attention(q, k, v, config=config), iters,
                                        ranks=[0])
        del q, k, v
        entry["ulysses_ms"] = run.timed(lambda: ulysses_attention(*local, config=config), iters)
        gathered = [sequence_to_heads(t, lens) for t in local]
        out = torch.empty_like(gathered[0])

        def all_to_alls():
            for t in local:
                sequence_to_heads(t, lens)
            heads_to_sequence(out, lens)

        entry["all_to_all_ms"] = run.timed(all_to_alls, iters)
        shifted = config.replace(head_offset=run.rank * shape[1] // run.world)
        entry["local_attention_ms"] = run.timed(
            lambda: psa.attention(*gathered, config=shifted), iters)
    entry["speedup"] = entry["one_gpu_ms"] / entry["ulysses_ms"]
    entry["all_to_all_share"] = entry["all_to_all_ms"] / entry["ulysses_ms"]
    # Bytes each rank sends: (W - 1) / W of its shard of q, k, v and of the output.
    local_bytes = 4 * local[0].numel() * local[0].element_size()
    entry["all_to_all_gb_sent_per_rank"] = local_bytes * (run.world - 1) / run.world / 1e9


# ---- diffusers: Wan with context parallelism against one GPU ---------------------------------


def wan_model(config, seed, run):
    import diffusers

    torch.manual_seed(seed)
    with run.device:
        model = diffusers.WanTransformer3DModel(**config)
    model = model.to(torch.bfloat16).eval()
    for parameter in model.parameters():  # the same weights on every rank, whatever the RNG did
        dist.broadcast(parameter.data, 0)
    return model


def wan_inputs(run, latent, text_dim, seed):
    frames, height, width = latent
    return dict(hidden_states=run.seeded((1, 16, frames, height, width), seed),
                timestep=torch.tensor([500], device=run.device),
                encoder_hidden_states=run.seeded((1, 512, text_dim), seed + 1), return_dict=False)


def enable_ulysses(run, model, anything=False):
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(ulysses_degree=run.world, ulysses_anything=anything)
    if run.device.type == "cuda":
        model.enable_parallelism(config=config)
        return
    # diffusers 0.42 picks a rank's device as torch.device(type, rank %
    # torch.accelerator.device_count()), which divides by zero without an accelerator: on the
    # CPU the count reads 1 for the call.
    count = torch.accelerator.device_count
    torch.accelerator.device_count = lambda: 1
    try:
        model.enable_parallelism(config=config)
    finally:
        torch.accelerator.device_count = count


def check_wan_cp(run, entry):
    import psa.integrations.diffusers as psa_diffusers

    small = run.sizes["wan_small"]
    for name, latent, anything in zip(("equal shards", "unequal shards"),
                                      run.sizes["wan_latents"], (False, True)):
        if anything and run.device.type == "cpu":
            # diffusers gathers unequal shards with dist.all_gather of unequal tensors, which
            # NCCL takes and gloo refuses (tests/python/test_distributed.py gathers them itself).
            entry[name] = "not on gloo"
            continue
        inputs = wan_inputs(run, latent, small["text_dim"], 7)
        with torch.no_grad():
            model = wan_model(small, 0, run)
            dense = model(**inputs)[0]
            psa_diffusers.apply(model, warmup_steps=0)
            single = model(**inputs)[0]
            psa_diffusers.remove(model)
            model = wan_model(small, 0, run)
            enable_ulysses(run, model, anything)
            handle = psa_diffusers.apply(model, warmup_steps=1)
            handle.set_step(0)
            warmup = model(**inputs)[0]
            handle.set_step(1)
            parallel = model(**inputs)[0]
        result = {"tokens": latent[0] * (latent[1] // 2) * (latent[2] // 2),
                  "psa_vs_one_gpu": rel_l2(parallel, single),
                  "warmup_vs_one_gpu_dense": rel_l2(warmup, dense),
                  "psa_vs_dense (for scale)": rel_l2(single, dense),
                  "psa_calls": handle.calls}
        entry[name] = result
        if max(result["psa_vs_one_gpu"], result["warmup_vs_one_gpu_dense"]) > BF16_TOL:
            raise AssertionError(f"{name}: {result}")


# ---- step: Wan2.1 14B-shaped transformer step ---------------------------------------------------


def time_step(run, entry, layers, iters):
    import psa.integrations.diffusers as psa_diffusers

    config = dict(run.sizes["step"], num_layers=layers)
    latent = run.sizes["step_latent"]
    entry["layers"] = layers
    entry["tokens"] = latent[0] * (latent[1] // 2) * (latent[2] // 2)
    inputs = wan_inputs(run, latent, config["text_dim"], 11)
    model = wan_model(config, 0, run)
    with torch.no_grad():
        step = lambda: model(**inputs)  # noqa: E731
        entry["one_gpu_dense_ms"] = run.timed(step, iters, ranks=[0])
        handle = psa_diffusers.apply(model, warmup_steps=0)
        entry["one_gpu_psa_ms"] = run.timed(step, iters, ranks=[0])
        single = model(**inputs)[0] if run.rank == 0 else None
        handle.remove()
        enable_ulysses(run, model)
        entry["ulysses_dense_ms"] = run.timed(step, iters)
        psa_diffusers.apply(model, warmup_steps=0)
        entry["ulysses_psa_ms"] = run.timed(step, iters)
        parallel = model(**inputs)[0]
    entry["speedup_dense"] = entry["one_gpu_dense_ms"] / entry["ulysses_dense_ms"]
    entry["speedup_psa"] = entry["one_gpu_psa_ms"] / entry["ulysses_psa_ms"]
    if run.rank == 0:
        entry["psa_latents_vs_one_gpu"] = rel_l2(parallel, single)
        if entry["psa_latents_vs_one_gpu"] > BF16_TOL:
            raise AssertionError(f"two-GPU latents differ from one GPU's: {entry}")


def table(results, world):
    rows = []
    for name, entry in results.items():
        rows.append(f"{name:10s} {'ok' if entry['ok'] else 'FAILED: ' + entry.get('error', '')}")
    attention = results.get("attention", {})
    if "ulysses_ms" in attention:
        rows.append(
            f"attention {tuple(attention['shape'])}, PSA default: 1 GPU "
            f"{attention['one_gpu_ms']:.1f} ms, {world} GPUs {attention['ulysses_ms']:.1f} ms "
            f"(x{attention['speedup']:.2f}); all-to-alls {attention['all_to_all_ms']:.1f} ms "
            f"({100 * attention['all_to_all_share']:.1f}%), local attention "
            f"{attention['local_attention_ms']:.1f} ms")
    step = results.get("step", {})
    if "ulysses_psa_ms" in step:
        rows.append(
            f"Wan step, {step['layers']} layers, {step['tokens']} tokens: dense 1 GPU "
            f"{step['one_gpu_dense_ms']:.0f} ms, {world} GPUs {step['ulysses_dense_ms']:.0f} ms "
            f"(x{step['speedup_dense']:.2f}); PSA 1 GPU {step['one_gpu_psa_ms']:.0f} ms, "
            f"{world} GPUs {step['ulysses_psa_ms']:.0f} ms (x{step['speedup_psa']:.2f})")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_json = os.path.join(os.environ.get("OUT", "."), "multi_gpu_check.json")
    parser.add_argument("--json", default=default_json)
    parser.add_argument("--layers", type=int, default=4, help="layers of the 14B-shaped step")
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip", default="", help="comma-separated sections to skip")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (gloo)")
    args = parser.parse_args()

    timeout = datetime.timedelta(seconds=180)  # a hung collective fails after 3 minutes, not 10
    if args.smoke:
        device = torch.device("cpu")
        dist.init_process_group("cpu:gloo", timeout=timeout)
    else:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
        # gloo for CPU tensors (psa's length exchange and diffusers' size exchange stay on the
        # host), NCCL for CUDA tensors.
        dist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout, device_id=device)
    run = Run(args.json, device, SIZES["smoke" if args.smoke else "gpu"])
    if run.rank == 0:
        name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
        print(f"{run.world} x {name}, torch {torch.__version__}, psa {psa.__version__} "
              f"({psa.__file__})", flush=True)
    skip = set(filter(None, args.skip.split(",")))
    sections = [("ulysses", lambda e: check_ulysses(run, e)),
                ("attention", lambda e: time_attention(run, e, args.iters)),
                ("wan_cp", lambda e: check_wan_cp(run, e)),
                ("step", lambda e: time_step(run, e, args.layers, max(2, args.iters - 2)))]
    for name, body in sections:
        if name in skip:
            continue
        with run.section(name) as entry:
            body(entry)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if run.rank == 0:
        brief = {name: {key: value for key, value in entry.items() if "traceback" not in key}
                 for name, entry in run.results.items()}
        print(json.dumps(brief, indent=2, default=str))
        print(f"\n==== multi-GPU check ({run.world} GPUs), JSON in {args.json}")
        print(table(run.results, run.world))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
