#include "optimizers.h"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace memwall {

Optimizer::Optimizer(const OptimizerConfig& config, std::vector<ParameterView> parameters)
    : config_(config), parameters_(std::move(parameters)) {
  size_t largest = 0;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    const ParameterView& p = parameters_[i];
    state_index_.push_back(state.size());
    if (config_.kind == "adamw") {
      state.push_back({"exp_avg/" + p.name, i, std::vector<float>(p.numel, 0.0f)});
      state.push_back({"exp_avg_sq/" + p.name, i, std::vector<float>(p.numel, 0.0f)});
    } else if (config_.momentum > 0) {
      state.push_back({"momentum/" + p.name, i, std::vector<float>(p.numel, 0.0f)});
    }
    largest = std::max(largest, p.numel);
  }
  // optim.py's update_needs_workspace: weight decay or nesterov under SGD, AdamW's denominator.
  bool needs = config_.kind == "adamw" || config_.weight_decay != 0 || (config_.momentum != 0 && config_.nesterov);
  workspace_.resize(needs ? largest : 0);
}

void Optimizer::step(const std::vector<const float*>& grads) {
  ++steps;
  for (size_t i = 0; i < parameters_.size(); ++i) {
    if (config_.kind == "adamw") {
      adamw(i, grads[i]);
    } else {
      sgd(i, grads[i]);
    }
  }
}

// torch: d_p = grad.add(p, alpha=wd); buf.mul_(m).add_(d_p, alpha=1-dampening) (buf = d_p at step 1);
// d_p = d_p.add(buf, alpha=m) if nesterov else buf; p.add_(d_p, alpha=-lr). Scalars are cast to float first;
// add with alpha is fmadd(b, alpha, a) in torch's kernel.
void Optimizer::sgd(size_t index, const float* grad) {
  const ParameterView& p = parameters_[index];
  float* param = p.data;
  const float wd = float(config_.weight_decay), m = float(config_.momentum);
  const float keep = float(1 - config_.dampening), neg_lr = float(-config_.lr);
  const float* d_p = grad;
  if (config_.weight_decay != 0) {
    float* scratch = workspace_.data();
    for (size_t k = 0; k < p.numel; ++k) scratch[k] = std::fma(param[k], wd, grad[k]);
    d_p = scratch;
  }
  if (config_.momentum != 0) {
    float* buf = state_of(index, 0);
    if (steps == 1) {
      std::memcpy(buf, d_p, p.numel * sizeof(float));
    } else {
      for (size_t k = 0; k < p.numel; ++k) buf[k] = std::fma(d_p[k], keep, buf[k] * m);
    }
    if (config_.nesterov) {
      float* scratch = workspace_.data();
      for (size_t k = 0; k < p.numel; ++k) scratch[k] = std::fma(buf[k], m, d_p[k]);
      d_p = scratch;
    } else {
      d_p = buf;
    }
  }
  for (size_t k = 0; k < p.numel; ++k) param[k] = std::fma(d_p[k], neg_lr, param[k]);
}

// torch: p.mul_(1 - lr*wd); exp_avg.lerp_(grad, 1-beta1); exp_avg_sq.mul_(beta2).addcmul_(grad, grad, 1-beta2);
// denom = sqrt(exp_avg_sq).div_(sqrt(bc2)).add_(eps); p.addcdiv_(exp_avg, denom, -lr/bc1).
void Optimizer::adamw(size_t index, const float* grad) {
  const ParameterView& p = parameters_[index];
  float* param = p.data;
  float* exp_avg = state_of(index, 0);
  float* exp_avg_sq = state_of(index, 1);
  float* denom = workspace_.data();
  const double bias_correction1 = 1 - std::pow(config_.beta1, double(steps));
  const double bias_correction2 = 1 - std::pow(config_.beta2, double(steps));
  const float decay = float(1 - config_.lr * config_.weight_decay);
  const float weight = float(1 - config_.beta1);
  const float beta2 = float(config_.beta2), value = float(1 - config_.beta2);
  const float root = float(std::sqrt(bias_correction2)), eps = float(config_.eps);
  const float step_size = float(-config_.lr / bias_correction1);
  // torch's lerp: start + w*(end-start) for |w| < 0.5, else end - (end-start)*(1-w), both as one fmadd.
  const bool small = std::fabs(weight) < 0.5f;
  for (size_t k = 0; k < p.numel; ++k) {
    param[k] = param[k] * decay;
    float diff = grad[k] - exp_avg[k];
    exp_avg[k] = small ? std::fma(weight, diff, exp_avg[k]) : std::fma(weight - 1.0f, diff, grad[k]);
    float sq = exp_avg_sq[k] * beta2;
    exp_avg_sq[k] = sq + value * grad[k] * grad[k];
    denom[k] = std::sqrt(exp_avg_sq[k]) / root + eps;
    param[k] = param[k] + step_size * exp_avg[k] / denom[k];
  }
}

GradientAccumulator::GradientAccumulator(const std::vector<size_t>& numels) {
  for (size_t n : numels) sums_.emplace_back(n, 0.0f);
}

void GradientAccumulator::add(size_t call, size_t parameter, const float* grad) {
  std::vector<float>& sum = sums_[parameter];
  if (call == 0) {
    std::memcpy(sum.data(), grad, sum.size() * sizeof(float));
  } else {
    for (size_t k = 0; k < sum.size(); ++k) sum[k] = sum[k] + grad[k];
  }
}

void GradientAccumulator::finish(size_t calls) {
  if (calls <= 1) return;
  const float count = float(calls);
  for (std::vector<float>& sum : sums_) {
    for (float& v : sum) v = v / count;
  }
}

}  // namespace memwall
