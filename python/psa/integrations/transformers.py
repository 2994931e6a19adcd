"""PSA as a transformers attention implementation for causal prefill and causal-LM training.

    import psa.integrations.transformers as psa_tf
    state = psa_tf.apply(model)     # or: psa_tf.register(); model.set_attn_implementation("psa")
    model.generate(**inputs)        # prefill runs PSA, decoding runs SDPA
    model(ids, labels=ids).loss.backward()   # training (train mode) runs PSA and its backward
    psa_tf.remove(model)            # back to "sdpa"

Prefill (more than one query) runs PSA with causal attention (bottom-right aligned, so a prefill
against a cache works), grouped-query attention without repeating K/V, keep_first_block (the
attention sink), and the last `text_len` tokens forced full (SPEC.md section 5; pass psa_text_len=N
to the model's forward to set it per call, e.g. the question after the video tokens). The same path
serves training: train mode changes nothing, gradients of q, k, v come from PSA's exact backward,
and gradient checkpointing recomputes the same plan. Decode steps (one query), padded batches (an
explicit mask), sliding-window layers, attention dropout and output_attentions use the model's SDPA
path unchanged; each such call is counted in the state's fallback_calls, and in train mode the
first one warns, because a model that trains through SDPA is not training with PSA.

Each model keeps its own config: apply() stores it (a PSAState) on the model's modules, so
apply(model_a, config=A) then apply(model_b, config=B) leaves model_a on A. register(config) sets
the config of models switched to "psa" by name without apply().
"""

from __future__ import annotations

import warnings
from typing import Dict, Optional, Union

import torch

import psa
from psa.config import Config, Preset, load_preset

NAME = "psa"
_STATE_ATTR = "_psa_state"


class PSAState:
    """The PSA settings of one model (or of register()'s default) and what its calls did.

    config: the causal-LM config (causal, keep_first_block, text at the end). calls: attention
    calls PSA ran; fallback_calls: calls handed to SDPA (decode steps, masks, sliding windows,
    dropout, output_attentions).
    """

    def __init__(self, config: Config):
        self.config = config
        self.calls = 0
        self.fallback_calls = 0
        self._warned = False
        self._configs: Dict[int, Config] = {}

    def config_for(self, text_len: Optional[int]) -> Config:
        if text_len is None:
            return self.config
        config = self._configs.get(text_len)
        if config is None:
            config = self.config.replace(text_len=int(text_len))
            self._configs[text_len] = config
        return config

    def fell_back(self, module: torch.nn.Module, reason: str) -> None:
        self.fallback_calls += 1
        if module.training and not self._warned:
            self._warned = True
            warnings.warn(f"psa: a training call of {type(module).__name__} runs SDPA, not PSA "
                          f"({reason}); see PSAState.fallback_calls", stacklevel=3)

    def __repr__(self) -> str:
        return (f"PSAState(calls={self.calls}, fallback_calls={self.fallback_calls}, "
                f"config={self.config})")


# The state of models switched to "psa" by name (register() without apply()).
_default = {"state": None}


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


def _fallback_reason(query, attention_mask, causal, dropout, kwargs) -> Optional[str]:
    if query.shape[2] == 1:
        return "a single query (decode step)"
    if attention_mask is not None:
        return "an explicit attention mask (padding)"
    if not causal:
        return "non-causal attention"
    if dropout > 0.0:
        return f"attention dropout {dropout}"
    if kwargs.get("sliding_window") is not None:
        return "a sliding window"
    if kwargs.get("output_attentions", False):
        return "output_attentions"
    return None


def psa_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor,
                          value: torch.Tensor, attention_mask: Optional[torch.Tensor],
                          dropout: float = 0.0, scaling: Optional[float] = None,
                          is_causal: Optional[bool] = None, **kwargs):
    """transformers' attention-function signature: query (B, Hq, Lq, D), key and value
    (B, Hkv, Lk, D) not repeated; returns ((B, Lq, Hq, D), None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    text_len = kwargs.pop("psa_text_len", None)
    state = getattr(module, _STATE_ATTR, None) or _default["state"]
    reason = _fallback_reason(query, attention_mask, causal, dropout, kwargs)
    if state is None or reason is not None:
        if state is not None:
            state.fell_back(module, reason)
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    state.calls += 1
    out = psa.attention(query, key, value, config=state.config_for(text_len), causal=True,
                        scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def register(config: Optional[Config] = None, *,
             preset: Union[None, str, Preset] = None) -> str:
    """Registers "psa" as an attention implementation (and its mask function, SDPA's, so that a
    padded batch gets an explicit mask and falls back to SDPA). `config` (or `preset`) becomes the
    config of models switched to "psa" without apply(); models passed to apply() keep their own.
    Returns the name."""
    _default["state"] = PSAState(_lm_config(config, preset))
    _register_function()
    return NAME


def _register_function() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, psa_attention_forward)
    AttentionMaskInterface.register(NAME, sdpa_mask)


def apply(model, config: Optional[Config] = None, *,
          preset: Union[None, str, Preset] = None) -> PSAState:
    """Switches `model` to PSA with its own config (other models keep theirs). Returns the
    model's PSAState (its config and call counts)."""
    state = PSAState(_lm_config(config, preset))
    _register_function()
    for module in model.modules():
        setattr(module, _STATE_ATTR, state)
    model.set_attn_implementation(NAME)
    return state


def state_of(model) -> Optional[PSAState]:
    """The PSAState apply() gave `model`, or None."""
    return getattr(model, _STATE_ATTR, None)


def remove(model, implementation: str = "sdpa") -> None:
    """Switches `model` back to `implementation` and forgets its PSA config."""
    model.set_attn_implementation(implementation)
    for module in model.modules():
        if _STATE_ATTR in module.__dict__:
            delattr(module, _STATE_ATTR)
