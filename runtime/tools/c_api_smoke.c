/* The C API from plain C99, as Swift and JNI see it: open a bundle, train one step on zeros, predict, save and
 * reload a checkpoint, write a report. Prints "ok <steps> <loss>" or the failing call's status and error.
 *
 *   memwall-c-smoke BUNDLE CHECKPOINT
 */
#include <stdio.h>
#include <stdlib.h>

#include "memwall.h"

#define CHECK(call)                                                                          \
  do {                                                                                       \
    mw_status status_ = (call);                                                              \
    if (status_ != MW_OK) {                                                                  \
      fprintf(stderr, "%s: %s: %s\n", #call, mw_status_name(status_), mw_last_error());     \
      return 1;                                                                              \
    }                                                                                        \
  } while (0)

static size_t element_size(mw_dtype dtype) { return dtype == MW_INT64 ? 8 : 4; }

int main(int argc, char** argv) {
  mw_bundle* bundle = NULL;
  mw_session* session = NULL;
  mw_tensor_info info, labels;
  const void* inputs[MW_MAX_RANK];
  void* owned[MW_MAX_RANK];
  size_t count, i;
  int32_t micro, m;
  mw_batch* batches;
  double loss = 0;
  float* logits;
  int64_t position = -1;
  char* report = NULL;
  if (argc != 3) {
    fprintf(stderr, "usage: memwall-c-smoke BUNDLE CHECKPOINT\n");
    return 2;
  }
  if (mw_api_version() != MW_API_VERSION) return 1;
  CHECK(mw_bundle_open(argv[1], &bundle));
  count = mw_bundle_input_count(bundle);
  if (count > MW_MAX_RANK) return 1;
  for (i = 0; i < count; ++i) {
    CHECK(mw_bundle_input(bundle, i, &info));
    owned[i] = calloc((size_t)info.numel, element_size(info.dtype));
    inputs[i] = owned[i];
  }
  CHECK(mw_bundle_labels(bundle, &labels));
  void* label_data = calloc((size_t)labels.numel, element_size(labels.dtype));
  CHECK(mw_session_create(bundle, NULL, &session));
  micro = mw_bundle_micro_batches(bundle);
  batches = calloc((size_t)micro, sizeof(mw_batch));
  for (m = 0; m < micro; ++m) {
    batches[m].inputs = inputs;
    batches[m].input_count = count;
    batches[m].labels = label_data;
  }
  CHECK(mw_session_phase(session, "train"));
  CHECK(mw_train_step(session, batches, (size_t)micro, &loss));
  CHECK(mw_bundle_input(bundle, 0, &info));
  size_t logits_count = (size_t)info.shape[0] * mw_bundle_class_count(bundle);
  logits = calloc(logits_count, sizeof(float));
  CHECK(mw_predict(session, inputs, count, logits, logits_count));
  CHECK(mw_checkpoint_save(session, argv[2], 7));
  CHECK(mw_checkpoint_load(session, argv[2], &position));
  CHECK(mw_report_json(session, NULL, &report));
  if (position != 7 || mw_session_steps(session) != 1 || report == NULL) {
    fprintf(stderr, "checkpoint position %lld, steps %lld\n", (long long)position, (long long)mw_session_steps(session));
    return 1;
  }
  /* A wrong call fails with a status and a message, and the session stays usable. */
  if (mw_train_step(session, batches, 0, &loss) != MW_ERR_ARGUMENT || mw_last_error()[0] == '\0') {
    fprintf(stderr, "a step over no micro-batches was not refused\n");
    return 1;
  }
  printf("ok %lld %.9g\n", (long long)mw_session_steps(session), loss);
  mw_string_free(report);
  free(logits);
  free(batches);
  free(label_data);
  for (i = 0; i < count; ++i) free(owned[i]);
  mw_session_free(session);
  mw_bundle_free(bundle);
  return 0;
}
