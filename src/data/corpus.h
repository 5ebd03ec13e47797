// The default training corpus, built from Debian packages (scripts/setup.sh installs them):
//   - the Debian Administrator's Handbook (debian-handbook), HTML in ~25 languages;
//   - the Bible from SWORD modules (sword-text-web: World English Bible; sword-text-sparv:
//     Reina-Valera 1909), read with diatheke, as monolingual text and as verse-aligned
//     translation pairs.
// Text is extracted, a SentencePiece model is trained on it (language/task tags registered as
// user-defined symbols), and every source is tokenized into Megatron .bin/.idx datasets with a
// held-out validation split, described by corpus.json.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "data/denoise.h"

namespace moex::data {

constexpr const char* kTranslateTag = "<task:translate>";
std::string language_tag(const std::string& language);  // "<lang:en>"

struct CorpusOptions {
  std::string out_dir;
  // Handbook languages by code ("en", "pt" matches pt-BR, "zh-TW" matches exactly); the
  // Bible is included for languages that have a module below.
  std::vector<std::string> languages = {"en", "es", "fr", "de", "it", "pt"};
  int vocab_size = 8000;
  std::string handbook_dir = "/usr/share/doc/debian-handbook/html";
  std::map<std::string, std::string> bible_modules = {{"en", "engWEB2015eb"},
                                                      {"es", "spaRV1909eb"}};
  // When set, Bible text is read from `<dir>/<module>.txt` (diatheke plain output) instead of
  // running diatheke; tests use it.
  std::string bible_text_dir;
  bool parallel = true;  // translation pairs between "en" and each other Bible language
  // The denoising task (data/denoise.h): a "<source>.denoise" source beside every monolingual
  // one, made from the same documents (same train/valid split), and the task's tag, separator
  // and span sentinels in the tokenizer.
  bool denoise = false;
  DenoiseOptions denoise_options;
  // Caps keep `moex data prepare` to minutes on two cores.
  int64_t max_source_bytes = 8ll << 20;
  int64_t tokenizer_sample_lines = 300000;
  double valid_fraction = 0.02;
  uint64_t seed = 1234;
  int num_threads = 2;
  std::function<void(const std::string&)> log;  // progress lines
  // Asked between steps (at every progress line): true ends the preparation with an error, and
  // the partial output is removed (Ctrl-C).
  std::function<bool()> interrupted;
};

struct CorpusSplitStats {
  std::string prefix;  // relative to the corpus directory, without .bin/.idx
  int64_t documents = 0;
  int64_t tokens = 0;
  // A loss mask beside the tokens (chat data: only the assistant's tokens are trained on): a
  // dataset of the same documents and lengths whose 1 marks a token the model learns to predict
  // and 0 one it only reads. Empty: every token is trained on.
  std::string mask_prefix;
  int64_t trained_tokens = 0;  // tokens marked 1 (with a mask)
};

struct CorpusSource {
  std::string name;       // "handbook.fr", "bible.en", "bible.en-es"
  std::string language;   // "fr", or "en-es" for a translation source
  std::string task;       // "lm", "translate" or "denoise"
  std::string origin;     // package / module it came from
  std::string text_path;  // extracted plain text, relative to the corpus directory
  int64_t text_bytes = 0;
  CorpusSplitStats train, valid;
};

struct CorpusManifest {
  std::string dir;
  std::string tokenizer;  // absolute path of the SentencePiece model
  int64_t vocab_size = 0;
  int32_t eos_id = -1;
  std::vector<CorpusSource> sources;
  double seconds = 0;
};

// Builds the corpus into options.out_dir (written under `<out_dir>.tmp` and renamed when
// complete, replacing an earlier corpus). Errors name the missing package or file.
CorpusManifest prepare_corpus(const CorpusOptions& options);

// Reads `<dir>/corpus.json`; errors name the file and the field.
CorpusManifest load_corpus_manifest(const std::string& dir);

}  // namespace moex::data
