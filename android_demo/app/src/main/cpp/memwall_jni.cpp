// JNI bridge from dev.memwall.demo.NativeCore (NativeBackend.kt) to the C++ training core's C API
// (runtime/include/memwall.h). Errors become IllegalStateException with mw_last_error(): one line, problem and fix.
// Built by Gradle's externalNativeBuild for the app, and on the host by tests/test_android.py (same file).
#include <jni.h>

#include <memwall.h>

#include <memory>
#include <string>
#include <vector>

namespace {

struct Handle {
  mw_bundle* bundle = nullptr;
  mw_session* session = nullptr;
  int64_t input_numel = 0;
  int64_t label_numel = 0;
  Handle() = default;
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  ~Handle() {
    mw_session_free(session);
    mw_bundle_free(bundle);
  }
};

void throw_java(JNIEnv* env, const char* java_class, const std::string& message) {
  jclass cls = env->FindClass(java_class);
  if (cls != nullptr) env->ThrowNew(cls, message.c_str());
}

// True (and a Java exception pending) when status is an error.
bool failed(JNIEnv* env, mw_status status) {
  if (status == MW_OK) return false;
  throw_java(env, "java/lang/IllegalStateException", std::string(mw_status_name(status)) + ": " + mw_last_error());
  return true;
}

Handle* handle_of(JNIEnv* env, jlong handle) {
  auto* h = reinterpret_cast<Handle*>(handle);
  if (h == nullptr) throw_java(env, "java/lang/IllegalStateException", "the native session is closed");
  return h;
}

std::string utf8(JNIEnv* env, jstring s) {
  const char* chars = env->GetStringUTFChars(s, nullptr);
  std::string out(chars != nullptr ? chars : "");
  if (chars != nullptr) env->ReleaseStringUTFChars(s, chars);
  return out;
}

// A Java primitive array's elements for the duration of a call, released without copying back.
template <typename Array, typename Element, Element* (JNIEnv::*Get)(Array, jboolean*),
          void (JNIEnv::*Release)(Array, Element*, jint)>
class Elements {
 public:
  Elements(JNIEnv* env, Array array, jint mode) : env_(env), array_(array), mode_(mode), data_((env->*Get)(array, nullptr)) {}
  Elements(const Elements&) = delete;
  Elements& operator=(const Elements&) = delete;
  ~Elements() {
    if (data_ != nullptr) (env_->*Release)(array_, data_, mode_);
  }
  Element* data() const { return data_; }

 private:
  JNIEnv* env_;
  Array array_;
  jint mode_;
  Element* data_;
};
using Floats = Elements<jfloatArray, jfloat, &JNIEnv::GetFloatArrayElements, &JNIEnv::ReleaseFloatArrayElements>;
using Longs = Elements<jlongArray, jlong, &JNIEnv::GetLongArrayElements, &JNIEnv::ReleaseLongArrayElements>;

}  // namespace

extern "C" {

JNIEXPORT jlong JNICALL Java_dev_memwall_demo_NativeCore_open(JNIEnv* env, jclass, jstring directory) {
  auto h = std::make_unique<Handle>();
  if (failed(env, mw_bundle_open(utf8(env, directory).c_str(), &h->bundle))) return 0;
  mw_tensor_info input{};
  mw_tensor_info labels{};
  if (failed(env, mw_bundle_input(h->bundle, 0, &input)) || failed(env, mw_bundle_labels(h->bundle, &labels))) return 0;
  if (mw_bundle_input_count(h->bundle) != 1 || input.dtype != MW_FLOAT32 || labels.dtype != MW_INT64) {
    throw_java(env, "java/lang/IllegalStateException",
               "the app trains one float32 input with int64 class labels; re-export with --loss cross_entropy");
    return 0;
  }
  h->input_numel = input.numel;
  h->label_numel = labels.numel;
  if (failed(env, mw_session_create(h->bundle, nullptr, &h->session))) return 0;
  return reinterpret_cast<jlong>(h.release());
}

JNIEXPORT jdouble JNICALL Java_dev_memwall_demo_NativeCore_trainStep(JNIEnv* env, jclass, jlong handle,
                                                                     jfloatArray inputs, jlongArray labels, jint count) {
  Handle* h = handle_of(env, handle);
  if (h == nullptr) return 0;
  if (count <= 0 || env->GetArrayLength(inputs) != h->input_numel * count ||
      env->GetArrayLength(labels) != h->label_numel * count) {
    throw_java(env, "java/lang/IllegalArgumentException", "inputs or labels do not hold count micro-batches");
    return 0;
  }
  Floats x(env, inputs, JNI_ABORT);
  Longs y(env, labels, JNI_ABORT);
  std::vector<const void*> input_ptrs(static_cast<size_t>(count));
  std::vector<mw_batch> batches(static_cast<size_t>(count));
  for (size_t i = 0; i < batches.size(); ++i) {
    input_ptrs[i] = x.data() + static_cast<int64_t>(i) * h->input_numel;
    batches[i] = mw_batch{&input_ptrs[i], 1, y.data() + static_cast<int64_t>(i) * h->label_numel};
  }
  double loss = 0;
  if (failed(env, mw_train_step(h->session, batches.data(), batches.size(), &loss))) return 0;
  return loss;
}

JNIEXPORT void JNICALL Java_dev_memwall_demo_NativeCore_predict(JNIEnv* env, jclass, jlong handle, jfloatArray input,
                                                                jfloatArray logits) {
  Handle* h = handle_of(env, handle);
  if (h == nullptr) return;
  if (env->GetArrayLength(input) != h->input_numel) {
    throw_java(env, "java/lang/IllegalArgumentException", "input does not hold one batch");
    return;
  }
  Floats x(env, input, JNI_ABORT);
  Floats out(env, logits, 0);  // 0: copy the logits back into the Java array
  const void* inputs[] = {x.data()};
  failed(env, mw_predict(h->session, inputs, 1, out.data(), static_cast<size_t>(env->GetArrayLength(logits))));
}

JNIEXPORT void JNICALL Java_dev_memwall_demo_NativeCore_saveCheckpoint(JNIEnv* env, jclass, jlong handle, jstring path,
                                                                       jlong data_position) {
  Handle* h = handle_of(env, handle);
  if (h != nullptr) failed(env, mw_checkpoint_save(h->session, utf8(env, path).c_str(), data_position));
}

JNIEXPORT jlong JNICALL Java_dev_memwall_demo_NativeCore_loadCheckpoint(JNIEnv* env, jclass, jlong handle,
                                                                        jstring path) {
  Handle* h = handle_of(env, handle);
  int64_t position = 0;
  if (h == nullptr || failed(env, mw_checkpoint_load(h->session, utf8(env, path).c_str(), &position))) return 0;
  return position;
}

JNIEXPORT void JNICALL Java_dev_memwall_demo_NativeCore_close(JNIEnv*, jclass, jlong handle) {
  delete reinterpret_cast<Handle*>(handle);
}

}  // extern "C"
