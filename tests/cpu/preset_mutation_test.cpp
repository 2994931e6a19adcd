// The preset reader against mutated preset files: a seeded, counter-based mutation fuzzer that
// runs in every build (libFuzzer, tests/fuzz, needs clang). Each input is a corpus file (the
// built-in presets and tests/data/presets) with a few random edits: bytes flipped, inserted or
// deleted, ranges and lines repeated, lines swapped, numbers replaced by extreme ones, YAML tokens
// spliced in, deep nesting, truncation, pieces of another file. psa::fuzz::check_preset_reader states what must hold.
//
// PSA_TEST_SEED picks the seed (printed on failure with the input); PSA_FUZZ_ITERATIONS the
// number of inputs (default kDefaultIterations, a few seconds under the sanitizers).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "common/random.h"
#include "common/test_util.h"
#include "preset_fuzz_target.h"

namespace psa::detail {
extern const char* const kBuiltinPresetsYaml;
}  // namespace psa::detail

namespace psa {
namespace {

constexpr int64_t kDefaultIterations = 3000;
constexpr int kMaxEditsPerInput = 6;
// Nesting deep enough to test the YAML parser's recursion guard, short of a stack overflow in a
// parser without one (yaml-cpp limits depth since 0.6.3).
constexpr int kMaxNesting = 2000;

const char* const kNumbers[] = {"0",    "-1",   "-0",     "1e309",      ".nan",  "-.inf", "0.0000001",
                                "3",    "1.5",  "4096",   "2147483648", "9223372036854775808",
                                "0x10", "1_000", "+.5e1", "99999999999999999999999"};

const char* const kTokens[] = {
    ": ", "- ", "{", "}", "[", "]", ", ", "&a ", "*a", "<<: *a", "!!str ", "!!binary ", "? ",
    "|\n", ">\n", "---\n", "...\n", "~", "null", ".nan", ".inf", "-.inf", "1e309", "-0",
    "0x7fffffff", "99999999999999999999", "-1", "2147483648", "0.5", "\t",
    "",  // stands for a NUL byte, which a C string cannot hold
    "\xff\xfe", "\xc3\x28", "type: psa", "type: dense", "mask_mode: topk",
    "mask_mode: thresholdbound", "block_size: {m: 128, n: 64, tile_n: 32}", "mask_ratios:",
    "1: [0.0, 0.1]", "0: [0.5, 1.0]", "attention_configs:", "default_attention: x",
    "sim_thresholds: {x2: 0.7}", "tile_size: [4, 8, 8]", "warmup_steps: -5",
    "rearrange_method: STA", "use_rearrange: true", "video_scale: {width_divisor: 0}",
};

// Counter-based draws: the i-th input of a seed is the same wherever it runs.
class Draws {
 public:
  Draws(uint64_t seed, uint64_t input) : seed_(seed), input_(input) {}
  uint32_t next() {
    const detail::Philox4x32 r = detail::philox4x32(
        static_cast<uint32_t>(input_), static_cast<uint32_t>(input_ >> 32), counter_++, 0x9e37u,
        static_cast<uint32_t>(seed_), static_cast<uint32_t>(seed_ >> 32));
    return r.v[0];
  }
  // Uniform in [0, n) for n >= 1.
  size_t below(size_t n) { return static_cast<size_t>(next() % static_cast<uint32_t>(n)); }

 private:
  uint64_t seed_, input_;
  uint32_t counter_ = 0;
};

std::vector<std::string> corpus() {
  std::vector<std::string> files = {detail::kBuiltinPresetsYaml};
  std::vector<std::filesystem::path> paths;
  for (const auto& entry :
       std::filesystem::directory_iterator(std::string(PSA_TEST_DATA_DIR) + "/presets")) {
    paths.push_back(entry.path());
  }
  std::sort(paths.begin(), paths.end());  // directory order differs between file systems
  for (const auto& path : paths) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream text;
    text << in.rdbuf();
    files.push_back(text.str());
  }
  return files;
}

std::vector<size_t> line_starts(const std::string& s) {
  std::vector<size_t> starts = {0};
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n') starts.push_back(i + 1);
  }
  return starts;
}

std::string token(size_t i) {
  const std::string t = kTokens[i];
  return t.empty() ? std::string(1, '\0') : t;
}

void mutate(std::string* s, const std::vector<std::string>& files, Draws* d) {
  const int edits = 1 + static_cast<int>(d->below(kMaxEditsPerInput));
  for (int e = 0; e < edits; ++e) {
    const size_t at = s->empty() ? 0 : d->below(s->size() + 1);
    switch (d->below(11)) {
      case 0:  // flip a byte
        if (!s->empty()) (*s)[d->below(s->size())] = static_cast<char>(d->next());
        break;
      case 1: {  // insert random bytes
        std::string bytes(1 + d->below(8), '\0');
        for (char& c : bytes) c = static_cast<char>(d->next());
        s->insert(at, bytes);
        break;
      }
      case 2:  // insert a token
        s->insert(at, token(d->below(sizeof(kTokens) / sizeof(kTokens[0]))));
        break;
      case 3:  // delete a range
        s->erase(at, 1 + d->below(64));
        break;
      case 4: {  // repeat a line
        const std::vector<size_t> starts = line_starts(*s);
        const size_t line = d->below(starts.size());
        const size_t end = line + 1 < starts.size() ? starts[line + 1] : s->size();
        const std::string text = s->substr(starts[line], end - starts[line]);
        s->insert(starts[line], text);
        break;
      }
      case 5: {  // swap two lines
        const std::vector<size_t> starts = line_starts(*s);
        if (starts.size() < 3) break;
        const size_t a = d->below(starts.size() - 1), b = d->below(starts.size() - 1);
        const size_t lo = std::min(a, b), hi = std::max(a, b);
        if (lo == hi) break;
        const std::string first = s->substr(starts[lo], starts[lo + 1] - starts[lo]);
        const std::string second = s->substr(starts[hi], starts[hi + 1] - starts[hi]);
        s->replace(starts[hi], second.size(), first);
        s->replace(starts[lo], first.size(), second);
        break;
      }
      case 6:  // truncate
        s->resize(at);
        break;
      case 7: {  // duplicate a short range in place: "[4, 8, 8]" -> "[4, 8, 8, 8]"
        const std::string piece = s->substr(at, 1 + d->below(16));
        s->insert(at, piece);
        break;
      }
      case 8: {  // replace the next number with an extreme one
        const size_t first = s->find_first_of("0123456789", at);
        if (first == std::string::npos) break;
        const size_t last = s->find_first_not_of("0123456789.", first);
        s->replace(first, (last == std::string::npos ? s->size() : last) - first,
                   kNumbers[d->below(sizeof(kNumbers) / sizeof(kNumbers[0]))]);
        break;
      }
      case 9: {  // splice in a piece of another corpus file
        const std::string& other = files[d->below(files.size())];
        const size_t from = d->below(other.size() + 1);
        s->insert(at, other.substr(from, 1 + d->below(256)));
        break;
      }
      default: {  // deep nesting
        const int depth = 1 + static_cast<int>(d->below(kMaxNesting));
        const char* open = d->below(2) ? "[" : "{a: ";
        std::string nest;
        for (int i = 0; i < depth; ++i) nest += open;
        s->insert(at, nest);
        break;
      }
    }
  }
}

std::string printable(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n' || (c >= 0x20 && c < 0x7f)) {
      out += static_cast<char>(c);
    } else {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    }
  }
  return out;
}

TEST(PresetReaderFuzz, MutatedFilesGiveAStatusNamingTheFile) {
  const uint64_t seed = test::test_seed(2024);
  const char* env = std::getenv("PSA_FUZZ_ITERATIONS");
  const int64_t iterations = env != nullptr ? std::atoll(env) : kDefaultIterations;
  const std::vector<std::string> files = corpus();
  ASSERT_GE(files.size(), 2u);
  int64_t loaded = 0;
  for (int64_t i = 0; i < iterations; ++i) {
    Draws draws(seed, static_cast<uint64_t>(i));
    std::string input = files[draws.below(files.size())];
    mutate(&input, files, &draws);
    bool ok = false;
    const std::string broken = fuzz::check_preset_reader(
        reinterpret_cast<const uint8_t*>(input.data()), input.size(), &ok);
    ASSERT_TRUE(broken.empty()) << broken << "\ninput " << i << " of seed " << seed << " ("
                                << input.size() << " bytes):\n"
                                << printable(input) << "\n"
                                << test::replay_hint(seed);
    loaded += ok;
  }
  // Some mutants must still parse, or the mutations only ever test the syntax error path.
  EXPECT_GT(loaded, 0) << "no mutated file loaded; the mutations are too destructive";
}

}  // namespace
}  // namespace psa
