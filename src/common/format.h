// Number formatting for messages without iostreams. The library's messages are built from strings
// and snprintf only: a Python process may hold a C++ runtime whose global locale our iostreams
// cannot use (seen on the GPU machine: std::ostringstream inside the extension crashed there while
// plain string code worked).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

namespace psa::detail {

// Shortest "%g" form: 0.5, 1e-06, 128.
inline std::string format_double(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof buffer, "%g", value);
  return buffer;
}

// "(2, 8, 4096, 128)"
inline std::string format_dims(const int64_t* dims, int count) {
  std::string s = "(";
  for (int d = 0; d < count; ++d) {
    if (d) s += ", ";
    s += std::to_string(dims[d]);
  }
  return s + ")";
}

}  // namespace psa::detail
