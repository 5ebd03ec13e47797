#include "data/corpus.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <future>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "core/error.h"
#include "core/file_util.h"
#include "core/json_reader.h"
#include "core/rng.h"
#include "data/bible.h"
#include "data/corpus_writer.h"
#include "data/html_text.h"
#include "data/indexed_dataset.h"
#include "data/sentencepiece_tokenizer.h"
#include "io/atomic_file.h"

namespace moex::data {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

struct Document {
  std::string key;   // stable identity, decides the train/valid split
  std::string unit;  // split unit: documents of one unit go to the same split
  std::string text;  // tags included
  bool valid = false;
};

struct Source {
  CorpusSource info;
  std::vector<Document> docs;
  std::vector<std::string> plain_lines;  // tag-free text for the tokenizer trainer
};

using Clock = std::chrono::steady_clock;

std::string handbook_dir_for(const std::string& root, const std::string& lang) {
  if (fs::is_directory(fs::path(root) / lang)) return (fs::path(root) / lang).string();
  std::vector<std::string> matches;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (e.is_directory() && name.rfind(lang + "-", 0) == 0) matches.push_back(e.path().string());
  }
  std::sort(matches.begin(), matches.end());
  return matches.empty() ? "" : matches.front();
}

std::vector<std::string> html_files(const std::string& dir) {
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && e.path().extension() == ".html" && name != "index.html") {
      files.push_back(name);
    }
  }
  std::sort(files.begin(), files.end());
  return files;
}

// Handbook sources. A translation that is incomplete keeps the English paragraphs; those are
// dropped from the other languages by comparing with the English book.
std::vector<Source> handbook_sources(const CorpusOptions& o) {
  std::vector<Source> out;
  MOEX_CHECK(fs::is_directory(o.handbook_dir), o.handbook_dir,
             ": not found (install the debian-handbook package)");
  const std::string en_dir = handbook_dir_for(o.handbook_dir, "en");
  std::unordered_set<std::string> english;
  if (!en_dir.empty()) {
    for (const auto& f : html_files(en_dir)) {
      for (auto& p : html_paragraphs(read_file(en_dir + "/" + f))) english.insert(std::move(p));
    }
  }
  for (const auto& lang : o.languages) {
    const std::string dir = handbook_dir_for(o.handbook_dir, lang);
    if (dir.empty()) {
      if (o.log) o.log("handbook: no translation for '" + lang + "', skipped");
      continue;
    }
    Source s;
    s.info.name = "handbook." + lang;
    s.info.language = lang;
    s.info.task = "lm";
    s.info.origin = "debian-handbook " + fs::path(dir).filename().string();
    const bool is_english = dir == en_dir;
    int64_t bytes = 0;
    for (const auto& f : html_files(dir)) {
      if (bytes >= o.max_source_bytes) break;
      std::string text;
      for (auto& p : html_paragraphs(read_file(dir + "/" + f))) {
        if (!is_english && english.count(p)) continue;
        text += (text.empty() ? "" : "\n") + p;
        s.plain_lines.push_back(std::move(p));
      }
      if (text.size() < 64) continue;  // navigation-only or untranslated pages
      bytes += static_cast<int64_t>(text.size());
      s.docs.push_back({s.info.name + "/" + f, f, language_tag(lang) + " " + text, false});
    }
    s.info.text_bytes = bytes;
    if (!s.docs.empty()) out.push_back(std::move(s));
  }
  return out;
}

std::string chapter_of(const Verse& v) {
  return v.book + " " + std::to_string(v.chapter);
}

std::vector<Source> bible_sources(const CorpusOptions& o) {
  std::map<std::string, std::vector<Verse>> bibles;         // language -> verses
  std::map<std::string, std::future<std::string>> exports;  // diatheke runs, concurrently
  for (const auto& lang : o.languages) {
    auto it = o.bible_modules.find(lang);
    if (it == o.bible_modules.end()) continue;
    const std::string module = it->second;
    if (!o.bible_text_dir.empty()) {
      const std::string path = o.bible_text_dir + "/" + module + ".txt";
      exports[lang] = std::async(std::launch::deferred, [path] { return read_file(path); });
    } else {
      if (o.log) o.log("bible." + lang + ": exporting sword module " + module + " with diatheke");
      exports[lang] =
          std::async(std::launch::async, [module] { return export_sword_module(module); });
    }
  }
  for (auto& [lang, text] : exports) {
    bibles[lang] = parse_diatheke_plain(text.get());
    MOEX_CHECK(!bibles[lang].empty(), "sword module ", o.bible_modules.at(lang),
               ": no verses parsed");
  }
  std::vector<Source> out;
  for (const auto& [lang, verses] : bibles) {
    Source s;
    s.info.name = "bible." + lang;
    s.info.language = lang;
    s.info.task = "lm";
    s.info.origin = "sword module " + o.bible_modules.at(lang);
    std::string chapter, text;
    int64_t bytes = 0;
    auto flush = [&] {
      if (!text.empty()) {
        bytes += static_cast<int64_t>(text.size());
        s.docs.push_back(
            {s.info.name + "/" + chapter, chapter, language_tag(lang) + " " + text, false});
      }
      text.clear();
    };
    for (const auto& v : verses) {
      if (chapter_of(v) != chapter) {
        flush();
        if (bytes >= o.max_source_bytes) break;
        chapter = chapter_of(v);
      }
      text += (text.empty() ? "" : "\n") + v.text;
      s.plain_lines.push_back(v.text);
    }
    flush();
    s.info.text_bytes = bytes;
    out.push_back(std::move(s));
  }
  // Translation pairs: en <-> each other language, verses matched by key, direction
  // alternating verse by verse so both directions are learned.
  if (o.parallel && bibles.count("en")) {
    std::map<std::string, const Verse*> en_by_key;
    for (const auto& v : bibles["en"]) en_by_key[v.key()] = &v;
    for (const auto& [lang, verses] : bibles) {
      if (lang == "en") continue;
      Source s;
      s.info.name = "bible.en-" + lang;
      s.info.language = "en-" + lang;
      s.info.task = "translate";
      s.info.origin =
          "sword modules " + o.bible_modules.at("en") + " + " + o.bible_modules.at(lang);
      int64_t bytes = 0, n = 0;
      for (const auto& v : verses) {
        auto it = en_by_key.find(v.key());
        if (it == en_by_key.end()) continue;
        if (bytes >= o.max_source_bytes) break;
        const bool from_en = (n++ % 2) == 0;
        const std::string& en_text = it->second->text;
        std::string text = std::string(kTranslateTag) + " ";
        if (from_en) {
          text += language_tag("en") + " " + en_text + " " + language_tag(lang) + " " + v.text;
        } else {
          text += language_tag(lang) + " " + v.text + " " + language_tag("en") + " " + en_text;
        }
        bytes += static_cast<int64_t>(text.size());
        s.docs.push_back({s.info.name + "/" + v.key(), chapter_of(v), std::move(text), false});
      }
      s.info.text_bytes = bytes;
      if (!s.docs.empty()) out.push_back(std::move(s));
    }
  }
  return out;
}

// Token ids of a document: tag symbols map to their own ids, the text between them is encoded
// on its own (encoding "<lang:en> text" whole would put a "▁" piece before the tag).
std::vector<int32_t> encode_document(const SentencePieceTokenizer& tok, const std::string& text,
                                     const std::vector<std::pair<std::string, int32_t>>& tags) {
  std::vector<int32_t> ids;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t best = std::string::npos, best_len = 0;
    int32_t best_id = -1;
    for (const auto& [sym, id] : tags) {
      const size_t at = text.find(sym, pos);
      if (at < best) {
        best = at;
        best_len = sym.size();
        best_id = id;
      }
    }
    size_t b = pos, e = std::min(best, text.size());
    while (b < e && text[b] == ' ') ++b;
    while (e > b && text[e - 1] == ' ') --e;
    if (e > b) {
      const auto piece = tok.encode(std::string_view(text).substr(b, e - b), false);
      ids.insert(ids.end(), piece.begin(), piece.end());
    }
    if (best == std::string::npos) break;
    ids.push_back(best_id);
    pos = best + best_len;
  }
  ids.push_back(tok.eos_id());
  return ids;
}

// Tokenizes every document of a source (EOS appended), in parallel, preserving order.
std::vector<std::vector<int32_t>> tokenize(const SentencePieceTokenizer& tok, const Source& s,
                                           const std::vector<std::pair<std::string, int32_t>>& tags,
                                           int num_threads) {
  std::vector<std::vector<int32_t>> ids(s.docs.size());
  std::atomic<size_t> next{0};
  std::vector<std::thread> workers;
  std::exception_ptr failure;
  std::mutex failure_mutex;
  for (int t = 0; t < std::max(1, num_threads); ++t) {
    workers.emplace_back([&] {
      try {
        for (size_t i; (i = next++) < s.docs.size();)
          ids[i] = encode_document(tok, s.docs[i].text, tags);
      } catch (...) {
        std::lock_guard<std::mutex> lock(failure_mutex);
        failure = std::current_exception();
      }
    });
  }
  for (auto& w : workers) w.join();
  if (failure) std::rethrow_exception(failure);
  return ids;
}

// The denoising source of a monolingual one: each document's text tokens (between its language
// tag and EOS) cut into span-corruption examples, in the document's split. The corruption of a
// document depends only on the seed and the document's key.
CorpusSource write_denoise_source(const Source& s, const std::vector<std::vector<int32_t>>& ids,
                                  const SentencePieceTokenizer& tok, const CorpusOptions& o,
                                  const std::string& dir, TokenDType dtype) {
  DenoiseTokens special;
  special.task = tok.token_to_id(kDenoiseTag);
  special.lang = tok.token_to_id(language_tag(s.info.language));
  special.targets = tok.token_to_id(kDenoiseTargetsTag);
  special.eos = tok.eos_id();
  for (int i = 0; i < o.denoise_options.max_spans; ++i)
    special.sentinels.push_back(tok.token_to_id(span_sentinel(i)));
  CorpusSource info = s.info;
  info.name = s.info.name + ".denoise";
  info.task = "denoise";
  info.train = CorpusSplitStats{};
  info.train.prefix = info.name + ".train";
  info.valid = CorpusSplitStats{};
  info.valid.prefix = info.name + ".valid";
  SourceSplitsWriter splits(dir, &info, dtype);
  for (size_t i = 0; i < s.docs.size(); ++i) {
    const std::vector<int32_t>& doc = ids[i];
    MOEX_CHECK(doc.size() >= 2 && doc.front() == special.lang && doc.back() == special.eos,
               s.info.name, ": document ", s.docs[i].key, " is not <lang> text EOS");
    const std::vector<int32_t> text(doc.begin() + 1, doc.end() - 1);
    for (const auto& example :
         denoise_examples(text, o.denoise_options, special, o.seed, fnv1a(s.docs[i].key)))
      splits.add(example, s.docs[i].valid);
  }
  splits.finish();
  return info;
}

std::string human_bytes(int64_t b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f MB", static_cast<double>(b) / 1e6);
  return buf;
}

}  // namespace

std::string language_tag(const std::string& language) {
  return "<lang:" + language + ">";
}

CorpusManifest prepare_corpus(const CorpusOptions& o) {
  MOEX_CHECK(!o.out_dir.empty(), "corpus: --out is required");
  MOEX_CHECK(!o.languages.empty(), "corpus: no languages");
  MOEX_CHECK(o.vocab_size >= 300, "corpus: vocab size ", o.vocab_size, " is too small");
  const auto t0 = Clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
  bool committed = false;  // past the commit an interrupt changes nothing: the corpus is there
  auto log = [&](const std::string& msg) {
    MOEX_CHECK(committed || !(o.interrupted && o.interrupted()),
               "interrupted; nothing was written to ", o.out_dir);
    if (o.log) {
      char prefix[32];
      std::snprintf(prefix, sizeof(prefix), "[%6.1fs] ", elapsed());
      o.log(prefix + msg);
    }
  };

  // 1. Text.
  log("extracting text: handbook (" + o.handbook_dir + ")");
  std::vector<Source> sources = handbook_sources(o);
  log("extracting text: bible");
  for (auto& s : bible_sources(o)) sources.push_back(std::move(s));
  MOEX_CHECK(!sources.empty(), "corpus: no source has text for languages given");

  // 2. Splits: handbook pages and Bible chapters (shared by the mono and parallel sources).
  std::vector<std::string> bible_units, page_units;
  for (const auto& s : sources) {
    for (const auto& d : s.docs) {
      (s.info.name.rfind("bible.", 0) == 0 ? bible_units : page_units).push_back(d.unit);
    }
  }
  const auto valid_chapters = pick_valid_units(bible_units, o.valid_fraction, o.seed);
  const auto valid_pages = pick_valid_units(page_units, o.valid_fraction, o.seed);
  for (auto& s : sources) {
    const auto& valid = s.info.name.rfind("bible.", 0) == 0 ? valid_chapters : valid_pages;
    for (auto& d : s.docs) d.valid = valid.count(d.unit) > 0;
  }

  io::AtomicDirectory out(o.out_dir);
  const std::string tmp = out.temp_path();
  fs::create_directories(tmp + "/text");

  // 3. Plain text per source, and the tokenizer's training text (train splits only).
  std::set<std::string> languages;
  std::string spm_input = tmp + "/tokenizer_train.txt";
  {
    std::ofstream spm(spm_input, std::ios::binary);
    for (auto& s : sources) {
      s.info.text_path = "text/" + s.info.name + ".txt";
      std::ofstream text(tmp + "/" + s.info.text_path, std::ios::binary);
      for (const auto& d : s.docs) text << d.text << "\n\n";
      if (s.info.task == "lm") {
        for (const auto& line : s.plain_lines) spm << line << "\n";
      }
      for (const auto& part : {s.info.language}) {
        size_t dash = part.find('-');
        languages.insert(part.substr(0, dash));
        if (dash != std::string::npos) languages.insert(part.substr(dash + 1));
      }
      log(s.info.name + ": " + std::to_string(s.docs.size()) + " documents, " +
          human_bytes(s.info.text_bytes));
      s.plain_lines.clear();
      s.plain_lines.shrink_to_fit();
    }
    MOEX_CHECK(spm.good(), spm_input, ": write failed");
  }

  // 4. Tokenizer.
  SentencePieceTrainOptions spm_opts;
  spm_opts.input = spm_input;
  spm_opts.model_prefix = tmp + "/tokenizer";
  spm_opts.vocab_size = o.vocab_size;
  spm_opts.byte_fallback = true;
  spm_opts.input_sentence_size = o.tokenizer_sample_lines;
  spm_opts.num_threads = o.num_threads;
  spm_opts.user_defined_symbols.push_back(kTranslateTag);
  for (const auto& l : languages) spm_opts.user_defined_symbols.push_back(language_tag(l));
  if (o.denoise) {
    check_denoise_options(o.denoise_options);
    spm_opts.user_defined_symbols.push_back(kDenoiseTag);
    spm_opts.user_defined_symbols.push_back(kDenoiseTargetsTag);
    for (int i = 0; i < o.denoise_options.max_spans; ++i)
      spm_opts.user_defined_symbols.push_back(span_sentinel(i));
  }
  log("training SentencePiece (unigram, vocab " + std::to_string(o.vocab_size) + ", " +
      std::to_string(spm_opts.user_defined_symbols.size()) + " tag symbols)");
  train_sentencepiece(spm_opts);
  fs::remove(spm_input);
  const auto tok = SentencePieceTokenizer::open(tmp + "/tokenizer.model");
  std::vector<std::pair<std::string, int32_t>> tags;
  for (const auto& sym : spm_opts.user_defined_symbols) {
    tags.emplace_back(sym, tok->token_to_id(sym));
    MOEX_CHECK(tags.back().second >= 0, "tokenizer: tag ", sym, " is not a single token");
  }

  // 5. Token datasets.
  const TokenDType dtype = token_dtype_for_vocab(tok->vocab_size());
  CorpusManifest manifest;
  for (auto& s : sources) {
    const auto ids = tokenize(*tok, s, tags, o.num_threads);
    s.info.train.prefix = s.info.name + ".train";
    s.info.valid.prefix = s.info.name + ".valid";
    SourceSplitsWriter splits(tmp, &s.info, dtype);
    for (size_t i = 0; i < s.docs.size(); ++i) splits.add(ids[i], s.docs[i].valid);
    splits.finish();
    log(s.info.name + ": " + std::to_string(s.info.train.tokens) + " train / " +
        std::to_string(s.info.valid.tokens) + " valid tokens");
    manifest.sources.push_back(s.info);
    if (o.denoise && s.info.task == "lm") {
      manifest.sources.push_back(write_denoise_source(s, ids, *tok, o, tmp, dtype));
      const CorpusSource& d = manifest.sources.back();
      log(d.name + ": " + std::to_string(d.train.tokens) + " train / " +
          std::to_string(d.valid.tokens) + " valid tokens");
    }
  }

  // 6. Manifest.
  manifest.vocab_size = tok->vocab_size();
  manifest.eos_id = tok->eos_id();
  manifest.seconds = elapsed();
  json j = corpus_manifest_json(manifest, "tokenizer.model", tok->bos_id(), dtype);
  j["tags"] = {{"translate", kTranslateTag}, {"languages", json::object()}};
  if (o.denoise) {
    j["tags"]["denoise"] = kDenoiseTag;
    j["tags"]["denoise_targets"] = kDenoiseTargetsTag;
    j["tags"]["span_sentinels"] = json::array();
    for (int i = 0; i < o.denoise_options.max_spans; ++i)
      j["tags"]["span_sentinels"].push_back(span_sentinel(i));
    j["denoise"] = {{"noise_rate", o.denoise_options.noise_rate},
                    {"mean_span", o.denoise_options.mean_span},
                    {"max_spans", o.denoise_options.max_spans},
                    {"chunk_tokens", o.denoise_options.chunk_tokens}};
  }
  for (const auto& l : languages) j["tags"]["languages"][l] = language_tag(l);
  j["seed"] = o.seed;
  j["valid_fraction"] = o.valid_fraction;
  io::write_file_atomic(tmp + "/corpus.json", j.dump(2) + "\n");
  out.commit();
  committed = true;
  manifest.dir = o.out_dir;
  manifest.tokenizer = (fs::path(o.out_dir) / "tokenizer.model").string();
  log("corpus written to " + o.out_dir);
  return manifest;
}

CorpusManifest load_corpus_manifest(const std::string& dir) {
  const std::string path = (fs::path(dir) / "corpus.json").string();
  const json j = parse_json(read_file(path), path);
  auto need = [&](const json& obj, const char* field, const std::string& where) -> const json& {
    MOEX_CHECK(obj.is_object() && obj.contains(field), path, ": ", where, field, " is missing");
    return obj[field];
  };
  CorpusManifest m;
  m.dir = dir;
  MOEX_CHECK(j.is_object(), path, ": the top level must be a JSON object");
  // Optional (a hand-written manifest may leave them out), but never another value: the .idx
  // headers give each dataset's dtype, so these only describe the corpus.
  if (j.contains("format"))
    MOEX_CHECK(j["format"] == "moex-corpus-1", path, ": format must be \"moex-corpus-1\", got ",
               j["format"].dump());
  if (j.contains("token_dtype"))
    MOEX_CHECK(j["token_dtype"] == "uint16" || j["token_dtype"] == "int32", path,
               ": token_dtype must be \"uint16\" or \"int32\", got ", j["token_dtype"].dump());
  const json& tok = need(j, "tokenizer", "");
  MOEX_CHECK(tok.is_string(), path, ": tokenizer must be a string");
  m.tokenizer = (fs::path(dir) / tok.get<std::string>()).string();
  MOEX_CHECK(need(j, "vocab_size", "").is_number_integer(), path,
             ": vocab_size must be an integer");
  m.vocab_size = j["vocab_size"].get<int64_t>();
  // An optional top-level integer: a wrong type names the field (json::value would throw the
  // library's type_error).
  auto optional_id = [&](const char* field) -> int64_t {
    if (!j.contains(field)) return -1;
    MOEX_CHECK(j[field].is_number_integer(), path, ": ", field, " must be an integer, got ",
               j[field].dump());
    return j[field].get<int64_t>();
  };
  const int64_t eos_id = optional_id("eos_id"), bos_id = optional_id("bos_id");
  MOEX_CHECK(m.vocab_size > 0, path, ": vocab_size must be > 0, got ", m.vocab_size);
  MOEX_CHECK(eos_id >= -1 && eos_id < m.vocab_size, path, ": eos_id ", eos_id,
             " is outside the vocabulary of ", m.vocab_size);
  m.eos_id = static_cast<int32_t>(eos_id);  // below vocab_size, which token ids fit
  MOEX_CHECK(bos_id >= -1 && bos_id < m.vocab_size, path, ": bos_id ", bos_id,
             " is outside the vocabulary of ", m.vocab_size);
  const json& sources = need(j, "sources", "");
  MOEX_CHECK(sources.is_array(), path, ": sources must be an array");
  // A source's fields by name: a wrong type names the field, as a missing one does.
  auto text = [&](const json& obj, const char* field, const std::string& where,
                  const std::string* fallback = nullptr) {
    if (fallback != nullptr && !(obj.is_object() && obj.contains(field))) return *fallback;
    const json& v = need(obj, field, where);
    MOEX_CHECK(v.is_string(), path, ": ", where, field, " must be a string, got ", v.dump());
    return v.get<std::string>();
  };
  auto count = [&](const json& obj, const char* field, const std::string& where) -> int64_t {
    if (!(obj.is_object() && obj.contains(field))) return 0;
    const json& v = obj[field];
    MOEX_CHECK(v.is_number_integer(), path, ": ", where, field, " must be an integer, got ",
               v.dump());
    return v.get<int64_t>();
  };
  const std::string lm = "lm", none;
  for (size_t i = 0; i < sources.size(); ++i) {
    const json& s = sources[i];
    const std::string where = "sources[" + std::to_string(i) + "].";
    MOEX_CHECK(s.is_object(), path, ": sources[", i, "] must be an object, got ", s.dump());
    CorpusSource c;
    c.name = text(s, "name", where);
    c.language = text(s, "language", where);
    c.task = text(s, "task", where, &lm);
    MOEX_CHECK(c.task == "lm" || c.task == "translate" || c.task == "denoise", path, ": ", where,
               "task must be \"lm\", \"translate\" or \"denoise\", got \"", c.task, "\"");
    c.origin = text(s, "origin", where, &none);
    c.text_path = text(s, "text", where, &none);
    c.text_bytes = count(s, "text_bytes", where);
    for (auto [field, split] :
         {std::pair<const char*, CorpusSplitStats*>{"train", &c.train}, {"valid", &c.valid}}) {
      const json& sp = need(s, field, where);
      const std::string at = where + field + ".";
      split->prefix = text(sp, "prefix", at);
      split->documents = count(sp, "documents", at);
      split->tokens = count(sp, "tokens", at);
      split->mask_prefix = text(sp, "loss_mask", at, &none);
      split->trained_tokens = count(sp, "trained_tokens", at);
    }
    m.sources.push_back(std::move(c));
  }
  if (j.contains("seconds")) {
    MOEX_CHECK(j["seconds"].is_number(), path, ": seconds must be a number, got ",
               j["seconds"].dump());
    m.seconds = j["seconds"].get<double>();
  }
  return m;
}

}  // namespace moex::data
