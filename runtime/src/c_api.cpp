// The C API (include/memwall.h) over the C++ core: handles own the core objects, every call catches what the
// core throws and turns it into a status and a thread-local one-line error.
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "bundle_reader.h"
#include "c_api_internal.h"
#include "failure.h"
#include "memory_sampler.h"
#include "memwall.h"
#include "report_builder.h"
#include "safetensors_checkpoint.h"
#include "training_step.h"

struct mw_bundle {
  memwall::Bundle bundle;
};

struct mw_session {
  const mw_bundle* owner;
  std::unique_ptr<memwall::RunRecord> run;  // first: its baseline is sampled before the program loads
  std::unique_ptr<memwall::TrainingSession> core;
};

namespace {

thread_local std::string last_error;

template <typename Body>
mw_status guarded(Body body) {
  last_error.clear();
  try {
    body();
    return MW_OK;
  } catch (const memwall::Failure& failure) {
    last_error = failure.what();
    return failure.status();
  } catch (const std::bad_alloc&) {
    last_error = "out of memory";
    return MW_ERR_NO_MEMORY;
  } catch (const std::exception& exc) {
    last_error = std::string("internal error: ") + exc.what();
    return MW_ERR_RUNTIME;
  }
}

void require(const void* pointer, const char* what) {
  if (pointer == nullptr) memwall::fail(MW_ERR_ARGUMENT, std::string(what) + " is NULL");
}

void fill_info(const memwall::TensorSpec& spec, mw_tensor_info* out) {
  out->name = spec.name.c_str();
  out->dtype = spec.dtype;
  out->rank = int32_t(spec.shape.size());
  for (size_t i = 0; i < MW_MAX_RANK; ++i) out->shape[i] = i < spec.shape.size() ? spec.shape[i] : 0;
  out->numel = spec.numel;
}

}  // namespace

extern "C" {

const char* mw_last_error(void) { return last_error.c_str(); }

const char* mw_status_name(mw_status status) {
  switch (status) {
    case MW_OK: return "MW_OK";
    case MW_ERR_ARGUMENT: return "MW_ERR_ARGUMENT";
    case MW_ERR_BUNDLE: return "MW_ERR_BUNDLE";
    case MW_ERR_UNSUPPORTED: return "MW_ERR_UNSUPPORTED";
    case MW_ERR_RUNTIME: return "MW_ERR_RUNTIME";
    case MW_ERR_IO: return "MW_ERR_IO";
    case MW_ERR_CHECKPOINT: return "MW_ERR_CHECKPOINT";
    case MW_ERR_DATA: return "MW_ERR_DATA";
    case MW_ERR_NO_MEMORY: return "MW_ERR_NO_MEMORY";
  }
  return "MW_ERR_UNKNOWN";
}

int32_t mw_api_version(void) { return MW_API_VERSION; }

mw_status mw_bundle_open(const char* directory, mw_bundle** out) {
  return guarded([&] {
    require(directory, "directory");
    require(out, "out");
    *out = nullptr;
    auto bundle = std::make_unique<mw_bundle>(mw_bundle{memwall::read_bundle(directory)});
    *out = bundle.release();
  });
}

void mw_bundle_free(mw_bundle* bundle) { delete bundle; }
const char* mw_bundle_name(const mw_bundle* b) { return b ? b->bundle.name.c_str() : ""; }
const char* mw_bundle_manifest_sha256(const mw_bundle* b) { return b ? b->bundle.manifest_sha256.c_str() : ""; }
const char* mw_bundle_manifest_json(const mw_bundle* b) { return b ? b->bundle.manifest_text.c_str() : ""; }
size_t mw_bundle_input_count(const mw_bundle* b) { return b ? b->bundle.inputs.size() : 0; }
size_t mw_bundle_class_count(const mw_bundle* b) { return b ? b->bundle.classes.size() : 0; }
int32_t mw_bundle_micro_batches(const mw_bundle* b) { return b ? b->bundle.micro_batches : 0; }

mw_status mw_bundle_input(const mw_bundle* b, size_t index, mw_tensor_info* out) {
  return guarded([&] {
    require(b, "bundle");
    require(out, "out");
    if (index >= b->bundle.inputs.size()) memwall::fail(MW_ERR_ARGUMENT, "input index " + std::to_string(index) + " is out of range");
    fill_info(b->bundle.inputs[index], out);
  });
}

mw_status mw_bundle_labels(const mw_bundle* b, mw_tensor_info* out) {
  return guarded([&] {
    require(b, "bundle");
    require(out, "out");
    fill_info(b->bundle.labels, out);
  });
}

mw_status mw_session_create(const mw_bundle* bundle, const mw_session_options* options, mw_session** out) {
  return guarded([&] {
    require(bundle, "bundle");
    require(out, "out");
    *out = nullptr;
    auto session = std::make_unique<mw_session>();
    session->owner = bundle;
    session->run = std::make_unique<memwall::RunRecord>();
    session->core = std::make_unique<memwall::TrainingSession>(bundle->bundle, options ? options->threads : 0);
    *out = session.release();
  });
}

void mw_session_free(mw_session* session) { delete session; }

mw_status mw_train_step(mw_session* session, const mw_batch* micro_batches, size_t count, double* loss) {
  return guarded([&] {
    require(session, "session");
    require(micro_batches, "micro_batches");
    std::vector<memwall::Batch> batches;
    for (size_t i = 0; i < count; ++i) {
      require(micro_batches[i].inputs, "micro_batches[i].inputs");
      require(micro_batches[i].labels, "micro_batches[i].labels");
      batches.push_back({std::vector<const void*>(micro_batches[i].inputs, micro_batches[i].inputs + micro_batches[i].input_count),
                         micro_batches[i].labels});
    }
    auto started = std::chrono::steady_clock::now();
    double value = session->core->train_step(batches);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - started).count();
    session->run->step(ms, value);
    if (loss != nullptr) *loss = value;
  });
}

mw_status mw_predict(mw_session* session, const void* const* inputs, size_t input_count, float* logits, size_t logits_count) {
  return guarded([&] {
    require(session, "session");
    require(inputs, "inputs");
    require(logits, "logits");
    session->core->predict(std::vector<const void*>(inputs, inputs + input_count), logits, logits_count);
  });
}

int64_t mw_session_steps(const mw_session* s) { return s ? s->core->steps() : 0; }
int32_t mw_session_threads(const mw_session* s) { return s ? s->core->threads() : 0; }
double mw_session_lr(const mw_session* s) { return s ? s->core->lr() : 0; }

mw_status mw_session_set_lr(mw_session* session, double lr) {
  return guarded([&] {
    require(session, "session");
    session->core->set_lr(lr);
  });
}

size_t mw_parameter_count(const mw_session* s) { return s ? s->core->parameters().size() : 0; }

mw_status mw_parameter_info(mw_session* session, size_t index, mw_tensor_info* out) {
  return guarded([&] {
    require(session, "session");
    require(out, "out");
    if (index >= session->core->parameters().size()) memwall::fail(MW_ERR_ARGUMENT, "parameter index " + std::to_string(index) + " is out of range");
    fill_info(session->owner->bundle.trainable[index], out);
  });
}

mw_status mw_parameter_read(mw_session* session, size_t index, float* out, size_t count) {
  return guarded([&] {
    require(session, "session");
    require(out, "out");
    const auto& params = session->core->parameters();
    if (index >= params.size()) memwall::fail(MW_ERR_ARGUMENT, "parameter index " + std::to_string(index) + " is out of range");
    if (count != params[index].numel) {
      memwall::fail(MW_ERR_ARGUMENT, "parameter " + params[index].name + " has " + std::to_string(params[index].numel) + " values, the buffer " +
                                         std::to_string(count));
    }
    std::memcpy(out, params[index].data, count * sizeof(float));
  });
}

mw_status mw_checkpoint_save(mw_session* session, const char* path, int64_t data_position) {
  return guarded([&] {
    require(session, "session");
    require(path, "path");
    memwall::save_checkpoint(path, session->core->state(), session->core->steps(), data_position, session->owner->bundle.manifest_sha256);
  });
}

mw_status mw_checkpoint_load(mw_session* session, const char* path, int64_t* data_position) {
  return guarded([&] {
    require(session, "session");
    require(path, "path");
    memwall::LoadedCheckpoint ckpt = memwall::load_checkpoint(path, session->owner->bundle.manifest_sha256);
    session->core->restore(ckpt.steps, ckpt.tensors);
    if (data_position != nullptr) *data_position = ckpt.data_position;
  });
}

mw_status mw_memory_sample(mw_memory* out) {
  return guarded([&] {
    require(out, "out");
    memwall::MemorySample s = memwall::sample_memory();
    out->current_bytes = s.current_bytes;
    out->peak_bytes = s.peak_bytes;
  });
}

mw_status mw_memory_reset_peak(void) {
  return guarded([] { memwall::reset_memory_peak(); });
}

mw_status mw_session_phase(mw_session* session, const char* phase) {
  return guarded([&] {
    require(session, "session");
    require(phase, "phase");
    session->run->phase(phase);
  });
}

mw_status mw_phase_peak_delta(mw_session* session, const char* phase, int64_t* delta_bytes) {
  return guarded([&] {
    require(session, "session");
    require(phase, "phase");
    require(delta_bytes, "delta_bytes");
    session->run->sample();
    auto it = session->run->phase_peaks.find(phase);
    if (it == session->run->phase_peaks.end()) memwall::fail(MW_ERR_ARGUMENT, std::string("the session never entered phase ") + phase);
    *delta_bytes = it->second - session->run->baseline_bytes;
  });
}

mw_status mw_report_json(const mw_session* session, const mw_report_options* options, char** json_out) {
  return guarded([&] {
    require(session, "session");
    require(json_out, "json_out");
    *json_out = nullptr;
    session->run->sample();
    std::string text = memwall::build_report(session->owner->bundle, *session->run, session->core->threads(), options);
    char* copy = static_cast<char*>(std::malloc(text.size() + 1));
    if (copy == nullptr) throw std::bad_alloc();
    std::memcpy(copy, text.c_str(), text.size() + 1);
    *json_out = copy;
  });
}

void mw_string_free(char* string) { std::free(string); }

}  // extern "C"

namespace memwall {
const Bundle& bundle_of(const mw_bundle* bundle) { return bundle->bundle; }
}  // namespace memwall
