// The preset reader under arbitrary input, shared by the libFuzzer target (preset_reader_fuzz.cpp,
// built with clang) and the seeded mutation test that runs everywhere
// (tests/cpu/preset_mutation_test.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace psa::fuzz {

// The name the input is parsed under; every error message must start with it.
constexpr const char* kSourceName = "fuzz.yaml";

// Parses `size` bytes as a preset file and checks what the reader promises for any input: no
// exception escapes; a failure is kInvalidArgument with a message that starts with the source
// name; a success yields presets that `find` returns by "model:name" and whose configs validate.
// Returns what was broken, or an empty string (memory errors are the sanitizers' to report);
// *loaded (when given) says whether the input parsed.
std::string check_preset_reader(const uint8_t* data, size_t size, bool* loaded = nullptr);

}  // namespace psa::fuzz
