// The data-parallel sum of a model's whole gradient buffer (no ZeRO, or ZeRO stage 1;
// docs/parallelism.md §Data parallelism): every rank ends with the sum over its group of each
// gradient, the non-expert parameters' over dp and the experts' over edp.
//
// Either after backward, all at once (reduce_all), or as the model's gradient sink with
// parallel.overlap_comm (docs/parallelism.md §Overlapped gradient reductions): the model hands
// each block's bucket over as soon as the step's last backward has made it, and the sum starts at
// once. With `detach` (GPU ranks whose backward uses no other communicator) it then runs on the
// communicator's stream beside the backward of the blocks below; wait() joins the sums before the
// optimizer reads them. Otherwise each bucket is summed then and there, in order on the model's
// stream (blocking MPI on CPU ranks).
#pragma once

#include <vector>

#include "core/tensor.h"
#include "dist/communicator.h"
#include "dist/device_group.h"
#include "model/gradient_sink.h"
#include "ops/collective.h"

namespace moex::model {
class Model;
}

namespace moex::train {

struct DataParallelGroups {
  dist::Communicator* dp = nullptr;   // the non-expert gradients' group
  dist::Communicator* edp = nullptr;  // the experts' (dp itself without expert parallelism)
  // The same ranks on the GPU (a GPU model needs them where the group has several ranks).
  dist::DeviceGroup* gpu_dp = nullptr;
  dist::DeviceGroup* gpu_edp = nullptr;
};

class GradientAllReduce : public model::GradientSink {
 public:
  // The model must keep a whole gradient buffer (not stream it).
  GradientAllReduce(const model::Model& model, const DataParallelGroups& groups,
                    bool detach = false);

  // Sums every gradient of the model's buffer over the groups (after the step's last backward).
  void reduce_all(model::Model& model);
  // The sink: sums bucket `bucket`'s gradients (detached on a GPU).
  void take(int bucket, const Tensor& grads) override;
  // The ops queued from now on see every sum taken so far.
  void wait();

 private:
  // A run of neighbouring entries of one kind within a bucket: elements [begin, end) from the
  // bucket's first entry's start.
  struct Run {
    int64_t begin = 0, end = 0;
    bool expert = false;
  };
  // Sums grads (one run, or a bucket of one kind's group) over its kind's group; on a GPU
  // detached when `detach`.
  void reduce(const Tensor& grads, bool expert, bool detach);

  DataParallelGroups groups_;
  bool detach_;
  bool one_group_;                      // edp is dp (no expert parallelism)
  std::vector<std::vector<Run>> runs_;  // [buckets]
  std::vector<ops::PendingCollective> pending_;
};

}  // namespace moex::train
