// The portable CUDA backend (compute capability 8.0 and newer; docs/design.md, "The portable
// path"): the kernels that differ from the Hopper ones. The pyramid, planner, level maps and token
// permutation are shared (src/cuda/*.cu, built for every architecture); the attention forward
// dispatches inside psa::cuda::attention_forward. Host-side launchers with the contract of
// cuda_backend.h: arguments checked by the public API, enqueued on `stream`, no synchronisation.
#pragma once

#include "psa/ops.h"

namespace psa::cuda::portable {

Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config, Stream stream);

}  // namespace psa::cuda::portable
