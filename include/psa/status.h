// Status values returned by every public psa function. Errors are values, never exceptions or exit().
#pragma once

#include <string>
#include <utility>

namespace psa {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // a caller's tensor, config or file is wrong; the message names it
  kUnsupported,      // valid, but not supported by this backend or build (names what is supported)
  kNotBuilt,         // the backend asked for (CUDA) was not compiled into this build
  kCudaError,        // a CUDA runtime call or launch failed
  kIoError,          // a file could not be read or written
  kOutOfMemory,      // host memory for a copy or a result could not be allocated
  kInternal,         // a broken invariant inside psa: a bug
};

const char* status_code_name(StatusCode code);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status ok_status() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid argument: q must have rank 4, got 3"
  std::string to_string() const;

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

Status invalid_argument(std::string message);
Status unsupported(std::string message);

}  // namespace psa

// Returns early from the enclosing function when `expr` yields a non-ok Status.
#define PSA_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::psa::Status psa_status_tmp_ = (expr);    \
    if (!psa_status_tmp_.ok()) return psa_status_tmp_; \
  } while (0)
