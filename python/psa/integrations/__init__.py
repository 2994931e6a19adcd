"""Integrations of PSA with model libraries: psa.integrations.diffusers (Wan, CogVideoX video
pipelines) and psa.integrations.transformers (causal prefill of Qwen2.5-VL-style language models).
Each is imported on its own, so neither library is needed unless used."""
