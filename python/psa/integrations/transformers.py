"""PSA as a transformers attention implementation for causal prefill (Qwen2.5-VL-style LMs).

    import psa.integrations.transformers as psa_tf
    psa_tf.apply(model)     # or: psa_tf.register(); model.set_attn_implementation("psa")
    model.generate(**inputs)            # prefill runs PSA, decoding runs SDPA
    psa_tf.remove(model)                # back to "sdpa"

Prefill (more than one query) runs PSA with causal attention (bottom-right aligned, so a prefill
against a cache works), grouped-query attention without repeating K/V, keep_first_block (the
attention sink), and the last `text_len` tokens forced full (SPEC.md section 5; pass psa_text_len=N
to the model's forward to set it per call, e.g. the question after the video tokens). Decode steps
(one query), padded batches (an explicit mask), sliding-window layers and dropout use the model's
SDPA path unchanged.
"""

from __future__ import annotations

from typing import Optional, Union

import torch

import psa
from psa.config import Config, Preset, load_preset

NAME = "psa"

_state = {"config": None, "configs": {}}


def _lm_config(config: Optional[Config], preset: Union[None, str, Preset]) -> Config:
    if config is not None and preset is not None:
        raise ValueError("pass either config or preset, not both")
    if preset is not None:
        preset = load_preset(preset) if isinstance(preset, str) else preset
        config = preset.config
    if config is None:
        config = psa.default_config()
    if not isinstance(config, Config):
        raise ValueError(f"config must be a psa.Config, got {type(config).__name__}")
    # Language models: causal, the first block kept as the attention sink, text at the end.
    return config.replace(causal=True, keep_first_block=True, text_position="end")


def _config_for(text_len: int) -> Config:
    configs = _state["configs"]
    config = configs.get(text_len)
    if config is None:
        config = _state["config"].replace(text_len=int(text_len))
        configs[text_len] = config
    return config


def psa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                          value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                          dropout: float = 0.0, scaling: Optional[float] = None,
                          is_causal: Optional[bool] = None, **kwargs):
    """transformers' attention-function signature: query (B, Hq, Lq, D), key and value
    (B, Hkv, Lk, D) not repeated; returns ((B, Lq, Hq, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    text_len = kwargs.pop("psa_text_len", None)
    if (query.shape[2] == 1 or attention_mask is not None or not causal or dropout > 0.0
            or kwargs.get("sliding_window") is not None or _state["config"] is None
            or kwargs.get("output_attentions", False)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    config = _config_for(_state["config"].text_len if text_len is None else text_len)
    out = psa.attention(query, key, value, config=config, causal=True, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register(config: Optional[Config] = None, *,
             preset: Union[None, str, Preset] = None) -> str:
    """Registers "psa" as an attention implementation (and its mask function, SDPA's, so that a
    padded batch gets an explicit mask and falls back to SDPA). Returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    _state["config"] = _lm_config(config, preset)
    _state["configs"] = {}
    AttentionInterface.register(NAME, psa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME


def apply(model, config: Optional[Config] = None, *,
          preset: Union[None, str, Preset] = None) -> None:
    """Registers PSA and switches `model` to it."""
    register(config, preset=preset)
    model.set_attn_implementation(NAME)


def remove(model, implementation: str = "sdpa") -> None:
    """Switches `model` back to `implementation`."""
    model.set_attn_implementation(implementation)
