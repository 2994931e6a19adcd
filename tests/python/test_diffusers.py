"""psa.integrations.diffusers on real diffusers model classes, built from small configs with random
weights (no downloads): apply/remove restores outputs bit-for-bit, an all-full plan reproduces the
unpatched model, warm-up follows the scheduler's step, statistics are written as JSON lines."""

import json

import pytest

from helpers import needs_cuda, psa, rel_l2, seed_from_env, torch

diffusers = pytest.importorskip("diffusers", reason="the diffusers integration needs diffusers")
integration = pytest.importorskip("psa.integrations.diffusers")

# All level 1 is exact dense attention (SPEC 6); the only differences are summation order and, in
# bf16, the rounding of q, k, v and of the output to 8 mantissa bits (2^-8 ~ 4e-3 per element).
FP32_TOL = 1e-5
BF16_TOL = 2e-2
FULL = psa.Config(block_m=64, block_n=32, ends=(1.0, 1.0, 1.0, 1.0))
SPARSE = psa.Config(block_m=64, block_n=32, ends=(0.2, 0.3, 0.4, 0.6))


def _wan(seed, layers=2, head_dim=32):
    torch.manual_seed(seed)
    return diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=head_dim, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=layers,
        cross_attn_norm=True, rope_max_seq_len=64).eval()


def _wan_inputs(seed, frames=3, size=16):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 4, frames, size, size, generator=g), torch.tensor([500]),
            torch.randn(1, 8, 16, generator=g))


def _cogvideox(seed, patch_size_t=None):
    torch.manual_seed(seed)
    return diffusers.CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=32, in_channels=4, out_channels=4,
        time_embed_dim=32, text_embed_dim=16, num_layers=2, sample_width=16, sample_height=16,
        sample_frames=9, patch_size=2, patch_size_t=patch_size_t, max_text_seq_length=12,
        use_rotary_positional_embeddings=True).eval()


def _cog_inputs(seed, transformer, frames=3, size=16):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(1, frames, 4, size, size, generator=g)
    text = torch.randn(1, 12, 16, generator=g)
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    p = transformer.config.patch_size
    p_t = transformer.config.patch_size_t or 1
    grid = (size // p, size // p)
    rope = get_3d_rotary_pos_embed(
        embed_dim=transformer.config.attention_head_dim, crops_coords=((0, 0), grid),
        grid_size=grid, temporal_size=-(-frames // p_t), device="cpu")
    return dict(hidden_states=hidden, encoder_hidden_states=text, timestep=torch.tensor([500]),
                image_rotary_emb=rope, return_dict=False)


def _run_wan(model, inputs):
    with torch.no_grad():
        return model(*inputs, return_dict=False)[0]


@pytest.mark.parametrize("rearrange", ["gilbert", "none"])
def test_wan_full_plan_matches_and_remove_restores(rearrange, request):
    seed = seed_from_env(40000)
    model, inputs = _wan(seed), _wan_inputs(seed)
    reference = _run_wan(model, inputs)
    assert reference.norm() > 0
    handle = integration.apply(model, config=FULL, rearrange=rearrange)
    patched = _run_wan(model, inputs)
    assert handle.calls == 2 and handle.fallback_calls == 0 and handle.grid == (3, 8, 8)
    assert rel_l2(patched, reference) < FP32_TOL, request.node.nodeid
    integration.remove(model)
    assert torch.equal(_run_wan(model, inputs), reference)
    sparse = integration.apply(model, config=SPARSE, rearrange=rearrange)
    out = _run_wan(model, inputs)
    sparse.remove()
    assert 0 < rel_l2(out, reference) < 0.5  # sparse: close to dense, not equal
    assert torch.equal(_run_wan(model, inputs), reference)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_wan_bf16_full_plan(device, request):
    seed = seed_from_env(41000)
    # Head dim 64: the CUDA kernels support 64 and 128.
    model, inputs = _wan(seed, head_dim=64), _wan_inputs(seed, frames=5)
    model = model.to(device, torch.bfloat16)
    inputs = (inputs[0].to(device, torch.bfloat16), inputs[1].to(device),
              inputs[2].to(device, torch.bfloat16))
    reference = _run_wan(model, inputs)
    integration.apply(model, config=FULL)
    patched = _run_wan(model, inputs)
    integration.remove(model)
    assert rel_l2(patched.float(), reference.float()) < BF16_TOL, request.node.nodeid


@pytest.mark.parametrize("patch_size_t", [None, 2], ids=["cogvideox1.0", "cogvideox1.5"])
def test_cogvideox_full_plan_and_text_blocks(patch_size_t, tmp_path, request):
    seed = seed_from_env(42000)
    model = _cogvideox(seed, patch_size_t)
    frames = 3 if patch_size_t is None else 4
    inputs = _cog_inputs(seed, model, frames=frames)
    with torch.no_grad():
        reference = model(**inputs)[0]
    assert reference.norm() > 0
    stats = tmp_path / "stats.jsonl"
    handle = integration.apply(model, config=FULL, stats_path=str(stats), stats_sync=True)
    with torch.no_grad():
        patched = model(**inputs)[0]
    integration.remove(model)
    assert rel_l2(patched, reference) < FP32_TOL, request.node.nodeid
    with torch.no_grad():
        assert torch.equal(model(**inputs)[0], reference)
    lines = [json.loads(line) for line in stats.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["text_len"] == 12 and handle.fallback_calls == 0
    assert lines[0]["seq_len"] == 12 + handle.grid[0] * handle.grid[1] * handle.grid[2]
    # Gilbert moves CogVideoX's leading text tokens to the end, where the plan keeps them full.
    perm, inverse, position = handle.permutation(lines[0]["seq_len"], 12, True, "cpu")
    assert position == "end"
    assert torch.equal(perm[-12:], torch.arange(12))
    assert torch.equal(perm[inverse], torch.arange(perm.numel()))


class _Loop:
    """A denoising loop like diffusers' Wan pipeline: CFG as two transformer calls per step."""

    def __init__(self, transformer, scheduler, transformer_2=None):
        self.transformer = transformer
        self.transformer_2 = transformer_2
        self.scheduler = scheduler

    def __call__(self, inputs, steps):
        latents, _, text = inputs
        self.scheduler.set_timesteps(steps)
        for t in self.scheduler.timesteps:
            model = self.transformer
            if self.transformer_2 is not None and t < self.scheduler.timesteps[steps // 2]:
                model = self.transformer_2  # Wan 2.2's low-noise expert
            with torch.no_grad():
                cond = model(latents, t.reshape(1), text, return_dict=False)[0]
                uncond = model(latents, t.reshape(1), text * 0.5, return_dict=False)[0]
            latents = self.scheduler.step(uncond + 2.0 * (cond - uncond), t, latents,
                                          return_dict=False)[0]
        return latents


@pytest.mark.parametrize("scheduler_name", ["FlowMatchEulerDiscreteScheduler",
                                            "CogVideoXDDIMScheduler"])
def test_warmup_reads_the_scheduler_step(scheduler_name, tmp_path):
    seed = seed_from_env(43000)
    scheduler = getattr(diffusers, scheduler_name)()
    pipe = _Loop(_wan(seed, layers=1), scheduler, transformer_2=_wan(seed + 1, layers=1))
    inputs = _wan_inputs(seed)
    stats = tmp_path / "stats.jsonl"
    handle = integration.apply(pipe, config=SPARSE, warmup_steps=2, stats_path=str(stats))
    pipe(inputs, steps=4)
    handle.flush_stats()
    lines = [json.loads(line) for line in stats.read_text().splitlines()]
    # Steps 0 and 1 dense; steps 2 and 3 run PSA, two calls each (CFG), one layer.
    assert sorted({line["step"] for line in lines}) == [2, 3]
    assert len(lines) == 4
    # Step 2 runs the high-noise expert, step 3 the low-noise one: both are patched.
    assert {(line["step"], line["expert"]) for line in lines} == {(2, "transformer"),
                                                                  (3, "transformer_2")}
    integration.remove(pipe)
    assert "step" not in scheduler.__dict__  # instance wrappers gone
    with pytest.raises(ValueError, match="not applied"):
        integration.remove(pipe)


def test_apply_errors():
    model = _wan(0, layers=1)
    with pytest.raises(ValueError, match="either preset or config"):
        integration.apply(model, preset="Wan2.1_1.3b:psa_balanced", config=FULL)
    with pytest.raises(ValueError, match="dense"):
        integration.apply(model, preset="Wan2.1_1.3b:baseline")
    with pytest.raises(ValueError, match="supports Wan and CogVideoX"):
        integration.apply(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="rearrange"):
        integration.apply(model, config=FULL, rearrange="zigzag")
    handle = integration.apply(model, preset="Wan2.1_1.3b:psa_balanced")
    assert handle.warmup_steps == 15 and handle.rearrange == "gilbert"
    with pytest.raises(ValueError, match="already applied"):
        integration.apply(model, config=FULL)
    integration.remove(model)
