// Shared by the tokenizer tests: the fixture folder and the check of a <name>_cases.json file
// written by tests/reference/make_tokenizer_fixtures.mjs.
#pragma once

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "data/tokenizer.h"
#include "data/tokenizer_json.h"

namespace moex::data {

namespace fs = std::filesystem;
using nlohmann::json;

inline fs::path fixtures() {
  return fs::path(__FILE__).parent_path().parent_path() / "fixtures" / "tokenizers";
}

inline std::string read(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

inline std::string show(const std::vector<int32_t>& ids) {
  std::string s = "[";
  for (size_t k = 0; k < ids.size(); ++k) s += (k ? ", " : "") + std::to_string(ids[k]);
  return s + "]";
}

// Checks every recorded case; returns how many failed any of the four checks.
inline int check_cases(const Tokenizer& tok, const std::string& cases_file, int* num_lossless) {
  const json doc = json::parse(read(fixtures() / cases_file));
  int passed = 0;
  *num_lossless = 0;
  for (const json& c : doc.at("cases")) {
    const std::string text = c.at("text");
    const auto want = c.at("ids").get<std::vector<int32_t>>();
    const auto want_plain = c.at("ids_no_special").get<std::vector<int32_t>>();
    const auto got = tok.encode(text, true);
    const auto got_plain = tok.encode(text, false);
    const std::string decoded = tok.decode(want, false);
    const std::string decoded_skip = tok.decode(want, true);
    EXPECT_EQ(show(got), show(want)) << cases_file << ": encode(" << json(text).dump() << ")";
    EXPECT_EQ(show(got_plain), show(want_plain))
        << cases_file << ": encode without specials of " << json(text).dump();
    EXPECT_EQ(decoded, c.at("decoded").get<std::string>())
        << cases_file << ": decode(ids) of " << json(text).dump();
    EXPECT_EQ(decoded_skip, c.at("decoded_skip_special").get<std::string>())
        << cases_file << ": decode(ids, skip special) of " << json(text).dump();
    if (c.at("decoded_skip_special").get<std::string>() == text) {
      ++*num_lossless;
      EXPECT_EQ(tok.decode(got, true), text) << "round trip of " << json(text).dump();
    }
    passed += got == want && got_plain == want_plain && decoded == c.at("decoded") &&
              decoded_skip == c.at("decoded_skip_special");
  }
  std::printf("[ cases    ] %s: %d/%zu strings match the reference (%d lossless round trips)\n",
              cases_file.c_str(), passed, doc.at("cases").size(), *num_lossless);
  return static_cast<int>(doc.at("cases").size()) - passed;
}

}  // namespace moex::data
