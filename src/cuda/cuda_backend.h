// The CUDA backend. Host-side launchers: they assume arguments checked by the public API
// (src/api.cpp), enqueue on `stream`, check every launch, and never synchronise the device.
// Compiled only when nvcc is present (PSA_WITH_CUDA). The estimator and the backward here are the
// Hopper (sm_90a) kernels, the estimator's portable twin is in portable/portable_backend.h; the
// attention forward picks its kernels by the device (cuda/kernel_path.h); the rest runs on every
// architecture.
#pragma once

#include <string>

#include "psa/ops.h"

namespace psa::cuda {

Status build_pyramid(PyramidView pyramid, const TensorView& k, const TensorView& v, Stream stream);

Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config, Stream stream);

size_t plan_workspace_bytes(const PlanShape& shape);
Status plan_from_scores(PlanView plan, const TensorView& scores, const TensorView& k,
                        const Config& config, void* workspace, size_t workspace_bytes,
                        Stream stream);
Status plan_from_levels(PlanView plan, const TensorView& levels, const TensorView& k,
                        const Config& config, Stream stream);
Status plan_to_levels(TensorView levels, const PlanView& plan, Stream stream);

Status attention_forward(TensorView out, TensorView lse, const TensorView& q, const TensorView& k,
                         const TensorView& v, const PyramidView& pyramid, const PlanView& plan,
                         const Config& config, Stream stream);

size_t attention_backward_workspace_bytes(const TensorView& dout, const TensorView& q,
                                          const TensorView& k, const PlanView& plan,
                                          const Config& config);
Status attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                          const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const PlanView& plan,
                          const Config& config, void* workspace, size_t workspace_bytes,
                          Stream stream);

bool attention_supported(DType dtype, int64_t head_dim, int block_m, int block_n,
                         std::string* reason);
// A device psa's kernels run on (compute capability 8.0 or newer) is present.
bool device_usable(std::string* reason);

Status permute_tokens(TensorView out, const TensorView& in, const int64_t* perm, Stream stream);

// Every element of `t` (any strides, rank <= 4) set to `value` rounded to t's dtype.
Status fill(TensorView t, double value, Stream stream);

}  // namespace psa::cuda
