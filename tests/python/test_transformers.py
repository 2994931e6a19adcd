"""psa.integrations.transformers on small language models built from configs with random weights:
an all-full plan reproduces SDPA, prefill runs PSA (GQA, causal), decoding runs SDPA."""

import pytest

from helpers import needs_cuda, psa, rel_l2, seed_from_env, torch

transformers = pytest.importorskip("transformers", reason="needs transformers")
integration = pytest.importorskip("psa.integrations.transformers")

# All level 1 is exact causal attention: fp32 logits of two layers differ by summation order only.
FP32_TOL = 1e-5
FULL = psa.Config(block_m=64, block_n=32, ends=(1.0, 1.0, 1.0, 1.0))


def _models(seed):
    """Qwen2 and the language model of Qwen2.5-VL (M-RoPE), tiny, with GQA (4 query heads, 2 kv)."""
    small = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)
    torch.manual_seed(seed)
    yield "qwen2", transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**small)).eval()
    text_config = getattr(transformers, "Qwen2_5_VLTextConfig", None)
    text_model = getattr(transformers, "Qwen2_5_VLTextModel", None)
    if text_config is not None and text_model is not None:
        torch.manual_seed(seed)
        config = text_config(**small, rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]})
        yield "qwen2.5-vl-lm", text_model(config).eval()


def _output(model, ids, **kwargs):
    with torch.no_grad():
        result = model(ids, **kwargs)
    return result.logits if hasattr(result, "logits") else result.last_hidden_state


class _Spy:
    """Counts psa.attention calls made by the integration."""

    def __init__(self, monkeypatch):
        self.shapes = []
        self.configs = []
        real = integration.psa.attention

        def attention(q, k, v, **kwargs):
            self.shapes.append((tuple(q.shape), tuple(k.shape)))
            self.configs.append(kwargs["config"])
            return real(q, k, v, **kwargs)

        monkeypatch.setattr(integration.psa, "attention", attention)


def test_full_plan_prefill_matches_sdpa(monkeypatch, request):
    seed = seed_from_env(50000)
    ids = torch.randint(0, 100, (1, 300), generator=torch.Generator().manual_seed(seed))
    for name, model in _models(seed):
        reference = _output(model, ids)
        assert reference.norm() > 0
        spy = _Spy(monkeypatch)
        integration.apply(model, FULL)
        patched = _output(model, ids)
        integration.remove(model)
        # Two layers, GQA passed through without repeating K/V: q has 4 heads, k has 2.
        assert spy.shapes == [((1, 4, 300, 16), (1, 2, 300, 16))] * 2, name
        assert rel_l2(patched, reference) < FP32_TOL, f"{name}: {request.node.nodeid}"
        monkeypatch.undo()


def test_sparse_prefill_then_sdpa_decode(monkeypatch):
    seed = seed_from_env(51000)
    ids = torch.randint(0, 100, (1, 256), generator=torch.Generator().manual_seed(seed))
    _, model = next(_models(seed))
    spy = _Spy(monkeypatch)
    integration.apply(model, psa.Config(block_m=64, block_n=32, ends=(0.3, 0.4, 0.5, 0.7)))
    reference_len = len(spy.shapes)
    with torch.no_grad():
        generated = model.generate(ids, max_new_tokens=3, do_sample=False)
        text_full = _output(model, ids, psa_text_len=40)
    integration.remove(model)
    assert generated.shape == (1, 259)
    # The prefill ran PSA in both layers; the three decode steps did not.
    assert len(spy.shapes) == reference_len + 2 + 2
    assert torch.isfinite(text_full).all()
    # Causal, attention sink kept, the trailing 40 tokens forced full in the last call.
    last = spy.configs[-1]
    assert last.causal and last.keep_first_block
    assert (last.text_len, last.text_position) == (40, "end")
    assert spy.configs[0].text_len == 0


def test_padded_batch_falls_back_to_sdpa(monkeypatch):
    seed = seed_from_env(52000)
    _, model = next(_models(seed))
    ids = torch.randint(0, 100, (2, 128), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(2, 128, dtype=torch.long)
    mask[1, :10] = 0
    reference = _output(model, ids, attention_mask=mask)
    spy = _Spy(monkeypatch)
    integration.apply(model, FULL)
    patched = _output(model, ids, attention_mask=mask)
    integration.remove(model)
    assert spy.shapes == []
    assert torch.equal(patched, reference)


def test_register_errors():
    with pytest.raises(ValueError, match="either config or preset"):
        integration.register(FULL, preset="Wan2.1_1.3b:psa_topk")
    assert integration.register(preset="Wan2.1_1.3b:psa_topk") == "psa"


@needs_cuda
def test_full_plan_prefill_matches_sdpa_cuda_bf16(request):
    seed = seed_from_env(53000)
    torch.manual_seed(seed)
    # Head dim 64 (hidden 256 over 4 heads): a size the CUDA kernels support.
    config = transformers.Qwen2Config(vocab_size=100, hidden_size=256, intermediate_size=256,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=2048)
    model = transformers.Qwen2ForCausalLM(config).eval().to("cuda", torch.bfloat16)
    ids = torch.randint(0, 100, (1, 700), generator=torch.Generator().manual_seed(seed)).cuda()
    reference = _output(model, ids)
    integration.apply(model, FULL)
    patched = _output(model, ids)
    integration.remove(model)
    # bf16 activations: both paths round q, k, v and outputs to 8 mantissa bits.
    assert rel_l2(patched.float(), reference.float()) < 2e-2, request.node.nodeid
