// moex generate --model DIR (--prompt TEXT | --input-ids F.safetensors) [--max-new-tokens 32]
//               [--temperature T --top-k K --top-p P --seed S] [--device D] [--json]
#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "args.h"
#include "command.h"
#include "core/logging.h"
#include "data/unicode.h"
#include "infer/generator.h"
#include "infer/model_tokenizer.h"
#include "infer/text_stream.h"
#include "model/model_io.h"
#include "model_dir.h"
#include "sampling_flags.h"

namespace {

int run_generate(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv,
                             {"model", "prompt", "input-ids", "max-new-tokens", "temperature",
                              "top-k", "top-p", "seed", "device", "tp"},
                             {"json", "help", "expert-slicing"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex generate --model DIR (--prompt TEXT | --input-ids F.safetensors) "
        "[--max-new-tokens 32]\n"
        "                     [--temperature T] [--top-k K] [--top-p P] [--seed S] [--json]\n"
        "                     [--device cpu|cuda[:N]] [--tp N [--expert-slicing]]\n"
        "  Temperature 0 (the default) is greedy. Without --json the text streams to stdout;\n"
        "  with --json it prints {\"tokens\": [...], \"prompt_tokens\": N, \"text\": \"...\",\n"
        "  \"finish_reason\": \"stop\" | \"length\"}: the prompt ids followed by the new ids, and\n"
        "  the new text (null without a tokenizer). --tp N under mpirun -np N: the model split\n"
        "  over the N ranks (tensor parallelism; --expert-slicing splits every expert's width "
        "too);\n"
        "  rank 0 prints.\n");
    return 0;
  }
  const std::string dir = args.require("model");
  const moex::cli::ServingLayout layout = moex::cli::serving_layout(
      args.get_int("tp", 1), moex::Device::parse(args.get("device", "cpu"), "--device"),
      args.flag("expert-slicing"));
  auto model = moex::model::load_model(dir, layout.device, layout.tp);
  auto tokenizer = moex::infer::open_model_tokenizer(dir, model->config().vocab_size);

  std::vector<int32_t> prompt;
  if (args.has("input-ids")) {
    MOEX_CHECK(!args.has("prompt"), "give --prompt TEXT or --input-ids FILE, not both");
    const moex::Tensor ids =
        moex::cli::read_input_ids(args.get("input-ids"), model->config().vocab_size);
    if (ids.dim(0) > 1)
      MOEX_WARN(args.get("input-ids"),
                ": generate continues one sequence, the first of the file's ", ids.dim(0),
                " rows (moex serve takes batches)");
    prompt.assign(ids.data<int32_t>(), ids.data<int32_t>() + ids.dim(1));  // the first row
  } else {
    MOEX_CHECK(args.has("prompt"), "give --prompt TEXT or --input-ids FILE");
    MOEX_CHECK(tokenizer != nullptr, dir,
               ": no tokenizer (tokenizer.json or *.model) to encode --prompt");
    // As the server does: text that is not UTF-8 (a shell in another encoding) would tokenize as
    // unknown pieces.
    MOEX_CHECK(moex::data::is_valid_utf8(args.get("prompt")),
               "--prompt is not valid UTF-8 text (is the terminal in another encoding?)");
    prompt = tokenizer->encode(args.get("prompt"), true);
  }
  for (int32_t id : prompt)
    MOEX_CHECK(id >= 0 && id < model->config().vocab_size, "prompt token ", id,
               " is outside the vocabulary (", model->config().vocab_size, ")");

  moex::infer::GenerateOptions options;
  options.max_new_tokens = args.get_int("max-new-tokens", 32);
  options.sampling = moex::cli::sampling_from_flags(args);
  MOEX_CHECK(options.max_new_tokens >= 0, "--max-new-tokens must be >= 0 (got ",
             options.max_new_tokens, ")");
  options.stop_tokens = moex::infer::end_of_sequence_tokens(*model, tokenizer.get());

  const bool json = args.flag("json");
  std::vector<int32_t> generated;
  // Text streams as decode(prompt + generated) minus decode(prompt): decoding the new ids alone
  // would drop the space of a SentencePiece word piece ("▁is") right after the prompt.
  std::unique_ptr<moex::infer::TextStream> text;
  if (tokenizer) text = std::make_unique<moex::infer::TextStream>(*tokenizer, prompt);
  auto print = [](const std::string& piece) {
    std::fwrite(piece.data(), 1, piece.size(), stdout);
    std::fflush(stdout);
  };
  // The prompt is printed with the first token, so a request that fails to start (a cache too
  // large for the machine) prints its error alone.
  bool prompt_printed = false;
  auto print_prompt = [&] {
    if (text && !json && !prompt_printed) print(text->prompt_text());
    prompt_printed = true;
  };
  auto stream = [&](int32_t id) {
    print_prompt();
    generated.push_back(id);
    if (text && !json) print(text->push(id));
  };
  moex::infer::generate_paged(*model, prompt, options, stream);
  if (!layout.is_root()) return 0;  // it ran rank 0's steps; rank 0 prints
  print_prompt();
  if (json) {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    // Stopped by an end-of-sequence token, or by the length limit.
    const bool stopped =
        !generated.empty() && std::find(options.stop_tokens.begin(), options.stop_tokens.end(),
                                        generated.back()) != options.stop_tokens.end();
    nlohmann::json out = {{"tokens", all},
                          {"prompt_tokens", prompt.size()},
                          {"text", nullptr},
                          {"finish_reason", stopped ? "stop" : "length"}};
    if (text) {
      for (int32_t id : generated) text->push(id);
      out["text"] = text->generated_text();
    }
    // A generated piece may end inside a character: its bytes become U+FFFD, not an exception.
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
  } else if (!tokenizer) {
    for (int32_t id : generated) std::printf("%d ", id);
    std::printf("\n");
  } else {
    print(text->finish());
    std::printf("\n");
  }
  return 0;
}

const moex::cli::Command kGenerate("generate",
                                   "generate text from a model (KV cache, greedy or sampled)",
                                   run_generate);

}  // namespace
