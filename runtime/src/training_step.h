// The training loop's core, as sdk_tools/runner/executorch_session.py runs it: each optimizer step runs the train
// method once per micro-batch, sums the gradients (divided by their count) and applies the manifest's optimizer
// in place to the parameter outputs, which alias the runtime's weights. Fused-update bundles
// (optimizer_runs_in == "program") take lr and step as inputs and update themselves. Predict runs with the live
// parameters as its inputs.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "executorch_session.h"
#include "optimizers.h"

namespace memwall {

struct Batch {
  std::vector<const void*> inputs;  // one per manifest input, its numel * element size bytes
  const void* labels;
};

// A tensor that checkpoints save and restore; data aliases the session's memory.
struct StateView {
  std::string name;
  mw_dtype dtype;
  std::vector<int64_t> shape;
  void* data;
  size_t nbytes;
};

class TrainingSession {
 public:
  TrainingSession(const Bundle& bundle, int32_t threads);
  // Returns the mean of the micro-batch losses.
  double train_step(const std::vector<Batch>& micro_batches);
  void predict(const std::vector<const void*>& inputs, float* logits, size_t logits_count);

  int64_t steps() const;
  double lr() const;
  void set_lr(double lr);
  int32_t threads() const { return et_.threads(); }
  const std::vector<ParameterView>& parameters() const { return params_; }
  // Parameters then optimizer state ("optimizer/<kind>/<parameter>"), as the Python sessions' state_tensors.
  std::vector<StateView> state();
  void restore(int64_t steps, const std::map<std::string, StateView>& tensors);

 private:
  double run_train(const std::vector<const void*>& inputs, const void* labels, const void* extra_lr, const int64_t* step);
  void zero_run();

  const Bundle& bundle_;
  ExecuTorchSession et_;
  bool fused_;
  std::vector<ParameterView> params_;
  size_t grad_start_ = 0;
  // App-side optimizer (unfused bundles).
  std::unique_ptr<Optimizer> optimizer_;
  std::unique_ptr<GradientAccumulator> accumulator_;
  // Fused bundles: every train output after loss and logits, by name (parameters and optimizer state).
  std::vector<StateView> buffers_;
  int64_t fused_steps_ = 0;
  double fused_lr_ = 0;
  bool lr_is_input_ = false;
};

}  // namespace memwall
