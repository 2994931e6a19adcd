// Token rearrangement (SPEC.md section 8): the Gilbert curve and tile orders are bijections with
// the documented step structure, make_permutation places text last and video in curve order, and
// permute / inverse-permute round-trips exactly.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "common/test_util.h"

namespace psa {
namespace {

struct Steps {
  int64_t non_unit = 0;       // steps with Manhattan distance != 1
  int64_t max_chebyshev = 0;  // largest per-axis move among those steps
  int64_t max_manhattan = 0;  // largest number of cells moved (summed over axes) among them
};

// Checks that `order` is a permutation of [0, T*H*W).
::testing::AssertionResult is_bijection(const std::vector<int64_t>& order, int64_t n) {
  std::vector<char> seen(static_cast<size_t>(n), 0);
  for (size_t i = 0; i < order.size(); ++i) {
    const int64_t v = order[i];
    if (v < 0 || v >= n) return ::testing::AssertionFailure() << "order[" << i << "] = " << v;
    if (seen[static_cast<size_t>(v)]++) {
      return ::testing::AssertionFailure() << "order[" << i << "] = " << v << " repeated";
    }
  }
  if (static_cast<int64_t>(order.size()) != n) return ::testing::AssertionFailure() << "size";
  return ::testing::AssertionSuccess();
}

Steps measure_steps(const std::vector<int64_t>& order, int64_t height, int64_t width) {
  Steps steps;
  for (size_t i = 1; i < order.size(); ++i) {
    const int64_t a = order[i - 1], b = order[i];
    const int64_t dt = std::llabs(a / (height * width) - b / (height * width));
    const int64_t dy = std::llabs((a / width) % height - (b / width) % height);
    const int64_t dx = std::llabs(a % width - b % width);
    if (dt + dy + dx != 1) {
      ++steps.non_unit;
      steps.max_chebyshev = std::max({steps.max_chebyshev, dt, dy, dx});
      steps.max_manhattan = std::max(steps.max_manhattan, dt + dy + dx);
    }
  }
  return steps;
}

// Parity of t + y + x of a raster index: a unit step always changes it.
int64_t cell_colour(int64_t index, int64_t height, int64_t width) {
  return (index / (height * width) + (index / width) % height + index % width) % 2;
}

// The number of non-unit steps the definition (Gilbert++, src/common/gilbert.h) takes. A walk of
// unit steps alternates colours, so over an even number of cells it ends on the colour opposite to
// its start; where the curve's fixed end cell (usually the far corner along the major axis) has
// the start's colour and the volume is even, at least one non-unit step is forced, and Gilbert++
// takes exactly one, a diagonal (distance 1 along two axes). Otherwise it takes none: in
// particular every grid with all sides even and every grid with all sides odd (9 x 9 x 9) is
// walked with unit steps only.
int64_t forced_non_unit_steps(const std::vector<int64_t>& order, int64_t height, int64_t width) {
  const bool even_volume = order.size() % 2 == 0;
  const bool same_colour =
      cell_colour(order.front(), height, width) == cell_colour(order.back(), height, width);
  return even_volume && same_colour ? 1 : 0;
}

// The whole of [1, 9]^3: 276 of the 729 grids need their one diagonal (e.g. 1 x 4 x 5, whose major
// length 5 is odd and volume 20 even); the original gilbert3d took up to 22 non-unit steps per
// grid there (9 x 9 x 9), some moving 3 cells along an axis.
constexpr int64_t kSmallGridsWithDiagonal = 276;

TEST(GilbertOrder, BijectionWithUnitStepsOrOneForcedDiagonalOnEverySmallGrid) {
  int64_t grids_with_diagonal = 0;
  int64_t worst_non_unit = 0;
  for (int64_t t = 1; t <= 9; ++t) {
    for (int64_t h = 1; h <= 9; ++h) {
      for (int64_t w = 1; w <= 9; ++w) {
        std::vector<int64_t> order(static_cast<size_t>(t * h * w), -1);
        ASSERT_TRUE(gilbert_order(order.data(), t, h, w).ok());
        ASSERT_TRUE(is_bijection(order, t * h * w)) << t << "x" << h << "x" << w;
        ASSERT_EQ(order[0], 0) << "the curve starts at the origin";
        const Steps steps = measure_steps(order, h, w);
        EXPECT_EQ(steps.non_unit, forced_non_unit_steps(order, h, w)) << t << "x" << h << "x" << w;
        EXPECT_LE(steps.max_chebyshev, 1) << t << "x" << h << "x" << w;
        EXPECT_LE(steps.max_manhattan, 2) << t << "x" << h << "x" << w;
        if (t % 2 == 0 && h % 2 == 0 && w % 2 == 0) {
          EXPECT_EQ(steps.non_unit, 0) << t << "x" << h << "x" << w;
        }
        if (t % 2 == 1 && h % 2 == 1 && w % 2 == 1) {
          EXPECT_EQ(steps.non_unit, 0) << t << "x" << h << "x" << w;
        }
        grids_with_diagonal += steps.non_unit > 0 ? 1 : 0;
        worst_non_unit = std::max(worst_non_unit, steps.non_unit);
      }
    }
  }
  EXPECT_EQ(worst_non_unit, 1);
  EXPECT_EQ(grids_with_diagonal, kSmallGridsWithDiagonal);
}

TEST(GilbertOrder, LargeVideoGridsHaveAtMostOneDiagonalStep) {
  struct Case {
    int64_t t, h, w, non_unit;
  };
  // Wan2.1 480p (21 x 30 x 52), CogVideoX 5B (13 x 30 x 45), 18 x 45 x 80 and the all-even
  // 16 x 30 x 52. Only 13 x 30 x 45 (major length 45 odd, volume even) needs its one diagonal; the
  // original gilbert3d took 76, 151 and 96 non-unit steps of up to 2 cells on the first three.
  for (const Case c : {Case{21, 30, 52, 0}, Case{13, 30, 45, 1}, Case{18, 45, 80, 0},
                       Case{16, 30, 52, 0}}) {
    const int64_t n = c.t * c.h * c.w;
    std::vector<int64_t> order(static_cast<size_t>(n), -1);
    ASSERT_TRUE(gilbert_order(order.data(), c.t, c.h, c.w).ok());
    ASSERT_TRUE(is_bijection(order, n)) << c.t << "x" << c.h << "x" << c.w;
    const Steps steps = measure_steps(order, c.h, c.w);
    EXPECT_EQ(steps.non_unit, c.non_unit) << c.t << "x" << c.h << "x" << c.w;
    EXPECT_EQ(steps.non_unit, forced_non_unit_steps(order, c.h, c.w))
        << c.t << "x" << c.h << "x" << c.w;
    EXPECT_LE(steps.max_chebyshev, 1) << c.t << "x" << c.h << "x" << c.w;
    EXPECT_LE(steps.max_manhattan, 2) << c.t << "x" << c.h << "x" << c.w;
  }
}

TEST(GilbertOrder, RejectsBadArguments) {
  std::vector<int64_t> order(8);
  EXPECT_EQ(gilbert_order(order.data(), 0, 2, 2).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(gilbert_order(order.data(), 2, -1, 2).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(gilbert_order(nullptr, 2, 2, 2).code(), StatusCode::kInvalidArgument);
  const Status overflow = gilbert_order(order.data(), int64_t{1} << 32, int64_t{1} << 32, 2);
  EXPECT_EQ(overflow.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(overflow.message().find("overflow"), std::string::npos) << overflow.message();
}

TEST(TileOrder, BijectionWithRaggedTilesInTileMajorOrder) {
  const int64_t t = 5, h = 7, w = 10, tt = 2, th = 3, tw = 4;
  std::vector<int64_t> order(static_cast<size_t>(t * h * w), -1);
  ASSERT_TRUE(tile_order(order.data(), t, h, w, tt, th, tw).ok());
  ASSERT_TRUE(is_bijection(order, t * h * w));
  // Walking the order, the tile index (raster over tiles) never decreases and, inside a tile,
  // the raster index increases.
  auto tile_of = [&](int64_t r) {
    const int64_t x = r % w, y = (r / w) % h, f = r / (h * w);
    const int64_t tiles_h = (h + th - 1) / th, tiles_w = (w + tw - 1) / tw;
    return ((f / tt) * tiles_h + y / th) * tiles_w + x / tw;
  };
  for (size_t i = 1; i < order.size(); ++i) {
    const int64_t a = tile_of(order[i - 1]), b = tile_of(order[i]);
    ASSERT_LE(a, b) << "at position " << i;
    if (a == b) {
      ASSERT_LT(order[i - 1], order[i]) << "at position " << i;
    }
  }
  // The first tile is full (2 x 3 x 4 = 24 cells), the very last one is 1 x 1 x 2.
  EXPECT_EQ(tile_of(order[23]), 0);
  EXPECT_EQ(tile_of(order[24]), 1);
  EXPECT_EQ(order[order.size() - 2], t * h * w - 2);
  EXPECT_EQ(tile_of(order[order.size() - 3]) + 1, tile_of(order.back()));

  EXPECT_EQ(tile_order(order.data(), t, h, w, 0, th, tw).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tile_order(nullptr, t, h, w, tt, th, tw).code(), StatusCode::kInvalidArgument);
}

TEST(MakePermutation, TextGoesLastAndVideoFollowsTheCurve) {
  const int64_t t = 3, h = 4, w = 5, text = 7, video = t * h * w;
  std::vector<int64_t> curve(static_cast<size_t>(video));
  ASSERT_TRUE(gilbert_order(curve.data(), t, h, w).ok());
  for (TextPosition pos : {TextPosition::kStart, TextPosition::kEnd}) {
    RearrangeSpec spec;
    spec.method = RearrangeMethod::kGilbert;
    spec.frames = t;
    spec.height = h;
    spec.width = w;
    spec.text_len = text;
    spec.text_position = pos;
    std::vector<int64_t> perm(static_cast<size_t>(spec.num_tokens()), -1);
    ASSERT_TRUE(make_permutation(perm.data(), spec).ok());
    ASSERT_TRUE(is_bijection(perm, spec.num_tokens()));
    EXPECT_EQ(rearranged_text_position(spec), TextPosition::kEnd);
    const int64_t video_base = pos == TextPosition::kStart ? text : 0;
    const int64_t text_base = pos == TextPosition::kStart ? 0 : video;
    for (int64_t i = 0; i < video; ++i) {
      ASSERT_EQ(perm[static_cast<size_t>(i)], video_base + curve[static_cast<size_t>(i)]) << i;
    }
    for (int64_t j = 0; j < text; ++j) {
      ASSERT_EQ(perm[static_cast<size_t>(video + j)], text_base + j) << j;
    }
  }
}

TEST(MakePermutation, NoneIsIdentityAndTilesPutTextLast) {
  RearrangeSpec spec;
  spec.frames = 2;
  spec.height = 3;
  spec.width = 4;
  spec.text_len = 5;
  spec.text_position = TextPosition::kStart;
  spec.method = RearrangeMethod::kNone;
  std::vector<int64_t> perm(static_cast<size_t>(spec.num_tokens()), -1);
  ASSERT_TRUE(make_permutation(perm.data(), spec).ok());
  for (size_t i = 0; i < perm.size(); ++i) ASSERT_EQ(perm[i], static_cast<int64_t>(i));
  EXPECT_EQ(rearranged_text_position(spec), TextPosition::kStart);

  spec.method = RearrangeMethod::kTiles;
  spec.tile_t = 1;
  spec.tile_h = 2;
  spec.tile_w = 2;
  ASSERT_TRUE(make_permutation(perm.data(), spec).ok());
  ASSERT_TRUE(is_bijection(perm, spec.num_tokens()));
  for (int64_t j = 0; j < 5; ++j) EXPECT_EQ(perm[static_cast<size_t>(24 + j)], j);
  EXPECT_EQ(perm[0], 5);      // video raster 0 (after the 5 text tokens)
  EXPECT_EQ(perm[2], 5 + 4);  // (t 0, y 1, x 0): second row of the first 2 x 2 tile

  spec.text_len = -1;
  EXPECT_EQ(make_permutation(perm.data(), spec).code(), StatusCode::kInvalidArgument);
  spec.text_len = 0;
  spec.tile_w = 0;
  EXPECT_EQ(make_permutation(perm.data(), spec).code(), StatusCode::kInvalidArgument);
}

TEST(InvertPermutation, InvertsAndRejectsNonPermutations) {
  const std::vector<int64_t> perm = {3, 0, 4, 1, 2};
  std::vector<int64_t> inverse(perm.size(), -7);
  ASSERT_TRUE(invert_permutation(inverse.data(), perm.data(), 5).ok());
  for (size_t i = 0; i < perm.size(); ++i)
    EXPECT_EQ(inverse[static_cast<size_t>(perm[i])], static_cast<int64_t>(i));

  const std::vector<int64_t> repeated = {3, 0, 4, 0, 2};
  const Status r = invert_permutation(inverse.data(), repeated.data(), 5);
  EXPECT_EQ(r.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.message().find("perm[3] = 0 repeats perm[1]"), std::string::npos) << r.message();

  const std::vector<int64_t> out_of_range = {3, 0, 5, 1, 2};
  const Status o = invert_permutation(inverse.data(), out_of_range.data(), 5);
  EXPECT_EQ(o.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(o.message().find("perm[2] = 5 is out of range"), std::string::npos) << o.message();

  const std::vector<int64_t> negative = {-1, 0, 1};
  EXPECT_EQ(invert_permutation(inverse.data(), negative.data(), 3).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(invert_permutation(nullptr, perm.data(), 5).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(invert_permutation(inverse.data(), perm.data(), -1).code(),
            StatusCode::kInvalidArgument);
}

// Permuting by the Gilbert permutation and then by its inverse restores the tensor bit for bit;
// the input is a non-contiguous (B, L, H, D) buffer viewed as (B, H, L, D).
void check_round_trip(DType dtype, uint64_t seed) {
  RearrangeSpec spec;
  spec.frames = 3;
  spec.height = 5;
  spec.width = 6;
  spec.text_len = 4;
  spec.text_position = TextPosition::kStart;
  const int64_t b = 2, heads = 3, len = spec.num_tokens(), dim = 8;
  std::vector<int64_t> perm(static_cast<size_t>(len)), inverse(static_cast<size_t>(len));
  ASSERT_TRUE(make_permutation(perm.data(), spec).ok());
  ASSERT_TRUE(invert_permutation(inverse.data(), perm.data(), len).ok());

  HostTensor blhd(dtype, {b, len, heads, dim});
  test::fill_normal(blhd, seed);
  ASSERT_GT(test::l2_norm(blhd), 0.0) << test::replay_hint(seed);
  const TensorView in = transpose_view(blhd.view(), 1, 2);  // (B, H, L, D), strided

  HostTensor mid(dtype, {b, heads, len, dim}), back(dtype, {b, heads, len, dim});
  test::poison(mid);
  test::poison(back);
  ASSERT_TRUE(permute_tokens(mid.view(), in, perm.data()).ok());
  ASSERT_TRUE(permute_tokens(back.view(), mid.view(), inverse.data()).ok());

  // Rearranged row i holds original token perm[i]; restored rows hold the originals, bitwise.
  const size_t element = dtype_size(dtype);
  const auto* src = static_cast<const unsigned char*>(in.data);
  for (int64_t bb = 0; bb < b; ++bb) {
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t i = 0; i < len; ++i) {
        for (int64_t d = 0; d < dim; ++d) {
          const int64_t o = ((bb * heads + h) * len + i) * dim + d;
          const int64_t orig = bb * in.stride[0] + h * in.stride[1] + i * in.stride[2] + d;
          const int64_t moved = bb * in.stride[0] + h * in.stride[1] +
                                perm[static_cast<size_t>(i)] * in.stride[2] + d;
          ASSERT_EQ(
              std::memcmp(back.data<unsigned char>() + o * element, src + orig * element, element),
              0)
              << "restored (" << bb << ", " << h << ", " << i << ", " << d << ") "
              << test::replay_hint(seed);
          ASSERT_EQ(
              std::memcmp(mid.data<unsigned char>() + o * element, src + moved * element, element),
              0)
              << "rearranged (" << bb << ", " << h << ", " << i << ", " << d << ") "
              << test::replay_hint(seed);
        }
      }
    }
  }
}

TEST(PermuteTokens, RoundTripIsExactFp32) {
  check_round_trip(DType::kFloat32, test::test_seed(11));
}
TEST(PermuteTokens, RoundTripIsExactBf16) {
  check_round_trip(DType::kBFloat16, test::test_seed(12));
}

TEST(RearrangeNames, MethodNames) {
  EXPECT_STREQ(rearrange_method_name(RearrangeMethod::kNone), "none");
  EXPECT_STREQ(rearrange_method_name(RearrangeMethod::kGilbert), "gilbert");
  EXPECT_STREQ(rearrange_method_name(RearrangeMethod::kTiles), "tiles");
}

}  // namespace
}  // namespace psa
