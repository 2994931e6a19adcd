"""psa.attention under torch.compile(mode="reduce-overhead") (issue 8 item 4): inductor captures the
call (pyramid, estimator, planner, attention) into a CUDA graph and replays it on the inputs of
later calls. Any host synchronisation or capture-unsafe allocation in the call would make the
capture fail or be skipped; cudagraph_or_error turns a skip into an error, so the test cannot pass
on an eager fallback. Each replay must equal the eager call on the same inputs bit for bit (the
same kernels on the same data), and the inputs change between calls so that a replay returning
stale results shows.

GPU only (skipped elsewhere, with the reason); the lead runs these on the GPU machine:
    python -m pytest -q -m gpu tests/python/test_cuda_graphs.py
"""

import numpy as np
import pytest

from helpers import needs_cuda, replay_hint, seed_from_env, torch

import psa
import psa.workload

pytestmark = needs_cuda

# A small video-like problem: 4 x 9 x 11 = 396 tokens (ragged against 128-row blocks) and 24 text
# tokens first, 4 heads of 128.
_GRID = dict(frames=4, height=9, width=11, heads=4, head_dim=128, text_len=24)
_CALLS = 5


def _inputs(seed):
    q, k, v = psa.workload.video_workload(**_GRID, seed=seed)
    return tuple(torch.from_numpy(np.ascontiguousarray(t)).to("cuda", torch.bfloat16)
                 for t in (q, k, v))


@pytest.mark.parametrize("selector", [None, "Wan2.1_1.3b:psa_balanced"],
                         ids=["default_topk", "thresholdbound_simcap_preset"])
def test_reduce_overhead_compile_replays_match_eager(selector, request):
    seed = seed_from_env(8100)
    torch._dynamo.reset()

    def step(q, k, v):
        # The scaling gives inductor a kernel of its own around the custom ops.
        return psa.attention(q, k, v, preset=selector) * 1.0

    compiled = torch.compile(step, mode="reduce-overhead", fullgraph=True)
    counters = torch._dynamo.utils.counters
    counters.clear()
    previous = None
    with torch._inductor.config.patch({"triton.cudagraph_or_error": True}):
        for call in range(_CALLS):
            q, k, v = _inputs(seed + call)
            eager = step(q, k, v)
            torch.compiler.cudagraph_mark_step_begin()
            # The graph's output buffer is reused by the next replay: keep a copy.
            got = compiled(q, k, v).clone()
            torch.cuda.synchronize()
            assert torch.isfinite(eager).all() and eager.abs().sum() > 0, replay_hint(seed, request)
            assert torch.equal(got, eager), (
                f"call {call}: the compiled replay differs from eager (max |diff| "
                f"{(got.float() - eager.float()).abs().max().item()}); {replay_hint(seed, request)}")
            if previous is not None:
                assert not torch.equal(got, previous), (
                    f"call {call}: the replay on new inputs returned the previous output; "
                    f"{replay_hint(seed, request)}")
            previous = got
    assert counters["inductor"]["cudagraph_skips"] == 0
