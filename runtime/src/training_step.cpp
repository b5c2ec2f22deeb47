#include "training_step.h"

#include <algorithm>
#include <cstring>

#include "failure.h"

namespace memwall {
namespace {

constexpr const char* kGradientsIndex = "__et_training_gradients_index_";
constexpr const char* kParametersIndex = "__et_training_parameters_index_";
constexpr const char* kFqn = "__et_training_fqn_";
constexpr const char* kLrInput = "lr";
constexpr const char* kStepInput = "step";
constexpr const char* kStatePrefix = "optimizer/";

std::string join_head(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 3; ++i) out += (i ? ", " : "") + names[i];
  return "[" + out + (names.size() > 3 ? ", ...]" : "]");
}

}  // namespace

TrainingSession::TrainingSession(const Bundle& bundle, int32_t threads)
    : bundle_(bundle), et_(bundle, threads), fused_(bundle.optimizer_runs_in_program) {
  const std::vector<std::string>& train_inputs = bundle.train.inputs;
  lr_is_input_ = std::find(train_inputs.begin(), train_inputs.end(), kLrInput) != train_inputs.end();
  fused_lr_ = bundle.optimizer.lr;
  if (et_.input_count(true) != train_inputs.size()) {
    fail(MW_ERR_BUNDLE, "the train method takes " + std::to_string(et_.input_count(true)) + " inputs, the manifest lists " +
                            std::to_string(train_inputs.size()) + "; re-export the bundle");
  }
  std::vector<std::string> expected;
  for (const TensorSpec& p : bundle.trainable) expected.push_back(p.name);
  if (!fused_) {
    std::vector<int64_t> grads = et_.int_outputs(kGradientsIndex + bundle.train.name);
    std::vector<std::string> names = et_.string_outputs(kFqn + bundle.train.name);
    if (grads.size() != 1 || names != expected) {
      fail(MW_ERR_BUNDLE, "program trains " + join_head(names) + ", the manifest lists " + join_head(expected) + "; re-export the bundle");
    }
    grad_start_ = size_t(grads[0]);
    std::vector<int64_t> params = et_.int_outputs(kParametersIndex + bundle.train.name);
    if (params.size() != 1 || size_t(params[0]) != grad_start_ + names.size() || et_.output_count(true) != grad_start_ + 2 * names.size()) {
      fail(MW_ERR_BUNDLE, "the train method's outputs are not loss, logits, gradients and parameters; re-export the bundle");
    }
  }
  // The runtime hands out its weight tensors only as outputs of a call: run one on zeros (no update).
  zero_run();
  if (fused_) {
    for (size_t i = 2; i < et_.output_count(true); ++i) {
      OutputTensor out = et_.output(true, i);
      const std::string& name = bundle.train.outputs.at(i);
      buffers_.push_back({name, out.dtype, out.shape, out.data, out.nbytes});
      // The dry run left values in the state buffers that the next step ignores; a checkpoint taken before it
      // should hold torch's initial state.
      if (name.rfind(kStatePrefix, 0) == 0) std::memset(out.data, 0, out.nbytes);
    }
    for (const std::string& name : expected) {
      auto it = std::find_if(buffers_.begin(), buffers_.end(), [&](const StateView& b) { return b.name == name; });
      if (it == buffers_.end() || it->dtype != MW_FLOAT32) fail(MW_ERR_BUNDLE, "the program returns no float32 parameter " + name);
      params_.push_back({name, static_cast<float*>(it->data), it->nbytes / sizeof(float)});
    }
  } else {
    std::vector<size_t> numels;
    for (size_t i = 0; i < expected.size(); ++i) {
      OutputTensor out = et_.output(true, grad_start_ + expected.size() + i);
      if (out.dtype != MW_FLOAT32 || out.nbytes != bundle.trainable[i].nbytes()) {
        fail(MW_ERR_BUNDLE, "parameter " + expected[i] + " of the program does not match the manifest's shape; re-export the bundle");
      }
      params_.push_back({expected[i], static_cast<float*>(out.data), size_t(bundle.trainable[i].numel)});
      numels.push_back(params_.back().numel);
    }
    optimizer_ = std::make_unique<Optimizer>(bundle.optimizer, params_);
    if (bundle.micro_batches > 1) accumulator_ = std::make_unique<GradientAccumulator>(numels);
  }
}

void TrainingSession::zero_run() {
  std::vector<std::vector<uint8_t>> zeros;
  std::vector<const void*> inputs;
  for (const TensorSpec& spec : bundle_.inputs) {
    zeros.emplace_back(spec.nbytes(), 0);
    inputs.push_back(zeros.back().data());
  }
  std::vector<uint8_t> labels(bundle_.labels.nbytes(), 0);
  float lr = 0;
  int64_t step = 0;
  run_train(inputs, labels.data(), &lr, &step);
}

double TrainingSession::run_train(const std::vector<const void*>& inputs, const void* labels, const void* lr, const int64_t* step) {
  if (inputs.size() != bundle_.inputs.size()) {
    fail(MW_ERR_ARGUMENT, "got " + std::to_string(inputs.size()) + " inputs, the bundle takes " + std::to_string(bundle_.inputs.size()));
  }
  const std::vector<std::string>& names = bundle_.train.inputs;
  for (size_t i = 0; i < names.size(); ++i) {
    const std::string& name = names[i];
    if (name == bundle_.labels.name) {
      et_.set_input(true, i, labels, bundle_.labels.nbytes());
    } else if (fused_ && name == kLrInput) {
      et_.set_input(true, i, lr, sizeof(float));
    } else if (fused_ && name == kStepInput) {
      et_.set_input(true, i, step, sizeof(int64_t));
    } else {
      size_t k = 0;
      while (k < bundle_.inputs.size() && bundle_.inputs[k].name != name) ++k;
      if (k == bundle_.inputs.size()) fail(MW_ERR_BUNDLE, "the train method's input '" + name + "' is not in the manifest's inputs");
      if (inputs[k] == nullptr) fail(MW_ERR_ARGUMENT, "input '" + name + "' is NULL");
      et_.set_input(true, i, inputs[k], bundle_.inputs[k].nbytes());
    }
  }
  et_.execute(true);
  OutputTensor loss = et_.output(true, 0);
  if (loss.dtype != MW_FLOAT32 || loss.nbytes != sizeof(float)) fail(MW_ERR_RUNTIME, "the train method's first output is not a float loss");
  return double(*static_cast<const float*>(loss.data));
}

double TrainingSession::train_step(const std::vector<Batch>& micro_batches) {
  size_t count = micro_batches.size();
  if (fused_) {
    if (count != 1) {
      fail(MW_ERR_ARGUMENT, "got " + std::to_string(count) + " micro-batches: a program that applies the optimizer itself steps on "
                                "every call, so it takes exactly one batch per step");
    }
    float lr = float(fused_lr_);
    int64_t step = fused_steps_ + 1;
    double loss = run_train(micro_batches[0].inputs, micro_batches[0].labels, &lr, &step);
    fused_steps_ = step;
    return loss;
  }
  if (count != size_t(bundle_.micro_batches)) {
    fail(MW_ERR_ARGUMENT, "got " + std::to_string(count) + " micro-batches, the bundle accumulates " + std::to_string(bundle_.micro_batches) +
                              " per step (manifest training.micro_batches)");
  }
  double total = 0;
  std::vector<const float*> grads(params_.size());
  for (size_t call = 0; call < count; ++call) {
    total += run_train(micro_batches[call].inputs, micro_batches[call].labels, nullptr, nullptr);
    for (size_t i = 0; i < params_.size(); ++i) {
      const float* g = static_cast<const float*>(et_.output(true, grad_start_ + i).data);
      if (accumulator_) {
        accumulator_->add(call, i, g);
      } else {
        grads[i] = g;  // consumed before the next call overwrites it
      }
    }
  }
  if (accumulator_) {
    // Each call's loss is a micro-batch mean: the full batch's gradient is their average.
    accumulator_->finish(count);
    for (size_t i = 0; i < params_.size(); ++i) grads[i] = accumulator_->sum(i);
  }
  optimizer_->step(grads);
  return total / double(count);
}

void TrainingSession::predict(const std::vector<const void*>& inputs, float* logits, size_t logits_count) {
  const std::vector<std::string>& names = bundle_.predict.inputs;
  if (inputs.size() != bundle_.inputs.size()) {
    fail(MW_ERR_ARGUMENT, "got " + std::to_string(inputs.size()) + " inputs, the bundle takes " + std::to_string(bundle_.inputs.size()));
  }
  for (size_t i = 0; i < names.size(); ++i) {
    size_t k = 0;
    while (k < bundle_.inputs.size() && bundle_.inputs[k].name != names[i]) ++k;
    if (k < bundle_.inputs.size()) {
      if (inputs[k] == nullptr) fail(MW_ERR_ARGUMENT, "input '" + names[i] + "' is NULL");
      et_.set_input(false, i, inputs[k], bundle_.inputs[k].nbytes());
      continue;
    }
    auto p = std::find_if(params_.begin(), params_.end(), [&](const ParameterView& v) { return v.name == names[i]; });
    if (p == params_.end()) fail(MW_ERR_BUNDLE, "the predict method's input '" + names[i] + "' is neither an input nor a trained parameter");
    et_.set_input(false, i, p->data, p->numel * sizeof(float));
  }
  et_.execute(false);
  OutputTensor out = et_.output(false, 0);
  if (out.dtype != MW_FLOAT32 || out.nbytes != logits_count * sizeof(float)) {
    fail(MW_ERR_ARGUMENT, "the logits hold " + std::to_string(out.nbytes / sizeof(float)) + " floats, the buffer " + std::to_string(logits_count));
  }
  std::memcpy(logits, out.data, out.nbytes);
}

int64_t TrainingSession::steps() const { return fused_ ? fused_steps_ : optimizer_->steps; }
double TrainingSession::lr() const { return fused_ ? fused_lr_ : optimizer_->lr(); }

void TrainingSession::set_lr(double lr) {
  if (!fused_) {
    optimizer_->set_lr(lr);
  } else if (lr_is_input_) {
    fused_lr_ = lr;
  } else {
    fail(MW_ERR_ARGUMENT, "this bundle's learning rate is a constant of the program; export it with "
                          "FusedUpdateConfig(learning_rate='input') to schedule it");
  }
}

std::vector<StateView> TrainingSession::state() {
  if (fused_) return buffers_;
  std::vector<StateView> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out.push_back({params_[i].name, MW_FLOAT32, bundle_.trainable[i].shape, params_[i].data, params_[i].numel * sizeof(float)});
  }
  for (StateTensor& s : optimizer_->state) {
    out.push_back({kStatePrefix + s.name, MW_FLOAT32, bundle_.trainable[s.parameter].shape, s.values.data(), s.values.size() * sizeof(float)});
  }
  return out;
}

void TrainingSession::restore(int64_t steps, const std::map<std::string, StateView>& tensors) {
  std::vector<StateView> mine = state();
  std::vector<std::string> missing;
  for (const StateView& s : mine) {
    if (!tensors.count(s.name)) missing.push_back(s.name);
  }
  if (!missing.empty()) {
    bool optimizer = missing[0].rfind(kStatePrefix, 0) == 0;
    fail(MW_ERR_CHECKPOINT, "checkpoint lacks " + std::string(optimizer ? "optimizer state " : "parameters ") + join_head(missing) + ": " +
                                (optimizer ? "it was saved with another optimizer" : "it belongs to another bundle"));
  }
  for (const StateView& s : mine) {
    const StateView& saved = tensors.at(s.name);
    if (saved.dtype != s.dtype || saved.nbytes != s.nbytes || saved.shape != s.shape) {
      fail(MW_ERR_CHECKPOINT, "checkpoint tensor " + s.name + " has another shape or dtype than this bundle's: it belongs to another bundle");
    }
  }
  for (const StateView& s : mine) std::memcpy(s.data, tensors.at(s.name).data, s.nbytes);
  if (fused_) {
    fused_steps_ = steps;
  } else {
    optimizer_->steps = steps;
  }
}

}  // namespace memwall
