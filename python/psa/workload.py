"""The embedded video-DiT-like workload (docs: WORKLOADS.md) as NumPy arrays.

q, k, v with smooth space-time content, per-head projections, RMS-normalised q and k, a 3D rotary
embedding and a mix of local, content and sink heads: a stand-in for a real video transformer's
attention inputs, for benchmarks and experiments without model weights (not ground truth).

    q, k, v = psa.workload.video_workload(frames=21, height=30, width=52, heads=12, head_dim=128)
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from psa import _C
from psa.config import TEXT_POSITIONS


def video_workload(frames: int, height: int, width: int, heads: int, head_dim: int, *,
                   heads_kv: Optional[int] = None, text_len: int = 0,
                   text_position: str = "start", batch: int = 1,
                   seed: int = 0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q (B, H, L, D) and k, v (B, Hkv, L, D) float32 with L = text_len + frames*height*width."""
    if text_position not in TEXT_POSITIONS:
        raise ValueError(f"text_position must be one of {', '.join(TEXT_POSITIONS)}, "
                         f"got {text_position!r}")
    heads_kv = heads if heads_kv is None else heads_kv
    seq = text_len + frames * height * width
    q = np.empty((batch, heads, seq, head_dim), dtype=np.float32)
    k = np.empty((batch, heads_kv, seq, head_dim), dtype=np.float32)
    v = np.empty_like(k)
    _C.generate_workload(q, k, v, frames, height, width, text_len,
                         getattr(_C.TextPosition, text_position), seed)
    return q, k, v
