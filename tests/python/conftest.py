"""pytest setup: lets the tests import helpers.py and reference.py from this folder, and poisons
every buffer the torch ops allocate for the library to fill, so that an element a kernel fails to
write shows up as NaN (or an impossible count) instead of stale memory that happens to look right."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

_POISON_INT = 0x7F7F7F7F


@pytest.fixture(autouse=True)
def poison_op_outputs(monkeypatch):
    try:
        import psa.ops as ops
    except ImportError:  # no torch: nothing to poison
        yield
        return

    real_attention_outputs = ops._attention_outputs
    real_gradient_buffers = ops._gradient_buffers
    real_plan_buffers = ops._plan_buffers
    real_levels_buffer = ops._levels_buffer
    real_backward_workspace = ops._backward_workspace

    def attention_outputs(q):
        out, lse = real_attention_outputs(q)
        return out.fill_(float("nan")), lse.fill_(float("nan"))

    def gradient_buffers(q, k, v):
        return tuple(t.fill_(float("nan")) for t in real_gradient_buffers(q, k, v))

    def plan_buffers(like, *shape):
        return tuple(t.fill_(_POISON_INT) for t in real_plan_buffers(like, *shape))

    def levels_buffer(blocks):
        return real_levels_buffer(blocks).fill_(0x7F)  # 127 is no level

    def backward_workspace(q, nbytes):
        return real_backward_workspace(q, nbytes).fill_(0xFF)  # NaN as fp32 accumulators

    monkeypatch.setattr(ops, "_attention_outputs", attention_outputs)
    monkeypatch.setattr(ops, "_gradient_buffers", gradient_buffers)
    monkeypatch.setattr(ops, "_plan_buffers", plan_buffers)
    monkeypatch.setattr(ops, "_levels_buffer", levels_buffer)
    monkeypatch.setattr(ops, "_backward_workspace", backward_workspace)
    yield


def pytest_collection_modifyitems(items):
    # Tests skipped without a GPU (helpers.needs_cuda, needs_cuda_backward) also carry the `gpu` marker, so that
    # `pytest -m gpu tests/python` runs exactly them on the GPU machine.
    for item in items:
        for mark in item.iter_markers("skipif"):
            if mark.kwargs.get("reason", "").startswith("needs a CUDA device"):
                item.add_marker(pytest.mark.gpu)
                break
