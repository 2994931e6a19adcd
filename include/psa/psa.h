// The psa library: Pyramid Sparse Attention for video transformers.
#pragma once

#include "psa/config.h"
#include "psa/host_tensor.h"
#include "psa/ops.h"
#include "psa/plan.h"
#include "psa/presets.h"
#include "psa/rearrange.h"
#include "psa/status.h"
#include "psa/tensor.h"
#include "psa/workload.h"
