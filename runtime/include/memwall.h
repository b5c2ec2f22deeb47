/*
 * memwall native training runtime: the C API the Android (JNI) and iOS (Swift) apps and memwall-run use.
 *
 * One C++17 core trains a memwall ExecuTorch bundle on ExecuTorch's plain runtime API, obeying its manifest as
 * the Python host runner (sdk_tools/runner) does: micro-batch accumulation, the optimizer's PyTorch update rules,
 * fused-update programs, predict with the live parameters, safetensors checkpoints that move between the two
 * runners, memory per phase and a report.v1 JSON for the lab.
 *
 * Conventions:
 * - Opaque handles, created by mw_*_open / mw_*_create and released by the matching mw_*_free (NULL is fine).
 * - Every fallible call returns an mw_status; MW_OK is 0. On failure mw_last_error() gives one line naming the
 *   problem and the fix, valid on the calling thread until its next mw_* call.
 * - No exceptions cross this API; no C++ types appear in it. Strings are UTF-8, NUL-terminated.
 * - A session is used by one thread at a time.
 * - Tensors are passed as raw row-major buffers of the dtype and shape the manifest gives (mw_bundle_input,
 *   mw_bundle_labels); a buffer's size in bytes must be numel * element size.
 */
#ifndef MEMWALL_H
#define MEMWALL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MW_API_VERSION 1
#define MW_MAX_RANK 8

typedef enum mw_status {
  MW_OK = 0,
  MW_ERR_ARGUMENT = 1,    /* a NULL handle, a wrong buffer size or count, an out-of-range index */
  MW_ERR_BUNDLE = 2,      /* the bundle is refused: missing/corrupt file, bad manifest, unsupported schema */
  MW_ERR_UNSUPPORTED = 3, /* a bundle this runtime cannot run: ONNX Runtime backend, missing delegate/operator */
  MW_ERR_RUNTIME = 4,     /* ExecuTorch failed while loading or executing a method */
  MW_ERR_IO = 5,          /* a file could not be read or written */
  MW_ERR_CHECKPOINT = 6,  /* a checkpoint is corrupt, from another bundle, or saved with another optimizer */
  MW_ERR_DATA = 7,        /* a data file is malformed or does not match the bundle */
  MW_ERR_NO_MEMORY = 8    /* an allocation failed */
} mw_status;

typedef enum mw_dtype { MW_FLOAT32 = 0, MW_INT64 = 1 } mw_dtype;

typedef struct mw_bundle mw_bundle;   /* a verified bundle directory (manifest + files) */
typedef struct mw_session mw_session; /* a bundle loaded into ExecuTorch, with optimizer state */

typedef struct mw_tensor_info {
  const char* name; /* owned by the bundle; valid until mw_bundle_free */
  mw_dtype dtype;
  int32_t rank;
  int64_t shape[MW_MAX_RANK];
  int64_t numel;
} mw_tensor_info;

/* ---- errors ---- */
const char* mw_last_error(void);             /* the calling thread's last error ("" if none) */
const char* mw_status_name(mw_status status); /* "MW_OK", "MW_ERR_BUNDLE", ... */
int32_t mw_api_version(void);                 /* MW_API_VERSION of the library */

/* ---- bundle ---- */
/* Read and verify a bundle directory: manifest JSON, schema version, backend, every file's size and sha256. */
mw_status mw_bundle_open(const char* directory, mw_bundle** out);
void mw_bundle_free(mw_bundle* bundle);
const char* mw_bundle_name(const mw_bundle* bundle);
const char* mw_bundle_manifest_sha256(const mw_bundle* bundle); /* hex sha256 of manifest.json's bytes */
/* The manifest as read (a NUL-terminated JSON string owned by the bundle). */
const char* mw_bundle_manifest_json(const mw_bundle* bundle);
size_t mw_bundle_input_count(const mw_bundle* bundle);
mw_status mw_bundle_input(const mw_bundle* bundle, size_t index, mw_tensor_info* out);
mw_status mw_bundle_labels(const mw_bundle* bundle, mw_tensor_info* out);
size_t mw_bundle_class_count(const mw_bundle* bundle);
int32_t mw_bundle_micro_batches(const mw_bundle* bundle); /* micro-batches per optimizer step */

/* ---- session ---- */
typedef struct mw_session_options {
  /* ExecuTorch thread pool size; 0: the manifest's backend_options.runtime.threads. The pool is process-wide and
   * sized once, before the first program loads (resizing it under a loaded program crashed 1.5.1). */
  int32_t threads;
} mw_session_options;

/* Load the bundle's program (memory-mapped) and its train and predict methods. options may be NULL. The bundle
 * must outlive the session. */
mw_status mw_session_create(const mw_bundle* bundle, const mw_session_options* options, mw_session** out);
void mw_session_free(mw_session* session);

/* One micro-batch: inputs[i] for the manifest's input i (mw_bundle_input), labels as mw_bundle_labels. */
typedef struct mw_batch {
  const void* const* inputs;
  size_t input_count;
  const void* labels;
} mw_batch;

/* One optimizer step over exactly mw_bundle_micro_batches() micro-batches: gradients summed and divided by their
 * count, then the manifest's optimizer (or, for fused-update bundles, the program's own update). *loss (may be
 * NULL) receives the mean of the micro-batch losses. */
mw_status mw_train_step(mw_session* session, const mw_batch* micro_batches, size_t count, double* loss);

/* Logits of one batch with the live (trained) parameters; logits holds logits_count floats (the manifest's
 * logits numel: batch * classes). */
mw_status mw_predict(mw_session* session, const void* const* inputs, size_t input_count, float* logits,
                     size_t logits_count);

int64_t mw_session_steps(const mw_session* session); /* optimizer steps taken (restored by a checkpoint) */
int32_t mw_session_threads(const mw_session* session);
double mw_session_lr(const mw_session* session);
/* Learning rate of the next steps (app-side optimizers; fused bundles only when exported with lr as input). */
mw_status mw_session_set_lr(mw_session* session, double lr);

/* Trained parameters in manifest order, for apps that show or export them. */
size_t mw_parameter_count(const mw_session* session);
mw_status mw_parameter_info(mw_session* session, size_t index, mw_tensor_info* out);
mw_status mw_parameter_read(mw_session* session, size_t index, float* out, size_t count);

/* ---- checkpoints (safetensors; names and metadata as sdk_tools/runner/checkpoint.py) ---- */
/* Atomic: temp file, fsync, rename, directory fsync. A crash mid-save leaves the previous checkpoint. */
mw_status mw_checkpoint_save(mw_session* session, const char* path, int64_t data_position);
/* Restore parameters, optimizer state and steps; *data_position (may be NULL) gets the batches consumed. */
mw_status mw_checkpoint_load(mw_session* session, const char* path, int64_t* data_position);

/* ---- memory (VmHWM/VmRSS on Linux and Android; task_vm_info phys_footprint on Apple) ---- */
typedef struct mw_memory {
  int64_t current_bytes; /* resident now */
  int64_t peak_bytes;    /* high-water mark since the process started or the last mw_memory_reset_peak */
} mw_memory;
mw_status mw_memory_sample(mw_memory* out);
/* Restart the high-water mark (Linux: /proc/self/clear_refs; Apple: the footprint peak cannot be reset, so the
 * current footprint is recorded and later peaks are tracked from samples). */
mw_status mw_memory_reset_peak(void);

/* ---- report.v1 (sdk_tools/lab/schemas/report.v1.schema.json) ---- */
/* Marks the start of a phase ("evaluate_before", "train", "checkpoint", "evaluate_after"): the session records
 * the baseline before the first phase and each phase's peak, as `memwall measure` does. */
mw_status mw_session_phase(mw_session* session, const char* phase);
/* A phase's peak over the session's baseline (bytes), as `memwall measure` reports phase_peak_delta_bytes; a phase
 * still running is sampled now. MW_ERR_ARGUMENT for a phase the session never entered. */
mw_status mw_phase_peak_delta(mw_session* session, const char* phase, int64_t* delta_bytes);

typedef struct mw_report_options {
  const char* device_json; /* the report's "device" object as JSON; NULL: this host (uname, RAM) */
  const char* status;      /* "ok" (NULL) or "oom", "error" */
  const char* error;       /* error text when status is not ok; NULL otherwise */
  double accuracy_before;  /* < 0: unknown */
  double accuracy_after;   /* < 0: unknown */
} mw_report_options;

/* The report of everything this session ran (steps, step times, losses, memory). *json_out is allocated by the
 * library; release it with mw_string_free. options may be NULL. */
mw_status mw_report_json(const mw_session* session, const mw_report_options* options, char** json_out);
void mw_string_free(char* string);

#ifdef __cplusplus
}
#endif

#endif /* MEMWALL_H */
