#include "train/distill.h"

#include <cmath>
#include <cstring>
#include <filesystem>
#include <map>

#include "core/logging.h"
#include "io/safetensors.h"
#include "model/layer_names.h"
#include "model/model_io.h"
#include "model/tensor_parallel.h"

namespace moex::train {
namespace {

namespace fs = std::filesystem;

// Why the teacher's experts cannot be spread over `ep` expert-parallel ranks; "" when they can.
std::string teacher_expert_misfit(const ModelConfig& teacher, int ep) {
  if (teacher.num_moe_layers() == 0) return "it has no MoE layers";
  for (size_t i = 0; i < teacher.layers.size(); ++i) {
    const LayerSpec& l = teacher.layers[i];
    if (l.moe && l.moe_config.num_experts % ep != 0)
      return "its layer " + std::to_string(i) + " has " + std::to_string(l.moe_config.num_experts) +
             " experts, which " + std::to_string(ep) + " does not divide";
  }
  return "";
}

}  // namespace

DistillRunConfig DistillRunConfig::from_file(const std::string& path) {
  const JsonReader root = JsonReader::from_file(path);
  DistillRunConfig c;
  c.train = TrainConfig::from_reader(root, path);
  const JsonReader kd = root.child("distill");
  DistillConfig& d = c.distill;
  d.alpha = kd.get_double("alpha", 1.0);
  d.temperature = kd.get_double("temperature", 1.0);
  d.stop_kd_at_step = kd.get_int("stop_kd_at_step", -1);
  d.init_from_teacher_layers = kd.get_int_array("init_from_teacher_layers");
  d.layers_field = kd.where("init_from_teacher_layers");
  if (!std::isfinite(d.alpha) || d.alpha < 0) kd.fail("alpha", "must be a finite number >= 0");
  if (!std::isfinite(d.temperature) || d.temperature <= 0)
    kd.fail("temperature", "must be a finite number > 0");
  if (kd.has("stop_kd_at_step") && d.stop_kd_at_step < 0)
    kd.fail("stop_kd_at_step", "must be >= 0 (leave it out to distill on every step)");
  // Both would set the student's weights: one source of them.
  if (kd.has("init_from_teacher_layers") && !c.train.training.init_from.empty())
    kd.fail("init_from_teacher_layers",
            "cannot be combined with training.init_from (both set the student's weights); "
            "leave one out");
  if (kd.has("init_from_teacher_layers") &&
      static_cast<int64_t>(d.init_from_teacher_layers.size()) != c.train.model.num_layers)
    kd.fail("init_from_teacher_layers", "has " + std::to_string(d.init_from_teacher_layers.size()) +
                                            " entries; the student has model.num_layers = " +
                                            std::to_string(c.train.model.num_layers));
  root.finish();
  return c;
}

ModelConfig check_teacher(const std::string& dir, const TrainConfig& student) {
  MOEX_CHECK(!dir.empty(), "--teacher: a model directory is required");
  MOEX_CHECK(fs::is_directory(dir), "--teacher ", dir, ": no such directory");
  MOEX_CHECK(fs::exists(fs::path(dir) / "config.json"), "--teacher ", dir,
             ": config.json is missing (a model directory: moex train's final/ or a Hugging Face "
             "model)");
  MOEX_CHECK(fs::exists(fs::path(dir) / io::kSafetensorsSingleName) ||
                 fs::exists(fs::path(dir) / io::kSafetensorsIndexName),
             "--teacher ", dir, ": no weights (", io::kSafetensorsSingleName, " or ",
             io::kSafetensorsIndexName, ")");
  const ModelConfig t = model::load_model_config(dir);
  MOEX_CHECK(t.vocab_size == student.model.vocab_size, "--teacher ", dir,
             "/config.json: vocab_size ", t.vocab_size, " differs from the student's (",
             student.source, ": model.vocab_size = ", student.model.vocab_size,
             "); distillation compares the two models' distributions over one vocabulary");
  MOEX_CHECK(t.max_seq_len >= student.data.seq_len, "--teacher ", dir, "/config.json: max_seq_len ",
             t.max_seq_len, " is shorter than ", student.source,
             ": data.seq_len = ", student.data.seq_len);
  return t;
}

std::unique_ptr<model::Model> load_teacher(const std::string& dir, Device device,
                                           const model::TensorParallel& tp,
                                           dist::Communicator* expert_group,
                                           dist::DeviceGroup* device_expert_group) {
  const ModelConfig config = model::load_model_config(dir);
  model::TensorParallel teacher_tp = tp;
  // Forward only: Duplicate Token Dropping and expert slicing would change no number of it.
  teacher_tp.drop_duplicate_tokens = false;
  teacher_tp.slice_experts = false;
  if (tp.active()) {
    const model::TensorParallelMisfit misfit =
        model::tensor_parallel_misfit(config, tp.size(), false, device.is_cuda());
    if (!misfit.message.empty()) {
      MOEX_INFO("distill: the teacher stays whole on each of the ", tp.size(),
                " tensor-parallel ranks (", misfit.option, " ", misfit.message, ")");
      teacher_tp = model::TensorParallel{};
    }
  }
  if (expert_group == nullptr || expert_group->size() < 2)
    return model::load_model(dir, device, teacher_tp);
  const std::string misfit = teacher_expert_misfit(config, expert_group->size());
  if (!misfit.empty()) {
    MOEX_INFO("distill: the teacher stays whole on each of the ", expert_group->size(),
              " expert-parallel ranks (", misfit, ")");
    return model::load_model(dir, device, teacher_tp);
  }
  // The student's expert group: the teacher's MoE layers exchange tokens over it like the
  // student's, so its forward is collective there (DistillHooks::before_forward).
  auto teacher = model::load_model(dir, device, teacher_tp, expert_group);
  if (device_expert_group != nullptr) teacher->set_device_expert_group(device_expert_group);
  return teacher;
}

void init_from_teacher_layers(model::Model& student, const model::Model& teacher,
                              const DistillConfig& config) {
  const std::vector<int64_t>& layers = config.init_from_teacher_layers;
  const int64_t teacher_layers = teacher.config().num_layers;
  MOEX_CHECK(static_cast<int64_t>(layers.size()) == student.config().num_layers,
             config.layers_field, " has ", layers.size(), " entries; the student has ",
             student.config().num_layers, " layers");
  for (const int64_t l : layers)
    MOEX_CHECK(l >= 0 && l < teacher_layers, config.layers_field, ": layer ", l,
               " is outside the teacher's [0, ", teacher_layers, ")");
  // The teacher's whole tensors (its tp parts and, when spread over ep, its experts gathered, so
  // every rank of those groups takes part: init_weights runs on every rank), then the student's
  // part of each: teacher and student may be split differently (a whole teacher, experts sliced
  // or spread over ep in the student).
  const std::map<std::string, Tensor> src =
      model::gather_named_tensors(teacher, teacher.host_params().flat());
  const ParamBuffer dst = student.host_params();
  for (int i = 0; i < dst.size(); ++i) {
    const std::string& name = dst.name(i);
    std::string from_name = model::source_layer_param(name, layers);
    if (!src.count(from_name) && from_name == "lm_head.weight")
      from_name = "model.embed_tokens.weight";  // the teacher ties its head to the embedding
    const auto from = src.find(from_name);
    MOEX_CHECK(from != src.end(), config.layers_field, ": the teacher has no '", from_name,
               "' for the student's '", name, "' (the two blocks differ in kind)");
    const Shape whole = model::whole_shape(student, i);
    MOEX_CHECK(from->second.shape() == whole, config.layers_field, ": the student's '", name,
               "' is ", whole.str(), " but the teacher's '", from_name, "' is ",
               from->second.shape().str());
    const Tensor part =
        model::local_part(student, i, from->second, "the teacher's '" + from_name + "'");
    const Tensor& to = dst.tensor(i);
    std::memcpy(to.raw_data(), part.raw_data(), to.nbytes());
  }
  student.store_host_params(dst);
}

void DistillHooks::start(const model::TensorParallel& tp, dist::Communicator* expert_group,
                         dist::DeviceGroup* device_expert_group, Device device) {
  teacher_ = load_teacher(teacher_dir_, device, tp, expert_group, device_expert_group);
}

int64_t DistillHooks::teacher_parameters() const {
  return teacher_ ? teacher_->params().num_elements() : 0;
}

bool DistillHooks::init_weights(model::Model& model) {
  if (config_.init_from_teacher_layers.empty()) return false;
  init_from_teacher_layers(model, *teacher_, config_);
  return true;
}

void DistillHooks::before_forward(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t step,
                                  model::ForwardOptions& options) {
  if (!config_.kd_active(step)) return;  // staged KD: past the stop the teacher is not run
  // Collective when the teacher is split: its split layers all-reduce over tp and its MoE layers
  // exchange tokens over ep. Every rank gets here in lockstep: run_training calls before_forward
  // on every rank for each of its micro-batches (grad_accum a step on every rank; the tp ranks
  // share theirs), before the student's forward, and `step` and the config (so kd_active) are the
  // same on every rank.
  soft_.hidden = teacher_->final_hidden(ids, batch, seq_len);
  soft_.head = teacher_->lm_head_weight();
  soft_.temperature = config_.temperature;
  soft_.weight = config_.alpha;
  options.soft_targets = &soft_;
}

void DistillHooks::add_metrics(int64_t step, nlohmann::json& line) {
  line["kd_alpha"] = config_.kd_active(step) ? config_.alpha : 0.0;
}

TrainResult run_distillation(const DistillRunConfig& config, const std::string& teacher_dir,
                             const std::string& resume_dir, int64_t stop_after,
                             dist::Communicator* group) {
  check_teacher(teacher_dir, config.train);
  // run_training calls hooks.start and hooks.init_weights before it writes anything, so a bad
  // teacher or layer list leaves nothing on disk.
  DistillHooks hooks(config.distill, teacher_dir);
  TrainResult result = run_training(config.train, resume_dir, stop_after, group, &hooks);
  result.teacher_parameters = hooks.teacher_parameters();
  return result;
}

}  // namespace moex::train
