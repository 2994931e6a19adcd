"""psa.Plan: an inspectable plan (SPEC.md section 3) that psa.attention accepts.

A plan holds, for every (batch, query head, query block), the key blocks it attends and at which
level, in the library's compact form: counts (B, Hq, Mq, 4) int32, the number of key blocks at
levels 1, 2, 4, 8, and blocks (B, Hq, Mq, Nk) int32, their indices. Plans made from torch tensors
hold torch tensors on the same device; plans made from NumPy arrays hold NumPy arrays.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from psa import _C
from psa.config import Config

LEVELS = (0, 1, 2, 4, 8)
_POOL_FACTORS = np.array([1.0, 2.0, 4.0, 8.0])


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


class Plan:
    """A plan of PSA for one (q, k) problem.

    Attributes: counts, blocks (see the module docstring), config (the Config it was made with),
    seq_q, seq_k (Lq and Lk it was made for). Derived views: levels, density, density_per_head,
    level_fractions. On CUDA none of them synchronises the device; statistics() does.
    """

    def __init__(self, counts, blocks, config: Config, seq_q: int, seq_k: int):
        self.counts = counts
        self.blocks = blocks
        self.config = config
        self.seq_q = int(seq_q)
        self.seq_k = int(seq_k)
        self._levels = None

    # ---- shape -------------------------------------------------------------------------------
    @property
    def block_m(self) -> int:
        return self.config.block_m

    @property
    def block_n(self) -> int:
        return self.config.block_n

    @property
    def shape(self):
        """(B, Hq, Mq, Nk)."""
        return tuple(int(s) for s in self.blocks.shape)

    @property
    def is_torch(self) -> bool:
        return _is_torch(self.counts)

    @property
    def device(self):
        return self.counts.device if self.is_torch else "cpu"

    def __repr__(self) -> str:
        b, h, mq, nk = self.shape
        return (f"psa.Plan(batch={b}, heads={h}, q_blocks={mq}, k_blocks={nk}, "
                f"block_m={self.block_m}, block_n={self.block_n}, seq_q={self.seq_q}, "
                f"seq_k={self.seq_k}, device={self.device})")

    # ---- views -------------------------------------------------------------------------------
    @property
    def levels(self):
        """The level map (B, Hq, Mq, Nk) uint8, values in {0, 1, 2, 4, 8} (computed once)."""
        if self._levels is None:
            if self.is_torch:
                import torch
                self._levels = torch.ops.psa.plan_to_levels(self.counts, self.blocks, self.block_m,
                                                            self.block_n, self.seq_q, self.seq_k)
            else:
                levels = np.empty(self.blocks.shape, dtype=np.uint8)
                _C.plan_to_levels(levels, self.counts, self.blocks, self.block_m, self.block_n,
                                  self.seq_q, self.seq_k)
                self._levels = levels
        return self._levels

    def _row_density(self):
        # (B, Hq, Mq): sum over kept blocks of 1/level, divided by Nk (SPEC 3).
        nk = self.shape[3]
        if self.is_torch:
            import torch
            weights = torch.tensor(1.0 / _POOL_FACTORS, dtype=torch.float64,
                                   device=self.counts.device)
            return (self.counts.to(torch.float64) * weights).sum(-1) / nk
        return (self.counts.astype(np.float64) / _POOL_FACTORS).sum(-1) / nk

    @property
    def density_per_head(self):
        """(Hq,) float64: FLOP density of each query head, mean over batches and query blocks."""
        row = self._row_density()
        return row.mean(dim=(0, 2)) if self.is_torch else row.mean(axis=(0, 2))

    @property
    def density(self):
        """FLOP density of the whole plan (mean over all rows), a 0-dim tensor or a float."""
        row = self._row_density()
        return row.mean() if self.is_torch else float(row.mean())

    @property
    def level_fractions(self):
        """(5,) float64: fraction of (row, key block) pairs at levels 0, 1, 2, 4, 8 (LEVELS)."""
        b, h, mq, nk = self.shape
        total = b * h * mq * nk
        if self.is_torch:
            import torch
            kept = self.counts.to(torch.float64).sum(dim=(0, 1, 2)) / total
            return torch.cat([(1.0 - kept.sum()).reshape(1), kept])
        kept = self.counts.astype(np.float64).sum(axis=(0, 1, 2)) / total
        return np.concatenate([[1.0 - kept.sum()], kept])

    def statistics(self) -> Dict:
        """Python numbers (synchronises a CUDA plan): density, density_per_head, level_fractions
        keyed by level, and the problem's shape."""
        def to_list(x):
            return x.tolist() if hasattr(x, "tolist") else list(x)
        fractions = to_list(self.level_fractions)
        return {
            "density": float(self.density),
            "density_per_head": [float(d) for d in to_list(self.density_per_head)],
            "level_fractions": {str(level): float(f) for level, f in zip(LEVELS, fractions)},
            "seq_q": self.seq_q,
            "seq_k": self.seq_k,
            "shape": list(self.shape),
        }

    # ---- movement ----------------------------------------------------------------------------
    def to(self, device) -> "Plan":
        """The same plan on another device (torch plans only)."""
        if not self.is_torch:
            raise ValueError("Plan.to() needs a plan of torch tensors; this one holds NumPy arrays")
        return Plan(self.counts.to(device), self.blocks.to(device), self.config, self.seq_q,
                    self.seq_k)

    def numpy(self) -> "Plan":
        """The same plan as NumPy arrays on the host."""
        if not self.is_torch:
            return self
        return Plan(self.counts.cpu().numpy(), self.blocks.cpu().numpy(), self.config, self.seq_q,
                    self.seq_k)
