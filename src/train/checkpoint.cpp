#include "train/checkpoint.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "core/logging.h"
#include "data/tokenizer.h"
#include "io/atomic_file.h"
#include "io/safetensors.h"
#include "model/model_io.h"

namespace moex::train {

void save_checkpoint(const std::string& dir, const model::Model& model,
                     const std::string& model_json, AdamW& optimizer, const TrainerState& state,
                     const std::vector<std::string>& tokenizer_files, bool write) {
  // Moments saved under each parameter's name, fp32 whatever the optimizer keeps. Where nothing
  // is sharded or split they are the optimizer's own buffers, written a tensor at a time (bf16
  // widened); otherwise gathered into fp32 host copies first (collective under ep, tp and ZeRO,
  // before anything is written).
  std::map<std::string, Tensor> moments;
  for (const bool second : {false, true}) {
    Tensor m = model.split_over_ranks() ? Tensor() : optimizer.moment_in_place(second);
    if (!m.defined()) m = optimizer.gather_moment(second);
    for (auto& [name, t] : model::gather_named_tensors(model, m))
      moments[(second ? "exp_avg_sq." : "exp_avg.") + name] = t;
  }
  // With a sharded master the fp32 weights are the optimizer's shards (gathered here).
  const Tensor master = optimizer.gather_master();
  std::unique_ptr<io::AtomicDirectory> out;
  if (write) out = std::make_unique<io::AtomicDirectory>(dir);
  model::save_model(model, model_json, write ? out->temp_path() : "", write, master);
  if (!write) return;
  io::SafetensorsSaveOptions options;
  options.widen_bf16 = true;
  io::save_safetensors(out->temp_path() + "/optimizer.safetensors", moments, options);
  nlohmann::json js;
  js["step"] = state.step;
  js["data_state"] = nlohmann::json::parse(state.data_state);
  js["last_loss"] = state.last_loss;
  io::write_file_atomic(out->temp_path() + "/trainer_state.json", js.dump(2) + "\n");
  data::copy_files_into(tokenizer_files, out->temp_path());
  out->commit();
}

namespace {

// Every leaf (or whole array) where a and b differ, under `path`.
void json_changes(const nlohmann::json& a, const nlohmann::json& b, const std::string& path,
                  std::vector<std::string>& out) {
  if (a.is_object() && b.is_object()) {
    auto child = [&](const std::string& key) { return path.empty() ? key : path + "." + key; };
    for (auto it = a.begin(); it != a.end(); ++it)
      json_changes(it.value(), b.contains(it.key()) ? b.at(it.key()) : nlohmann::json(),
                   child(it.key()), out);
    for (auto it = b.begin(); it != b.end(); ++it)
      if (!a.contains(it.key())) json_changes(nlohmann::json(), it.value(), child(it.key()), out);
    return;
  }
  if (a != b)
    out.push_back(path + ": " + (a.is_null() ? "(absent)" : a.dump()) + " -> " +
                  (b.is_null() ? "(absent)" : b.dump()));
}

}  // namespace

std::vector<std::string> model_config_changes(const std::string& dir,
                                              const std::string& model_json) {
  const std::string path = dir + "/config.json";
  if (!std::filesystem::exists(path)) return {};
  std::ifstream in(path);
  const nlohmann::json saved = nlohmann::json::parse(in, nullptr, false);
  if (saved.is_discarded() || !saved.is_object() || !saved.contains("moex_model")) return {};
  const nlohmann::json now = nlohmann::json::parse(model_json, nullptr, false);
  if (now.is_discarded()) return {};
  std::vector<std::string> out;
  json_changes(saved.at("moex_model"), now, "", out);
  return out;
}

std::vector<std::string> remove_old_checkpoints(const std::string& out_dir, int64_t step,
                                                int64_t keep) {
  namespace fs = std::filesystem;
  // Housekeeping after a checkpoint that is safely written: a directory that cannot be listed or
  // removed (permissions, a busy network file) is a warning, never an end to the run (on the
  // root rank alone, it would leave the other ranks waiting in their next collective).
  std::vector<std::pair<int64_t, fs::path>> steps;  // (its step, the directory)
  std::error_code ec;
  for (fs::directory_iterator it(out_dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    std::error_code type_ec;
    if (!it->is_directory(type_ec) || name.size() <= 5 || name.compare(0, 5, "step-") != 0 ||
        name.find_first_not_of("0123456789", 5) != std::string::npos || name.size() > 5 + 18)
      continue;
    const int64_t at = std::stoll(name.substr(5));
    if (at <= step) steps.emplace_back(at, it->path());
  }
  if (ec) MOEX_WARN("training.keep_checkpoints: cannot list ", out_dir, ": ", ec.message());
  std::sort(steps.begin(), steps.end());
  std::vector<std::string> removed;
  for (size_t i = 0; keep > 0 && i + static_cast<size_t>(keep) < steps.size(); ++i) {
    std::error_code remove_ec;
    fs::remove_all(steps[i].second, remove_ec);
    if (remove_ec) {
      MOEX_WARN("training.keep_checkpoints: cannot remove ", steps[i].second.string(), ": ",
                remove_ec.message());
      continue;
    }
    removed.push_back(steps[i].second.string());
  }
  return removed;
}

TrainerState load_checkpoint(const std::string& dir, model::Model& model, AdamW& optimizer) {
  const ParamBuffer weights = model::load_weights(model, dir + "/" + io::kSafetensorsSingleName);
  optimizer.load_master(weights.flat());  // the fp32 values, where the optimizer keeps a master
  const std::string opt_path = dir + "/optimizer.safetensors";
  const io::SafetensorsFile moments = io::SafetensorsFile::open(opt_path);
  const ParamBuffer& params = model.params();
  // The moments in the buffer's layout (zero padding); the optimizer keeps its part.
  const Tensor moment[2] = {Tensor::zeros(params.flat().shape(), DType::kF32),
                            Tensor::zeros(params.flat().shape(), DType::kF32)};
  for (int i = 0; i < params.size(); ++i) {
    const int64_t offset = params.offset(i);
    for (const bool second : {false, true}) {
      const std::string name = (second ? "exp_avg_sq." : "exp_avg.") + params.name(i);
      MOEX_CHECK(moments.contains(name), opt_path, ": tensor '", name, "' is missing");
      const Tensor src = model::local_part(model, i, moments.weight_f32(name),
                                           opt_path + ": tensor '" + name + "'");
      float* dst = moment[second].data<float>() + offset;
      std::copy(src.data<float>(), src.data<float>() + src.numel(), dst);
    }
  }
  optimizer.load_moment(false, moment[0]);
  optimizer.load_moment(true, moment[1]);
  const std::string state_path = dir + "/trainer_state.json";
  const JsonReader js = JsonReader::from_file(state_path);
  TrainerState state;
  state.step = js.get_int("step");
  if (state.step < 0) js.fail("step", "must be >= 0, got " + std::to_string(state.step));
  state.last_loss = js.get_double("last_loss", 0.0);
  state.data_state = js.get_json_text("data_state");
  if (state.data_state.empty()) js.fail("data_state", "is required");
  js.finish();
  return state;
}

}  // namespace moex::train
