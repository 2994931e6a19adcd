"""PSA in diffusers video pipelines: Wan 2.1 / 2.2 (both experts) and CogVideoX 1.0 / 1.5.

    handle = psa.integrations.diffusers.apply(pipe, preset="Wan2.1_1.3b:psa_balanced")
    video = pipe(prompt, ...).frames
    psa.integrations.diffusers.remove(pipe)        # or handle.remove()

apply() replaces the self-attention processor (attn1) of every transformer block with a PSA
processor and remove() puts the original processor objects back. The PSA processors compute q, k, v
exactly as the model's own processor does (projections, QK-norm, rotary embedding; CogVideoX's
text tokens first, rotary on the video part only), rearrange the tokens (Gilbert curve or tiles,
text moved to the end) when the preset asks, plan and run PSA, and undo the rearrangement.

Warm-up: the first `warmup_steps` denoising steps call the model's original processor (exact dense
attention). The step is read from the pipeline's scheduler (its step_index, or the number of
scheduler.step() calls since set_timesteps() for schedulers without one), never by counting
attention calls, so classifier-free guidance in one or two transformer calls per step both work.
For a bare transformer (no pipeline), set the step with handle.set_step(i).

Several GPUs: with diffusers' context parallelism in Ulysses mode
(transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=N)), before or after
apply()), every block holds a contiguous shard of the video tokens and the PSA processors do the
all-to-all themselves (psa.distributed): each rank gathers the whole sequence for N-th of the
heads, rearranges it, plans with the heads' global index (the plan one GPU computes) and runs PSA,
then returns its shard. CogVideoX, for which diffusers has no plan, runs under
context_parallel_plan(transformer) (the text tokens stay whole on every rank). ring_degree > 1
raises ValueError.

Statistics: with stats_path, every PSA call appends a JSON line {step, expert, layer, seq_len,
head_offset, density, density_per_head, level_fractions, ...} (under context parallelism, each rank
for its heads: give each rank its own file). Device values are copied asynchronously and
written once ready (or at flush/remove), so no device synchronisation happens on the hot path unless
stats_sync=True.
"""

from __future__ import annotations

import collections
import json
import os
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.distributed as dist

import psa
from psa import distributed as psa_distributed
from psa import rearrange as _rearrange
from psa.config import Config, Preset, load_preset

_HANDLE_ATTR = "_psa_handle"


# ---- Statistics --------------------------------------------------------------------------------


class _StatsWriter:
    """JSON lines of per-call plan statistics, written without stalling the device."""

    def __init__(self, path: str, sync: bool):
        self.path = os.fspath(path)
        self.sync = sync
        self.file = open(self.path, "a", encoding="utf-8")
        self.pending = collections.deque()  # (meta, host tensor, event or None)

    def record(self, meta: Dict, plan: "psa.Plan") -> None:
        # (Hq + 5,) float64: density per head, then the fractions of levels 0, 1, 2, 4, 8.
        packed = torch.cat([plan.density_per_head, plan.level_fractions])
        event = None
        if packed.is_cuda and not self.sync:
            packed = packed.to("cpu", non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self.pending.append((meta, packed, event))
        self.flush(wait=self.sync)

    def flush(self, wait: bool = True) -> None:
        while self.pending:
            meta, packed, event = self.pending[0]
            if event is not None and not event.query():
                if not wait:
                    return
                event.synchronize()
            self.pending.popleft()
            values = packed.cpu().tolist()
            per_head, fractions = values[:-5], values[-5:]
            line = dict(meta)
            line["density"] = sum(per_head) / max(len(per_head), 1)
            line["density_per_head"] = per_head
            line["level_fractions"] = {str(l): f for l, f in zip(psa.LEVELS, fractions)}
            self.file.write(json.dumps(line) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.flush(wait=True)
        self.file.close()


# ---- The session shared by the processors of one apply() ---------------------------------------


class PSAHandle:
    """What apply() returns: remove(), set_step(), flush_stats(), and the settings in use."""

    def __init__(self, config: Config, warmup_steps: int, rearrange: str,
                 tile: Tuple[int, int, int], scheduler, stats: Optional[_StatsWriter]):
        self.config = config
        self.warmup_steps = int(warmup_steps)
        self.rearrange = rearrange
        self.tile = tile
        self.scheduler = scheduler
        self.stats = stats
        self.grid: Optional[Tuple[int, int, int]] = None  # latent (T, H, W) of the current call
        self.text_len: Optional[int] = None  # CogVideoX: text tokens the transformer was given
        self.calls = 0  # PSA calls so far
        # Calls PSA could not take (an attention mask, cross-attention, unknown arguments) and
        # handed to the model's own processor; warm-up steps are not counted.
        self.fallback_calls = 0
        self._step_override: Optional[int] = None
        self._counted_step = 0
        self._restore: List = []  # callables that undo what apply() did, in reverse order
        self._configs: Dict[Tuple[int, str, int], Config] = {}
        self._perms: Dict = {}
        self._owner = None

    # -- the denoising step --
    def set_step(self, step: Optional[int]) -> None:
        """Sets the denoising step by hand (bare transformers); None returns to the scheduler."""
        self._step_override = None if step is None else int(step)

    @property
    def step(self) -> int:
        if self._step_override is not None:
            return self._step_override
        if self.scheduler is not None and hasattr(type(self.scheduler), "step_index"):
            index = self.scheduler.step_index
            return 0 if index is None else int(index)
        return self._counted_step

    def dense_now(self) -> bool:
        return self.step < self.warmup_steps

    # -- per-call helpers for the processors --
    def config_for(self, text_len: int, text_position: str, head_offset: int = 0) -> Config:
        key = (text_len, text_position, head_offset)
        config = self._configs.get(key)
        if config is None:
            config = self.config.replace(text_len=text_len, text_position=text_position,
                                         head_offset=self.config.head_offset + head_offset)
            self._configs[key] = config
        return config

    def permutation(self, seq_len: int, text_len: int, text_first: bool, device):
        """(perm, inverse, text position after rearrangement) as device tensors, or None when
        there is nothing to rearrange or the token count does not match the latent grid."""
        if self.rearrange == "none" or self.grid is None:
            return None
        frames, height, width = self.grid
        video = seq_len - text_len
        if height * width == 0 or video % (height * width) != 0:
            return None
        frames = video // (height * width)
        key = (seq_len, text_len, text_first, frames, height, width, str(device))
        cached = self._perms.get(key)
        if cached is None:
            perm, inverse, position = _rearrange.permutation(
                self.rearrange, frames, height, width, text_len=text_len,
                text_position="start" if text_first else "end", tile=self.tile)
            cached = (torch.from_numpy(perm.copy()).to(device),
                      torch.from_numpy(inverse.copy()).to(device), position)
            self._perms[key] = cached
        return cached

    def video_shards(self, local: int, like, rank: int, world: int, group) -> List[int]:
        """Every rank's number of video tokens under context parallelism, in rank order. diffusers
        splits the T*H*W tokens of the latent grid as torch.tensor_split does (equal shards
        unless ulysses_anything); without a grid the ranks exchange their counts."""
        if self.grid is None:
            rows = psa_distributed._all_gather_ints([local], like, group, world)
            return [row[0] for row in rows]
        total = self.grid[0] * self.grid[1] * self.grid[2]
        lens = psa_distributed.shard_lengths(total, world)
        if lens[rank] != local:
            raise ValueError(
                f"rank {rank} holds {local} of the {total} video tokens, but diffusers' context "
                f"parallelism splits them as {lens}: psa expects the video tokens split into "
                "contiguous shards in rank order (the transformer's own cp_plan, or "
                "context_parallel_plan())")
        return lens

    def sparse_attention(self, q, k, v, *, text_len: int, text_first: bool, layer: int,
                         expert: str, head_offset: int = 0):
        """PSA of (B, H, L, D) q, k, v with the preset's rearrangement; output (B, H, L, D).
        head_offset: the global index of q's first head when q holds a slice of the heads."""
        seq_len = q.shape[2]
        rearranged = self.permutation(seq_len, text_len, text_first, q.device)
        if rearranged is not None:
            perm, inverse, text_position = rearranged
            q, k, v = (t.index_select(2, perm) for t in (q, k, v))
        else:
            text_position = "start" if text_first else "end"
        config = self.config_for(text_len, text_position if text_len else self.config.text_position,
                                 head_offset)
        plan = psa.plan(q, k, config)
        out = psa.attention(q, k, v, plan=plan)
        if self.stats is not None:
            self.stats.record({"step": self.step, "expert": expert, "layer": layer,
                               "call": self.calls, "seq_len": seq_len, "text_len": text_len,
                               "head_offset": head_offset,
                               "grid": list(self.grid) if self.grid else None}, plan)
        self.calls += 1
        if rearranged is not None:
            out = out.index_select(2, inverse)
        return out

    def flush_stats(self) -> None:
        if self.stats is not None:
            self.stats.flush(wait=True)

    def remove(self) -> None:
        """Restores the original processors, hooks and scheduler methods."""
        while self._restore:
            self._restore.pop()()
        if self.stats is not None:
            self.stats.close()
            self.stats = None
        if self._owner is not None and getattr(self._owner, _HANDLE_ATTR, None) is self:
            delattr(self._owner, _HANDLE_ATTR)


# ---- Processors --------------------------------------------------------------------------------


def _qkv_projections(attn, hidden_states):
    if getattr(attn, "fused_projections", False) and hasattr(attn, "to_qkv"):
        return attn.to_qkv(hidden_states).chunk(3, dim=-1)
    return attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)


def _wan_rotary(x, freqs_cos, freqs_sin):
    # Wan's interleaved rotary embedding on (B, L, H, D), as diffusers' WanAttnProcessor applies it.
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos = freqs_cos[..., 0::2]
    sin = freqs_sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def _check_context_parallel(cp_config) -> None:
    if cp_config.ring_degree > 1:
        raise ValueError(
            "psa runs under diffusers' Ulysses context parallelism only "
            "(ContextParallelConfig(ulysses_degree=N)); this transformer has "
            f"ring_degree={cp_config.ring_degree}, ulysses_degree={cp_config.ulysses_degree}: use "
            "ring_degree=1")


class _PSAProcessor:
    """What the Wan and CogVideoX processors share: the model's own processor (warm-up and
    fallback), where the call sits, and diffusers' context parallelism."""

    def __init__(self, handle: PSAHandle, original, layer: int, expert: str, transformer):
        self.handle = handle
        self.original = original
        self.layer = layer
        self.expert = expert
        self.transformer = transformer

    # enable_parallelism() and set_attention_backend() set these on the processor of every
    # attention module; they are the original processor's, which runs the dense warm-up steps.
    @property
    def _parallel_config(self):
        return getattr(self.original, "_parallel_config", None)

    @_parallel_config.setter
    def _parallel_config(self, value):
        self.original._parallel_config = value

    @property
    def _attention_backend(self):
        return getattr(self.original, "_attention_backend", None)

    @_attention_backend.setter
    def _attention_backend(self, value):
        self.original._attention_backend = value

    def _ulysses(self):
        """(group, rank, world) of the transformer's context parallelism, or None without it."""
        parallel = getattr(self.transformer, "_parallel_config", None)
        cp_config = getattr(parallel, "context_parallel_config", None)
        if cp_config is None:
            return None
        _check_context_parallel(cp_config)
        group = cp_config._ulysses_mesh.get_group()
        return group, dist.get_rank(group), dist.get_world_size(group)

    def _attend(self, q, k, v, *, text_len: int, text_first: bool, dense: bool = False):
        """Attention of (B, H, L, D) q, k, v: PSA, or with dense=True SDPA (the warm-up of a model
        whose own processor knows no context parallelism). Under context parallelism the video
        tokens of q, k, v are this rank's shard and the text tokens are every rank's full copy:
        the all-to-all gathers the video for H/W heads, this rank's heads of the text join it,
        and the whole sequence goes through the rearrangement and PSA as on one GPU."""
        parallel = self._ulysses()
        if parallel is None:
            return self.handle.sparse_attention(q, k, v, text_len=text_len, text_first=text_first,
                                                layer=self.layer, expert=self.expert)
        group, rank, world = parallel
        heads = q.shape[1]
        if heads % world:
            raise ValueError(f"the transformer's {heads} attention heads cannot be shared by "
                             f"ulysses_degree={world} ranks: use a Ulysses degree that divides "
                             f"{heads}")
        part = heads // world
        local_video = q.shape[2] - text_len
        lens = self.handle.video_shards(local_video, q, rank, world, group)
        # Where the video and the text are in the local sequence and in the gathered one.
        video, text = _video_and_text(local_video, text_len, text_first)
        full_video, full_text = _video_and_text(sum(lens), text_len, text_first)
        full = [psa_distributed.sequence_to_heads(t[:, :, video], lens, group=group)
                for t in (q, k, v)]
        if text_len:
            mine = slice(rank * part, (rank + 1) * part)
            full = [torch.cat([t[:, mine, text], f] if text_first else [f, t[:, mine, text]], 2)
                    for t, f in zip((q, k, v), full)]
        if dense:
            out = torch.nn.functional.scaled_dot_product_attention(*full)
        else:
            out = self.handle.sparse_attention(*full, text_len=text_len, text_first=text_first,
                                               layer=self.layer, expert=self.expert,
                                               head_offset=rank * part)
        out_video = psa_distributed.heads_to_sequence(out[:, :, full_video], lens, group=group)
        if not text_len:
            return out_video
        out_text = psa_distributed._GatherHeads.apply(out[:, :, full_text], rank, world, group)
        return torch.cat([out_text, out_video] if text_first else [out_video, out_text], 2)


def _video_and_text(video_len: int, text_len: int, text_first: bool):
    """Slices of the video and the text tokens in a sequence of video_len + text_len tokens."""
    if text_first:
        return slice(text_len, text_len + video_len), slice(0, text_len)
    return slice(0, video_len), slice(video_len, video_len + text_len)


class WanPSAProcessor(_PSAProcessor):
    """Self-attention of a Wan transformer block (attn1) with PSA; no text tokens in it. Under
    diffusers' Ulysses context parallelism the dense warm-up runs the model's own processor, which
    does its all-to-all itself."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None, **kwargs):
        if self.handle.dense_now():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 rotary_emb, **kwargs)
        if attention_mask is not None or encoder_hidden_states is not None or kwargs:
            self.handle.fallback_calls += 1
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 rotary_emb, **kwargs)
        query, key, value = _qkv_projections(attn, hidden_states)
        query = attn.norm_q(query)
        key = attn.norm_k(key)
        # (B, L, H, D)
        query = query.unflatten(2, (attn.heads, -1))
        key = key.unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = _wan_rotary(query, *rotary_emb)
            key = _wan_rotary(key, *rotary_emb)
        # (B, H, L, D) views of the (B, L, H, D) buffers: no copy.
        out = self._attend(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                           text_len=0, text_first=False)
        hidden_states = out.transpose(1, 2).flatten(2, 3).type_as(query)
        hidden_states = attn.to_out[0](hidden_states)
        return attn.to_out[1](hidden_states)


class CogVideoXPSAProcessor(_PSAProcessor):
    """CogVideoX joint attention (text tokens first, then video) with PSA; text blocks stay full.
    diffusers has no context parallelism for CogVideoX; under the plan of context_parallel_plan()
    (video split, text on every rank) this processor does the all-to-all itself, warm-up included.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None,
                 image_rotary_emb=None, **kwargs):
        parallel = self._ulysses() is not None
        unsupported = attention_mask is not None or bool(kwargs)
        if parallel and unsupported:
            raise ValueError("psa's CogVideoX processor cannot take an attention mask or extra "
                             "arguments under context parallelism")
        if not parallel and self.handle.dense_now():
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 image_rotary_emb, **kwargs)
        if unsupported:
            self.handle.fallback_calls += 1
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask,
                                 image_rotary_emb, **kwargs)
        from diffusers.models.embeddings import apply_rotary_emb

        text_seq_length = encoder_hidden_states.size(1)
        if parallel and self.handle.text_len not in (None, text_seq_length):
            raise ValueError(
                f"under context parallelism every rank must hold all {self.handle.text_len} text "
                f"tokens, this one holds {text_seq_length}: enable parallelism with "
                "cp_plan=psa.integrations.diffusers.context_parallel_plan(transformer)")
        hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch_size = hidden_states.shape[0]
        query, key, value = _qkv_projections(attn, hidden_states)
        head_dim = key.shape[-1] // attn.heads
        # (B, H, L, D)
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        if image_rotary_emb is not None:
            query[:, :, text_seq_length:] = apply_rotary_emb(query[:, :, text_seq_length:],
                                                             image_rotary_emb)
            if not attn.is_cross_attention:
                key[:, :, text_seq_length:] = apply_rotary_emb(key[:, :, text_seq_length:],
                                                               image_rotary_emb)
        out = self._attend(query, key, value, text_len=text_seq_length, text_first=True,
                           dense=self.handle.dense_now())
        hidden_states = out.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        encoder_hidden_states, hidden_states = hidden_states.split(
            [text_seq_length, hidden_states.size(1) - text_seq_length], dim=1)
        return hidden_states, encoder_hidden_states


# ---- apply / remove ----------------------------------------------------------------------------


def _family(transformer) -> str:
    name = type(transformer).__name__
    if name.startswith("Wan") and hasattr(transformer, "blocks"):
        return "wan"
    if name.startswith("CogVideoX") and hasattr(transformer, "transformer_blocks"):
        return "cogvideox"
    raise ValueError(f"psa.integrations.diffusers supports Wan and CogVideoX transformers, got "
                     f"{name}")


def _latent_grid(family: str, transformer, args, kwargs) -> Optional[Tuple[int, int, int]]:
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    if hidden is None or hidden.ndim != 5:
        return None
    if family == "wan":
        # (B, C, F, H, W) with patch (p_t, p_h, p_w)
        p_t, p_h, p_w = transformer.config.patch_size
        return hidden.shape[2] // p_t, hidden.shape[3] // p_h, hidden.shape[4] // p_w
    # CogVideoX: (B, F, C, H, W), spatial patch p, temporal patch p_t (1.5) or none (1.0)
    p = transformer.config.patch_size
    p_t = transformer.config.patch_size_t or 1
    return -(-hidden.shape[1] // p_t), hidden.shape[3] // p, hidden.shape[4] // p


def _count_scheduler_steps(handle: PSAHandle, scheduler) -> None:
    """For schedulers without step_index: the step is the number of step() calls since
    set_timesteps(). Wraps the two methods on the instance; remove() restores them."""
    original_step = scheduler.step
    original_set = scheduler.set_timesteps

    def step(*args, **kwargs):
        result = original_step(*args, **kwargs)
        handle._counted_step += 1
        return result

    def set_timesteps(*args, **kwargs):
        handle._counted_step = 0
        return original_set(*args, **kwargs)

    scheduler.step = step
    scheduler.set_timesteps = set_timesteps

    def restore():
        for name in ("step", "set_timesteps"):
            if name in scheduler.__dict__:
                delattr(scheduler, name)

    handle._restore.append(restore)


def apply(pipe, preset: Union[None, str, Preset] = None, *, config: Optional[Config] = None,
          warmup_steps: Optional[int] = None, rearrange: Optional[str] = None,
          preset_file: Optional[str] = None, stats_path: Optional[str] = None,
          stats_sync: bool = False) -> PSAHandle:
    """Patches the self-attention of every transformer block of `pipe` with PSA.

    pipe: a diffusers pipeline (its transformer and, for Wan 2.2, transformer_2) or a bare Wan /
    CogVideoX transformer. preset: a selector ("Wan2.1_1.3b:psa_balanced") or a psa.Preset, read
    from preset_file when given; or pass config (a psa.Config) instead. warmup_steps and rearrange
    ("none", "gilbert", "tiles") override the preset's. Returns a PSAHandle; remove(pipe) undoes.
    """
    if getattr(pipe, _HANDLE_ATTR, None) is not None:
        raise ValueError("PSA is already applied to this pipeline; call remove(pipe) first")
    if preset is not None and config is not None:
        raise ValueError("pass either preset or config, not both")
    tile = (4, 8, 8)
    if preset is not None:
        if isinstance(preset, str):
            preset = load_preset(preset, path=preset_file)
        if preset.dense:
            raise ValueError(f"preset {preset.selector} is dense: leave the pipeline unpatched")
        config = preset.config
        preset_warmup = preset.warmup_steps
        preset_rearrange = preset.rearrange if preset.use_rearrange else "none"
        tile = tuple(preset.tile_size)
    else:
        config = psa.default_config() if config is None else config
        if not isinstance(config, Config):
            raise ValueError(f"config must be a psa.Config, got {type(config).__name__}")
        preset_warmup, preset_rearrange = 0, "gilbert"
    rearrange = preset_rearrange if rearrange is None else rearrange
    if rearrange not in _rearrange.METHODS:
        raise ValueError(f"rearrange must be one of {', '.join(_rearrange.METHODS)}, got "
                         f"{rearrange!r}")
    warmup_steps = preset_warmup if warmup_steps is None else int(warmup_steps)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")

    if isinstance(pipe, torch.nn.Module):
        experts = [("transformer", pipe)]
        scheduler = None
    else:
        experts = [(name, getattr(pipe, name, None)) for name in ("transformer", "transformer_2")]
        experts = [(name, t) for name, t in experts if t is not None]
        scheduler = getattr(pipe, "scheduler", None)
        if not experts:
            raise ValueError("pipe has no transformer to patch")
    families = [_family(t) for _, t in experts]
    for _, transformer in experts:
        parallel = getattr(transformer, "_parallel_config", None)
        if getattr(parallel, "context_parallel_config", None) is not None:
            _check_context_parallel(parallel.context_parallel_config)

    stats = _StatsWriter(stats_path, stats_sync) if stats_path is not None else None
    handle = PSAHandle(config, warmup_steps, rearrange, tile, scheduler, stats)
    if scheduler is not None and not hasattr(type(scheduler), "step_index"):
        _count_scheduler_steps(handle, scheduler)

    for (expert, transformer), family in zip(experts, families):
        blocks = transformer.blocks if family == "wan" else transformer.transformer_blocks
        processor_cls = WanPSAProcessor if family == "wan" else CogVideoXPSAProcessor
        for layer, block in enumerate(blocks):
            attn = block.attn1
            original = attn.processor
            attn.set_processor(processor_cls(handle, original, layer, expert, transformer))
            handle._restore.append(
                lambda attn=attn, original=original: attn.set_processor(original))

        def record_grid(module, args, kwargs, family=family):
            handle.grid = _latent_grid(family, module, args, kwargs)
            if family == "cogvideox":  # forward(hidden_states, encoder_hidden_states, ...)
                text = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
                handle.text_len = text.shape[1] if isinstance(text, torch.Tensor) else None

        hook = transformer.register_forward_pre_hook(record_grid, with_kwargs=True)
        handle._restore.append(hook.remove)

    setattr(pipe, _HANDLE_ATTR, handle)
    handle._owner = pipe
    return handle


def remove(pipe) -> None:
    """Undoes apply(pipe): the original attention processors come back, bit-for-bit."""
    handle = getattr(pipe, _HANDLE_ATTR, None)
    if handle is None:
        raise ValueError("PSA is not applied to this pipeline")
    handle.remove()


def context_parallel_plan(transformer) -> Dict:
    """The cp_plan for transformer.enable_parallelism(config=ContextParallelConfig(...),
    cp_plan=...) under which psa's processors run.

    Wan: diffusers' own plan (the transformer's _cp_plan). CogVideoX, for which diffusers has
    none: the video tokens are split over the ranks from the first block on (and the rotary
    embedding with them), the text tokens stay whole on every rank, and proj_out gathers the
    video. psa's CogVideoX processor does the all-to-all of every layer itself."""
    family = _family(transformer)
    if family == "wan":
        return transformer._cp_plan
    from diffusers.models._modeling_parallel import ContextParallelInput, ContextParallelOutput

    rotary = ContextParallelInput(split_dim=0, expected_dims=2, split_output=False)
    return {
        "": {"image_rotary_emb": [rotary, rotary]},  # (cos, sin), each (L_video, D)
        "transformer_blocks.0": {
            "hidden_states": ContextParallelInput(split_dim=1, expected_dims=3, split_output=False),
        },
        "proj_out": ContextParallelOutput(gather_dim=1, expected_dims=3),
    }
