// The optimizers the app runs between training steps, on parameters the runtime owns (updated in place):
// sdk_tools/runner/optim.py's rules, which are torch.optim.SGD / AdamW written out. Each element is computed
// with the float32 operations torch's CPU kernels use, in the same order (add with alpha and lerp are fused
// multiply-adds there), so SGD matches torch bit for bit (tests/golden/optimizer.json) and AdamW to float
// rounding of sqrt.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "bundle_reader.h"

namespace memwall {

struct ParameterView {
  std::string name;
  float* data;
  size_t numel;
};

struct StateTensor {
  std::string name;  // <kind>/<parameter>: "momentum/...", "exp_avg/...", "exp_avg_sq/..." (checkpoints add "optimizer/")
  size_t parameter;  // index into the parameters
  std::vector<float> values;
};

class Optimizer {
 public:
  Optimizer(const OptimizerConfig& config, std::vector<ParameterView> parameters);
  // One update; grads[i] has parameters[i].numel floats.
  void step(const std::vector<const float*>& grads);

  const OptimizerConfig& config() const { return config_; }
  double lr() const { return config_.lr; }
  void set_lr(double lr) { config_.lr = lr; }
  int64_t steps = 0;
  std::vector<StateTensor> state;  // per parameter, in Python's order

 private:
  void sgd(size_t index, const float* grad);
  void adamw(size_t index, const float* grad);
  float* state_of(size_t index, size_t which) { return state[state_index_[index] + which].values.data(); }

  OptimizerConfig config_;
  std::vector<ParameterView> parameters_;
  std::vector<size_t> state_index_;
  // One scratch buffer of the largest parameter's size, allocated once, as optim.py's workspace.
  std::vector<float> workspace_;
};

// Micro-batch accumulation as the host runner does it: gradients of each call summed in call order (the first
// copied), then divided by the call count in float32.
class GradientAccumulator {
 public:
  explicit GradientAccumulator(const std::vector<size_t>& numels);
  void add(size_t call, size_t parameter, const float* grad);
  void finish(size_t calls);  // divides by calls (no-op for 1)
  const float* sum(size_t parameter) const { return sums_[parameter].data(); }

 private:
  std::vector<std::vector<float>> sums_;
};

}  // namespace memwall
