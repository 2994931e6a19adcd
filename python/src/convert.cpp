#include "convert.h"

#include <Python.h>


namespace psa::python {

void throw_status(const Status& status) {
  PyObject* type = PyExc_RuntimeError;
  switch (status.code()) {
    case StatusCode::kInvalidArgument: type = PyExc_ValueError; break;
    case StatusCode::kUnsupported:
    case StatusCode::kNotBuilt: type = PyExc_NotImplementedError; break;
    case StatusCode::kOutOfMemory: type = PyExc_MemoryError; break;
    default: break;
  }
  PyErr_SetString(type, status.message().c_str());
  throw nb::python_error();
}

void throw_value_error(const std::string& message) {
  PyErr_SetString(PyExc_ValueError, message.c_str());
  throw nb::python_error();
}

namespace {

DType to_dtype(const nb::dlpack::dtype& dt, const char* name) {
  using Code = nb::dlpack::dtype_code;
  const auto code = static_cast<Code>(dt.code);
  if (dt.lanes == 1) {
    if (code == Code::Float && dt.bits == 32) return DType::kFloat32;
    if (code == Code::Float && dt.bits == 16) return DType::kFloat16;
    if (code == Code::Bfloat && dt.bits == 16) return DType::kBFloat16;
    if (code == Code::Float && dt.bits == 64) return DType::kFloat64;
    if (code == Code::Int && dt.bits == 32) return DType::kInt32;
    if (code == Code::Int && dt.bits == 64) return DType::kInt64;
    if (code == Code::UInt && dt.bits == 8) return DType::kUInt8;
  }
  throw_value_error(std::string(name) + " has a dtype psa does not support (DLPack code " +
                    std::to_string(static_cast<int>(dt.code)) + ", " +
                    std::to_string(static_cast<int>(dt.bits)) +
                    " bits); expected float32, float16, bfloat16, float64, int32, int64 or uint8");
}

Device to_device(int32_t device_type, const char* name) {
  if (device_type == nb::device::cpu::value) return Device::kCpu;
  if (device_type == nb::device::cuda::value) return Device::kCuda;
  throw_value_error(std::string(name) +
                    " lives on a device psa does not support (DLPack device type " +
                    std::to_string(device_type) + "); expected CPU or CUDA memory");
}

template <typename Array>
TensorView make_tensor_view(const Array& array, const char* name) {
  const size_t rank = array.ndim();
  if (rank > static_cast<size_t>(kMaxRank)) {
    throw_value_error(std::string(name) + " must have rank at most " + std::to_string(kMaxRank) +
                      ", got " + std::to_string(rank));
  }
  TensorView t;
  t.data = const_cast<void*>(static_cast<const void*>(array.data()));
  t.dtype = to_dtype(array.dtype(), name);
  t.device = to_device(array.device_type(), name);
  t.device_index = array.device_id();
  t.rank = static_cast<int>(rank);
  for (size_t d = 0; d < rank; ++d) {
    t.shape[d] = static_cast<int64_t>(array.shape(d));
    t.stride[d] = array.stride(d);
    if (t.stride[d] < 0) {
      throw_value_error(std::string(name) + " has a negative stride " +
                        std::to_string(t.stride[d]) + " in dim " + std::to_string(d) +
                        "; psa needs non-negative strides (make a copy first)");
    }
  }
  return t;
}

}  // namespace

TensorView to_view(const InArray& array, const char* name) {
  return make_tensor_view(array, name);
}
TensorView to_view(const OutArray& array, const char* name) {
  return make_tensor_view(array, name);
}
TensorView to_view(const std::optional<InArray>& array, const char* name) {
  return array ? make_tensor_view(*array, name) : TensorView();
}
TensorView to_view(const std::optional<OutArray>& array, const char* name) {
  return array ? make_tensor_view(*array, name) : TensorView();
}

}  // namespace psa::python
