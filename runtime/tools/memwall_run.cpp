// memwall-run: train a bundle natively for tests and Linux edge boards, through the C API (include/memwall.h).
//
//   memwall-run BUNDLE --data FILE.npz --steps N [--resume] [--checkpoint PATH] [--checkpoint-every K]
//               [--threads T] [--eval-data FILE.npz] [--report OUT.json] [--device-json FILE]
//
// Prints "step <n> loss <value>" per step (and "accuracy_before/after <value>" with --eval-data: top-1 of the
// predict method with the live parameters over every sample, before and after training), saves the checkpoint (default BUNDLE/checkpoint.safetensors) at the
// end. A problem with the input (bundle, data, checkpoint, arguments) is one line on stderr and exit status 2;
// a runtime failure exits 1.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "c_api_internal.h"
#include "failure.h"
#include "memwall.h"
#include "npz_data.h"

namespace {

constexpr const char* kUsage =
    "usage: memwall-run BUNDLE --data FILE.npz --steps N [--resume] [--checkpoint PATH] [--checkpoint-every K] "
    "[--threads T] [--eval-data FILE.npz] [--report OUT.json] [--device-json FILE]";

[[noreturn]] void die(int code, const std::string& message) {
  std::fprintf(stderr, "memwall-run: error: %s\n", message.c_str());
  std::exit(code);
}

int exit_code(mw_status status) {
  switch (status) {
    case MW_ERR_ARGUMENT:
    case MW_ERR_BUNDLE:
    case MW_ERR_UNSUPPORTED:
    case MW_ERR_CHECKPOINT:
    case MW_ERR_DATA: return 2;
    default: return 1;
  }
}

void check(mw_status status) {
  if (status != MW_OK) die(exit_code(status), mw_last_error());
}

long long number(const char* flag, const char* text, long long minimum) {
  char* end = nullptr;
  long long value = std::strtoll(text, &end, 10);
  if (end == text || *end != '\0' || value < minimum) {
    die(2, std::string(flag) + " takes an integer >= " + std::to_string(minimum) + ", got '" + text + "'");
  }
  return value;
}

struct Args {
  std::string bundle, data, eval_data, checkpoint, report, device_json;
  long long steps = -1, checkpoint_every = 0, threads = 0;
  bool resume = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    auto value = [&]() -> const char* {
      if (i + 1 >= argc) die(2, flag + " needs a value; " + kUsage);
      return argv[++i];
    };
    if (flag == "--data") {
      a.data = value();
    } else if (flag == "--eval-data") {
      a.eval_data = value();
    } else if (flag == "--steps") {
      a.steps = number("--steps", value(), 0);
    } else if (flag == "--resume") {
      a.resume = true;
    } else if (flag == "--checkpoint") {
      a.checkpoint = value();
    } else if (flag == "--checkpoint-every") {
      a.checkpoint_every = number("--checkpoint-every", value(), 0);
    } else if (flag == "--threads") {
      a.threads = number("--threads", value(), 1);
    } else if (flag == "--report") {
      a.report = value();
    } else if (flag == "--device-json") {
      a.device_json = value();
    } else if (flag == "-h" || flag == "--help") {
      std::puts(kUsage);
      std::exit(0);
    } else if (!flag.empty() && flag[0] == '-') {
      die(2, "unknown option " + flag + "; " + kUsage);
    } else if (a.bundle.empty()) {
      a.bundle = flag;
    } else {
      die(2, "one bundle only (got " + a.bundle + " and " + flag + "); " + kUsage);
    }
  }
  if (a.bundle.empty() || a.data.empty() || a.steps < 0) die(2, std::string("BUNDLE, --data and --steps are required; ") + kUsage);
  if (a.checkpoint.empty()) a.checkpoint = a.bundle + "/checkpoint.safetensors";
  return a;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  if (!in) die(2, "cannot read " + path);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Top-1 accuracy of the predict method over every sample of `data`.
double evaluate(mw_session* session, const mw_bundle* bundle, const memwall::Dataset& data) {
  size_t classes = mw_bundle_class_count(bundle);
  mw_tensor_info input{};
  check(mw_bundle_input(bundle, 0, &input));
  int64_t batch = input.rank > 0 ? input.shape[0] : 1;
  std::vector<float> logits(size_t(batch) * classes);
  std::vector<std::vector<uint8_t>> storage;
  std::vector<const void*> inputs;
  int64_t correct = 0;
  for (int64_t first = 0; first < data.samples(); first += batch) {
    int64_t real = data.eval_batch(first, &storage, &inputs);
    check(mw_predict(session, inputs.data(), inputs.size(), logits.data(), logits.size()));
    for (int64_t k = 0; k < real; ++k) {
      const float* row = logits.data() + size_t(k) * classes;
      size_t best = 0;
      for (size_t c = 1; c < classes; ++c) best = row[c] > row[best] ? c : best;  // first maximum, as argmax
      correct += int64_t(best) == data.label_of(first + k) ? 1 : 0;
    }
  }
  return double(correct) / double(data.samples());
}

std::unique_ptr<memwall::Dataset> load_data(const std::string& path, const mw_bundle* bundle) {
  try {
    return std::make_unique<memwall::Dataset>(path, memwall::bundle_of(bundle));
  } catch (const memwall::Failure& failure) {
    die(exit_code(failure.status()), failure.what());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse(argc, argv);
  mw_bundle* bundle = nullptr;
  check(mw_bundle_open(args.bundle.c_str(), &bundle));
  std::string device = args.device_json.empty() ? "" : read_text(args.device_json);
  // The data is read before the session samples its baseline: the measured delta is the bundle's, as in
  // `memwall measure`, which loads its splits before the idle baseline.
  std::unique_ptr<memwall::Dataset> data = load_data(args.data, bundle);
  std::unique_ptr<memwall::Dataset> eval_data = args.eval_data.empty() ? nullptr : load_data(args.eval_data, bundle);
  if (eval_data && !eval_data->has_class_labels()) die(2, args.eval_data + ": accuracy needs 'y' as class indices (one per sample)");
  mw_session_options options{int32_t(args.threads)};
  mw_session* session = nullptr;
  check(mw_session_create(bundle, &options, &session));
  int64_t position = 0;
  if (args.resume) check(mw_checkpoint_load(session, args.checkpoint.c_str(), &position));
  int32_t micro = mw_bundle_micro_batches(bundle);
  double accuracy_before = -1, accuracy_after = -1;
  if (eval_data) {
    check(mw_session_phase(session, "evaluate_before"));
    accuracy_before = evaluate(session, bundle, *eval_data);
    std::printf("accuracy_before %.9g\n", accuracy_before);
  }
  check(mw_session_phase(session, "train"));
  for (long long i = 0; i < args.steps; ++i) {
    std::vector<memwall::Batch> held;
    std::vector<mw_batch> batches;
    for (int32_t m = 0; m < micro; ++m) held.push_back(data->batch(position++));
    for (const memwall::Batch& b : held) batches.push_back({b.inputs.data(), b.inputs.size(), b.labels});
    double loss = 0;
    check(mw_train_step(session, batches.data(), batches.size(), &loss));
    std::printf("step %lld loss %.9g\n", static_cast<long long>(mw_session_steps(session)), loss);
    if (args.checkpoint_every > 0 && mw_session_steps(session) % args.checkpoint_every == 0) {
      check(mw_session_phase(session, "checkpoint"));
      check(mw_checkpoint_save(session, args.checkpoint.c_str(), position));
      check(mw_session_phase(session, "train"));
    }
  }
  check(mw_session_phase(session, "checkpoint"));
  check(mw_checkpoint_save(session, args.checkpoint.c_str(), position));
  std::printf("checkpoint %s\n", args.checkpoint.c_str());
  if (eval_data) {
    check(mw_session_phase(session, "evaluate_after"));
    accuracy_after = evaluate(session, bundle, *eval_data);
    std::printf("accuracy_after %.9g\n", accuracy_after);
  }
  std::string phases;
  for (const char* phase : {"evaluate_before", "train", "checkpoint", "evaluate_after"}) {
    int64_t delta = 0;
    if (mw_phase_peak_delta(session, phase, &delta) == MW_OK) phases += std::string(" ") + phase + "=" + std::to_string(delta);
  }
  std::printf("peak_delta_bytes%s\n", phases.c_str());
  if (!args.report.empty()) {
    mw_report_options report{device.empty() ? nullptr : device.c_str(), nullptr, nullptr, accuracy_before, accuracy_after};
    char* json = nullptr;
    check(mw_report_json(session, &report, &json));
    std::ofstream out(args.report);
    out << json << "\n";
    mw_string_free(json);
    if (!out) die(1, "cannot write " + args.report);
  }
  std::fflush(stdout);
  mw_session_free(session);
  mw_bundle_free(bundle);
  return 0;
}
