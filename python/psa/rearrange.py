"""Token rearrangement (SPEC.md section 8) for the integrations: permutations from the library,
applied with plain indexing so that autograd and torch.compile see ordinary ops."""

from __future__ import annotations

import functools
from typing import Tuple

import numpy as np

from psa import _C
from psa.config import TEXT_POSITIONS

METHODS = ("none", "gilbert", "tiles")


def gilbert_order(frames: int, height: int, width: int) -> np.ndarray:
    """Visit order of the generalized 3D Hilbert curve: order[i] is the raster index of cell i."""
    order = np.empty(frames * height * width, dtype=np.int64)
    _C.gilbert_order(order, frames, height, width)
    return order


@functools.lru_cache(maxsize=64)
def _permutation(method: str, frames: int, height: int, width: int, text_len: int,
                 text_position: str,
                 tile: Tuple[int, int, int]) -> Tuple[np.ndarray, np.ndarray, str]:
    spec = _C.RearrangeSpec()
    spec.method = getattr(_C.RearrangeMethod, method)
    spec.frames, spec.height, spec.width = frames, height, width
    spec.tile_t, spec.tile_h, spec.tile_w = tile
    spec.text_len = text_len
    spec.text_position = getattr(_C.TextPosition, text_position)
    perm = np.empty(spec.num_tokens(), dtype=np.int64)
    _C.make_permutation(perm, spec)
    inverse = np.empty_like(perm)
    _C.invert_permutation(inverse, perm)
    perm.setflags(write=False)
    inverse.setflags(write=False)
    return perm, inverse, _C.rearranged_text_position(spec).name


def permutation(method: str, frames: int, height: int, width: int, *, text_len: int = 0,
                text_position: str = "start",
                tile: Tuple[int, int, int] = (4, 8, 8)) -> Tuple[np.ndarray, np.ndarray, str]:
    """(perm, inverse, text position after rearrangement) for text_len + T*H*W tokens.

    New position i holds old token perm[i]; inverse undoes it. Cached and read-only.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if text_position not in TEXT_POSITIONS:
        raise ValueError(f"text_position must be one of {', '.join(TEXT_POSITIONS)}, got "
                         f"{text_position!r}")
    return _permutation(method, int(frames), int(height), int(width), int(text_len),
                        text_position, tuple(int(t) for t in tile))
