// moex eval --model DIR --input-ids F.safetensors [--logits-out OUT.safetensors] [--device D]
#include <cstdio>
#include <map>

#include "args.h"
#include "command.h"
#include "io/safetensors.h"
#include "model/model_io.h"
#include "model_dir.h"

namespace {

int run_eval(const std::vector<std::string>& argv) {
  const moex::cli::Args args(argv, {"model", "input-ids", "logits-out", "device"}, {"help"});
  if (args.flag("help")) {
    std::printf(
        "usage: moex eval --model DIR --input-ids F.safetensors [--logits-out OUT.safetensors]\n"
        "                 [--device cpu|cuda[:N]]\n"
        "  F holds int32 input_ids [B, T]. Prints {\"loss\", \"aux_loss\"}: the mean next-token\n"
        "  cross-entropy over all B*(T-1) positions; writes logits [B, T, V] f32 if asked.\n");
    return 0;
  }
  auto model = moex::model::load_model(
      args.require("model"), moex::Device::parse(args.get("device", "cpu"), "--device"));
  const std::string path = args.require("input-ids");
  const moex::Tensor ids = moex::cli::read_input_ids(path);
  const int64_t batch = ids.dim(0), seq_len = ids.dim(1), vocab = model->config().vocab_size;
  MOEX_CHECK(seq_len >= 2, path, ": input_ids needs at least 2 tokens per row");
  const int32_t* id = ids.data<int32_t>();
  std::vector<int32_t> targets(static_cast<size_t>(batch * seq_len), -100);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t t = 0; t + 1 < seq_len; ++t) targets[b * seq_len + t] = id[b * seq_len + t + 1];
  moex::model::ForwardOptions opt;
  const moex::model::LossResult r = model->forward(id, targets.data(), batch, seq_len, opt);
  if (args.has("logits-out")) {
    moex::Tensor logits =
        moex::Tensor::empty(moex::Shape{batch, seq_len, vocab}, moex::DType::kF32);
    model->logits(id, batch, seq_len, logits.data<float>());
    moex::io::save_safetensors(args.get("logits-out"), {{"logits", logits}});
  }
  std::printf("{\"loss\": %.8f, \"aux_loss\": %.8f}\n", r.loss, r.aux_loss);
  return 0;
}

const moex::cli::Command kEval("eval", "loss and logits of a model on token ids", run_eval);

}  // namespace
