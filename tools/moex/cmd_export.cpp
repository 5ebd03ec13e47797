// moex export --model DIR --out DIR --architecture NAME [--max-shard-mb N]
#include <cstdio>
#include <filesystem>

#include "args.h"
#include "command.h"
#include "model/hf_weights.h"
#include "model/model_io.h"

namespace {

int run_export(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv, {"model", "out", "architecture", "max-shard-mb"}, {"help"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex export --model DIR --out DIR --architecture NAME [--max-shard-mb N]\n"
        "  Writes the model in the Hugging Face layout of NAME (MixtralForCausalLM, "
        "Qwen2MoeForCausalLM,\n"
        "  Qwen3MoeForCausalLM, OlmoeForCausalLM): config.json and safetensors (sharded with an "
        "index\n"
        "  above --max-shard-mb, default 5000), plus the tokenizer file found beside the model.\n"
        "  A model option the architecture cannot express is an error naming the config field.\n");
    return 0;
  }
  namespace fs = std::filesystem;
  const std::string in = args.require("model"), out = args.require("out");
  const int64_t shard_mb = args.get_int("max-shard-mb", 5000);
  MOEX_CHECK(shard_mb > 0, "--max-shard-mb must be > 0 (got ", shard_mb, ")");
  auto model = moex::model::load_model(in);
  moex::model::save_hf_model(*model, out, args.require("architecture"),
                             static_cast<uint64_t>(shard_mb) << 20);
  for (const auto& entry : fs::directory_iterator(in)) {
    const std::string name = entry.path().filename().string();
    if (name == "tokenizer.json" || name == "tokenizer_config.json" ||
        entry.path().extension() == ".model")
      fs::copy_file(entry.path(), fs::path(out) / name, fs::copy_options::overwrite_existing);
  }
  std::printf("{\"out\": \"%s\", \"architecture\": \"%s\"}\n", out.c_str(),
              args.get("architecture").c_str());
  return 0;
}

const moex::cli::Command kExport("export", "write a model in a Hugging Face architecture's layout",
                                 run_export);

}  // namespace
