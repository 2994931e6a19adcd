// The generalized 3D Hilbert curve ("Gilbert") on a (T, H, W) grid of any size, host only
// (SPEC.md section 8). The curve is built by recursive subdivision of a box:
//
//   fill(p, a, b, c) visits every cell of the box with corner p spanned by the axis vectors a, b, c
//   (each along one grid axis, possibly negative), starting at p and ending at p + a - unit(a),
//   the far corner along the major axis a.
//
// A box is cut into 2 (one long axis), 3 (one short axis left whole) or 5 (all three halved)
// sub-boxes, each again filled with the same start/end rule and oriented so that the end of one is
// a unit step from the start of the next. Halves are rounded so that they are even where the axis
// is longer than 2, since an even major length is what lets a sub-box end at its far corner.
//
// Where that is impossible the curve takes a diagonal step. The reason is parity: colour the cells
// by the parity of x + y + t; a unit step changes colour. A box of even volume has as many cells
// of each colour, so a walk with unit steps only must end on the colour opposite to its start; the
// far corner along a of odd length has the start's colour. A box whose volume is even but whose
// major axis is odd therefore cannot be filled with unit steps between the prescribed corners; the
// construction only meets such boxes when the grid has an odd size: with T, H, W all even, every
// half is even (or 1, from an axis of 2) and every step is a unit step. With an odd size, the
// curve jumps from where a sub-box really ended to where the next one starts. Measured over every
// grid in [1, 9]^3: at most 22 such jumps (9 x 9 x 9), each at most 3 cells along any axis; at
// 21 x 30 x 52 (Wan 480p), 76 jumps of at most 2 cells among 32,759 steps.
#pragma once

#include <cstdint>
#include <cstdlib>

namespace psa::detail {

// An offset on the grid: x (width), y (height), t (frames).
struct GridVec {
  int64_t x = 0, y = 0, t = 0;
};

inline GridVec operator+(GridVec a, GridVec b) { return {a.x + b.x, a.y + b.y, a.t + b.t}; }
inline GridVec operator-(GridVec a, GridVec b) { return {a.x - b.x, a.y - b.y, a.t - b.t}; }
inline GridVec operator-(GridVec a) { return {-a.x, -a.y, -a.t}; }

inline int64_t sign_of(int64_t v) { return (v > 0) - (v < 0); }
// Length of an axis vector (exactly one component is non-zero).
inline int64_t axis_length(GridVec v) { return std::llabs(v.x + v.y + v.t); }
inline GridVec axis_unit(GridVec v) { return {sign_of(v.x), sign_of(v.y), sign_of(v.t)}; }

// Floor division by 2 per component: for a negative odd axis this keeps the larger part in the
// first half, which mirrors the split of the same axis walked forwards (e.g. -5 -> -3, 5 -> 2).
inline int64_t floor_half(int64_t v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); }

// The first half of axis `v` used to cut a box: about half, made even when the axis is longer
// than 2 (e.g. 10 -> 5 -> 6, 9 -> 4, 6 -> 3 -> 4), so that sub-boxes keep even major lengths.
inline GridVec split_half(GridVec v) {
  GridVec h{floor_half(v.x), floor_half(v.y), floor_half(v.t)};
  if ((axis_length(h) % 2) != 0 && axis_length(v) > 2) h = h + axis_unit(v);
  return h;
}

// Visits the box (p, a, b, c) as described above, calling visit(x, y, t) once per cell.
template <typename Visit>
void gilbert_fill(GridVec p, GridVec a, GridVec b, GridVec c, Visit& visit) {
  const int64_t w = axis_length(a), h = axis_length(b), d = axis_length(c);
  const GridVec ua = axis_unit(a), ub = axis_unit(b), uc = axis_unit(c);

  // A line of cells: walk it.
  if ((h == 1 && d == 1) || (w == 1 && d == 1) || (w == 1 && h == 1)) {
    const int64_t n = w * h * d;
    const GridVec step = h > 1 ? ub : d > 1 ? uc : ua;
    for (int64_t i = 0; i < n; ++i) {
      visit(p.x, p.y, p.t);
      p = p + step;
    }
    return;
  }

  const GridVec a2 = split_half(a), b2 = split_half(b), c2 = split_half(c);

  // Much longer along a than across: two boxes side by side along a.
  // e.g. w = 12, h = d = 4: 2w = 24 > 3h = 12, halves of 6 x 4 x 4.
  if (2 * w > 3 * h && 2 * w > 3 * d) {
    gilbert_fill(p, a2, b, c, visit);
    gilbert_fill(p + a2, a - a2, b, c, visit);
    return;
  }
  // c short compared with b (3h > 4d): keep c whole; go out along b over the first half of a,
  // sweep the far half of b at full width, come back over the second half of a.
  if (3 * h > 4 * d) {
    gilbert_fill(p, b2, c, a2, visit);
    gilbert_fill(p + b2, a, b - b2, c, visit);
    gilbert_fill(p + (a - ua) + (b2 - ub), -b2, c, -(a - a2), visit);
    return;
  }
  // b short compared with c: the same with the roles of b and c exchanged.
  if (3 * d > 4 * h) {
    gilbert_fill(p, c2, a2, b, visit);
    gilbert_fill(p + c2, a, b, c - c2, visit);
    gilbert_fill(p + (a - ua) + (c2 - uc), -c2, -(a - a2), b, visit);
    return;
  }
  // All three halved: five boxes. In (a, b, c) cell coordinates with a2, b2, c2 the halves:
  //   1. a < a2, b < b2, c < c2     (0, 0, 0)          -> (0, b2-1, 0)
  //   2. a < a2, b >= b2, all c     (0, b2, 0)         -> (0, b2, d-1)
  //   3. all a, b < b2, c >= c2     (0, b2-1, d-1)     -> (w-1, b2-1, d-1)
  //   4. a >= a2, b >= b2, all c    (w-1, b2, d-1)     -> (w-1, b2, 0)
  //   5. a >= a2, b < b2, c < c2    (w-1, b2-1, 0)     -> (w-1, 0, 0)
  gilbert_fill(p, b2, c2, a2, visit);
  gilbert_fill(p + b2, c, a2, b - b2, visit);
  gilbert_fill(p + (b2 - ub) + (c - uc), a, -b2, -(c - c2), visit);
  gilbert_fill(p + (a - ua) + b2 + (c - uc), -c, -(a - a2), b - b2, visit);
  gilbert_fill(p + (a - ua) + (b2 - ub), -b2, c2, -(a - a2), visit);
}

// Visits a (frames, height, width) grid along the curve, starting at (0, 0, 0) and running along
// the longest axis (ties: width, then height, then frames).
template <typename Visit>
void gilbert_visit(int64_t frames, int64_t height, int64_t width, Visit& visit) {
  const GridVec ax{width, 0, 0}, ay{0, height, 0}, at{0, 0, frames};
  if (width >= height && width >= frames) {
    gilbert_fill(GridVec{}, ax, ay, at, visit);
  } else if (height >= width && height >= frames) {
    gilbert_fill(GridVec{}, ay, ax, at, visit);
  } else {
    gilbert_fill(GridVec{}, at, ax, ay, visit);
  }
}

}  // namespace psa::detail
