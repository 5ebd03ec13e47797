// A corpus of the user's own text, tokenized with an existing tokenizer (a model's tokenizer.json
// or SentencePiece model): what Megatron's preprocess_data.py does, written as the same corpus
// directory `moex data prepare` builds for the default corpus (corpus.json, one .bin/.idx pair
// per split of each input file, docs/data.md §Your own text), so `data.path` trains on it.
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "data/corpus.h"

namespace moex::data {

// A piece of a conversation's rendered text: read by the model, or also trained on (an answer).
struct TextSegment {
  std::string text;
  bool trained = false;
};

struct TextCorpusOptions {
  std::string out_dir;
  // One source per file. `.jsonl` (or `.json` with one object per line): each line a JSON object
  // whose `json_key` string is one document (Megatron's and HF datasets' layout). Any other file:
  // plain UTF-8 text, documents separated by one or more blank lines.
  std::vector<std::string> inputs;
  std::string json_key = "text";
  // Chat data: when set, each .jsonl line's `json_key` field is a conversation (an OpenAI-style
  // list of messages; the line's "tools", when given, the functions it may call) that this
  // renders into segments (serve::ChatRenderer: the model's chat template). Documents are the segments' ids, in order, with nothing added (the template writes
  // BOS and each turn's end), and a loss mask beside them: only trained segments' ids are
  // learned. Sets *untrained to the answers it could not tell apart (read, not learned).
  // Prompt-completion pairs (TRL's layout): each .jsonl line is {"prompt": ..., "completion": ...};
  // the document is their text with the tokenizer's special tokens and EOS, and only the
  // completion and the EOS are trained on (a loss mask, as for chat data).
  bool prompt_completion = false;
  std::function<std::vector<TextSegment>(const nlohmann::json& messages,
                                         const nlohmann::json& tools, int64_t* untrained)>
      render_chat;
  // A tokenizer file (tokenizer.json or a SentencePiece .model) or a model directory holding one;
  // the file is copied into the corpus, so checkpoints of runs on it carry it.
  std::string tokenizer;
  std::string language = "und";  // every source's language (BCP 47 "undetermined" by default)
  double valid_fraction = 0.02;  // held-out share of each file's documents
  uint64_t seed = 1234;
  int num_threads = 2;
  std::function<void(const std::string&)> log;  // progress lines
  // Asked between files and batches: true ends the preparation with an error, nothing written.
  std::function<bool()> interrupted;
};

// Each document is encoded with the tokenizer's own special tokens (BOS where it adds one) and
// ends with its EOS token, as Megatron's --append-eod does. Written under `<out_dir>.tmp` and
// renamed when complete. Errors name the file and line (a line that is not a JSON object, a
// missing or non-string key) or the tokenizer.
CorpusManifest prepare_text_corpus(const TextCorpusOptions& options);

}  // namespace moex::data
