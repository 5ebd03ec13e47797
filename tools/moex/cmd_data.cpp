// moex data prepare: builds the default tokenized corpus (src/data/corpus.h), or with --input a
// corpus of the user's own text and tokenizer (src/data/text_corpus.h).
#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "args.h"
#include "command.h"
#include "core/error.h"
#include "core/stop_signals.h"
#include "data/corpus.h"
#include "data/text_corpus.h"
#include "data/tokenizer.h"
#include "io/atomic_file.h"
#include "serve/chat_segments.h"

namespace moex::cli {
namespace {

std::atomic<int> g_interrupted{0};  // set by the signal thread (core/stop_signals.h)
// Ctrl-C / SIGTERM: the preparation stops at its next step and removes its partial output.
void on_stop_signal(int) {
  g_interrupted = 1;
}

const char* kUsage =
    "usage: moex data prepare --out DIR [options]\n"
    "       moex data prepare --input FILE[,FILE...] (--tokenizer FILE | --model DIR) --out DIR\n"
    "                         [--chat | --prompt-completion] [--json-key KEY] [--language CODE]\n"
    "                         [--valid-fraction F] [--seed N] [--threads N]\n"
    "\n"
    "With --input: your own text, tokenized with an existing tokenizer (a model's, to fine-tune\n"
    "it). Each file is one source: .jsonl (or .json) holds one JSON object per line whose\n"
    "--json-key string (default \"text\") is a document, or a .json file holds one JSON array\n"
    "of them; any other file is plain UTF-8 text, documents separated by blank lines. Each\n"
    "document gets the tokenizer's special tokens and an EOS. The tokenizer file is copied\n"
    "into DIR.\n"
    "  --input FILE,...        text files (one source each)\n"
    "  --tokenizer FILE        tokenizer.json or a SentencePiece .model\n"
    "  --model DIR             a model directory: its tokenizer\n"
    "  --json-key KEY          the document field of .jsonl lines (default text; messages\n"
    "                          with --chat)\n"
    "  --chat                  lines hold conversations (OpenAI-style messages, ShareGPT's\n"
    "                          conversations of from/value, Alpaca's instruction/input/\n"
    "                          output, or TRL's prompt/completion message lists), rendered\n"
    "                          with the model's chat template; only the assistant's turns\n"
    "                          are trained on (a loss mask beside them)\n"
    "  --prompt-completion     lines are {\"prompt\", \"completion\"}: only the completion\n"
    "                          (and EOS) is trained on\n"
    "  --language CODE         the sources' language in corpus.json (default und)\n"
    "\n"
    "Without --input: the default corpus.\n"
    "Builds a multilingual corpus from Debian packages (scripts/setup.sh installs them):\n"
    "the Debian Administrator's Handbook (debian-handbook) and the Bible from SWORD modules\n"
    "(sword-text-web, sword-text-sparv, read with diatheke) as monolingual text and as aligned\n"
    "en<->es translation pairs. Trains a SentencePiece tokenizer with <lang:xx> and\n"
    "<task:translate> tags and writes Megatron .bin/.idx datasets (train and valid) per source,\n"
    "described by DIR/corpus.json.\n"
    "\n"
    "options:\n"
    "  --out DIR               output directory (replaced atomically when complete; an existing\n"
    "                          one must be empty or hold a corpus)\n"
    "  --vocab-size N          SentencePiece vocabulary size (default 8000)\n"
    "  --languages a,b,...     handbook/Bible languages (default en,es,fr,de,it,pt)\n"
    "  --no-parallel           leave out the en<->es translation pairs\n"
    "  --denoise               add the denoising task: a <source>.denoise source per\n"
    "                          monolingual one (span corruption, docs/data.md)\n"
    "  --noise-rate F          denoising: share of tokens masked (default 0.15)\n"
    "  --mean-span F           denoising: mean masked span length (default 3)\n"
    "  --denoise-chunk N       denoising: text tokens per example at most (default 128)\n"
    "  --max-source-mb N       cap on the text of one source, in MB (default 8)\n"
    "  --valid-fraction F      held-out share of pages/chapters (default 0.02)\n"
    "  --seed N                split seed (default 1234)\n"
    "  --threads N             threads for training and tokenizing (default 2)\n"
    "  --handbook-dir DIR      default /usr/share/doc/debian-handbook/html\n"
    "  --bible-text-dir DIR    read <module>.txt (diatheke plain output) instead of diatheke\n";

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

int thread_count(const Args& args, int fallback) {
  const int64_t threads = args.get_int("threads", fallback);
  MOEX_CHECK(threads >= 1 && threads <= 4096, "--threads must be in [1, 4096], got ", threads);
  return static_cast<int>(threads);
}

void log_line(const std::string& line) {
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void print_summary(const data::CorpusManifest& m);
int prepare_own_text(const Args& args);

int run_data(const std::vector<std::string>& argv) {
  if (argv.empty() || argv[0] == "--help" || argv[0] == "-h") {
    std::printf("%s", kUsage);
    return argv.empty() ? 2 : 0;
  }
  if (argv[0] != "prepare") {
    std::fprintf(stderr, "moex data: unknown action '%s'\n%s", argv[0].c_str(), kUsage);
    return 2;
  }
  const std::vector<std::string> rest(argv.begin() + 1, argv.end());
  for (const auto& a : rest) {
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    }
  }
  Args args(rest,
            {"out", "vocab-size", "languages", "max-source-mb", "valid-fraction", "seed", "threads",
             "handbook-dir", "bible-text-dir", "noise-rate", "mean-span", "denoise-chunk", "input",
             "tokenizer", "model", "json-key", "language"},
            {"no-parallel", "denoise", "chat", "prompt-completion"});
  if (args.has("input")) return prepare_own_text(args);
  for (const char* own :
       {"tokenizer", "model", "json-key", "language", "chat", "prompt-completion"})
    MOEX_CHECK(!args.has(own), "--", own, " needs --input (your own text)");
  data::CorpusOptions o;
  o.out_dir = args.require("out");
  // A directory of something else, or a file, is the user's: it is not replaced.
  io::check_output_dir(o.out_dir, "--out", "corpus.json", "corpus");
  o.vocab_size = static_cast<int>(args.get_int("vocab-size", o.vocab_size));
  if (args.has("languages")) o.languages = split_list(args.get("languages"));
  o.parallel = !args.flag("no-parallel");
  o.denoise = args.flag("denoise");
  MOEX_CHECK(
      o.denoise || !(args.has("noise-rate") || args.has("mean-span") || args.has("denoise-chunk")),
      "--noise-rate, --mean-span and --denoise-chunk need --denoise");
  o.denoise_options.noise_rate = args.get_double("noise-rate", o.denoise_options.noise_rate);
  o.denoise_options.mean_span = args.get_double("mean-span", o.denoise_options.mean_span);
  o.denoise_options.chunk_tokens = args.get_int("denoise-chunk", o.denoise_options.chunk_tokens);
  if (o.denoise) data::check_denoise_options(o.denoise_options);
  const double max_mb = args.get_double("max-source-mb", 8.0);
  MOEX_CHECK(std::isfinite(max_mb) && max_mb > 0 && max_mb <= 1 << 20,
             "--max-source-mb must be in (0, 1048576], got ", max_mb);
  o.max_source_bytes = static_cast<int64_t>(max_mb * (1 << 20));
  o.valid_fraction = args.get_double("valid-fraction", o.valid_fraction);
  MOEX_CHECK(o.valid_fraction >= 0 && o.valid_fraction < 1,
             "--valid-fraction must be in [0, 1), got ", o.valid_fraction);
  o.seed = static_cast<uint64_t>(args.get_int("seed", static_cast<int64_t>(o.seed)));
  o.num_threads = thread_count(args, o.num_threads);
  o.handbook_dir = args.get("handbook-dir", o.handbook_dir);
  o.bible_text_dir = args.get("bible-text-dir", "");
  o.log = log_line;
  o.interrupted = [] { return g_interrupted != 0; };
  const StopSignalHandlers handlers(on_stop_signal);
  print_summary(data::prepare_corpus(o));
  return 0;
}

int prepare_own_text(const Args& args) {
  for (const char* other :
       {"vocab-size", "languages", "max-source-mb", "handbook-dir", "bible-text-dir", "noise-rate",
        "mean-span", "denoise-chunk", "no-parallel", "denoise"})
    MOEX_CHECK(!args.has(other), "--", other,
               " is an option of the default corpus, not of --input");
  MOEX_CHECK(args.has("tokenizer") != args.has("model"),
             "give one of --tokenizer FILE or --model DIR with --input");
  data::TextCorpusOptions o;
  o.out_dir = args.require("out");
  io::check_output_dir(o.out_dir, "--out", "corpus.json", "corpus");
  o.inputs = split_list(args.get("input"));
  o.tokenizer = args.has("tokenizer") ? args.get("tokenizer") : args.get("model");
  o.json_key = args.get("json-key", args.flag("chat") ? "messages" : o.json_key);
  o.prompt_completion = args.flag("prompt-completion");
  MOEX_CHECK(!(o.prompt_completion && args.flag("chat")),
             "give one of --chat and --prompt-completion");
  MOEX_CHECK(!(o.prompt_completion && args.has("json-key")),
             "--prompt-completion reads the lines' \"prompt\" and \"completion\"; --json-key has "
             "no use with it");
  // Conversations are rendered as `moex serve` renders them for this model: its directory's chat
  // template (or the tokenizer file's directory's), else moex's default one.
  std::unique_ptr<data::Tokenizer> tokenizer;
  std::unique_ptr<serve::ChatRenderer> renderer;
  if (args.flag("chat")) {
    const bool dir = args.has("model");
    const std::string template_dir =
        dir ? o.tokenizer : std::filesystem::path(o.tokenizer).parent_path().string();
    tokenizer = data::open_tokenizer(o.tokenizer);  // a directory opens its tokenizer file
    renderer = std::make_unique<serve::ChatRenderer>(template_dir, *tokenizer);
    o.render_chat = [&renderer](const nlohmann::json& messages, const nlohmann::json& tools,
                                int64_t* untrained) {
      return renderer->segments(messages, untrained, tools);
    };
  }
  o.language = args.get("language", o.language);
  o.valid_fraction = args.get_double("valid-fraction", o.valid_fraction);
  o.seed = static_cast<uint64_t>(args.get_int("seed", static_cast<int64_t>(o.seed)));
  o.num_threads = thread_count(args, o.num_threads);
  o.log = log_line;
  o.interrupted = [] { return g_interrupted != 0; };
  const StopSignalHandlers handlers(on_stop_signal);
  print_summary(data::prepare_text_corpus(o));
  return 0;
}

void print_summary(const data::CorpusManifest& m) {
  int64_t train = 0, valid = 0;
  std::printf("%-24s %-8s %-10s %10s %12s %12s\n", "source", "lang", "task", "text MB", "train tok",
              "valid tok");
  for (const auto& s : m.sources) {
    std::printf("%-24s %-8s %-10s %10.1f %12lld %12lld\n", s.name.c_str(), s.language.c_str(),
                s.task.c_str(), static_cast<double>(s.text_bytes) / 1e6,
                static_cast<long long>(s.train.tokens), static_cast<long long>(s.valid.tokens));
    train += s.train.tokens;
    valid += s.valid.tokens;
  }
  std::printf("total: %lld train + %lld valid tokens, vocab %lld, %.1f s -> %s/corpus.json\n",
              static_cast<long long>(train), static_cast<long long>(valid),
              static_cast<long long>(m.vocab_size), m.seconds, m.dir.c_str());
}

const Command kData("data", "prepare the default tokenized corpus (data prepare --out DIR)",
                    run_data);

}  // namespace
}  // namespace moex::cli
