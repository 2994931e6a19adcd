"""pytest setup: lets the tests import helpers.py and reference.py from this folder, and poisons
every buffer the torch ops allocate for the library to fill (and psa.distributed's all-to-all
receive buffers), so that an element a kernel fails to write shows up as NaN (or an impossible
count) instead of stale memory that happens to look right (helpers.poison_buffers)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture(autouse=True)
def poison_op_outputs(monkeypatch):
    try:
        import psa.ops  # noqa: F401
    except ImportError:  # no torch: nothing to poison
        yield
        return
    from helpers import poison_buffers

    poison_buffers(monkeypatch.setattr)
    yield


def pytest_collection_modifyitems(items):
    # Tests skipped without a GPU (helpers.needs_cuda, needs_cuda_backward) also carry the `gpu` marker, so that
    # `pytest -m gpu tests/python` runs exactly them on the GPU machine.
    for item in items:
        for mark in item.iter_markers("skipif"):
            if mark.kwargs.get("reason", "").startswith("needs a CUDA device"):
                item.add_marker(pytest.mark.gpu)
                break
