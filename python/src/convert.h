// The adapter between Python arrays and psa's descriptors: a nanobind ndarray (a NumPy array or
// anything with __dlpack__, e.g. a torch tensor on the CPU or CUDA) becomes a psa::TensorView over
// the same memory, and a non-ok psa::Status becomes a Python exception. No copies are made.
#pragma once

#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cstdint>
#include <optional>
#include <string>

#include "psa/psa.h"

namespace psa::python {

namespace nb = nanobind;

// Inputs are read-only views; outputs must be writable.
using InArray = nb::ndarray<nb::ro>;
using OutArray = nb::ndarray<>;

// Raises the Python exception that matches the status: kInvalidArgument -> ValueError,
// kUnsupported and kNotBuilt -> NotImplementedError, everything else -> RuntimeError. The message
// is the library's, unchanged, so that it still names the argument.
void throw_status(const Status& status);
inline void check(const Status& status) {
  if (!status.ok()) throw_status(status);
}

// Raises ValueError with `message` (for errors the adapter itself detects).
[[noreturn]] void throw_value_error(const std::string& message);

// A descriptor of `array` (rank <= 4, a dtype psa knows, CPU or CUDA memory, non-negative
// strides). `name` is used in error messages ("q must ...").
TensorView to_view(const InArray& array, const char* name);
TensorView to_view(const OutArray& array, const char* name);
// An empty view for None.
TensorView to_view(const std::optional<InArray>& array, const char* name);
TensorView to_view(const std::optional<OutArray>& array, const char* name);

// The caller's CUDA stream passed as an integer (torch.cuda.current_stream().cuda_stream); 0 is
// the legacy default stream and is what CPU calls pass.
inline Stream to_stream(uintptr_t stream) { return reinterpret_cast<Stream>(stream); }

}  // namespace psa::python
