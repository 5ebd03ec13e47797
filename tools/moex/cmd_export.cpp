// moex export --model DIR --out DIR --architecture NAME [--max-shard-mb N]
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "args.h"
#include "command.h"
#include "infer/hf_export.h"
#include "io/atomic_file.h"
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
        "  above --max-shard-mb, default 5000), generation_config.json, and the tokenizer found "
        "beside\n"
        "  the model with the files transformers' AutoTokenizer reads (a SentencePiece model "
        "also as\n"
        "  tokenizer.json, plus tokenizer_config.json). OUT is built as OUT.tmp and replaces OUT "
        "when\n"
        "  complete. A model option the architecture cannot express is an error naming the "
        "config field;\n"
        "  routing options it only approximates (a capacity factor: Hugging Face routes every "
        "token;\n"
        "  DeepSpeed's aux-loss form) are warnings naming the field.\n");
    return 0;
  }
  namespace fs = std::filesystem;
  const std::string in = args.require("model"), out = args.require("out");
  const std::string architecture = args.require("architecture");
  const int64_t shard_mb = args.get_int("max-shard-mb", 5000);
  MOEX_CHECK(shard_mb > 0, "--max-shard-mb must be > 0 (got ", shard_mb, ")");
  std::error_code ec;
  MOEX_CHECK(!fs::equivalent(in, out, ec), "--out ", out,
             " is the model directory itself; export to another directory");
  moex::io::check_model_output_dir(out, "--out");
  auto model = moex::model::load_model(in);
  moex::io::AtomicDirectory dir(out);
  moex::model::save_hf_model(*model, dir.temp_path(), architecture,
                             static_cast<uint64_t>(shard_mb) << 20);
  moex::infer::save_hf_tokenizer_files(*model, in, dir.temp_path());
  dir.commit();
  std::printf("%s\n", nlohmann::json{{"out", out}, {"architecture", architecture}}.dump().c_str());
  return 0;
}

const moex::cli::Command kExport("export", "write a model in a Hugging Face architecture's layout",
                                 run_export);

}  // namespace
