// Token rearrangement (SPEC.md section 8): the Gilbert and tile orders, the full permutation with
// text tokens, its inverse (pure host functions), and the CPU gather along the sequence dimension.
#include "psa/rearrange.h"

#include <cstring>
#include <string>

#include "common/gilbert.h"
#include "common/index_math.h"
#include "cpu/cpu_backend.h"
#include "cpu/cpu_util.h"

namespace psa {

namespace {

// T * H * W, or an error naming the sizes when one is not positive or the product overflows.
Status video_token_count(int64_t* count, int64_t frames, int64_t height, int64_t width,
                         const char* who) {
  if (frames < 1 || height < 1 || width < 1) {
    return invalid_argument(std::string(who) + ": frames, height and width must be >= 1, got (" +
                            std::to_string(frames) + ", " + std::to_string(height) + ", " +
                            std::to_string(width) + ")");
  }
  int64_t plane = 0, total = 0;
  if (__builtin_mul_overflow(height, width, &plane) ||
      __builtin_mul_overflow(plane, frames, &total)) {
    return invalid_argument(std::string(who) + ": frames * height * width overflows int64 for (" +
                            std::to_string(frames) + ", " + std::to_string(height) + ", " +
                            std::to_string(width) + ")");
  }
  *count = total;
  return Status::ok_status();
}

}  // namespace

const char* rearrange_method_name(RearrangeMethod method) {
  switch (method) {
    case RearrangeMethod::kNone:
      return "none";
    case RearrangeMethod::kGilbert:
      return "gilbert";
    case RearrangeMethod::kTiles:
      return "tiles";
  }
  return "unknown";
}

TextPosition rearranged_text_position(const RearrangeSpec& spec) {
  return spec.method == RearrangeMethod::kNone ? spec.text_position : TextPosition::kEnd;
}

Status gilbert_order(int64_t* order, int64_t frames, int64_t height, int64_t width) {
  int64_t count = 0;
  PSA_RETURN_IF_ERROR(video_token_count(&count, frames, height, width, "gilbert_order"));
  if (order == nullptr) return invalid_argument("gilbert_order: order must not be null");
  int64_t next = 0;
  const int64_t plane = height * width;
  // The curve is tested to visit each cell once; the bound keeps a broken curve from writing past
  // `order` (the count check below then reports it).
  auto visit = [&](int64_t x, int64_t y, int64_t t) {
    if (next < count) order[next] = t * plane + y * width + x;
    ++next;
  };
  detail::gilbert_visit(frames, height, width, visit);
  if (next != count) {
    return Status(StatusCode::kInternal, "gilbert_order: the curve visited " +
                                             std::to_string(next) + " cells, expected " +
                                             std::to_string(count));
  }
  return Status::ok_status();
}

Status tile_order(int64_t* order, int64_t frames, int64_t height, int64_t width, int64_t tile_t,
                  int64_t tile_h, int64_t tile_w) {
  int64_t count = 0;
  PSA_RETURN_IF_ERROR(video_token_count(&count, frames, height, width, "tile_order"));
  if (order == nullptr) return invalid_argument("tile_order: order must not be null");
  if (tile_t < 1 || tile_h < 1 || tile_w < 1) {
    return invalid_argument("tile_order: tile sizes (tile_t, tile_h, tile_w) must be >= 1, got (" +
                            std::to_string(tile_t) + ", " + std::to_string(tile_h) + ", " +
                            std::to_string(tile_w) + ")");
  }
  int64_t next = 0;
  // Tiles in raster order (t slowest); inside a tile, raster order clipped to the grid, so edge
  // tiles are ragged.
  for (int64_t t0 = 0; t0 < frames; t0 += tile_t) {
    for (int64_t y0 = 0; y0 < height; y0 += tile_h) {
      for (int64_t x0 = 0; x0 < width; x0 += tile_w) {
        const int64_t t1 = detail::min64(t0 + tile_t, frames);
        const int64_t y1 = detail::min64(y0 + tile_h, height);
        const int64_t x1 = detail::min64(x0 + tile_w, width);
        for (int64_t t = t0; t < t1; ++t) {
          for (int64_t y = y0; y < y1; ++y) {
            for (int64_t x = x0; x < x1; ++x) order[next++] = (t * height + y) * width + x;
          }
        }
      }
    }
  }
  if (next != count) {
    return Status(StatusCode::kInternal, "tile_order: the tiles covered " + std::to_string(next) +
                                             " cells, expected " + std::to_string(count));
  }
  return Status::ok_status();
}

Status make_permutation(int64_t* perm, const RearrangeSpec& spec) {
  int64_t video = 0;
  PSA_RETURN_IF_ERROR(
      video_token_count(&video, spec.frames, spec.height, spec.width, "make_permutation"));
  if (perm == nullptr) return invalid_argument("make_permutation: perm must not be null");
  if (spec.text_len < 0) {
    return invalid_argument("make_permutation: text_len must be >= 0, got " +
                            std::to_string(spec.text_len));
  }
  if (spec.text_position != TextPosition::kStart && spec.text_position != TextPosition::kEnd) {
    return invalid_argument("make_permutation: text_position must be start or end, got code " +
                            std::to_string(static_cast<int>(spec.text_position)));
  }
  int64_t total = 0;
  if (__builtin_add_overflow(video, spec.text_len, &total)) {
    return invalid_argument("make_permutation: text_len + frames * height * width overflows int64");
  }
  // Old index of video raster token r, and of text token j.
  const bool text_first = spec.text_position == TextPosition::kStart;
  const int64_t video_base = text_first ? spec.text_len : 0;
  const int64_t text_base = text_first ? 0 : video;

  switch (spec.method) {
    case RearrangeMethod::kNone:
      for (int64_t i = 0; i < total; ++i) perm[i] = i;
      return Status::ok_status();
    case RearrangeMethod::kGilbert:
      PSA_RETURN_IF_ERROR(gilbert_order(perm, spec.frames, spec.height, spec.width));
      break;
    case RearrangeMethod::kTiles:
      PSA_RETURN_IF_ERROR(tile_order(perm, spec.frames, spec.height, spec.width, spec.tile_t,
                                     spec.tile_h, spec.tile_w));
      break;
    default:
      return invalid_argument("make_permutation: unknown rearrange method " +
                              std::to_string(static_cast<int>(spec.method)));
  }
  // Video in curve order first, then the text tokens in their original relative order.
  for (int64_t i = 0; i < video; ++i) perm[i] += video_base;
  for (int64_t j = 0; j < spec.text_len; ++j) perm[video + j] = text_base + j;
  return Status::ok_status();
}

Status invert_permutation(int64_t* inverse, const int64_t* perm, int64_t n) {
  if (n < 0)
    return invalid_argument("invert_permutation: n must be >= 0, got " + std::to_string(n));
  if (n == 0) return Status::ok_status();
  if (perm == nullptr) return invalid_argument("invert_permutation: perm must not be null");
  if (inverse == nullptr) return invalid_argument("invert_permutation: inverse must not be null");
  // inverse doubles as the "seen" mark (-1 = not yet seen); its contents are unspecified on error.
  for (int64_t i = 0; i < n; ++i) inverse[i] = -1;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t p = perm[i];
    if (p < 0 || p >= n) {
      return invalid_argument("invert_permutation: perm[" + std::to_string(i) +
                              "] = " + std::to_string(p) + " is out of range [0, " +
                              std::to_string(n) + ")");
    }
    if (inverse[p] >= 0) {
      return invalid_argument("invert_permutation: perm[" + std::to_string(i) + "] = " +
                              std::to_string(p) + " repeats perm[" + std::to_string(inverse[p]) +
                              "]; perm must be a permutation of [0, " + std::to_string(n) + ")");
    }
    inverse[p] = i;
  }
  return Status::ok_status();
}

namespace cpu {

Status permute_tokens(TensorView out, const TensorView& in, const int64_t* perm) {
  const size_t element = dtype_size(in.dtype);
  const int64_t batch = in.shape[0], heads = in.shape[1], seq = in.shape[2], dim = in.shape[3];
  const bool rows_contiguous = in.stride[3] == 1 && out.stride[3] == 1;
  const auto* src = static_cast<const unsigned char*>(in.data);
  auto* dst = static_cast<unsigned char*>(out.data);
  // One task per (batch, head): rows of D elements copied byte for byte, so every dtype is exact.
  parallel_for(batch * heads, [&](int64_t bh) {
    const int64_t b = bh / heads, h = bh % heads;
    for (int64_t i = 0; i < seq; ++i) {
      const int64_t in_base = offset_of(in, b, h, perm[i]);
      const int64_t out_base = offset_of(out, b, h, i);
      if (rows_contiguous) {
        std::memcpy(dst + out_base * element, src + in_base * element, dim * element);
        continue;
      }
      for (int64_t d = 0; d < dim; ++d) {
        std::memcpy(dst + (out_base + d * out.stride[3]) * element,
                    src + (in_base + d * in.stride[3]) * element, element);
      }
    }
  });
  return Status::ok_status();
}

}  // namespace cpu

}  // namespace psa
