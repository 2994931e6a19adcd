"""The rearrangement and sampling helpers the integrations use, as exposed to Python."""

import numpy as np
import pytest

from helpers import psa, torch  # noqa: F401  (torch: the suite's common skip)
from psa import rearrange


@pytest.mark.parametrize("grid", [(1, 1, 1), (2, 3, 5), (3, 8, 8), (5, 4, 7)])
def test_gilbert_is_a_bijection_with_neighbour_steps(grid):
    frames, height, width = grid
    order = rearrange.gilbert_order(frames, height, width)
    assert sorted(order.tolist()) == list(range(frames * height * width))
    t, rest = np.divmod(order, height * width)
    y, x = np.divmod(rest, width)
    steps = np.abs(np.diff(t)) + np.abs(np.diff(y)) + np.abs(np.diff(x))
    # The generalized curve takes unit steps except for rare diagonal moves on odd sizes.
    assert steps.size == 0 or (steps <= 3).all() and np.mean(steps == 1) > 0.8


@pytest.mark.parametrize("method", ["gilbert", "tiles", "none"])
@pytest.mark.parametrize("text_position", ["start", "end"])
def test_permutation_moves_text_and_inverts(method, text_position):
    perm, inverse, position = rearrange.permutation(method, 3, 4, 6, text_len=7,
                                                    text_position=text_position, tile=(2, 2, 4))
    n = 7 + 3 * 4 * 6
    assert sorted(perm.tolist()) == list(range(n))
    np.testing.assert_array_equal(perm[inverse], np.arange(n))
    text = np.arange(7) if text_position == "start" else np.arange(n - 7, n)
    if method == "none":
        assert position == text_position
        np.testing.assert_array_equal(perm, np.arange(n))
    else:
        assert position == "end"
        np.testing.assert_array_equal(perm[-7:], text)
    with pytest.raises(ValueError):
        perm[0] = 1  # cached permutations are read-only


def test_permute_tokens_binding_matches_indexing():
    x = np.random.default_rng(3).standard_normal((1, 2, 31, 8)).astype(np.float32)
    perm, _, _ = rearrange.permutation("gilbert", 1, 5, 6, text_len=1)
    out = np.full_like(x, np.nan)
    psa._C.permute_tokens(out, x, np.ascontiguousarray(perm))
    np.testing.assert_array_equal(out, x[:, :, perm])


def test_sample_block_offsets_are_distinct():
    offsets = psa._C.sample_block_offsets(7, 0, 1, 128, 32)
    assert len(set(offsets)) == 32 and all(0 <= o < 128 for o in offsets)
    assert offsets == psa._C.sample_block_offsets(7, 0, 1, 128, 32)  # counter-based: reproducible
    with pytest.raises(ValueError, match="count"):
        psa._C.sample_block_offsets(7, 0, 1, 16, 17)
