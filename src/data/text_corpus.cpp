#include "data/text_corpus.h"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <exception>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <set>
#include <thread>

#include "core/error.h"
#include "core/json_reader.h"
#include "data/corpus_writer.h"
#include "data/tokenizer.h"
#include "data/unicode.h"
#include "io/atomic_file.h"

namespace moex::data {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

struct Document {
  std::string text;                   // plain text, or a conversation's whole rendering
  int64_t line = 0;                   // where it starts in its file (1-based), for errors
  std::vector<TextSegment> segments;  // a conversation's or a prompt-completion pair's parts
  // Encoded with the tokenizer's special tokens and an EOS (plain text, prompt-completion pairs);
  // a conversation's template writes its own.
  bool special = true;
};

// A document's ids and, for a conversation, its loss mask (1: trained on).
struct Encoded {
  std::vector<int32_t> ids, mask;
  int64_t untrained = 0;  // answers whose bounds fall inside a token (read, not trained on)
};

// What reading an input file left out or cut short, for its progress line.
struct ReadCounts {
  int64_t blank = 0;      // blank documents left out
  int64_t untrained = 0;  // answers the template's rendering does not let apart (read only)
};

// The file's extension in lower case (".jsonl").
std::string lower_extension(const std::string& path) {
  std::string ext = fs::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

bool is_json_lines(const std::string& path) {
  const std::string ext = lower_extension(path);
  return ext == ".jsonl" || ext == ".json";
}

bool is_blank(const std::string& s) {
  return std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isspace(c); });
}

// ShareGPT's layout (Vicuna, Axolotl, LLaMA-Factory): messages {"from": "human" | "gpt" |
// "system", "value": text}, read as OpenAI's {"role", "content"}. A list in OpenAI's layout is
// returned as it is.
nlohmann::json openai_messages(const nlohmann::json& messages) {
  nlohmann::json out = nlohmann::json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const nlohmann::json& m = messages[i];
    if (!m.is_object() || m.contains("role") || !m.contains("from")) return messages;
    const auto& from = m["from"];
    const std::string name = from.is_string() ? from.get<std::string>() : from.dump();
    std::string role;
    if (name == "human" || name == "user") role = "user";
    if (name == "gpt" || name == "assistant" || name == "model" || name == "bot")
      role = "assistant";
    if (name == "system") role = "system";
    MOEX_CHECK(!role.empty(), "message ", i, ": from ", name,
               " is not one of human, user, gpt, assistant, model, bot, system (ShareGPT's roles)");
    nlohmann::json converted = {{"role", role}, {"content", m.value("value", nlohmann::json())}};
    for (auto it = m.begin(); it != m.end(); ++it)
      if (it.key() != "from" && it.key() != "value")
        converted[it.key()] = it.value();  // anything else is checked as a message field
    out.push_back(std::move(converted));
  }
  return out;
}

// A --chat line's conversation as OpenAI messages: its `json_key` list, or with the default key
// ("messages") absent, ShareGPT's "conversations", TRL's conversational {"prompt": [...],
// "completion": [...]}, or Alpaca's {"instruction", "input", "output", "system"} (the user turn
// is the instruction, then a newline and the input when there is one, as LLaMA-Factory joins
// them).
nlohmann::json conversation_of(const nlohmann::json& line, const std::string& json_key) {
  auto list = line.find(json_key);
  if (list == line.end() && json_key == "messages") list = line.find("conversations");
  const auto prompt = line.find("prompt"), completion = line.find("completion");
  if (list == line.end() && json_key == "messages" && prompt != line.end() &&
      completion != line.end() && prompt->is_array() && completion->is_array()) {
    // TRL's conversational prompt-completion: the completion's turns are the ones trained.
    nlohmann::json messages = openai_messages(*prompt);
    for (size_t i = 0; i < messages.size(); ++i)
      MOEX_CHECK(!messages[i].is_object() || !messages[i].contains("role") ||
                     messages[i]["role"] != "assistant",
                 "prompt message ", i, " is an assistant turn: only the completion is trained, ",
                 "and an answer in the prompt would be too (put the conversation in messages)");
    for (const nlohmann::json& m : openai_messages(*completion)) messages.push_back(m);
    return messages;
  }
  if (list != line.end()) {
    MOEX_CHECK(list->is_array(), "'", list.key(), "' must be a list of messages, got ",
               list->type_name());
    return openai_messages(*list);
  }
  const bool alpaca = json_key == "messages" && line.contains("instruction");
  MOEX_CHECK(alpaca, "no '", json_key, "' field (--json-key names it; ShareGPT's conversations, ",
             "TRL's prompt/completion lists and Alpaca's instruction/input/output are read too)");
  auto text = [&](const char* key, bool required) {
    const auto it = line.find(key);
    MOEX_CHECK(it != line.end() || !required, "an Alpaca line needs '", key, "'");
    MOEX_CHECK(it == line.end() || it->is_string(), "'", key, "' must be a string, got ",
               it->type_name());
    return it == line.end() ? std::string() : it->get<std::string>();
  };
  const std::string instruction = text("instruction", true), input = text("input", false);
  nlohmann::json messages = nlohmann::json::array();
  const std::string system = text("system", false);
  if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
  messages.push_back(
      {{"role", "user"}, {"content", input.empty() ? instruction : instruction + "\n" + input}});
  messages.push_back({{"role", "assistant"}, {"content", text("output", true)}});
  return messages;
}

// One JSON object's document (a .jsonl line or an item of a .json array); `where` names it in
// errors, `n` is its 1-based line or item number.
Document json_document(const nlohmann::json& j, const std::string& where, int64_t n,
                       const TextCorpusOptions& o, ReadCounts* counts) {
  const std::string& json_key = o.json_key;
  MOEX_CHECK(j.is_object(), where, ": not a JSON object (one object per line, as in .jsonl)");
  if (o.prompt_completion) {
    std::string parts[2];
    for (int k = 0; k < 2; ++k) {
      const char* field = k == 0 ? "prompt" : "completion";
      const auto it = j.find(field);
      MOEX_CHECK(it != j.end() && it->is_string(), where, ": '", field,
                 "' must be a string (--prompt-completion lines are {\"prompt\": ..., "
                 "\"completion\": ...}; pairs of message lists are read with --chat)");
      parts[k] = it->get<std::string>();
    }
    return Document{parts[0] + parts[1], n, {{parts[0], false}, {parts[1], true}}, true};
  }
  if (o.render_chat) {
    Document doc;
    int64_t untrained = 0;
    try {
      doc.segments = o.render_chat(conversation_of(j, json_key),
                                   j.contains("tools") ? j["tools"] : nlohmann::json(), &untrained);
    } catch (const Error& e) {
      MOEX_THROW(where, ": ", e.message());
    }
    counts->untrained += untrained;
    for (const TextSegment& s : doc.segments) doc.text += s.text;
    doc.line = n;
    doc.special = false;
    return doc;
  }
  const auto text = j.find(json_key);
  MOEX_CHECK(text != j.end(), where, ": no '", json_key, "' field (--json-key names it)");
  MOEX_CHECK(text->is_string(), where, ": '", json_key, "' must be a string, got ",
             text->type_name());
  return Document{text->get<std::string>(), n, {}};
}

// The documents of one input file, in order; blank ones are left out.
std::vector<Document> read_documents(const std::string& path, const TextCorpusOptions& o,
                                     ReadCounts* counts) {
  MOEX_CHECK(fs::is_regular_file(path), "--input ", path, ": not a file");
  std::ifstream in(path, std::ios::binary);
  MOEX_CHECK(in, "--input ", path, ": cannot be read");
  const bool json_lines = is_json_lines(path);
  MOEX_CHECK(json_lines || !o.render_chat, "--input ", path,
             ": conversations (--chat) are read from .jsonl files, one per line");
  MOEX_CHECK(json_lines || !o.prompt_completion, "--input ", path,
             ": prompt-completion pairs are read from .jsonl files, one per line");
  std::vector<Document> docs;
  Document current;  // plain text: the document being gathered
  auto close = [&] {
    if (is_blank(current.text))
      ++counts->blank;
    else
      docs.push_back(std::move(current));
    current = Document{};
  };
  // A .json file that opens with '[' is one array of such objects (Alpaca's alpaca_data.json,
  // pandas' to_json(orient="records")), read whole.
  if (lower_extension(path) == ".json" && (in >> std::ws).peek() == '[') {
    const std::string text((std::istreambuf_iterator<char>(in)), {});
    MOEX_CHECK(!in.bad(), "--input ", path, ": read failed");
    const nlohmann::json items = parse_json(text, path, "not valid JSON");
    MOEX_CHECK(items.is_array(), path, ": not a JSON array");
    for (size_t i = 0; i < items.size(); ++i) {
      current = json_document(items[i], path + "[" + std::to_string(i) + "]",
                              static_cast<int64_t>(i) + 1, o, counts);
      close();
    }
    return docs;
  }
  in.clear();  // the peek may have met the end of an empty file
  in.seekg(0);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::string where = path + ":" + std::to_string(n);
    if (json_lines) {
      if (is_blank(line)) continue;
      current = json_document(parse_json(line, where, "not valid JSON"), where, n, o, counts);
      close();
    } else {
      MOEX_CHECK(is_valid_utf8(line), where, ": not valid UTF-8");
      if (is_blank(line)) {
        if (!current.text.empty()) close();
        continue;
      }
      if (current.text.empty()) {
        current.line = n;
      } else {
        current.text += '\n';
      }
      current.text += line;
    }
  }
  MOEX_CHECK(!in.bad(), "--input ", path, ": read failed");
  if (!current.text.empty()) close();
  return docs;
}

// Whether the tokenizer's own rule ends a text with its EOS (some post-processors do): then the
// document needs no other.
bool appends_eos(const Tokenizer& tok) {
  const std::vector<int32_t> with = tok.encode("a", true), without = tok.encode("a", false);
  return tok.eos_id() >= 0 && with.size() > without.size() && with.back() == tok.eos_id();
}

// The number of tokens of `ids` (the whole text's, encoded with its special tokens when
// `special`) that spell its first `bytes` bytes: the encoding of that prefix when it begins
// `ids`, else -1 (a token of the whole text spans the bound). `strip_eos`: the tokenizer's own
// rule ends every encoding with EOS, which a prefix does not have in the whole.
int64_t tokens_before(const Tokenizer& tok, const std::string& text, size_t bytes,
                      const std::vector<int32_t>& ids, bool special, bool strip_eos) {
  if (bytes == 0 && !special) return 0;
  if (bytes == text.size()) return static_cast<int64_t>(ids.size());
  std::vector<int32_t> head = tok.encode(std::string_view(text).substr(0, bytes), special);
  if (strip_eos && !head.empty() && head.back() == tok.eos_id()) head.pop_back();
  if (head.size() > ids.size() || !std::equal(head.begin(), head.end(), ids.begin())) return -1;
  return static_cast<int64_t>(head.size());
}

// A document's ids: the tokenizer's own special tokens (BOS where it adds one), then EOS, also
// after a text that ends in the EOS token's own spelling ("</s>" is text the tokenizer matched).
// A conversation: the whole rendering's ids as `moex serve` encodes a prompt (nothing added: the
// template wrote BOS and the turns' ends), and a loss mask of 1 on each answer's tokens, found as
// the lengths of the encoded prefixes that end where the answer begins and ends. (Encoding the
// parts apart would differ where a tokenizer marks the start of a text, e.g. Llama's "▁".)
// A prompt-completion pair: as plain text (special tokens, EOS), the completion and EOS trained.
Encoded encode_document(const Tokenizer& tok, const Document& doc, bool add_eos) {
  Encoded e;
  if (doc.segments.empty()) {
    e.ids = tok.encode(doc.text, true);
    if (add_eos) e.ids.push_back(tok.eos_id());
    return e;
  }
  e.ids = tok.encode(doc.text, doc.special);
  if (doc.special && add_eos) e.ids.push_back(tok.eos_id());
  e.mask.assign(e.ids.size(), 0);
  const bool strip_eos = doc.special && !add_eos && tok.eos_id() >= 0;
  size_t begin = 0;  // the segment's first byte in doc.text
  for (const TextSegment& s : doc.segments) {
    const size_t end = begin + s.text.size();
    if (s.trained) {
      const int64_t first = tokens_before(tok, doc.text, begin, e.ids, doc.special, strip_eos);
      const int64_t last = tokens_before(tok, doc.text, end, e.ids, doc.special, strip_eos);
      if (first >= 0 && last >= first) {
        std::fill(e.mask.begin() + first, e.mask.begin() + last, 1);
      } else {
        ++e.untrained;
      }
    }
    begin = end;
  }
  return e;
}

// Every document's ids, in order, encoded by `threads` workers.
std::vector<Encoded> encode_all(const Tokenizer& tok, const std::vector<Document>& docs,
                                int threads) {
  std::vector<Encoded> ids(docs.size());
  const bool add_eos = tok.eos_id() >= 0 && !appends_eos(tok);
  std::atomic<size_t> next{0};
  std::exception_ptr failure;
  std::mutex failure_mutex;
  std::vector<std::thread> workers;
  for (int t = 0; t < std::max(1, threads); ++t) {
    workers.emplace_back([&] {
      try {
        for (size_t i; (i = next++) < docs.size();) ids[i] = encode_document(tok, docs[i], add_eos);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        if (!failure) failure = std::current_exception();
        next = docs.size();
      }
    });
  }
  for (auto& w : workers) w.join();
  if (failure) std::rethrow_exception(failure);
  return ids;
}

// The tokenizer file `spec` names: itself, or a model directory's (tokenizer_file_in).
std::string tokenizer_file_of(const std::string& spec) {
  MOEX_CHECK(!spec.empty(), "give the tokenizer: --tokenizer FILE or --model DIR");
  if (!fs::is_directory(spec)) {
    MOEX_CHECK(fs::is_regular_file(spec), "--tokenizer ", spec, ": no such file");
    return spec;
  }
  const std::string file = tokenizer_file_in(spec);
  MOEX_CHECK(!file.empty(), spec, ": no tokenizer.json or SentencePiece .model in the directory");
  return file;
}

// Source names from file stems, made unique ("a", "a.2", ...): they name the .bin/.idx files.
std::vector<std::string> source_names(const std::vector<std::string>& inputs) {
  std::vector<std::string> names;
  std::set<std::string> taken;
  for (const std::string& input : inputs) {
    std::string stem = fs::path(input).stem().string();
    if (stem.empty() || stem[0] == '.') stem = "text";
    std::string name = stem;
    for (int k = 2; taken.count(name); ++k) name = stem + "." + std::to_string(k);
    taken.insert(name);
    names.push_back(name);
  }
  return names;
}

}  // namespace

CorpusManifest prepare_text_corpus(const TextCorpusOptions& o) {
  MOEX_CHECK(!o.out_dir.empty(), "corpus: --out is required");
  MOEX_CHECK(!o.inputs.empty(), "corpus: no --input files");
  MOEX_CHECK(!o.json_key.empty(), "--json-key must not be empty");
  MOEX_CHECK(o.valid_fraction >= 0 && o.valid_fraction < 1,
             "--valid-fraction must be in [0, 1), got ", o.valid_fraction);
  MOEX_CHECK(!o.language.empty() && o.language.find_first_of(" \t\n/") == std::string::npos,
             "--language must be a code such as \"en\", got \"", o.language, "\"");
  const auto t0 = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  auto log = [&](const std::string& msg) {
    MOEX_CHECK(!(o.interrupted && o.interrupted()), "interrupted; nothing was written to ",
               o.out_dir);
    if (o.log) {
      char prefix[32];
      std::snprintf(prefix, sizeof(prefix), "[%6.1fs] ", elapsed());
      o.log(prefix + msg);
    }
  };
  // Every input is checked before any work: a typo in the last name fails at once.
  for (const std::string& input : o.inputs)
    MOEX_CHECK(fs::is_regular_file(input), "--input ", input, ": not a file");
  const std::string tokenizer_path = tokenizer_file_of(o.tokenizer);
  const std::unique_ptr<Tokenizer> tok = open_tokenizer(tokenizer_path);
  const std::string tokenizer_name = fs::path(tokenizer_path).filename().string();
  log("tokenizer " + tokenizer_path + " (vocabulary " + std::to_string(tok->vocab_size()) + ")");

  io::AtomicDirectory out(o.out_dir);
  const std::string tmp = out.temp_path();
  copy_files_into(tokenizer_files(tokenizer_path), tmp);
  const TokenDType dtype = token_dtype_for_vocab(tok->vocab_size());
  CorpusManifest manifest;
  manifest.vocab_size = tok->vocab_size();
  manifest.eos_id = tok->eos_id();
  const std::vector<std::string> names = source_names(o.inputs);
  for (size_t f = 0; f < o.inputs.size(); ++f) {
    const std::string& input = o.inputs[f];
    ReadCounts counts;
    const std::vector<Document> docs = read_documents(input, o, &counts);
    MOEX_CHECK(!docs.empty(), "--input ", input, ": no documents",
               counts.blank ? " (only blank ones)" : "");
    // The held-out documents: a seeded choice of their line numbers, the same on every run.
    std::vector<std::string> units;
    for (const Document& d : docs) units.push_back(std::to_string(d.line));
    const std::set<std::string> valid = pick_valid_units(units, o.valid_fraction, o.seed + f);
    const std::vector<Encoded> encoded = encode_all(*tok, docs, o.num_threads);
    int64_t untrained_at_tokens = 0;
    for (const Encoded& e : encoded) untrained_at_tokens += e.untrained;
    log(input + ": " + std::to_string(docs.size()) +
        (o.render_chat         ? " conversations"
         : o.prompt_completion ? " pairs"
                               : " documents") +
        (counts.blank ? ", " + std::to_string(counts.blank) + " blank ones left out" : "") +
        (counts.untrained ? ", " + std::to_string(counts.untrained) +
                                " answers read but not trained on (the template renders them "
                                "otherwise once later turns follow)"
                          : "") +
        (untrained_at_tokens ? ", " + std::to_string(untrained_at_tokens) +
                                   " answers read but not trained on (a token spans their start "
                                   "or end)"
                             : ""));
    CorpusSource info;
    info.name = names[f];
    info.language = o.language;
    info.task = "lm";
    info.origin = fs::absolute(input).string();
    info.train.prefix = info.name + ".train";
    info.valid.prefix = info.name + ".valid";
    const bool chat = static_cast<bool>(o.render_chat) || o.prompt_completion;  // a loss mask
    SourceSplitsWriter splits(tmp, &info, dtype, /*loss_mask=*/chat);
    for (size_t i = 0; i < docs.size(); ++i) {
      info.text_bytes += static_cast<int64_t>(docs[i].text.size());
      splits.add(encoded[i].ids, valid.count(std::to_string(docs[i].line)) > 0,
                 chat ? &encoded[i].mask : nullptr);
    }
    splits.finish();
    MOEX_CHECK(!chat || info.train.trained_tokens > 0, "--input ", input,
               ": nothing to train on in its training split (no answer or completion)");
    log(info.name + ": " + std::to_string(info.train.tokens) + " train / " +
        std::to_string(info.valid.tokens) + " valid tokens" +
        (chat ? " (" + std::to_string(info.train.trained_tokens) + " trained on)" : ""));
    manifest.sources.push_back(std::move(info));
  }
  manifest.seconds = elapsed();
  nlohmann::json j = corpus_manifest_json(manifest, tokenizer_name, tok->bos_id(), dtype);
  j["json_key"] = o.json_key;
  j["seed"] = o.seed;
  j["valid_fraction"] = o.valid_fraction;
  io::write_file_atomic(tmp + "/corpus.json", j.dump(2) + "\n");
  log("writing " + o.out_dir);  // the last chance for an interrupt to leave nothing behind
  out.commit();
  manifest.dir = o.out_dir;
  manifest.tokenizer = (fs::path(o.out_dir) / tokenizer_name).string();
  return manifest;
}

}  // namespace moex::data
