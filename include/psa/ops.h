// The stages of Pyramid Sparse Attention. Each function checks its arguments, then runs on the
// device its tensors live on (all CPU or all CUDA). Outputs and workspace are caller-owned.
// Argument order: outputs, inputs, configuration, workspace, stream.
//
// Shapes (any strides unless said otherwise):
//   q: (B, Hq, Lq, D)   k, v: (B, Hkv, Lk, D)   Hq % Hkv == 0
//   out: (B, Hq, Lq, D) in q's dtype            lse: (B, Hq, Lq) fp32 (natural log)
// CPU: fp32, fp16, bf16 (16-bit types are computed in fp32). CUDA: fp16, bf16.
// CUDA functions never synchronise the device; they enqueue on `stream` and return.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "psa/config.h"
#include "psa/plan.h"
#include "psa/status.h"
#include "psa/tensor.h"

namespace psa {

// ---- The pyramid (SPEC 2) -------------------------------------------------------------------
// Pooled keys and values of levels 2, 4, 8: level index l in {0, 1, 2} holds factor 2 << l, shape
// (B, Hkv, ceil(Lk / f), D), contiguous, dtype of k (fp32 also accepted on the CPU). Pooled token
// p is the exact mean of the real tokens [p*f, min((p+1)*f, Lk)).
struct PyramidView {
  TensorView k[kNumPooledLevels];
  TensorView v[kNumPooledLevels];
};
Status build_pyramid(PyramidView pyramid, const TensorView& k, const TensorView& v,
                     Stream stream = nullptr);

// ---- Block importance (SPEC 4) --------------------------------------------------------------
// scores: (B, Hq, Mq, Nk) fp32 contiguous; each row sums to 1 over the blocks it can see.
// Under causal attention, blocks wholly invisible to a query block score 0.
Status estimate_importance(TensorView scores, const TensorView& q, const TensorView& k,
                           const Config& config, Stream stream = nullptr);

// The sampled intra-block offsets of (batch, head) (SPEC 4.1), so that every backend and test
// uses the same ones: `offsets` receives `count` distinct values in [0, block).
// block in [1, 256], count in [0, block].
Status sample_block_offsets(int32_t* offsets, uint64_t seed, int64_t batch, int64_t head,
                          int block, int count);

// ---- The planner (SPEC 5) -------------------------------------------------------------------
// plan: allocated with plan_shape(); `k` (rearranged keys) is needed only when config.sim_cap is
// set, and may be empty otherwise. Workspace (CUDA only): plan_workspace_bytes() bytes.
size_t plan_workspace_bytes(const PlanShape& shape, Device device);
Status plan_from_scores(PlanView plan, const TensorView& scores, const TensorView& k,
                        const Config& config, void* workspace = nullptr,
                        size_t workspace_bytes = 0, Stream stream = nullptr);

// A caller's level map (B, Hq, Mq, Nk) uint8 with values in {0, 1, 2, 4, 8} (validated; any
// strides) to a plan; the similarity cap is applied when config.sim_cap is set (k needed then).
Status plan_from_levels(PlanView plan, const TensorView& levels, const TensorView& k,
                        const Config& config, Stream stream = nullptr);
// The plan expanded to a level map (B, Hq, Mq, Nk) uint8, contiguous.
Status plan_to_levels(TensorView levels, const PlanView& plan, Stream stream = nullptr);

// Statistics of a host plan.
Status plan_statistics(PlanStats* stats, const PlanView& plan);

// ---- Attention (SPEC 6, 7) ------------------------------------------------------------------
// Forward on a plan. `lse` may be empty when not wanted. The pyramid must have been built from
// these k and v. config supplies causal and softmax_scale (block sizes come from the plan).
Status attention_forward(TensorView out, TensorView lse, const TensorView& q, const TensorView& k,
                         const TensorView& v, const PyramidView& pyramid, const PlanView& plan,
                         const Config& config, Stream stream = nullptr);

// Exact gradients of attention_forward for the plan as given (SPEC 7). dq, dk, dv have the shapes
// (and may have the strides) of q, k, v; out and lse come from the forward. config supplies causal,
// softmax_scale and deterministic (block sizes come from the plan). dK and dV are gradients with
// respect to the original k and v: a pooled token passes its gradient to the c tokens it averages.
// Workspace (CUDA only, attention_backward_workspace_bytes): the pyramid of k and v, fp32
// accumulators of every level's dK and dV, the row terms rowsum(dout * out) and, when config is
// deterministic, the accumulation order. The CPU backward needs none.
size_t attention_backward_workspace_bytes(const TensorView& dout, const TensorView& q,
                                          const TensorView& k, const PlanView& plan,
                                          const Config& config);
Status attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                          const TensorView& q, const TensorView& k, const TensorView& v,
                          const TensorView& out, const TensorView& lse, const PlanView& plan,
                          const Config& config, void* workspace = nullptr,
                          size_t workspace_bytes = 0, Stream stream = nullptr);

// Dense attention, the reference for the all-level-1 equality. `scale` 0 selects 1/sqrt(D).
Status dense_attention_forward(TensorView out, TensorView lse, const TensorView& q,
                               const TensorView& k, const TensorView& v, bool causal, float scale,
                               Stream stream = nullptr);
Status dense_attention_backward(TensorView dq, TensorView dk, TensorView dv, const TensorView& dout,
                                const TensorView& q, const TensorView& k, const TensorView& v,
                                const TensorView& out, const TensorView& lse, bool causal,
                                float scale, Stream stream = nullptr);

// ---- Backends -------------------------------------------------------------------------------
// Whether this build has the CUDA backend (compiled with nvcc). It says nothing about the machine.
bool cuda_backend_built();
// Whether the CUDA backend can run now: it is built, and a device it has kernels for is present
// (compute capability 8.0 or newer: the Hopper kernels on 9.0, the portable ones on 8.x and newer
// architectures). `reason` (may be null) says why not.
bool cuda_device_usable(std::string* reason);
// Whether attention_backward runs on CUDA device `device_index`: it takes the Hopper kernels
// (compute capability 9.0, PSA_FORCE_PORTABLE unset); the portable path has the forward only.
// `reason` (may be null) says why not.
bool cuda_backward_usable(int device_index, std::string* reason);
// Whether the CUDA attention kernel supports this problem; `reason` (may be null) says why not.
bool cuda_attention_supported(DType dtype, int64_t head_dim, int block_m, int block_n,
                              std::string* reason);

}  // namespace psa
