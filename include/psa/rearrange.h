// Token rearrangement (SPEC.md section 8): video tokens (T, H, W) in raster order (t slowest, x
// fastest), optionally after or before `text_len` text tokens, are reordered so that consecutive
// tokens are space-time neighbours; the inverse restores the original order.
#pragma once

#include <cstdint>

#include "psa/config.h"
#include "psa/status.h"
#include "psa/tensor.h"

namespace psa {

enum class RearrangeMethod : uint8_t { kNone, kGilbert, kTiles };
const char* rearrange_method_name(RearrangeMethod method);

struct RearrangeSpec {
  RearrangeMethod method = RearrangeMethod::kGilbert;
  int64_t frames = 0, height = 0, width = 0;  // T, H, W of the video tokens
  int64_t tile_t = 4, tile_h = 8, tile_w = 8; // kTiles only; edge tiles may be ragged
  int64_t text_len = 0;
  TextPosition text_position = TextPosition::kStart;

  int64_t num_tokens() const { return text_len + frames * height * width; }
};

// Where the text tokens are after rearrangement: kGilbert and kTiles move them to the end; kNone
// leaves them where they were. The plan is computed with this position.
TextPosition rearranged_text_position(const RearrangeSpec& spec);

// Visit order of the generalized 3D Hilbert curve on a (T, H, W) grid: order[i] is the raster
// index t*H*W + y*W + x of the i-th cell visited. `order` has T*H*W entries.
Status gilbert_order(int64_t* order, int64_t frames, int64_t height, int64_t width);

// Tile-major order with tile (tT, tH, tW), tiles in raster order, raster order inside a tile.
Status tile_order(int64_t* order, int64_t frames, int64_t height, int64_t width, int64_t tile_t,
                  int64_t tile_h, int64_t tile_w);

// The full permutation of spec.num_tokens() tokens: new position i holds old token perm[i].
Status make_permutation(int64_t* perm, const RearrangeSpec& spec);
// inverse[perm[i]] = i. Fails unless perm is a permutation of [0, n).
Status invert_permutation(int64_t* inverse, const int64_t* perm, int64_t n);

// out[b, h, i, :] = in[b, h, perm[i], :] along the sequence dimension (dim 2) of rank-4 tensors of
// the same shape and dtype; `perm` lives on the tensors' device. Applying `perm` rearranges;
// applying its inverse restores.
Status permute_tokens(TensorView out, const TensorView& in, const int64_t* perm,
                      Stream stream = nullptr);

}  // namespace psa
