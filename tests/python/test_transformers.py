"""psa.integrations.transformers on small language models built from configs with random weights:
an all-full plan reproduces SDPA, prefill runs PSA (GQA, causal), decoding runs SDPA, training runs
PSA and its backward, and each model keeps its own config."""

import pytest

from helpers import needs_cuda, needs_cuda_backward, psa, rel_l2, seed_from_env, torch

transformers = pytest.importorskip("transformers", reason="needs transformers")
integration = pytest.importorskip("psa.integrations.transformers")

# All level 1 is exact causal attention: fp32 logits of two layers differ by summation order only.
FP32_TOL = 1e-5
# Parameter gradients sum over every token of the sequence, through two layers: 1e-4 relative
# leaves a margin for summation order; a wrong gradient of one head costs far more.
FP32_GRAD_TOL = 1e-4
FULL = psa.Config(block_m=64, block_n=32, ends=(1.0, 1.0, 1.0, 1.0))
SPARSE = psa.Config(block_m=64, block_n=32, ends=(0.3, 0.4, 0.5, 0.7))


SMALL = dict(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024)


def _qwen2(seed, **overrides):
    torch.manual_seed(seed)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**{**SMALL, **overrides}))


def _models(seed):
    """Qwen2 and the language model of Qwen2.5-VL (M-RoPE), tiny, with GQA (4 query heads, 2 kv)."""
    small = SMALL
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


def test_each_model_keeps_its_config(monkeypatch, request):
    """apply(model_a, FULL) then apply(model_b, SPARSE): model_a still runs FULL (issue 11)."""
    seed = seed_from_env(54000)
    ids = torch.randint(0, 100, (1, 256), generator=torch.Generator().manual_seed(seed))
    model_a, model_b = _qwen2(seed).eval(), _qwen2(seed + 1).eval()
    reference_a, reference_b = _output(model_a, ids), _output(model_b, ids)
    assert reference_a.norm() > 0
    state_a = integration.apply(model_a, FULL)
    state_b = integration.apply(model_b, SPARSE)
    spy = _Spy(monkeypatch)
    out_a, out_b = _output(model_a, ids), _output(model_b, ids)
    assert [c.ends for c in spy.configs] == [FULL.ends] * 2 + [SPARSE.ends] * 2
    assert rel_l2(out_a, reference_a) < FP32_TOL, request.node.nodeid
    assert rel_l2(out_b, reference_b) > 10 * FP32_TOL  # sparse: model_b really runs its own
    assert (state_a.calls, state_b.calls) == (2, 2)
    assert integration.state_of(model_a) is state_a
    # Removing one model leaves the other on PSA with its config.
    integration.remove(model_b)
    assert integration.state_of(model_b) is None
    assert torch.equal(_output(model_b, ids), reference_b)
    assert rel_l2(_output(model_a, ids), reference_a) < FP32_TOL
    assert state_a.calls == 4
    integration.remove(model_a)


def _enable_checkpointing(model):
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # the newer name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def _train_gradients(model, ids, **kwargs):
    """Parameter gradients of one causal-LM loss in train mode (a collator's all-ones mask)."""
    model.train()
    loss = model(ids, attention_mask=torch.ones_like(ids), labels=ids, **kwargs).loss
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), grads


def test_training_runs_psa_and_its_backward(monkeypatch, request):
    """Fine-tuning a GQA causal LM: train mode keeps PSA (no fallback to SDPA), an all-full plan
    gives SDPA's gradients, gradients reach every projection with a sparse plan, and gradient
    checkpointing reproduces them."""
    seed = seed_from_env(55000)
    ids = torch.randint(0, 100, (2, 300), generator=torch.Generator().manual_seed(seed))
    model = _qwen2(seed)
    reference_loss, reference = _train_gradients(model, ids)
    spy = _Spy(monkeypatch)
    state = integration.apply(model, FULL)
    loss, grads = _train_gradients(model, ids)
    # Two layers, GQA passed through without repeating K/V.
    assert spy.shapes == [((2, 4, 300, 16), (2, 2, 300, 16))] * 2
    assert (state.calls, state.fallback_calls) == (2, 0)
    assert abs(float(loss - reference_loss)) < FP32_TOL * float(reference_loss)
    assert reference.keys() == grads.keys()
    for name, ref in reference.items():
        assert ref.norm() > 0, name
        assert rel_l2(grads[name], ref) < FP32_GRAD_TOL, f"{name}: {request.node.nodeid}"

    state = integration.apply(model, SPARSE)
    _, sparse = _train_gradients(model, ids)
    _enable_checkpointing(model)
    _, checkpointed = _train_gradients(model, ids)
    integration.remove(model)
    # 2 calls without checkpointing, then 2 forward and 2 recomputed in the backward.
    assert (state.calls, state.fallback_calls) == (6, 0)
    projections = [n for n in sparse if n.endswith(("q_proj.weight", "k_proj.weight",
                                                    "v_proj.weight"))]
    assert len(projections) == 6
    for name in projections:
        assert torch.isfinite(sparse[name]).all() and sparse[name].norm() > 0, name
        assert rel_l2(sparse[name], reference[name]) > FP32_GRAD_TOL, name  # sparse, not dense
    for name, grad in sparse.items():
        assert torch.equal(checkpointed[name], grad), name


def test_training_fallback_warns():
    """A training call PSA cannot take (attention dropout) runs SDPA, is counted and warns once."""
    seed = seed_from_env(56000)
    ids = torch.randint(0, 100, (1, 128), generator=torch.Generator().manual_seed(seed))
    model = _qwen2(seed, attention_dropout=0.1)
    state = integration.apply(model, SPARSE)
    with pytest.warns(UserWarning, match="runs SDPA, not PSA .attention dropout 0.1"):
        _train_gradients(model, ids)
    assert (state.calls, state.fallback_calls) == (0, 2)
    model.eval()
    _output(model, ids)  # dropout is off in eval mode: PSA runs
    integration.remove(model)
    assert state.calls == 2


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


@needs_cuda_backward
def test_training_bf16_cuda_matches_sdpa_accuracy(request):
    """bf16 fine-tuning on CUDA: with an all-full plan, PSA's gradients are as close to the fp32
    CPU model's as SDPA's are (within 3x: both round activations to bf16 everywhere else, and a
    16-bit attention backward rounds its probabilities too)."""
    seed = seed_from_env(57000)
    ids = torch.randint(0, 100, (1, 2048), generator=torch.Generator().manual_seed(seed))
    # Head dim 64 (hidden 256 over 4 heads): a size the CUDA kernels support.
    sizes = dict(hidden_size=256, intermediate_size=256, max_position_embeddings=4096)
    model = _qwen2(seed, **sizes)
    _, reference = _train_gradients(model, ids)
    model = model.to("cuda", torch.bfloat16)
    _, sdpa = _train_gradients(model, ids.cuda())
    state = integration.apply(model, FULL)
    _, grads = _train_gradients(model, ids.cuda())
    integration.remove(model)
    assert (state.calls, state.fallback_calls) == (2, 0)
    for name, ref in reference.items():
        assert ref.norm() > 0, name
        budget = 3 * rel_l2(sdpa[name].cpu(), ref)
        assert rel_l2(grads[name].cpu(), ref) <= budget, f"{name}: {request.node.nodeid}"
