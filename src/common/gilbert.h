// The generalized 3D Hilbert curve ("Gilbert") on a (T, H, W) grid of any size, host only
// (SPEC.md section 8).
//
// Definition followed: Jakub Červený's generalized Hilbert curve in the form of its "Gilbert++"
// extension (the `gilbert` repository, extensions/gilbert3dpp, the reference implementation that
// accompanies the Gilbert paper). Both the original gilbert3d and Gilbert++ fill a box recursively:
//
//   fill(p, a, b, c) visits every cell of the box with corner p spanned by the axis vectors a, b, c
//   (each along one grid axis, possibly negative), starting at p and running along the major axis
//   a, and the box is cut into 2, 3 or 5 sub-boxes whose paths join end to start.
//
// Why not the original gilbert3d: its README says the 3D curve needs even sizes ("In 3D this is
// much worse, so odd dimensions should not be used"). It always aims at the far corner along a,
// which parity forbids for a box of even volume and odd major length (colour the cells by the
// parity of x + y + t: a unit step changes colour, and those two corners share a colour), so on
// odd grids it jumps between sub-boxes: 22 jumps at 9 x 9 x 9, up to 3 cells along an axis within
// [1, 9]^3, and 76 jumps of up to 2 cells at 21 x 30 x 52. Gilbert++ keeps gilbert3d's 5-box
// split where the third axis is even (J0 below) but, where it is odd, halves the major axis to an
// odd length and uses one of two other 5-box arrangements (J1, J2) so that every sub-box can end
// where the next starts; it also cuts flat boxes in thirds rather than halves (S1, S2), with
// other aspect thresholds. On every grid measured (all of [1, 9]^3 and the video grids in
// tests/cpu/rearrange_test.cpp, which asserts this) what remains is at most one diagonal step
// (distance 1 along two axes), and only where parity forces one: the volume is even and the
// curve's end cell has the start's colour (e.g. 1 x 4 x 5, or 13 x 30 x 45, whose major length 45
// is odd). All-even and all-odd grids, and for instance 21 x 30 x 52, get unit steps only.
//
// Conventions: halves and thirds round towards zero, as in Gilbert++ (gilbert3d rounds towards
// minus infinity); the curve starts at (0, 0, 0) with the longest grid axis as the major axis a,
// as gilbert3d's entry point does (Gilbert++'s plain entry point always takes the width first;
// the axis order is the caller's choice there).
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

// The part of axis `v` cut off by a split into `parts` (2 or 3), rounded towards zero, then moved
// one cell further when its length has the wrong parity, for axes longer than 2 (shorter ones
// have no choice). `want_odd` = false gives the even cut that lets a sub-box end on its far
// corner (10 / 2 -> 5 -> 6, 9 / 2 -> 4, 9 / 3 -> 3 -> 4); `want_odd` = true gives the odd cut of
// the major axis used by the odd-box splits J1 and J2 (8 / 2 -> 4 -> 5, 9 / 2 -> 4 -> 5, 7 -> 3).
inline GridVec axis_cut(GridVec v, int64_t parts, bool want_odd) {
  GridVec cut{v.x / parts, v.y / parts, v.t / parts};
  const bool is_odd = axis_length(cut) % 2 != 0;
  if (axis_length(v) > 2 && is_odd != want_odd) cut = cut + axis_unit(v);
  return cut;
}
inline GridVec even_half(GridVec v) { return axis_cut(v, 2, false); }
inline GridVec odd_half(GridVec v) { return axis_cut(v, 2, true); }
inline GridVec even_third(GridVec v) { return axis_cut(v, 3, false); }

// A line of `n` cells from p in direction `step`.
template <typename Visit>
void gilbert_line(GridVec p, GridVec step, int64_t n, Visit& visit) {
  for (int64_t i = 0; i < n; ++i) {
    visit(p.x, p.y, p.t);
    p = p + step;
  }
}

// The 2D curve on the rectangle (p, a, b), used for boxes one cell thick. Wide rectangles
// (2|a| > 3|b|) are cut in two along a; otherwise three pieces: up b over the first half of a,
// across the whole width over the rest of b, back down over the second half of a.
template <typename Visit>
void gilbert_fill_2d(GridVec p, GridVec a, GridVec b, Visit& visit) {
  const int64_t w = axis_length(a), h = axis_length(b);
  const GridVec ua = axis_unit(a), ub = axis_unit(b);
  if (h == 1) return gilbert_line(p, ua, w, visit);
  if (w == 1) return gilbert_line(p, ub, h, visit);

  if (2 * w > 3 * h) {
    const GridVec a2 = even_half(a);
    gilbert_fill_2d(p, a2, b, visit);
    gilbert_fill_2d(p + a2, a - a2, b, visit);
    return;
  }
  // Only b's cut is made even: the side pieces run along b, and a is their minor axis, whose
  // parity does not decide where a piece can end.
  const GridVec a2{a.x / 2, a.y / 2, a.t / 2};
  const GridVec b2 = even_half(b);
  gilbert_fill_2d(p, b2, a2, visit);
  gilbert_fill_2d(p + b2, a, b - b2, visit);
  gilbert_fill_2d(p + (a - ua) + (b2 - ub), -b2, a2 - a, visit);
}

// The 2 x 2 x 2 Hilbert cell: out along b, up c, back along b, across a, and the same in reverse.
template <typename Visit>
void gilbert_cube2(GridVec p, GridVec ua, GridVec ub, GridVec uc, Visit& visit) {
  const GridVec steps[7] = {ub, uc, -ub, ua, ub, -uc, -ub};
  visit(p.x, p.y, p.t);
  for (const GridVec& s : steps) {
    p = p + s;
    visit(p.x, p.y, p.t);
  }
}

// Visits the box (p, a, b, c), calling visit(x, y, t) once per cell. Lengths w = |a|, h = |b|,
// d = |c|. The cases, in the order they are tried:
//   - 2 x 2 x 2: the Hilbert cell; one cell thick along any axis: the 2D curve on the rest.
//   - S0, much longer along a (3w > 5h and 3w > 5d): two boxes side by side along a.
//   - S2, b long (2h > 3d or 2h > 3w): cut b at an even third; go out along b over the first half
//     of a, sweep the rest of b at full width, come back over the second half of a.
//   - S1, c long (2d > 3h): the same with c in the role of b.
//   - J0, d even: all three axes halved to even lengths, five boxes (gilbert3d's regular split).
//   - J1, w or h even (d odd): a halved to an odd length, b and c to even ones; five boxes, the
//     first running along c.
//   - J2, all odd: the same halves, five boxes in another arrangement that suits all-odd boxes.
template <typename Visit>
void gilbert_fill(GridVec p, GridVec a, GridVec b, GridVec c, Visit& visit) {
  const int64_t w = axis_length(a), h = axis_length(b), d = axis_length(c);
  const GridVec ua = axis_unit(a), ub = axis_unit(b), uc = axis_unit(c);

  if (w == 2 && h == 2 && d == 2) return gilbert_cube2(p, ua, ub, uc, visit);
  if (w == 1) return gilbert_fill_2d(p, b, c, visit);
  if (h == 1) return gilbert_fill_2d(p, a, c, visit);
  if (d == 1) return gilbert_fill_2d(p, a, b, visit);

  // S0: e.g. w = 12, h = d = 4 (36 > 20): two 6 x 4 x 4 boxes.
  if (3 * w > 5 * h && 3 * w > 5 * d) {
    const GridVec a2 = even_half(a);
    gilbert_fill(p, a2, b, c, visit);
    gilbert_fill(p + a2, a - a2, b, c, visit);
    return;
  }
  // S2: e.g. w = 8, h = 8, d = 4: b cut at 8 / 3 -> 2; boxes of 2 x 4 x 4 (along b), 8 x 6 x 4
  // (along a) and 2 x 4 x 4 (along -b, on the far half of a).
  if (2 * h > 3 * d || 2 * h > 3 * w) {
    const GridVec a2 = even_half(a), b3 = even_third(b);
    gilbert_fill(p, b3, c, a2, visit);
    gilbert_fill(p + b3, a, b - b3, c, visit);
    gilbert_fill(p + (a - ua) + (b3 - ub), -b3, c, -(a - a2), visit);
    return;
  }
  // S1: the same with c in the role of b.
  if (2 * d > 3 * h) {
    const GridVec a2 = even_half(a), c3 = even_third(c);
    gilbert_fill(p, c3, a2, b, visit);
    gilbert_fill(p + c3, a, b, c - c3, visit);
    gilbert_fill(p + (a - ua) + (c3 - uc), -c3, -(a - a2), b, visit);
    return;
  }

  if (d % 2 == 0) {
    // J0. In (a, b, c) cell coordinates with a2, b2, c2 the halves, (start) -> (end):
    //   1. a < a2, b < b2, c < c2     (0, 0, 0)          -> (0, b2-1, 0)
    //   2. a < a2, b >= b2, all c     (0, b2, 0)         -> (0, b2, d-1)
    //   3. all a, b < b2, c >= c2     (0, b2-1, d-1)     -> (w-1, b2-1, d-1)
    //   4. a >= a2, b >= b2, all c    (w-1, b2, d-1)     -> (w-1, b2, 0)
    //   5. a >= a2, b < b2, c < c2    (w-1, b2-1, 0)     -> (w-1, 0, 0)
    const GridVec a2 = even_half(a), b2 = even_half(b), c2 = even_half(c);
    gilbert_fill(p, b2, c2, a2, visit);
    gilbert_fill(p + b2, c, a2, b - b2, visit);
    gilbert_fill(p + (b2 - ub) + (c - uc), a, -b2, -(c - c2), visit);
    gilbert_fill(p + (a - ua) + b2 + (c - uc), -c, -(a - a2), b - b2, visit);
    gilbert_fill(p + (a - ua) + (b2 - ub), -b2, c2, -(a - a2), visit);
    return;
  }

  const GridVec a2 = odd_half(a), b2 = even_half(b), c2 = even_half(c);
  if (w % 2 == 0 || h % 2 == 0) {
    // J1 (d odd; w or h even). Regions in (a, b, c) cell coordinates, each with its major
    // direction:
    //   1. a < a2, b < b2, c < c2       along c
    //   2. a < a2, all b, c >= c2       along b
    //   3. all a, b >= b2, c < c2       along a
    //   4. a >= a2, all b, c >= c2      along -b
    //   5. a >= a2, b < b2, c < c2      along -c
    gilbert_fill(p, c2, a2, b2, visit);
    gilbert_fill(p + c2, b, c - c2, a2, visit);
    gilbert_fill(p + (c2 - uc) + (b - ub), a, -(b - b2), -c2, visit);
    gilbert_fill(p + (a - ua) + (b - ub) + c2, -b, c - c2, -(a - a2), visit);
    gilbert_fill(p + (a - ua) + (c2 - uc), -c2, -(a - a2), b2, visit);
    return;
  }
  // J2 (w, h, d all odd). Regions as above:
  //   1. a < a2, b < b2, all c        along b
  //   2. all a, b >= b2, c < c2       along c
  //   3. all a, b >= b2, c >= c2      along a
  //   4. a >= a2, b < b2, c >= c2     along -b
  //   5. a >= a2, b < b2, c < c2      along -c
  gilbert_fill(p, b2, c, a2, visit);
  gilbert_fill(p + b2, c2, a, b - b2, visit);
  gilbert_fill(p + b2 + c2, a, b - b2, c - c2, visit);
  gilbert_fill(p + (a - ua) + (b2 - ub) + c2, -b2, c - c2, -(a - a2), visit);
  gilbert_fill(p + (a - ua) + (c2 - uc), -c2, -(a - a2), b2, visit);
}

// Visits a (frames, height, width) grid along the curve, starting at (0, 0, 0) and running along
// the longest axis (ties: width, then height, then frames); the other two axes keep gilbert3d's
// order (width before height before frames).
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
