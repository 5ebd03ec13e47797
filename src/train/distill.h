// Knowledge distillation (moex distill; docs/distill.md): a smaller student (fewer layers and/or
// experts; DeepSpeed-MoE's Mixture-of-Students) trains on the corpus with
//   loss = LM cross-entropy + alpha * tau^2 * KL(teacher || student)
// on logits softened at temperature tau. Staged KD: alpha drops to 0 from a configured step on.
// The teacher runs forward only, on the student's device; the loop is the trainer's own
// (train/trainer.h TrainHooks), so data, schedule, metrics, checkpoints and resume are shared.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "train/trainer.h"

namespace moex::train {

struct DistillConfig {
  double alpha = 1.0;            // weight of the KD term
  double temperature = 1.0;      // tau
  int64_t stop_kd_at_step = -1;  // KD on the first N optimizer steps only; -1: every step
  // Student block i starts as teacher layer init_from_teacher_layers[i] (embedding, final norm and
  // LM head copied too); empty: the student's own random init.
  std::vector<int64_t> init_from_teacher_layers;
  std::string layers_field;  // "file: distill.init_from_teacher_layers", for errors found later

  // Whether optimizer step `step` (0-based) has the KD term.
  bool kd_active(int64_t step) const {
    return alpha > 0 && (stop_kd_at_step < 0 || step < stop_kd_at_step);
  }
};

struct DistillRunConfig {
  TrainConfig train;  // the student and its training, as for moex train
  DistillConfig distill;
  // A training config with a "distill" section; unknown fields and bad values are errors naming
  // the file and the field.
  static DistillRunConfig from_file(const std::string& path);
};

// Checks the teacher model directory against the student's config before anything is loaded:
// a missing directory, config.json or weights, a vocabulary other than the student's, or a
// max_seq_len shorter than data.seq_len are errors naming the directory (or file) and the field.
// Returns the teacher's model config.
ModelConfig check_teacher(const std::string& dir, const TrainConfig& student);

// Opens the teacher on `device`, split over `tp` like the student when its shape allows it
// (heads, kv heads, FFN width and vocabulary divisible by tp; experts never sliced), else whole on
// every rank (logged). With an `expert_group` (the student's, under expert parallelism) every MoE
// layer holds only this rank's E/ep experts, as the student's do, when ep divides the expert count
// of every teacher MoE layer; else (or without MoE layers) every rank holds all of them (logged).
// `device_expert_group`: that group's GPU communicator, for a teacher on a GPU. Every rank of tp
// and of the expert group calls it; a teacher spread over ep makes its forward collective there.
std::unique_ptr<model::Model> load_teacher(const std::string& dir, Device device,
                                           const model::TensorParallel& tp,
                                           dist::Communicator* expert_group = nullptr,
                                           dist::DeviceGroup* device_expert_group = nullptr);

// Copies the listed teacher layers into the student's blocks, and the embedding, learned
// positions, final norm and LM head (a tied teacher's embedding serves an untied student's head).
// Every copied tensor must have the student's shape; errors name `config.layers_field`.
void init_from_teacher_layers(model::Model& student, const model::Model& teacher,
                              const DistillConfig& config);

// The trainer hooks of a distillation run: the teacher is opened in start(), once the student's
// tensor- and expert-parallel groups exist, so that it is split over the same ranks.
class DistillHooks : public TrainHooks {
 public:
  DistillHooks(const DistillConfig& config, std::string teacher_dir)
      : config_(config), teacher_dir_(std::move(teacher_dir)) {}
  void start(const model::TensorParallel& tp, dist::Communicator* expert_group,
             dist::DeviceGroup* device_expert_group, Device device) override;
  bool init_weights(model::Model& model) override;
  void before_forward(const int32_t* ids, int64_t batch, int64_t seq_len, int64_t step,
                      model::ForwardOptions& options) override;
  void add_metrics(int64_t step, nlohmann::json& line) override;
  // The teacher's parameters held by this rank (its tp part and its experts when split); 0 before
  // start().
  int64_t teacher_parameters() const;

 private:
  DistillConfig config_;
  std::string teacher_dir_;
  std::unique_ptr<model::Model> teacher_;
  model::SoftTargets soft_;  // the current micro-batch's teacher side
};

// Checks the teacher, then trains the student through run_training (same arguments); the
// result's teacher_parameters is what this rank held of the teacher.
TrainResult run_distillation(const DistillRunConfig& config, const std::string& teacher_dir,
                             const std::string& resume_dir, int64_t stop_after = 0,
                             dist::Communicator* group = nullptr);

}  // namespace moex::train
