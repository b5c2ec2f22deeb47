#include "executorch_session.h"

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <executorch/extension/data_loader/mmap_data_loader.h>
#include <executorch/extension/memory_allocator/malloc_memory_allocator.h>
#include <executorch/runtime/backend/interface.h>
#include <executorch/runtime/core/hierarchical_allocator.h>
#include <executorch/runtime/executor/memory_manager.h>
#include <executorch/runtime/executor/method.h>
#include <executorch/runtime/executor/program.h>
#include <executorch/runtime/kernel/operator_registry.h>
#include <executorch/runtime/platform/platform.h>
#include <executorch/runtime/platform/runtime.h>
#include <mutex>
#include <thread>

#include "failure.h"

#if defined(MEMWALL_HAS_THREADPOOL)
// The wheel ships libexecutorch_threadpool but not extension/threadpool/threadpool.h; these are its declarations
// (ExecuTorch 1.5.1 extension/threadpool/threadpool.h), used only through the pointer get_threadpool returns.
namespace executorch::extension::threadpool {
class ThreadPool {
 public:
  size_t get_thread_count() const;
  bool _unsafe_reset_threadpool(uint32_t num_threads);
};
ThreadPool* get_threadpool();
}  // namespace executorch::extension::threadpool
#endif

namespace memwall {

namespace et = executorch::runtime;
using executorch::extension::MallocMemoryAllocator;
using executorch::extension::MmapDataLoader;

namespace {

// ExecuTorch's log: its error lines are kept (the last one joins our one-line error: it names the operator or
// the input at fault), info and debug lines are dropped unless MEMWALL_RUNTIME_LOG is set, so a refusal stays
// one line on stderr.
thread_local std::string last_runtime_error;
bool verbose_runtime_log = false;

void runtime_log(et_timestamp_t, et_pal_log_level_t level, const char*, const char*, size_t, const char* message, size_t length) {
  std::string text(message, length);
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  if (level == kError || level == kFatal) last_runtime_error = text;
  if (verbose_runtime_log || level == kFatal) std::fprintf(stderr, "[executorch %c] %s\n", char(level), text.c_str());
}

std::string error_text(et::Error error) {
  std::string out = std::string(et::to_string(error)) + " (" + std::to_string(int(error)) + ")";
  if (!last_runtime_error.empty()) out += ", ExecuTorch said: " + last_runtime_error;
  last_runtime_error.clear();
  return out;
}

mw_dtype to_dtype(executorch::aten::ScalarType type) {
  switch (type) {
    case executorch::aten::ScalarType::Float: return MW_FLOAT32;
    case executorch::aten::ScalarType::Long: return MW_INT64;
    default: fail(MW_ERR_UNSUPPORTED, "the program has a tensor of ExecuTorch scalar type " + std::to_string(int(type)) +
                                          ", which this runtime does not exchange (float32, int64)");
  }
}

bool program_loaded = false;  // the thread pool is process-wide and sized before the first program loads
std::once_flag runtime_initialized;

int32_t configure_threads(int32_t wanted) {
#if defined(MEMWALL_HAS_THREADPOOL)
  auto* pool = executorch::extension::threadpool::get_threadpool();
  if (pool == nullptr) return 1;
  if (!program_loaded && wanted > 0 && size_t(wanted) != pool->get_thread_count()) {
    pool->_unsafe_reset_threadpool(uint32_t(wanted));
  }
  return int32_t(pool->get_thread_count());
#else
  (void)wanted;
  return 1;
#endif
}

// The manifest's "performance_cores": every core this process may use (phones: ExecuTorch's cpuinfo count).
int32_t available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return int32_t(std::max(1u, std::thread::hardware_concurrency()));
}

}  // namespace

struct ExecuTorchSession::Program {
  std::unique_ptr<MmapDataLoader> loader;
  std::unique_ptr<et::Program> program;
};

class Method {
 public:
  Method(const et::Program& program, const std::string& name) : name_(name) {
    auto meta = program.method_meta(name.c_str());
    if (!meta.ok()) fail(MW_ERR_BUNDLE, "the program has no method '" + name + "' (" + error_text(meta.error()) + "); re-export the bundle");
    for (size_t i = 0; i < meta->num_memory_planned_buffers(); ++i) {
      size_t size = size_t(meta->memory_planned_buffer_size(i).get());
      // 64-byte aligned, as ExecuTorch's own Module allocates them.
      void* data = size ? std::aligned_alloc(64, (size + 63) / 64 * 64) : nullptr;
      if (size && data == nullptr) fail(MW_ERR_NO_MEMORY, "cannot allocate the " + std::to_string(size) + "-byte planned buffer of " + name);
      buffers_.emplace_back(static_cast<uint8_t*>(data), &std::free);
      spans_.emplace_back(static_cast<uint8_t*>(data), size);
    }
    planned_ = std::make_unique<et::HierarchicalAllocator>(et::Span<et::Span<uint8_t>>(spans_.data(), spans_.size()));
    memory_ = std::make_unique<et::MemoryManager>(&method_allocator_, planned_.get(), &temp_allocator_);
    auto method = program.load_method(name.c_str(), memory_.get());
    if (!method.ok()) {
      mw_status status = method.error() == et::Error::OperatorMissing ? MW_ERR_UNSUPPORTED : MW_ERR_RUNTIME;
      fail(status, "ExecuTorch cannot load method '" + name + "': " + error_text(method.error()) +
                       (status == MW_ERR_UNSUPPORTED ? "; an operator is missing from this runtime's kernels: link the kernel "
                                                       "library the bundle's backend_options.runtime.kernels names"
                                                     : "; re-export the bundle with this memwall"));
    }
    method_ = std::make_unique<et::Method>(std::move(method.get()));
    for (size_t i = 0; i < method_->inputs_size(); ++i) {
      auto info = meta->input_tensor_meta(i);
      InputLayout layout;
      if (info.ok()) {
        layout.type = info->scalar_type();
        layout.nbytes = info->nbytes();
        layout.sizes.assign(info->sizes().begin(), info->sizes().end());
        layout.dim_order.assign(info->dim_order().begin(), info->dim_order().end());
        layout.strides.assign(layout.sizes.size(), 1);
        for (size_t d = layout.sizes.size(); d-- > 1;) layout.strides[d - 1] = layout.strides[d] * layout.sizes[d];
        layout.is_tensor = true;
      }
      inputs_.push_back(std::move(layout));
    }
  }

  void set_input(size_t index, const void* data, size_t nbytes) {
    if (index >= inputs_.size() || !inputs_[index].is_tensor) fail(MW_ERR_ARGUMENT, name_ + " has no tensor input " + std::to_string(index));
    InputLayout& in = inputs_[index];
    if (nbytes != in.nbytes) {
      fail(MW_ERR_ARGUMENT, "input " + std::to_string(index) + " of " + name_ + " takes " + std::to_string(in.nbytes) + " bytes, got " +
                                std::to_string(nbytes));
    }
    executorch::aten::TensorImpl impl(in.type, ssize_t(in.sizes.size()), in.sizes.empty() ? nullptr : in.sizes.data(),
                                      const_cast<void*>(data), in.dim_order.empty() ? nullptr : in.dim_order.data(),
                                      in.strides.empty() ? nullptr : in.strides.data());
    executorch::aten::Tensor tensor(&impl);
    // A planned input is copied into the method's memory; the buffer need not outlive the call.
    et::Error error = method_->set_input(et::EValue(tensor), index);
    if (error != et::Error::Ok) fail(MW_ERR_RUNTIME, "cannot set input " + std::to_string(index) + " of " + name_ + ": " + error_text(error));
  }

  void execute() {
    et::Error error = method_->execute();
    if (error != et::Error::Ok) {
      fail(MW_ERR_RUNTIME, "ExecuTorch failed executing " + name_ + ": " + error_text(error) +
                               " (its log line above names the operator); check the inputs and the runtime's kernels");
    }
  }

  size_t inputs() const { return method_->inputs_size(); }
  size_t outputs() const { return method_->outputs_size(); }
  const et::EValue& output(size_t index) const { return method_->get_output(index); }

 private:
  struct InputLayout {
    bool is_tensor = false;
    executorch::aten::ScalarType type = executorch::aten::ScalarType::Float;
    size_t nbytes = 0;
    std::vector<int32_t> sizes;
    std::vector<uint8_t> dim_order;
    std::vector<int32_t> strides;
  };
  std::string name_;
  std::vector<std::unique_ptr<uint8_t, void (*)(void*)>> buffers_;
  std::vector<et::Span<uint8_t>> spans_;
  std::unique_ptr<et::HierarchicalAllocator> planned_;
  MallocMemoryAllocator method_allocator_, temp_allocator_;
  std::unique_ptr<et::MemoryManager> memory_;
  std::unique_ptr<et::Method> method_;
  std::vector<InputLayout> inputs_;
};

ExecuTorchSession::ExecuTorchSession(const Bundle& bundle, int32_t threads) {
  std::call_once(runtime_initialized, [] {
    verbose_runtime_log = std::getenv("MEMWALL_RUNTIME_LOG") != nullptr;
    et::register_pal(et::PalImpl::create(&runtime_log, __FILE__));
    et::runtime_init();
  });
  std::vector<std::string> registered;
  for (size_t i = 0; i < et::get_num_registered_backends(); ++i) {
    auto name = et::get_backend_name(i);
    if (name.ok()) registered.emplace_back(name.get());
  }
  for (const std::string& backend : bundle.runtime_backends) {
    if (std::find(registered.begin(), registered.end(), backend) == registered.end()) {
      fail(MW_ERR_UNSUPPORTED, "this program calls the " + backend + " delegate, which this ExecuTorch runtime lacks: link " +
                                   "its backend library (executorch::backend_xnnpack), or re-export the bundle without speed routes (--no-speed-routes)");
    }
  }
  for (std::string op : bundle.runtime_operators) {
    // The manifest writes an operator without an overload as "aten::copy_."; the registry names it "aten::copy_".
    if (!op.empty() && op.back() == '.') op.pop_back();
    if (!et::registry_has_op_function(op.c_str())) {
      fail(MW_ERR_UNSUPPORTED, "this program needs the operator " + op + ", which this ExecuTorch runtime's kernels lack: link the " +
                                   "kernel library with it (the wheel's executorch::kernels_optimized), or re-export the bundle");
    }
  }
  int32_t wanted = threads > 0 ? threads : (bundle.runtime_threads > 0 ? bundle.runtime_threads : available_cores());
  threads_ = configure_threads(wanted);

  program_ = std::make_unique<Program>();
  auto loader = MmapDataLoader::from(bundle.program_path.c_str(), MmapDataLoader::MlockConfig::NoMlock);
  if (!loader.ok()) fail(MW_ERR_IO, "cannot map " + bundle.program_path + ": " + error_text(loader.error()));
  program_->loader = std::make_unique<MmapDataLoader>(std::move(loader.get()));
  auto program = et::Program::load(program_->loader.get(), et::Program::Verification::InternalConsistency);
  if (!program.ok()) {
    fail(MW_ERR_BUNDLE, bundle.program_path + " is not an ExecuTorch program this runtime reads (" + error_text(program.error()) +
                            "); re-export the bundle with this memwall");
  }
  program_->program = std::make_unique<et::Program>(std::move(program.get()));
  program_loaded = true;
  train_ = std::make_unique<Method>(*program_->program, bundle.train.name);
  predict_ = std::make_unique<Method>(*program_->program, bundle.predict.name);
}

ExecuTorchSession::~ExecuTorchSession() = default;

void ExecuTorchSession::set_input(bool train, size_t index, const void* data, size_t nbytes) { method(train).set_input(index, data, nbytes); }
size_t ExecuTorchSession::input_count(bool train) const { return method(train).inputs(); }
void ExecuTorchSession::execute(bool train) { method(train).execute(); }
size_t ExecuTorchSession::output_count(bool train) const { return method(train).outputs(); }

OutputTensor ExecuTorchSession::output(bool train, size_t index) const {
  const et::EValue& value = method(train).output(index);
  if (!value.isTensor()) fail(MW_ERR_RUNTIME, "output " + std::to_string(index) + " of the program is not a tensor");
  const executorch::aten::Tensor& tensor = value.toTensor();
  OutputTensor out{tensor.mutable_data_ptr(), tensor.nbytes(), to_dtype(tensor.scalar_type()), {}};
  for (auto size : tensor.sizes()) out.shape.push_back(size);
  return out;
}

bool ExecuTorchSession::has_method(const std::string& name) const {
  for (size_t i = 0; i < program_->program->num_methods(); ++i) {
    auto method_name = program_->program->get_method_name(i);
    if (method_name.ok() && name == method_name.get()) return true;
  }
  return false;
}

std::vector<int64_t> ExecuTorchSession::int_outputs(const std::string& name) {
  Method method(*program_->program, name);
  method.execute();
  std::vector<int64_t> out;
  for (size_t i = 0; i < method.outputs(); ++i) {
    if (method.output(i).isInt()) out.push_back(method.output(i).toInt());
  }
  return out;
}

std::vector<std::string> ExecuTorchSession::string_outputs(const std::string& name) {
  Method method(*program_->program, name);
  method.execute();
  std::vector<std::string> out;
  for (size_t i = 0; i < method.outputs(); ++i) {
    if (method.output(i).isString()) out.emplace_back(method.output(i).toString());
  }
  return out;
}

}  // namespace memwall
