// Argument checks of the public API: every message names the argument and what was expected,
// e.g. "k must have shape (B, Hkv, Lk, D) = (2, 8, 4096, 128), got (2, 8, 4096, 64)".
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>

#include "psa/ops.h"

namespace psa::detail {

// Largest sequence length and plan extent: kernels index rows and plan entries with int32.
constexpr int64_t kMaxIndex32 = (int64_t{1} << 31) - 1;

// The shape of an attention problem, read off q and k.
struct ProblemShape {
  int64_t batch = 0, heads_q = 0, heads_kv = 0, seq_q = 0, seq_k = 0, head_dim = 0;
};

// rank as expected, a known dtype and device, data non-null, every dim >= 1, strides >= 0, the
// element count and the largest byte offset within int64.
Status check_tensor(const TensorView& t, const char* name, int rank);
Status check_dtype(const TensorView& t, const char* name, std::initializer_list<DType> allowed);
Status check_shape(const TensorView& t, const char* name, const char* dims,
                   std::initializer_list<int64_t> expected);
Status check_contiguous(const TensorView& t, const char* name);
Status check_same_device(const TensorView& t, const char* name, const TensorView& reference,
                         const char* reference_name);

// q, k, v: ranks, shapes, GQA, dtypes per device, 32-bit limits. Fills `shape`.
Status check_qkv(ProblemShape* shape, const TensorView& q, const TensorView& k,
                 const TensorView& v);
// The floating dtypes the backend of `device` computes with.
Status check_compute_dtype(const TensorView& t, const char* name);
Status check_pyramid(const PyramidView& pyramid, const ProblemShape& s, const TensorView& k);
Status check_plan(const PlanView& plan, const ProblemShape& s, const TensorView& reference,
                  bool check_contents);
Status check_lse(const TensorView& lse, const ProblemShape& s, const TensorView& q, bool required);

// ---- Memory overlap ----------------------------------------------------------------------------
// Views that passed check_tensor. An output must have a distinct address per element and share no
// element with another output or an input: kernels write outputs from many threads while they
// read the inputs.

// A view and the name errors give it; empty views (an optional lse) are skipped.
struct NamedView {
  NamedView(const TensorView& v, const char* n) : view(&v), name(n) {}
  const TensorView* view;
  const char* name;
};

// Fails when two elements of `t` share memory (a stride 0 along a dimension of size > 1, or
// strides that interleave).
Status check_no_internal_overlap(const TensorView& t, const char* name);
// Fails when an element of `a` shares a byte with an element of `b`. Exact for the layouts views
// are made of (packed q/k/v slices of one buffer are disjoint and pass); a layout too irregular to
// decide within a bounded search counts as overlapping.
Status check_no_overlap(const TensorView& a, const char* a_name, const TensorView& b,
                        const char* b_name);
// Every output: no internal overlap, no overlap with another output or with any input.
// e.g. check_outputs({{dq, "dq"}, {dk, "dk"}, {dv, "dv"}}, {{q, "q"}, {k, "k"}, {v, "v"}}).
Status check_outputs(std::initializer_list<NamedView> outputs,
                     std::initializer_list<NamedView> inputs);

}  // namespace psa::detail
