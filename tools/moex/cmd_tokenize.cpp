// moex tokenize: text -> ids and back with any tokenizer file (src/data/tokenizer.h).
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "args.h"
#include "command.h"
#include "core/error.h"
#include "core/file_util.h"
#include "data/tokenizer.h"

namespace moex::cli {
namespace {

// A text to tokenize may be a whole corpus file, far above read_file's default bound; this one
// still stops an endless stream.
constexpr int64_t kMaxInputBytes = int64_t{16} << 30;

const char* kTokenizeUsage =
    "usage: moex tokenize (--tokenizer FILE | --model DIR) (--text TEXT | --file F) [--json]\n"
    "                     [--no-special]\n"
    "       moex tokenize (--tokenizer FILE | --model DIR) --decode (--ids 1,2,3 | --text 1,2,3 |\n"
    "                     --file F) [--json] [--keep-special]\n"
    "\n"
    "FILE is a Hugging Face tokenizer.json, a SentencePiece .model, or a directory holding one.\n"
    "Encoding prints the ids comma-separated (BOS/EOS as the tokenizer's post-processor adds\n"
    "them), or {\"ids\": [...]} with --json. Decoding prints the text, or {\"text\": \"...\"}.\n"
    "\n"
    "options:\n"
    "  --tokenizer FILE   tokenizer file or directory\n"
    "  --model DIR        a model directory (as for generate, eval, serve): its tokenizer\n"
    "  --text TEXT        text to encode (with --decode: ids separated by commas or spaces)\n"
    "  --file F           read the text (or, with --decode, the ids) from F\n"
    "  --ids LIST         ids to decode, e.g. 1,22557,1526\n"
    "  --decode           ids -> text\n"
    "  --json             print one JSON object\n"
    "  --tokens           with --json: also print the token strings\n"
    "  --no-special       encode without BOS/EOS\n"
    "  --keep-special     decode special tokens (<s>, </s>) into the text\n";

// "1,2,3", "1 2 3", "[1, 2, 3]" or {"ids": [1, 2, 3]}.
std::vector<int32_t> parse_ids(const std::string& text, const std::string& what) {
  const size_t first = text.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && text[first] == '{') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      MOEX_THROW(what, ": not valid JSON: ", e.what());
    }
    MOEX_CHECK(j.contains("ids") && j.at("ids").is_array(), what, ": expected {\"ids\": [...]}");
    std::vector<int32_t> ids;
    for (const auto& v : j.at("ids")) {
      MOEX_CHECK(v.is_number_integer(), what, ": ids must be integers, got ", v.dump());
      // Checked before narrowing: 4294967297 must not wrap to the id 1.
      MOEX_CHECK(v.is_number_unsigned() ? v.get<uint64_t>() <= INT32_MAX
                                        : v.get<int64_t>() >= INT32_MIN,
                 what, ": id ", v.dump(), " is outside the range of token ids");
      ids.push_back(v.get<int32_t>());
    }
    return ids;
  }
  std::vector<int32_t> ids;
  std::string token;
  auto flush = [&]() {
    if (token.empty()) return;
    char* end = nullptr;
    const long long v = std::strtoll(token.c_str(), &end, 10);
    MOEX_CHECK(end && *end == '\0' && v >= INT32_MIN && v <= INT32_MAX, what, ": '", token,
               "' is not a token id");
    ids.push_back(static_cast<int32_t>(v));
    token.clear();
  };
  for (char c : text) {
    if (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '[' || c == ']') {
      flush();
    } else {
      token.push_back(c);
    }
  }
  flush();
  return ids;
}

int run_tokenize(const std::vector<std::string>& argv) {
  for (const auto& a : argv) {
    if (a == "--help" || a == "-h") {
      std::printf("%s", kTokenizeUsage);
      return 0;
    }
  }
  if (argv.empty()) {
    std::fprintf(stderr, "%s", kTokenizeUsage);
    return 2;
  }
  const Args args(argv, {"tokenizer", "model", "text", "file", "ids"},
                  {"decode", "json", "tokens", "no-special", "keep-special"});
  MOEX_CHECK(args.has("tokenizer") != args.has("model"), "give one of --tokenizer or --model");
  const auto tok = data::open_tokenizer(args.get(args.has("model") ? "model" : "tokenizer"));
  const int num_inputs = args.has("text") + args.has("file") + args.has("ids");
  MOEX_CHECK(num_inputs == 1, "give exactly one of --text, --file",
             args.flag("decode") ? ", --ids" : "");

  if (args.flag("decode")) {
    std::vector<int32_t> ids;
    if (args.has("ids"))
      ids = parse_ids(args.get("ids"), "--ids");
    else if (args.has("text"))
      ids = parse_ids(args.get("text"), "--text");
    else
      ids = parse_ids(read_file(args.get("file"), kMaxInputBytes), args.get("file"));
    const std::string text = tok->decode(ids, !args.flag("keep-special"));
    if (args.flag("json")) {
      const std::string quoted =
          nlohmann::json(text).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      std::printf("{\"text\": %s}\n", quoted.c_str());
    } else {
      std::fwrite(text.data(), 1, text.size(), stdout);
      std::printf("\n");
    }
    return 0;
  }

  MOEX_CHECK(!args.has("ids"), "--ids needs --decode");
  const std::string text =
      args.has("text") ? args.get("text") : read_file(args.get("file"), kMaxInputBytes);
  const std::vector<int32_t> ids = tok->encode(text, !args.flag("no-special"));
  if (args.flag("json")) {
    // Written by hand to keep the documented layout: {"ids": [1, 22557, 1526]}.
    std::string out = "{\"ids\": [";
    for (size_t k = 0; k < ids.size(); ++k) out += (k ? ", " : "") + std::to_string(ids[k]);
    out += "]";
    if (args.flag("tokens")) {
      out += ", \"tokens\": [";
      for (size_t k = 0; k < ids.size(); ++k) {
        out +=
            (k ? ", " : "") + nlohmann::json(tok->id_to_token(ids[k]))
                                  .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
      }
      out += "]";
    }
    std::printf("%s}\n", out.c_str());
  } else {
    std::string line;
    for (size_t k = 0; k < ids.size(); ++k) line += (k ? "," : "") + std::to_string(ids[k]);
    std::printf("%s\n", line.c_str());
  }
  return 0;
}

const Command kTokenize("tokenize", "text -> token ids and back (tokenizer.json or SentencePiece)",
                        run_tokenize);

}  // namespace
}  // namespace moex::cli
