// libFuzzer target for the preset reader (CMake option PSA_BUILD_FUZZERS, clang only; the `fuzz`
// preset builds it and scripts/test.sh runs it for a bounded time):
//   build/fuzz/tests/fuzz/psa_preset_fuzzer CORPUS_DIR tests/data/presets presets \
//       -dict=tests/fuzz/yaml.dict -max_total_time=600
#include <cstdio>
#include <cstdlib>

#include "preset_fuzz_target.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string broken = psa::fuzz::check_preset_reader(data, size);
  if (!broken.empty()) {
    std::fprintf(stderr, "preset reader: %s\n", broken.c_str());
    std::abort();  // libFuzzer saves the input as a crash
  }
  return 0;
}
