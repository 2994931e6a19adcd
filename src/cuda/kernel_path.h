// Which kernels run on a device, decided at run time from its compute capability (docs/design.md,
// "The portable path"): compute capability 9.0 takes the Hopper kernels (sm_90a: wgmma,
// setmaxnreg, mbarriers); 8.x, and newer cards through the compute_80 PTX, take the portable
// kernels (mma.sync, ldmatrix, cp.async); older cards get an error naming the card and the
// minimum. PSA_FORCE_PORTABLE in the environment (read once per process) sends a Hopper card down
// the portable path too, so that every portable kernel can be tested on one: "1" with the card's
// own shared memory, "8.9" as if it had the 100 KiB per SM of compute capability 8.6 / 8.9 (the
// kernels of those cards' tile shapes).
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

// True when PSA_FORCE_PORTABLE was "1" or "8.9" when this process first asked.
bool portable_forced();

// Shared memory per SM of device `device_index` in bytes (cached as the compute capability is),
// 100 KiB under PSA_FORCE_PORTABLE=8.9; the portable kernels pick their tile shapes by it.
Status shared_memory_per_sm(int device_index, int* bytes);

// "compute capability 8.6 (NVIDIA GeForce RTX 3090)" for device `device_index`.
std::string describe_device(int device_index);

}  // namespace psa::cuda
