"""psa.PSAAttention: a drop-in attention module over psa.attention."""

from __future__ import annotations

from typing import Optional, Union

import torch

from psa.config import Config, Preset, load_preset
from psa.functional import attention
from psa.plan import Plan


class PSAAttention(torch.nn.Module):
    """Pyramid Sparse Attention as a module: forward(q, k, v) on (B, H, L, D) tensors.

    `config` is a psa.Config, a psa.Preset or a preset selector ("Wan2.1_1.3b:psa_balanced");
    None selects the plug-and-play default. A preset is resolved once, here, so the module can be
    compiled. The module has no parameters.
    """

    def __init__(self, config: Union[None, Config, Preset, str] = None, *, causal: bool = False,
                 scale: Optional[float] = None):
        super().__init__()
        if isinstance(config, str):
            config = load_preset(config)
        self.preset = config if isinstance(config, Preset) else None
        self.config = self.preset.config if self.preset is not None else config
        self.causal = causal
        self.scale = scale

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *,
                plan: Optional[Plan] = None, causal: Optional[bool] = None,
                scale: Optional[float] = None, return_lse: bool = False):
        causal = self.causal if causal is None else causal
        scale = self.scale if scale is None else scale
        if plan is not None:
            return attention(q, k, v, plan=plan, causal=causal, scale=scale, return_lse=return_lse)
        if self.preset is not None:
            return attention(q, k, v, preset=self.preset, causal=causal, scale=scale,
                             return_lse=return_lse)
        return attention(q, k, v, config=self.config, causal=causal, scale=scale,
                         return_lse=return_lse)

    def extra_repr(self) -> str:
        what = self.preset.selector if self.preset is not None else repr(self.config)
        return f"{what}, causal={self.causal}"
