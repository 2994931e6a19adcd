// Which kernels run on a device, decided at run time from its compute capability (docs/design.md,
// "The portable path"): compute capability 9.0 takes the Hopper kernels (sm_90a: wgmma,
// setmaxnreg, mbarriers); 8.x, and newer cards through the compute_80 PTX, take the portable
// kernels (mma.sync, ldmatrix, cp.async); older cards get an error naming the card and the
// minimum. PSA_FORCE_PORTABLE=1 in the environment (read once per process) sends a Hopper card
// down the portable path too, so that every portable kernel can be tested on one.
#pragma once

#include <string>

#include "psa/status.h"

namespace psa::cuda {

enum class KernelPath { kHopper, kPortable };

// The oldest compute capability psa runs on (mma.sync m16n8k16 bf16, ldmatrix, cp.async).
constexpr int kMinComputeMajor = 8;

// The path of device `device_index`: the compute capability is queried once per device and cached
// (attribute queries only: no synchronisation, no context work beyond the runtime's own).
Status kernel_path(int device_index, KernelPath* path);

// True when PSA_FORCE_PORTABLE=1 was set when this process first asked.
bool portable_forced();

// "compute capability 8.6 (NVIDIA GeForce RTX 3090)" for device `device_index`.
std::string describe_device(int device_index);

}  // namespace psa::cuda
