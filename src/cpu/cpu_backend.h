// The CPU reference implementation (the specification every other backend is tested against).
// These functions assume arguments already checked by the public API (src/api.cpp): shapes
// consistent, dtypes supported, pointers non-null, config valid. Plain loops with fp32/fp64
// accumulation, multi-threaded over (batch, head, query block) where that stays simple.
#pragma once

#include "psa/ops.h"

namespace psa::cpu {

Status build_pyramid(PyramidView pyramid, const TensorView& k, const TensorView& v);

Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config);

Status plan_from_scores(PlanView plan, const TensorView& scores, const TensorView& k,
                        const Config& config);
Status plan_from_levels(PlanView plan, const TensorView& levels, const TensorView& k,
                        const Config& config);
Status plan_to_levels(TensorView levels, const PlanView& plan);
Status plan_statistics(PlanStats* stats, const PlanView& plan);

// cap: (B, Hkv, Nk) uint8, the similarity cap of every key block (1, 2, 4 or 8) (SPEC 5).
Status similarity_cap(TensorView cap, const TensorView& k, const Config& config);

Status attention_forward(TensorView out, TensorView lse, const TensorView& q, const TensorView& k,
                         const TensorView& v, const PyramidView& pyramid, const PlanView& plan,
                         const Config& config);
Status attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                          const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const PlanView& plan,
                          const Config& config);

Status dense_attention_forward(TensorView out, TensorView lse, const TensorView& q,
                               const TensorView& k, const TensorView& v, bool causal, float scale);
Status dense_attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                                const TensorView& q, const TensorView& k, const TensorView& v,
                                const TensorView& out, const TensorView& lse, bool causal,
                                float scale);

Status permute_tokens(TensorView out, const TensorView& in, const int64_t* perm);

// Every element of `t` (any strides) set to `value` rounded to t's dtype.
Status fill(TensorView t, double value);

}  // namespace psa::cpu
