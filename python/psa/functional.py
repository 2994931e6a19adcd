"""The functional API: psa.attention, psa.plan, psa.plan_from_levels, psa.dense_attention.

Tensors are (B, H, L, D) with any strides: torch tensors on the CPU or CUDA (through the custom
ops of psa.ops, so autograd and torch.compile work) or NumPy arrays (straight to the library).
Without a plan, attention runs the whole pipeline: pyramid -> estimate -> plan -> attention.
Token rearrangement is the integrations' business, not this API's.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import numpy as np

from psa import _C
from psa.config import Config, Preset, default_config, load_preset
from psa.plan import Plan

try:
    import torch
except ImportError:  # NumPy-only use
    torch = None

_POOL_FACTORS = (2, 4, 8)


def _is_torch(x) -> bool:
    return torch is not None and isinstance(x, torch.Tensor)


def _ops():
    # Importing psa.ops registers the custom ops; it needs torch.
    import psa.ops  # noqa: F401
    return torch.ops.psa


def _check_data(name: str, x) -> None:
    """q, k or v: a torch tensor or a NumPy array of rank 4 with a floating-point dtype."""
    if not (_is_torch(x) or isinstance(x, np.ndarray)):
        raise ValueError(f"{name} must be a torch.Tensor or a numpy.ndarray, got "
                         f"{type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have rank 4 (B, H, L, D), got rank {x.ndim} with shape "
                         f"{tuple(x.shape)}")
    floating = x.dtype.is_floating_point if _is_torch(x) else np.issubdtype(x.dtype, np.floating)
    if not floating:
        raise ValueError(f"{name} must be a floating-point array (float16, bfloat16 or float32; "
                         f"float64 too on the CPU), got {x.dtype}")


def _flag(name: str, value) -> bool:
    """A bool argument; NumPy's bool counts, a truthy string such as "no" does not."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)


def _check_qkv(q, k, v) -> bool:
    """Checks what the Python side needs before the library's own checks; returns is-torch."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        _check_data(name, x)
    kinds = {_is_torch(q), _is_torch(k), _is_torch(v)}
    if len(kinds) != 1:
        raise ValueError("q, k and v must all be torch tensors or all numpy arrays, got "
                         f"{type(q).__name__}, {type(k).__name__}, {type(v).__name__}")
    if _is_torch(q) and not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, "
                         f"{v.device}")
    return _is_torch(q)


def _resolve(config: Optional[Config], preset: Union[None, str, Preset]):
    """(Config, dense) from a config or a preset (a selector or a Preset); neither = default."""
    if config is not None and preset is not None:
        raise ValueError("pass either config or preset, not both")
    if preset is not None:
        if isinstance(preset, str):
            preset = load_preset(preset)
        if not isinstance(preset, Preset):
            raise ValueError(f"preset must be a selector string or a psa.Preset, got "
                             f"{type(preset).__name__}")
        return preset.config, preset.dense
    if config is None:
        return default_config(), False
    if not isinstance(config, Config):
        raise ValueError(f"config must be a psa.Config, got {type(config).__name__}")
    return config, False


def _ceil_div(a, b):
    return (a + b - 1) // b


def _effective_scale(scale: Optional[float], config: Config) -> float:
    if scale is None:
        return config.softmax_scale
    scale = float(scale)
    if not (math.isfinite(scale) and scale > 0):
        raise ValueError(f"scale must be a finite positive number, got {scale}")
    return scale


# ---- NumPy path -------------------------------------------------------------------------------


def _np_plan(q, k, config: Config):
    batch, heads, seq_q, _ = q.shape
    seq_k = k.shape[2]
    mq, nk = _ceil_div(seq_q, config.block_m), _ceil_div(seq_k, config.block_n)
    native = config.to_native()
    scores = np.empty((batch, heads, mq, nk), dtype=np.float32)
    _C.estimate_importance(scores, q, k, native)
    counts = np.empty((batch, heads, mq, 4), dtype=np.int32)
    blocks = np.empty((batch, heads, mq, nk), dtype=np.int32)
    _C.plan_from_scores(counts, blocks, config.block_m, config.block_n, seq_q, seq_k, scores, k,
                        native)
    return counts, blocks


def _np_attention(q, k, v, counts, blocks, config: Config):
    batch, heads_kv, seq_k, dim = k.shape
    k_levels = [np.empty((batch, heads_kv, _ceil_div(seq_k, f), dim), dtype=k.dtype)
                for f in _POOL_FACTORS]
    v_levels = [np.empty((batch, heads_kv, _ceil_div(seq_k, f), dim), dtype=v.dtype)
                for f in _POOL_FACTORS]
    _C.build_pyramid(k_levels, v_levels, k, v)
    out = np.empty(q.shape, dtype=q.dtype)
    lse = np.empty(q.shape[:3], dtype=np.float32)
    _C.attention_forward(out, lse, q, k, v, k_levels, v_levels, counts, blocks, config.block_m,
                         config.block_n, config.to_native())
    return out, lse


# ---- Public API -------------------------------------------------------------------------------


def plan(q, k, config: Optional[Config] = None, *, preset: Union[None, str, Preset] = None,
         causal: bool = False, scale: Optional[float] = None) -> Plan:
    """Estimates block importance and plans levels for q (B, Hq, Lq, D) against k (B, Hkv, Lk, D).

    Returns a psa.Plan (levels, density per head, level fractions) that psa.attention accepts.
    The plan is computed without gradient: it is a constant for the backward pass.
    """
    _check_data("q", q)
    _check_data("k", k)
    config, _ = _resolve(config, preset)
    causal = _flag("causal", causal) or config.causal
    softmax_scale = _effective_scale(scale, config)
    if causal != config.causal or softmax_scale != config.softmax_scale:
        config = config.replace(causal=causal, softmax_scale=softmax_scale)
    seq_q, seq_k = q.shape[2], k.shape[2]
    if _is_torch(q):
        if not _is_torch(k):
            raise ValueError("q and k must both be torch tensors or both numpy arrays")
        counts, blocks = _ops().plan(q.detach(), k.detach(), config.key, causal, softmax_scale)
    else:
        if not isinstance(k, np.ndarray):
            raise ValueError("q and k must both be torch tensors or both numpy arrays")
        counts, blocks = _np_plan(q, k, config)
    return Plan(counts, blocks, config, seq_q, seq_k)


def plan_from_levels(levels, config: Optional[Config] = None, *, k=None,
                     seq_q: Optional[int] = None, seq_k: Optional[int] = None) -> Plan:
    """A plan from a caller's level map of shape (B, Hq, Mq, Nk), values in {0, 1, 2, 4, 8}.

    seq_q and seq_k (Lq, Lk the plan is for) default to Mq * block_m and k's length (or
    Nk * block_n); a plan serves any Lq, Lk with the same block counts. k (B, Hkv, Lk, D) is needed
    when config.sim_cap is set. Invalid levels raise ValueError.
    """
    config = default_config() if config is None else config
    if not isinstance(config, Config):
        raise ValueError(f"config must be a psa.Config, got {type(config).__name__}")
    if not (_is_torch(levels) or isinstance(levels, np.ndarray)):
        raise ValueError(f"levels must be a torch.Tensor or a numpy.ndarray, got "
                         f"{type(levels).__name__}")
    if levels.ndim != 4:
        raise ValueError(f"levels must have shape (B, Hq, Mq, Nk), got {tuple(levels.shape)}")
    if k is not None:
        _check_data("k", k)
        if _is_torch(k) != _is_torch(levels):
            raise ValueError("levels and k must both be torch tensors or both numpy arrays")
    elif config.sim_cap:
        raise ValueError("k is needed when config.sim_cap is set (the cap is computed from keys)")
    _, _, mq, nk = (int(s) for s in levels.shape)
    seq_q = mq * config.block_m if seq_q is None else int(seq_q)
    if seq_k is None:
        seq_k = k.shape[2] if k is not None else nk * config.block_n
    seq_k = int(seq_k)
    if _ceil_div(seq_q, config.block_m) != mq or _ceil_div(seq_k, config.block_n) != nk:
        raise ValueError(
            f"levels shape {tuple(levels.shape)} does not match seq_q={seq_q}, seq_k={seq_k} with "
            f"block_m={config.block_m}, block_n={config.block_n} (expected Mq="
            f"{_ceil_div(seq_q, config.block_m)}, Nk={_ceil_div(seq_k, config.block_n)})")
    levels = _as_uint8_levels(levels)
    if _is_torch(levels):
        counts, blocks = _ops().plan_from_levels(levels, None if k is None else k.detach(), seq_q,
                                                 seq_k, config.key)
    else:
        counts = np.empty((*levels.shape[:3], 4), dtype=np.int32)
        blocks = np.empty(levels.shape, dtype=np.int32)
        _C.plan_from_levels(counts, blocks, config.block_m, config.block_n, seq_q, seq_k, levels, k,
                            config.to_native())
    return Plan(counts, blocks, config, seq_q, seq_k)


def _as_uint8_levels(levels):
    """The level map as uint8; other integer dtypes are range-checked first so that a value such
    as 257 cannot wrap to a valid level."""
    if _is_torch(levels):
        if levels.dtype == torch.uint8:
            return levels
        if levels.dtype.is_floating_point or levels.dtype.is_complex or levels.dtype == torch.bool:
            raise ValueError(f"levels must have an integer dtype, got {levels.dtype}")
        if levels.numel() and bool(((levels < 0) | (levels > 8)).any()):
            raise ValueError("levels must hold values in {0, 1, 2, 4, 8}; found values outside "
                             "[0, 8]")
        return levels.to(torch.uint8)
    if levels.dtype == np.uint8:
        return levels
    if not np.issubdtype(levels.dtype, np.integer):
        raise ValueError(f"levels must have an integer dtype, got {levels.dtype}")
    if levels.size and ((levels < 0) | (levels > 8)).any():
        raise ValueError("levels must hold values in {0, 1, 2, 4, 8}; found values outside [0, 8]")
    return levels.astype(np.uint8)


def _check_plan(plan: Plan, q, k, is_torch: bool) -> None:
    if not isinstance(plan, Plan):
        raise ValueError(f"plan must be a psa.Plan, got {type(plan).__name__}")
    batch, heads, seq_q, _ = q.shape
    seq_k = k.shape[2]
    expected = (int(batch), int(heads), _ceil_div(int(seq_q), plan.block_m),
                _ceil_div(int(seq_k), plan.block_n))
    if plan.shape != expected:
        raise ValueError(
            f"plan has shape (B, Hq, Mq, Nk) = {plan.shape} but q {tuple(q.shape)} and k "
            f"{tuple(k.shape)} with block_m={plan.block_m}, block_n={plan.block_n} need {expected}")
    if plan.is_torch != is_torch:
        raise ValueError("plan and q must both hold torch tensors or both numpy arrays")
    if is_torch and plan.counts.device != q.device:
        raise ValueError(f"plan is on {plan.counts.device} but q is on {q.device} (use plan.to())")


def attention(q, k, v, *, config: Optional[Config] = None,
              preset: Union[None, str, Preset] = None, plan: Optional[Plan] = None,
              causal: bool = False, scale: Optional[float] = None, return_lse: bool = False):
    """Pyramid Sparse Attention of q (B, Hq, Lq, D) over k, v (B, Hkv, Lk, D), Hq % Hkv == 0.

    Without `plan`, plans with `config` (or `preset`, a selector such as
    "Wan2.1_1.3b:psa_balanced" or a psa.Preset; neither = the plug-and-play default). A dense
    preset runs dense attention. `causal` is OR-ed with the config's; `scale` None keeps the
    config's softmax_scale (0 = 1/sqrt(D)). Returns out (B, Hq, Lq, D) in q's dtype, and with
    return_lse the log-sum-exp (B, Hq, Lq) float32 as well (not differentiable). Gradients of q,
    k, v come from the exact backward; the config's (or plan's) `deterministic` selects bitwise
    reproducible gradients (the default) or the faster order-dependent accumulation on CUDA.

    A preset selector resolves to a Preset cached at import, so it also works inside
    torch.compile(fullgraph=True).
    """
    is_torch = _check_qkv(q, k, v)
    if plan is not None:
        if config is not None or preset is not None:
            raise ValueError("pass either plan or config/preset: a plan carries its own config")
        _check_plan(plan, q, k, is_torch)
        cfg, dense = plan.config, False
        counts, blocks = plan.counts, plan.blocks
    else:
        cfg, dense = _resolve(config, preset)
        counts = blocks = None
    causal = _flag("causal", causal) or cfg.causal
    return_lse = _flag("return_lse", return_lse)
    softmax_scale = _effective_scale(scale, cfg)

    if dense:
        out, lse = _dense(q, k, v, causal, softmax_scale, is_torch)
    elif is_torch:
        ops = _ops()
        if counts is None:
            counts, blocks = ops.plan(q.detach(), k.detach(), cfg.key, causal, softmax_scale)
        out, lse = ops.attention_forward(q, k, v, counts, blocks, cfg.block_m, cfg.block_n, causal,
                                         softmax_scale, cfg.deterministic)
    else:
        call_config = cfg
        if causal != cfg.causal or softmax_scale != cfg.softmax_scale:
            call_config = cfg.replace(causal=causal, softmax_scale=softmax_scale)
        if counts is None:
            counts, blocks = _np_plan(q, k, call_config)
        out, lse = _np_attention(q, k, v, counts, blocks, call_config)
    return (out, lse) if return_lse else out


def _dense(q, k, v, causal: bool, softmax_scale: float, is_torch: bool):
    if is_torch:
        return _ops().dense_attention_forward(q, k, v, causal, softmax_scale)
    out = np.empty(q.shape, dtype=q.dtype)
    lse = np.empty(q.shape[:3], dtype=np.float32)
    _C.dense_attention_forward(out, lse, q, k, v, causal, softmax_scale)
    return out, lse


def dense_attention(q, k, v, *, causal: bool = False, scale: Optional[float] = None,
                    return_lse: bool = False):
    """Exact dense attention by the library (the reference for all-level-1 plans)."""
    is_torch = _check_qkv(q, k, v)
    causal = _flag("causal", causal)
    return_lse = _flag("return_lse", return_lse)
    if scale is not None:
        scale = float(scale)
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a finite positive number, got {scale}")
    out, lse = _dense(q, k, v, causal, 0.0 if scale is None else scale, is_torch)
    return (out, lse) if return_lse else out
