// Seeded mutation fuzzing inside gtest (docs/fuzzing.md): mutators for bytes and JSON, a
// deterministic RNG, the iteration count (MOEX_FUZZ_ITERS), the regression corpus in
// tests/fixtures/fuzz/<target>/ and the rule every run checks: an input either loads or ends
// in moex::Error; any other exception is a failure, and the input is saved for the corpus.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"

namespace moex::fuzz {

namespace fs = std::filesystem;

// splitmix64: the same sequence on every platform, so (seed, target, iteration) replays a case.
class Rng {
 public:
  explicit Rng(uint64_t seed) : state_(seed) {}
  uint64_t next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  size_t below(size_t n) { return n == 0 ? 0 : static_cast<size_t>(next() % n); }
  bool coin(int one_in) { return below(static_cast<size_t>(one_in)) == 0; }
  template <typename T>
  const T& pick(const std::vector<T>& v) {
    return v[below(v.size())];
  }

 private:
  uint64_t state_;
};

inline uint64_t env_u64(const char* name, uint64_t fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  return std::strtoull(v, nullptr, 10);
}

// Mutated inputs per target: `fallback` in the normal suite, MOEX_FUZZ_ITERS for longer runs.
inline int64_t iterations(int64_t fallback) {
  return static_cast<int64_t>(env_u64("MOEX_FUZZ_ITERS", static_cast<uint64_t>(fallback)));
}

// The RNG of one case: MOEX_FUZZ_SEED (default 1) mixed with the target and iteration.
inline Rng case_rng(const std::string& target, int64_t iteration) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a of the target name
  for (unsigned char c : target) h = (h ^ c) * 1099511628211ull;
  Rng mix(env_u64("MOEX_FUZZ_SEED", 1) ^ h ^ (static_cast<uint64_t>(iteration) << 20));
  return Rng(mix.next());
}

// A scratch directory of this process for the files a target loads.
inline fs::path scratch_dir(const std::string& target) {
  const fs::path dir =
      fs::temp_directory_path() / ("moex_fuzz_" + std::to_string(::getpid())) / target;
  fs::create_directories(dir);
  return dir;
}

inline std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

inline void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// tests/fixtures/fuzz/<target>, or $MOEX_FUZZ_CORPUS/<target> (an empty folder replays nothing).
inline fs::path corpus_dir(const std::string& target) {
  const char* env = std::getenv("MOEX_FUZZ_CORPUS");
  if (env != nullptr && *env != '\0') return fs::path(env) / target;
  return fs::path(MOEX_SOURCE_DIR) / "tests" / "fixtures" / "fuzz" / target;
}

// The regression corpus of a target: file paths, sorted (empty if the folder does not exist).
inline std::vector<fs::path> corpus(const std::string& target) {
  std::vector<fs::path> files;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(corpus_dir(target), ec))
    if (e.is_regular_file()) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

// Saves a failing input under $MOEX_FUZZ_FAILURES (default: the temp directory) so that it can
// be copied into tests/fixtures/fuzz/<target>/; returns the path.
inline std::string save_failure(const std::string& target, const std::string& name,
                                const std::string& bytes) {
  const char* env = std::getenv("MOEX_FUZZ_FAILURES");
  const fs::path dir =
      (env && *env ? fs::path(env) : fs::temp_directory_path() / "moex_fuzz_failures") / target;
  fs::create_directories(dir);
  write_bytes(dir / name, bytes);
  return (dir / name).string();
}

struct Stats {
  int64_t loaded = 0, errors = 0, failures = 0, skipped = 0;
};

// Every case of the regression corpus is an input that must be rejected with moex::Error.
inline void expect_corpus_rejected(const std::string& target, size_t cases, const Stats& s) {
  EXPECT_EQ(s.errors, static_cast<int64_t>(cases))
      << target << ": every corpus case must end in moex::Error";
}

// Runs `load`; a moex::Error or a return is accepted, anything else is a test failure that
// names the case and saves `input` (what to put in the corpus) as `name`.
inline void run_case(const std::string& target, const std::string& name, const std::string& input,
                     const std::function<void()>& load, Stats* stats) {
  try {
    load();
    ++stats->loaded;
    return;
  } catch (const Error& e) {
    ++stats->errors;
    return;
  } catch (const std::exception& e) {
    ++stats->failures;
    ADD_FAILURE() << target << " case " << name << ": " << typeid(e).name()
                  << " escaped instead of moex::Error: " << std::string(e.what()).substr(0, 400)
                  << "\n  input saved as " << save_failure(target, name, input);
  } catch (...) {
    ++stats->failures;
    ADD_FAILURE() << target << " case " << name << ": a non-std exception escaped"
                  << "\n  input saved as " << save_failure(target, name, input);
  }
}

inline void report(const std::string& target, const Stats& s) {
  std::printf("[fuzz] %s: %lld loaded, %lld moex::Error, %lld skipped, %lld failures\n",
              target.c_str(), static_cast<long long>(s.loaded), static_cast<long long>(s.errors),
              static_cast<long long>(s.skipped), static_cast<long long>(s.failures));
}

// ---- values and byte mutations ----

inline const std::vector<std::string>& interesting_literals() {
  static const std::vector<std::string> kLiterals = {
      "0",
      "-1",
      "1",
      "2147483647",
      "2147483648",
      "-2147483649",
      "4294967296",
      "9223372036854775807",
      "9223372036854775808",
      "18446744073709551615",
      "18446744073709551616",
      "-9223372036854775809",
      "1e308",
      "-1e308",
      "1e400",
      "NaN",
      "Infinity",
      "-0",
      "0.5",
      "1e-320",
      "null",
      "true",
      "\"\"",
      "[]",
      "{}",
      std::string(20000, '['),
      std::string(100000, '[') + std::string(100000, ']'),
      "\"" + std::string(100000, 'A') + "\"",
      "\xff\xfe",
      "\\u0000",
      "\"\\ud800\""};
  return kLiterals;
}

inline const std::vector<uint64_t>& interesting_words() {
  static const std::vector<uint64_t> kWords = {0,
                                               1,
                                               0xFF,
                                               0x7F,
                                               0x80,
                                               0xFFFF,
                                               0x7FFFFFFF,
                                               0x80000000ull,
                                               0xFFFFFFFFull,
                                               0x100000000ull,
                                               0x7FFFFFFFFFFFFFFFull,
                                               0x8000000000000000ull,
                                               0xFFFFFFFFFFFFFFFFull,
                                               0x7FC00000ull,          // f32 NaN
                                               0x7F800000ull,          // f32 +inf
                                               0x7FF8000000000000ull,  // f64 NaN
                                               0xFFF0000000000000ull,  // f64 -inf
                                               0x3FF8000000000000ull,  // f64 1.5
                                               (1ull << 40),
                                               (100ull << 20) + 1};
  return kWords;
}

// One random byte-level mutation: bit flip, byte set, truncation, insertion of an interesting
// literal or word, deletion or duplication of a span, or an interesting word overwriting 1, 2,
// 4 or 8 bytes.
inline std::string mutate_bytes(std::string s, Rng& rng) {
  const size_t n = s.size();
  switch (rng.below(8)) {
    case 0:
      if (n) s[rng.below(n)] ^= static_cast<char>(1u << rng.below(8));
      break;
    case 1:
      if (n) s[rng.below(n)] = static_cast<char>(rng.pick(interesting_words()));
      break;
    case 2:
      s.resize(rng.below(n + 1));
      break;
    case 3:
      s.insert(rng.below(n + 1), rng.pick(interesting_literals()));
      break;
    case 4: {
      const uint64_t w = rng.pick(interesting_words());
      s.insert(rng.below(n + 1), std::string(reinterpret_cast<const char*>(&w), 8));
      break;
    }
    case 5:
      if (n) {
        const size_t at = rng.below(n);
        s.erase(at, 1 + rng.below(std::min<size_t>(n - at, 64)));
      }
      break;
    case 6:
      if (n) {
        const size_t at = rng.below(n);
        const size_t len = 1 + rng.below(std::min<size_t>(n - at, 256));
        s.insert(rng.below(n + 1), s.substr(at, len));
      }
      break;
    default: {
      const size_t width = size_t{1} << rng.below(4);
      if (n >= width) {
        const uint64_t w = rng.pick(interesting_words());
        std::memcpy(&s[rng.below(n - width + 1)], &w, width);
      }
      break;
    }
  }
  return s;
}

// Replaces one number literal of JSON text with an interesting literal (keeps syntax except
// where the literal itself is not JSON, e.g. NaN or 1e400).
inline std::string mutate_number_text(std::string s, Rng& rng) {
  std::vector<size_t> starts;
  for (size_t i = 0; i < s.size(); ++i) {
    const bool digit = (s[i] >= '0' && s[i] <= '9') || s[i] == '-';
    const bool prev_digit = i > 0 && ((s[i - 1] >= '0' && s[i - 1] <= '9') || s[i - 1] == '.' ||
                                      s[i - 1] == '-' || s[i - 1] == 'e');
    if (digit && !prev_digit &&
        (i == 0 || s[i - 1] == ' ' || s[i - 1] == ':' || s[i - 1] == '[' || s[i - 1] == ','))
      starts.push_back(i);
  }
  if (starts.empty()) return mutate_bytes(std::move(s), rng);
  const size_t at = rng.pick(starts);
  size_t end = at + 1;
  while (end < s.size() && std::strchr("0123456789.eE+-", s[end]) != nullptr) ++end;
  static const std::vector<std::string> kNumbers = {
      "0", "-1", "2147483648", "-2147483649", "4294967297", "9223372036854775807",
      "9223372036854775808", "18446744073709551615", "18446744073709551616", "1e308", "-1e308",
      "1e400", "-1e400", "NaN", "0.5", "-0.0", "1e-320", "1.0",
      // valid JSON nested 100000 deep
      std::string(100000, '[') + std::string(100000, ']')};
  s.replace(at, end - at, rng.pick(kNumbers));
  return s;
}

// ---- JSON-aware mutations ----

inline nlohmann::json interesting_json(Rng& rng) {
  using nlohmann::json;
  switch (rng.below(22)) {
    case 0:
      return nullptr;
    case 1:
      return true;
    case 2:
      return 0;
    case 3:
      return -1;
    case 4:
      return int64_t{1} << 31;
    case 5:
      return -(int64_t{1} << 31) - 1;
    case 6:
      return std::numeric_limits<int64_t>::max();
    case 7:
      return std::numeric_limits<uint64_t>::max();
    case 8:
      return std::numeric_limits<int64_t>::min();
    case 9:
      return 1e308;
    case 10:
      return -1e308;
    case 11:
      return 0.5;
    case 12:
      return "";
    case 13:
      return std::string(1 + rng.below(100000), 'x');
    case 14:
      return json::array();
    case 15:
      return json::object();
    case 16:
      return json::array({1, 2, 3});
    case 17:
      return json{{"type", "Sequence"}};
    case 18:
      return int64_t{1} << 40;
    case 19:
      return 4294967297ll;
    case 20:
      return "full_attention";
    default:
      return json::array({nullptr});
  }
}

// A random node reached by descending from the root (structural fields are favoured over the
// entries of a large vocabulary): the node and its parent (nullptr at the root).
inline std::pair<nlohmann::json*, nlohmann::json*> random_node(nlohmann::json& root, Rng& rng) {
  nlohmann::json* node = &root;
  nlohmann::json* parent = nullptr;
  while ((node->is_object() || node->is_array()) && !node->empty() && !rng.coin(3)) {
    parent = node;
    if (node->is_array()) {
      node = &(*node)[rng.below(node->size())];
    } else {
      auto it = node->begin();
      std::advance(it, static_cast<std::ptrdiff_t>(rng.below(node->size())));
      node = &*it;
    }
  }
  return {node, parent};
}

// Integer arithmetic of the mutators wraps (in uint64_t) instead of overflowing int64_t.
inline uint64_t as_u64(const nlohmann::json& v) {
  return v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
}
inline int64_t wrap(uint64_t v) {
  int64_t out;
  std::memcpy(&out, &v, 8);
  return out;
}

// One JSON-aware mutation: drop a field or element, replace a value with an interesting one,
// change its type, negate or enlarge a number, enlarge a string or an array, or add an unknown
// field. Text that is not JSON gets a byte mutation instead.
inline std::string mutate_json(const std::string& text, Rng& rng) {
  using nlohmann::json;
  // Deeply nested text is left to byte mutations: nlohmann's dump recurses once per level.
  int depth = 0, max_depth = 0;
  for (char c : text) {
    depth += (c == '[' || c == '{') - (c == ']' || c == '}');
    max_depth = std::max(max_depth, depth);
  }
  json root;
  try {
    if (max_depth > 100) return mutate_bytes(text, rng);
    root = json::parse(text);
  } catch (const json::exception&) {
    return mutate_bytes(text, rng);
  }
  auto [node, parent] = random_node(root, rng);
  switch (rng.below(8)) {
    case 0:  // drop it
      if (parent != nullptr && parent->is_object()) {
        for (auto it = parent->begin(); it != parent->end(); ++it)
          if (&*it == node) {
            parent->erase(it);
            break;
          }
      } else if (parent != nullptr && parent->is_array()) {
        for (size_t i = 0; i < parent->size(); ++i)
          if (&(*parent)[i] == node) {
            parent->erase(i);
            break;
          }
      } else {
        *node = json::object();
      }
      break;
    case 1:
    case 2:  // an interesting value
      *node = interesting_json(rng);
      break;
    case 3:  // change the type, keeping the content where possible
      if (node->is_number())
        *node = node->dump();
      else if (node->is_string())
        *node = node->get<std::string>().size();
      else if (node->is_boolean())
        *node = node->get<bool>() ? 1 : 0;
      else if (node->is_object()) {
        json values = json::array();
        for (auto& v : *node) values.push_back(v);
        *node = values;
      } else if (node->is_array())
        *node = json{{"0", node->empty() ? json() : (*node)[0]}};
      else
        *node = "null";
      break;
    case 4:  // negate
      if (node->is_number_integer())
        *node = wrap(0 - as_u64(*node));
      else if (node->is_number_float())
        *node = -node->get<double>();
      else
        *node = -1;
      break;
    case 5:  // make huge
      if (node->is_number_integer())
        *node = wrap(as_u64(*node) << (16 + rng.below(32)));
      else if (node->is_number_float())
        *node = node->get<double>() * 1e300;
      else if (node->is_string())
        *node = node->get<std::string>() + std::string(1 + rng.below(50000), 'y');
      else if (node->is_array() && !node->empty()) {
        const json first = (*node)[0];
        for (size_t i = 0; i < 1 + rng.below(2000); ++i) node->push_back(first);
      } else {
        *node = std::numeric_limits<int64_t>::max();
      }
      break;
    case 6:  // an unknown or duplicated field
      if (node->is_object())
        (*node)["fuzz_field_" + std::to_string(rng.below(10))] = interesting_json(rng);
      else if (node->is_array())
        node->push_back(interesting_json(rng));
      else
        *node = json::array({*node, *node});
      break;
    default:  // a small integer nearby (off by one, zero)
      if (node->is_number_integer())
        *node = wrap(as_u64(*node) + rng.below(5) - 2);
      else
        *node = 0;
      break;
  }
  return root.dump(rng.coin(2) ? -1 : 2, ' ', false, json::error_handler_t::replace);
}

// 1 to 3 stacked mutations; JSON text gets JSON-aware ones most of the time.
inline std::string mutate(std::string s, Rng& rng, bool is_json) {
  const size_t rounds = 1 + rng.below(3);
  for (size_t r = 0; r < rounds; ++r) {
    const size_t kind = rng.below(10);
    if (is_json && kind < 6)
      s = mutate_json(s, rng);
    else if (is_json && kind < 8)
      s = mutate_number_text(std::move(s), rng);
    else
      s = mutate_bytes(std::move(s), rng);
  }
  return s;
}

}  // namespace moex::fuzz
