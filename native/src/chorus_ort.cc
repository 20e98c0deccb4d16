// Chorus native ORT addon: ONNX Runtime sessions run through IO binding, so tensors (the KV cache) stay in the
// session's device memory between runs instead of crossing into JS memory at every step as onnxruntime-node does.
//
// It links the libonnxruntime.so.1 that onnxruntime-node ships (one runtime per process, shared by both bindings)
// and asks for C API version 21 (the headers it is built against; the 1.29 runtime is backward compatible).
// Device copies for CUDA tensors go through libcudart, opened at run time (it is already loaded by the CUDA
// provider), so the addon itself has no CUDA build dependency.
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#include <napi.h>

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace {

// ---------------------------------------------------------------------------------------------------------------
// dtypes

struct DtypeInfo {
  const char* name;
  ONNXTensorElementDataType onnx;
  size_t size;
  napi_typedarray_type array;
};

const DtypeInfo kDtypes[] = {
    {"float32", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, 4, napi_float32_array},
    {"float16", ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16, 2, napi_uint16_array},
    // After float16: a bare Uint16Array means float16; bfloat16 host data says so with `dtype`.
    {"bfloat16", ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16, 2, napi_uint16_array},
    {"int32", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32, 4, napi_int32_array},
    {"int64", ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64, 8, napi_bigint64_array},
};

const DtypeInfo* dtypeByName(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}
const DtypeInfo* dtypeByOnnx(ONNXTensorElementDataType t) {
  for (const auto& d : kDtypes)
    if (t == d.onnx) return &d;
  return nullptr;
}
const DtypeInfo* dtypeByArray(napi_typedarray_type t) {
  for (const auto& d : kDtypes)
    if (t == d.array) return &d;
  return nullptr;
}

const char* arrayName(napi_typedarray_type t) {
  switch (t) {
    case napi_int8_array: return "Int8Array";
    case napi_uint8_array: return "Uint8Array";
    case napi_uint8_clamped_array: return "Uint8ClampedArray";
    case napi_int16_array: return "Int16Array";
    case napi_uint16_array: return "Uint16Array";
    case napi_int32_array: return "Int32Array";
    case napi_uint32_array: return "Uint32Array";
    case napi_float32_array: return "Float32Array";
    case napi_float64_array: return "Float64Array";
    case napi_bigint64_array: return "BigInt64Array";
    case napi_biguint64_array: return "BigUint64Array";
    default: return "typed array";
  }
}

std::string dimsText(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); i++) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

size_t elementCount(const std::vector<int64_t>& dims) {
  size_t n = 1;
  for (auto d : dims) n *= static_cast<size_t>(d);
  return n;
}

// Thrown by our own checks; turned into a JS Error (with the message as is) at the boundary.
struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  for (auto& ch : s)
    if (ch == '\n') ch = ' ';
  return s;
}

// A typed array of `n` elements of `dtype` over a fresh ArrayBuffer (node-addon-api has no untyped constructor).
Napi::Value newTypedArray(Napi::Env env, napi_typedarray_type type, size_t n, size_t bytes, void** data) {
  auto buffer = Napi::ArrayBuffer::New(env, bytes);
  *data = buffer.Data();
  napi_value out;
  NAPI_THROW_IF_FAILED(env, napi_create_typedarray(env, type, n, buffer, 0, &out), Napi::Value());
  return Napi::Value(env, out);
}

std::vector<int64_t> readDims(const Napi::Value& v, const std::string& what) {
  if (!v.IsArray()) throw UsageError(what + ": dims must be an array of non-negative integers");
  auto a = v.As<Napi::Array>();
  std::vector<int64_t> dims(a.Length());
  for (uint32_t i = 0; i < a.Length(); i++) {
    Napi::Value e = a.Get(i);
    double d = e.IsNumber() ? e.As<Napi::Number>().DoubleValue() : -1;
    if (!(d >= 0) || d != static_cast<double>(static_cast<int64_t>(d)))
      throw UsageError(what + ": dims[" + std::to_string(i) + "] must be a non-negative integer");
    dims[i] = static_cast<int64_t>(d);
  }
  return dims;
}

// ---------------------------------------------------------------------------------------------------------------
// process-wide runtime state

const OrtApi* g_api = nullptr;
std::mutex g_envMutex;
// Never released: the ORT environment is a process singleton shared with onnxruntime-node, and tearing it down
// from a static destructor at exit races with the other binding.
Ort::Env* g_env = nullptr;

Ort::Env& env() {
  std::lock_guard<std::mutex> lock(g_envMutex);
  if (g_env == nullptr) g_env = new Ort::Env(ORT_LOGGING_LEVEL_WARNING, "chorus-native");
  return *g_env;
}

// The few CUDA runtime entry points the addon needs (zero-fill, host <-> device copies).
struct Cudart {
  int (*setDevice)(int) = nullptr;
  int (*memcpy)(void*, const void*, size_t, int) = nullptr;
  int (*memset)(void*, int, size_t) = nullptr;
  int (*deviceSynchronize)() = nullptr;
  const char* (*errorString)(int) = nullptr;
  int (*memGetInfo)(size_t*, size_t*) = nullptr;
};
std::mutex g_cudartMutex;
Cudart* g_cudart = nullptr;

const Cudart& cudart() {
  std::lock_guard<std::mutex> lock(g_cudartMutex);
  if (g_cudart != nullptr) return *g_cudart;
  const char* names[] = {"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
  void* h = nullptr;
  for (auto n : names)
    if ((h = dlopen(n, RTLD_NOW | RTLD_NOLOAD)) != nullptr) break;
  for (size_t i = 0; h == nullptr && i < 3; i++) h = dlopen(names[i], RTLD_NOW);
  if (h == nullptr)
    throw UsageError("cannot load the CUDA runtime (libcudart.so.13): set LD_LIBRARY_PATH to the CUDA 13 libraries");
  auto c = new Cudart();
  c->setDevice = reinterpret_cast<int (*)(int)>(dlsym(h, "cudaSetDevice"));
  c->memcpy = reinterpret_cast<int (*)(void*, const void*, size_t, int)>(dlsym(h, "cudaMemcpy"));
  c->memset = reinterpret_cast<int (*)(void*, int, size_t)>(dlsym(h, "cudaMemset"));
  c->deviceSynchronize = reinterpret_cast<int (*)()>(dlsym(h, "cudaDeviceSynchronize"));
  c->errorString = reinterpret_cast<const char* (*)(int)>(dlsym(h, "cudaGetErrorString"));
  c->memGetInfo = reinterpret_cast<int (*)(size_t*, size_t*)>(dlsym(h, "cudaMemGetInfo"));
  if (!c->setDevice || !c->memcpy || !c->memset || !c->deviceSynchronize || !c->errorString || !c->memGetInfo)
    throw UsageError("the CUDA runtime found lacks cudaMemcpy/cudaMemset/cudaSetDevice");
  g_cudart = c;
  return *c;
}

void cudaCheck(int code, const char* what) {
  if (code != 0) throw UsageError(std::string(what) + " failed: " + cudart().errorString(code));
}

// ---------------------------------------------------------------------------------------------------------------
// sessions and device memory

// What a session's tensors keep alive: the session (its allocator owns their device memory) and where they live.
struct Core {
  Ort::Session session{nullptr};
  bool cuda = false;
  int device = 0;
  Ort::MemoryInfo memoryInfo{nullptr};
  std::unique_ptr<Ort::Allocator> allocator;  // CUDA only; declared after the session so it is destroyed first

  ~Core() { allocator.reset(); }
};

// One allocation; views share it.
struct Block {
  std::shared_ptr<Core> core;
  void* ptr = nullptr;
  size_t bytes = 0;

  ~Block() {
    if (ptr == nullptr) return;
    if (core->cuda)
      core->allocator->Free(ptr);
    else
      std::free(ptr);
  }
};

template <typename F>
auto guarded(const Napi::Env& env, F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Napi::Error&) {
    throw;
  } catch (const Ort::Exception& e) {
    throw Napi::Error::New(env, "ONNX Runtime: " + trimmed(e.what()));
  } catch (const std::exception& e) {
    throw Napi::Error::New(env, e.what());
  }
}

class Addon;

class DeviceTensor : public Napi::ObjectWrap<DeviceTensor> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "DeviceTensor",
                       {InstanceAccessor<&DeviceTensor::Dtype>("dtype"), InstanceAccessor<&DeviceTensor::Dims>("dims"),
                        InstanceAccessor<&DeviceTensor::Location>("location"),
                        InstanceMethod<&DeviceTensor::View>("view"), InstanceMethod<&DeviceTensor::Upload>("upload"),
                        InstanceMethod<&DeviceTensor::Download>("download"),
                        InstanceMethod<&DeviceTensor::Release>("release")});
  }

  explicit DeviceTensor(const Napi::CallbackInfo& info) : Napi::ObjectWrap<DeviceTensor>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "DeviceTensor: made by session.allocate() or tensor.view(), not new");
  }

  // Points this (fresh) object at `count(dims)` elements of `block` from element `offset` on.
  void Init(std::shared_ptr<Block> block, const DtypeInfo* dtype, size_t offset, std::vector<int64_t> dims) {
    block_ = std::move(block);
    dtype_ = dtype;
    offset_ = offset;
    dims_ = std::move(dims);
    value_ = Ort::Value::CreateTensor(block_->core->memoryInfo, data(), elementCount(dims_) * dtype_->size,
                                      dims_.data(), dims_.size(), dtype_->onnx);
  }

  Ort::Value& value() {
    live();
    return value_;
  }
  const Block* block() const { return block_.get(); }

 private:
  void live() const {
    if (!block_) throw UsageError("DeviceTensor: used after release()");
  }
  void* data() const { return static_cast<char*>(block_->ptr) + offset_ * dtype_->size; }
  size_t capacity() const { return block_->bytes / dtype_->size; }

  Napi::Value Dtype(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), dtype_->name); }
  Napi::Value Dims(const Napi::CallbackInfo& info) {
    auto a = Napi::Array::New(info.Env(), dims_.size());
    for (uint32_t i = 0; i < dims_.size(); i++) a.Set(i, Napi::Number::New(info.Env(), static_cast<double>(dims_[i])));
    return a;
  }
  Napi::Value Location(const Napi::CallbackInfo& info) {
    return Napi::String::New(info.Env(), block_ && block_->core->cuda ? "cuda" : "cpu");
  }

  Napi::Value View(const Napi::CallbackInfo& info);

  Napi::Value Upload(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      live();
      if (info.Length() < 1 || !info[0].IsTypedArray())
        throw UsageError(std::string("DeviceTensor.upload: expected a typed array of ") + dtype_->name);
      auto ta = info[0].As<Napi::TypedArray>();
      size_t n = elementCount(dims_);
      if (ta.TypedArrayType() != dtype_->array || ta.ElementLength() != n)
        throw UsageError(std::string("DeviceTensor.upload: expected ") + arrayName(dtype_->array) + " of " +
                         std::to_string(n) + " elements for " + dtype_->name + " " + dimsText(dims_) + ", found " +
                         arrayName(ta.TypedArrayType()) + " of " + std::to_string(ta.ElementLength()));
      const void* src = static_cast<const char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
      copy(data(), src, n * dtype_->size, true);
      return info.Env().Undefined();
    });
  }

  Napi::Value Download(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      live();
      size_t n = elementCount(dims_);
      void* dst = nullptr;
      auto out = newTypedArray(info.Env(), dtype_->array, n, n * dtype_->size, &dst);
      copy(dst, data(), n * dtype_->size, false);
      return out;
    });
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    value_ = Ort::Value{nullptr};
    block_.reset();
    return info.Env().Undefined();
  }

  void copy(void* dst, const void* src, size_t bytes, bool toDevice) {
    if (bytes == 0) return;
    if (!block_->core->cuda) {
      std::memcpy(dst, src, bytes);
      return;
    }
    const auto& c = cudart();
    cudaCheck(c.setDevice(block_->core->device), "cudaSetDevice");
    // Runs end with their outputs synchronized, so a plain blocking copy sees every write a run made.
    cudaCheck(c.memcpy(dst, src, bytes, toDevice ? 1 /* HostToDevice */ : 2 /* DeviceToHost */), "cudaMemcpy");
  }

  std::shared_ptr<Block> block_;
  const DtypeInfo* dtype_ = nullptr;
  size_t offset_ = 0;
  std::vector<int64_t> dims_;
  Ort::Value value_{nullptr};

  friend class Session;
  friend struct Binding;
};

class Session : public Napi::ObjectWrap<Session> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Session",
                       {InstanceAccessor<&Session::InputNames>("inputNames"),
                        InstanceAccessor<&Session::OutputNames>("outputNames"),
                        InstanceAccessor<&Session::Provider>("provider"),
                        InstanceMethod<&Session::Allocate>("allocate"), InstanceMethod<&Session::Run>("run"),
                        InstanceMethod<&Session::Bind>("bind"),
                        InstanceMethod<&Session::EndProfiling>("endProfiling"),
                        InstanceMethod<&Session::Release>("release")});
  }

  explicit Session(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Session>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "Session: made by createSession(), not new");
  }

  void Init(std::shared_ptr<Core> core) {
    core_ = std::move(core);
    Ort::AllocatorWithDefaultOptions a;
    for (size_t i = 0; i < core_->session.GetInputCount(); i++)
      inputNames_.push_back(core_->session.GetInputNameAllocated(i, a).get());
    for (size_t i = 0; i < core_->session.GetOutputCount(); i++)
      outputNames_.push_back(core_->session.GetOutputNameAllocated(i, a).get());
  }

 private:
  Core& core() {
    if (!core_) throw UsageError("Session: used after release()");
    return *core_;
  }

  static Napi::Array names(Napi::Env env, const std::vector<std::string>& v) {
    auto a = Napi::Array::New(env, v.size());
    for (uint32_t i = 0; i < v.size(); i++) a.Set(i, Napi::String::New(env, v[i]));
    return a;
  }
  Napi::Value InputNames(const Napi::CallbackInfo& info) { return names(info.Env(), inputNames_); }
  Napi::Value OutputNames(const Napi::CallbackInfo& info) { return names(info.Env(), outputNames_); }
  Napi::Value Provider(const Napi::CallbackInfo& info) { return Napi::String::New(info.Env(), provider_); }

  Napi::Value Allocate(const Napi::CallbackInfo& info);
  Napi::Value Run(const Napi::CallbackInfo& info);
  Napi::Value Bind(const Napi::CallbackInfo& info);

  Napi::Value EndProfiling(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      Ort::AllocatorWithDefaultOptions a;
      auto file = core().session.EndProfilingAllocated(a);
      return Napi::String::New(info.Env(), file.get());
    });
  }

  Napi::Value Release(const Napi::CallbackInfo& info) {
    // Tensors still alive keep the session (whose allocator owns their memory) until they are released too.
    core_.reset();
    return info.Env().Undefined();
  }

  std::shared_ptr<Core> core_;
  std::vector<std::string> inputNames_, outputNames_;
  std::string provider_ = "cpu";

  friend class Addon;
};

// A run's inputs and outputs bound to an Ort::IoBinding: device tensors in place, host inputs wrapped (one run) or
// copied (`keepHost`: a binding that outlives the call), host outputs allocated by ORT at each run. Session.run binds
// and runs once; Session.bind keeps it for runs that repeat with the same tensors, as a decode step replaying its
// CUDA graph does: binding its ~130 tensors (every layer's cache) and making their views cost the worker 0.4-0.6 ms
// a step on an H200 host, a tenth of a one-stream step (native/probes/step-overhead.ts).
struct Binding {
  std::shared_ptr<Core> core;
  Ort::IoBinding io;
  std::vector<std::shared_ptr<Block>> blocks;  // the bound device tensors' memory, alive while bound
  std::vector<std::vector<char>> hostCopies;   // `keepHost`: the host inputs' bytes
  std::vector<Ort::Value> hostInputs;          // wrap host memory; alive until the binding goes
  std::vector<std::string> hostOutputs;

  Binding(std::shared_ptr<Core> c, Addon* addon, const Napi::Object& inputs, const Napi::Object& outputs,
          const std::vector<std::string>& inputNames, const std::vector<std::string>& outputNames, bool keepHost, const char* what);
  Napi::Value Run(Napi::Env env, const Napi::Value& options);
};

// Session.bind's result: a Binding kept for repeated runs.
class BoundRun : public Napi::ObjectWrap<BoundRun> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "BoundRun", {InstanceMethod<&BoundRun::Run>("run"), InstanceMethod<&BoundRun::Release>("release")});
  }
  explicit BoundRun(const Napi::CallbackInfo& info) : Napi::ObjectWrap<BoundRun>(info) {
    if (info.Length() != 1 || !info[0].IsExternal())
      throw Napi::TypeError::New(info.Env(), "BoundRun: made by session.bind(), not new");
  }
  std::unique_ptr<Binding> binding;

 private:
  Napi::Value Run(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      if (!binding) throw UsageError("BoundRun: used after release()");
      return binding->Run(info.Env(), info.Length() > 0 ? info[0] : info.Env().Undefined());
    });
  }
  Napi::Value Release(const Napi::CallbackInfo& info) {
    binding.reset();
    return info.Env().Undefined();
  }
};

class Addon : public Napi::Addon<Addon> {
 public:
  Addon(Napi::Env env, Napi::Object exports) {
    g_api = OrtGetApiBase()->GetApi(ORT_API_VERSION);
    if (g_api == nullptr)
      throw Napi::Error::New(env, std::string("libonnxruntime does not provide C API version ") +
                                      std::to_string(ORT_API_VERSION) + " (runtime " +
                                      OrtGetApiBase()->GetVersionString() + ")");
    Ort::InitApi(g_api);
    tensorClass = Napi::Persistent(DeviceTensor::Define(env));
    sessionClass = Napi::Persistent(Session::Define(env));
    boundRunClass = Napi::Persistent(BoundRun::Define(env));
    DefineAddon(exports, {InstanceMethod<&Addon::CreateSession>("createSession"),
                          InstanceMethod<&Addon::DeviceMemory>("deviceMemory"),
                          InstanceValue("ortVersion", Napi::String::New(env, OrtGetApiBase()->GetVersionString())),
                          InstanceValue("apiVersion", Napi::Number::New(env, ORT_API_VERSION))});
  }

  DeviceTensor* newTensor(Napi::Env env, Napi::Object* out) {
    *out = tensorClass.New({Napi::External<void>::New(env, nullptr)});
    return DeviceTensor::Unwrap(*out);
  }
  bool isTensor(const Napi::Value& v) { return v.IsObject() && v.As<Napi::Object>().InstanceOf(tensorClass.Value()); }

  Napi::FunctionReference tensorClass;
  Napi::FunctionReference sessionClass;
  Napi::FunctionReference boundRunClass;

 private:
  Napi::Value CreateSession(const Napi::CallbackInfo& info);
  // deviceMemory(deviceId) -> { free, total } in bytes (cudaMemGetInfo on that device; the runtime is dlopen'ed).
  Napi::Value DeviceMemory(const Napi::CallbackInfo& info) {
    return guarded(info.Env(), [&]() -> Napi::Value {
      int device = info.Length() > 0 && info[0].IsNumber() ? info[0].As<Napi::Number>().Int32Value() : 0;
      const Cudart& c = cudart();
      cudaCheck(c.setDevice(device), "cudaSetDevice");
      size_t freeBytes = 0, totalBytes = 0;
      cudaCheck(c.memGetInfo(&freeBytes, &totalBytes), "cudaMemGetInfo");
      Napi::Object out = Napi::Object::New(info.Env());
      out.Set("free", Napi::Number::New(info.Env(), static_cast<double>(freeBytes)));
      out.Set("total", Napi::Number::New(info.Env(), static_cast<double>(totalBytes)));
      return out;
    });
  }
};

// ---------------------------------------------------------------------------------------------------------------

Napi::Value DeviceTensor::View(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    live();
    if (info.Length() < 2 || !info[0].IsNumber())
      throw UsageError("DeviceTensor.view(offsetElements, dims): expected a number and an array");
    double off = info[0].As<Napi::Number>().DoubleValue();
    if (!(off >= 0) || off != static_cast<double>(static_cast<int64_t>(off)))
      throw UsageError("DeviceTensor.view: offsetElements must be a non-negative integer");
    auto dims = readDims(info[1], "DeviceTensor.view");
    size_t start = offset_ + static_cast<size_t>(off);
    size_t end = start + elementCount(dims);
    if (end > offset_ + elementCount(dims_))
      throw UsageError("DeviceTensor.view: elements [" + std::to_string(static_cast<size_t>(off)) + ", " +
                       std::to_string(end - offset_) + ") exceed the " + std::to_string(elementCount(dims_)) +
                       " elements of " + dimsText(dims_));
    Napi::Object obj;
    auto* t = info.Env().GetInstanceData<Addon>()->newTensor(info.Env(), &obj);
    t->Init(block_, dtype_, start, std::move(dims));
    return obj;
  });
}

Napi::Value Session::Allocate(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Core& c = core();
    if (info.Length() < 2 || !info[0].IsString()) throw UsageError("Session.allocate(dtype, dims): expected a dtype and dims");
    auto name = info[0].As<Napi::String>().Utf8Value();
    const DtypeInfo* dtype = dtypeByName(name);
    if (dtype == nullptr) throw UsageError("Session.allocate: dtype must be float32, float16, bfloat16, int32 or int64, found " + name);
    auto dims = readDims(info[1], "Session.allocate");
    auto block = std::make_shared<Block>();
    block->core = core_;
    block->bytes = elementCount(dims) * dtype->size;
    size_t bytes = block->bytes == 0 ? 64 : block->bytes;
    if (c.cuda) {
      block->ptr = c.allocator->Alloc(bytes);
      const auto& rt = cudart();
      cudaCheck(rt.setDevice(c.device), "cudaSetDevice");
      cudaCheck(rt.memset(block->ptr, 0, bytes), "cudaMemset");
      cudaCheck(rt.deviceSynchronize(), "cudaDeviceSynchronize");
    } else {
      block->ptr = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      if (block->ptr == nullptr) throw UsageError("Session.allocate: out of memory for " + std::to_string(bytes) + " bytes");
      std::memset(block->ptr, 0, bytes);
    }
    Napi::Object obj;
    auto* t = info.Env().GetInstanceData<Addon>()->newTensor(info.Env(), &obj);
    t->Init(std::move(block), dtype, 0, std::move(dims));
    return obj;
  });
}

Binding::Binding(std::shared_ptr<Core> c, Addon* addon, const Napi::Object& inputs, const Napi::Object& outputs,
                 const std::vector<std::string>& inputNames, const std::vector<std::string>& outputNames, bool keepHost,
                 const char* what)
    : core(std::move(c)), io(core->session) {
  auto cpu = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
  auto known = [](const std::vector<std::string>& names, const std::string& n) {
    for (const auto& x : names)
      if (x == n) return true;
    return false;
  };
  auto list = [](const std::vector<std::string>& names) {
    std::string s;
    for (const auto& x : names) s += (s.empty() ? "" : ", ") + x;
    return s;
  };
  const std::string op = what;
  for (const auto& n : inputNames)
    if (!inputs.Has(n)) throw UsageError(op + ": input " + n + " is missing (the model's inputs: " + list(inputNames) + ")");
  auto inNames = inputs.GetPropertyNames();
  hostInputs.reserve(inNames.Length());  // Ort::Values bound by reference must not move
  for (uint32_t i = 0; i < inNames.Length(); i++) {
    std::string name = inNames.Get(i).As<Napi::String>().Utf8Value();
    if (!known(inputNames, name)) throw UsageError(op + ": the model has no input " + name + " (its inputs: " + list(inputNames) + ")");
    Napi::Value v = inputs.Get(name);
    if (addon->isTensor(v)) {
      DeviceTensor* t = DeviceTensor::Unwrap(v.As<Napi::Object>());
      io.BindInput(name.c_str(), t->value());
      blocks.push_back(t->block_);
      continue;
    }
    if (!v.IsObject()) throw UsageError(op + ": input " + name + " must be a DeviceTensor or { data, dims }");
    auto o = v.As<Napi::Object>();
    Napi::Value data = o.Get("data");
    if (!data.IsTypedArray())
      throw UsageError(op + ": input " + name + ".data must be a Float32Array, Uint16Array (float16), Int32Array or BigInt64Array");
    auto ta = data.As<Napi::TypedArray>();
    const DtypeInfo* dtype = dtypeByArray(ta.TypedArrayType());
    if (o.Has("dtype") && o.Get("dtype").IsString()) {
      const DtypeInfo* named = dtypeByName(o.Get("dtype").As<Napi::String>().Utf8Value());
      if (named == nullptr || named->array != ta.TypedArrayType())
        throw UsageError(op + ": input " + name + ".dtype does not fit its " + arrayName(ta.TypedArrayType()));
      dtype = named;
    }
    if (dtype == nullptr)
      throw UsageError(op + ": input " + name + ".data is a " + arrayName(ta.TypedArrayType()) +
                       "; expected Float32Array, Uint16Array (float16), Int32Array or BigInt64Array");
    auto dims = readDims(o.Get("dims"), op + ": input " + name);
    if (elementCount(dims) != ta.ElementLength())
      throw UsageError(op + ": input " + name + " has dims " + dimsText(dims) + " (" + std::to_string(elementCount(dims)) +
                       " elements) but " + std::to_string(ta.ElementLength()) + " values");
    void* p = static_cast<char*>(ta.ArrayBuffer().Data()) + ta.ByteOffset();
    if (keepHost) {
      hostCopies.emplace_back(static_cast<char*>(p), static_cast<char*>(p) + ta.ByteLength());
      p = hostCopies.back().data();
    }
    hostInputs.push_back(Ort::Value::CreateTensor(cpu, p, ta.ByteLength(), dims.data(), dims.size(), dtype->onnx));
    io.BindInput(name.c_str(), hostInputs.back());
  }

  auto outNames = outputs.GetPropertyNames();
  for (uint32_t i = 0; i < outNames.Length(); i++) {
    std::string name = outNames.Get(i).As<Napi::String>().Utf8Value();
    if (!known(outputNames, name)) throw UsageError(op + ": the model has no output " + name + " (its outputs: " + list(outputNames) + ")");
    Napi::Value v = outputs.Get(name);
    if (addon->isTensor(v)) {
      DeviceTensor* t = DeviceTensor::Unwrap(v.As<Napi::Object>());
      io.BindOutput(name.c_str(), t->value());
      blocks.push_back(t->block_);
    } else if (v.IsString() && v.As<Napi::String>().Utf8Value() == "host") {
      io.BindOutput(name.c_str(), cpu);
      hostOutputs.push_back(name);
    } else {
      throw UsageError(op + ": output " + name + " must be a DeviceTensor or \"host\"");
    }
  }
}

Napi::Value Binding::Run(Napi::Env env, const Napi::Value& options) {
  Ort::RunOptions runOptions;
  if (options.IsObject()) {
    Napi::Value graph = options.As<Napi::Object>().Get("cudaGraphId");
    if (graph.IsNumber()) runOptions.AddConfigEntry("gpu_graph_id", std::to_string(graph.As<Napi::Number>().Int64Value()).c_str());
  }
  core->session.Run(runOptions, io);
  io.SynchronizeOutputs();

  auto result = Napi::Object::New(env);
  if (hostOutputs.empty()) return result;
  auto names = io.GetOutputNames();
  auto values = io.GetOutputValues();
  for (size_t i = 0; i < names.size(); i++) {
    bool wanted = false;
    for (const auto& h : hostOutputs) wanted = wanted || h == names[i];
    if (!wanted) continue;
    auto shape = values[i].GetTensorTypeAndShapeInfo();
    const DtypeInfo* dtype = dtypeByOnnx(shape.GetElementType());
    if (dtype == nullptr) throw UsageError("Session.run: output " + names[i] + " has an unsupported element type");
    auto dims = shape.GetShape();
    size_t n = elementCount(dims);
    void* dst = nullptr;
    auto array = newTypedArray(env, dtype->array, n, n * dtype->size, &dst);
    if (n > 0) std::memcpy(dst, values[i].GetTensorRawData(), n * dtype->size);
    auto jsDims = Napi::Array::New(env, dims.size());
    for (uint32_t d = 0; d < dims.size(); d++) jsDims.Set(d, Napi::Number::New(env, static_cast<double>(dims[d])));
    auto out = Napi::Object::New(env);
    out.Set("data", array);
    out.Set("dims", jsDims);
    result.Set(names[i], out);
  }
  return result;
}

Napi::Value Session::Run(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    core();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject())
      throw UsageError("Session.run(inputs, outputs[, options]): expected two objects");
    Binding binding(core_, info.Env().GetInstanceData<Addon>(), info[0].As<Napi::Object>(), info[1].As<Napi::Object>(), inputNames_,
                    outputNames_, false, "Session.run");
    return binding.Run(info.Env(), info.Length() > 2 ? info[2] : info.Env().Undefined());
  });
}

Napi::Value Session::Bind(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    core();
    if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsObject())
      throw UsageError("Session.bind(inputs, outputs): expected two objects");
    Addon* addon = info.Env().GetInstanceData<Addon>();
    auto binding = std::make_unique<Binding>(core_, addon, info[0].As<Napi::Object>(), info[1].As<Napi::Object>(), inputNames_,
                                             outputNames_, true, "Session.bind");
    Napi::Object obj = addon->boundRunClass.New({Napi::External<void>::New(info.Env(), nullptr)});
    BoundRun::Unwrap(obj)->binding = std::move(binding);
    return obj;
  });
}

// A provider library (or a CUDA library it links) that the dynamic loader could not open.
bool isLoadFailure(const std::string& msg) {
  return msg.find("Failed to load library") != std::string::npos || msg.find("cannot open shared object") != std::string::npos;
}

const char* kCudaInstallHint =
    "the CUDA execution provider could not be loaded. Install it: copy libonnxruntime_providers_cuda.so and "
    "libonnxruntime_providers_shared.so from the npm package com.github.asus4.onnxruntime.linux-x64-gpu@0.4.9 "
    "(Plugins/Linux/x64/) next to libonnxruntime.so.1 in node_modules/onnxruntime-node/bin/napi-v6/linux/x64/, and "
    "set LD_LIBRARY_PATH to the CUDA 13 libraries (e.g. /usr/local/cuda-13.0/targets/x86_64-linux/lib:/usr/lib/x86_64-linux-gnu)";

Napi::Value Addon::CreateSession(const Napi::CallbackInfo& info) {
  return guarded(info.Env(), [&]() -> Napi::Value {
    Napi::Env e = info.Env();
    if (info.Length() < 1 || !info[0].IsString()) throw UsageError("createSession(modelPath, options): expected a path");
    std::string path = info[0].As<Napi::String>().Utf8Value();
    Napi::Object opts = info.Length() > 1 && info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(e);
    std::string provider = opts.Get("provider").IsString() ? opts.Get("provider").As<Napi::String>().Utf8Value() : "cpu";
    if (provider != "cpu" && provider != "cuda") throw UsageError("createSession: provider must be cpu or cuda, found " + provider);
    int device = opts.Get("deviceId").IsNumber() ? opts.Get("deviceId").As<Napi::Number>().Int32Value() : 0;

    // The environment first: CUDA provider options log through its default logger.
    Ort::Env& ortEnv = env();
    Ort::SessionOptions so;
    so.SetLogSeverityLevel(3);
    so.SetInterOpNumThreads(1);
    if (opts.Get("intraOpThreads").IsNumber()) so.SetIntraOpNumThreads(opts.Get("intraOpThreads").As<Napi::Number>().Int32Value());
    GraphOptimizationLevel level = ORT_ENABLE_ALL;
    if (opts.Get("graphOptimization").IsString()) {
      auto g = opts.Get("graphOptimization").As<Napi::String>().Utf8Value();
      if (g == "disabled") level = ORT_DISABLE_ALL;
      else if (g == "basic") level = ORT_ENABLE_BASIC;
      else if (g == "extended") level = ORT_ENABLE_EXTENDED;
      else if (g != "all") throw UsageError("createSession: graphOptimization must be disabled, basic, extended or all, found " + g);
    }
    so.SetGraphOptimizationLevel(level);
    // ORT's per-node profiler (a Chrome trace JSON named after this prefix, written by endProfiling()).
    if (opts.Get("profile").IsString()) so.EnableProfiling(opts.Get("profile").As<Napi::String>().Utf8Value().c_str());
    // A custom-op library (native/cuda: chorus.Int4Linear); ORT loads it and keeps it for the session's life.
    if (opts.Get("customOpsLibrary").IsString()) {
      so.RegisterCustomOpsLibrary(opts.Get("customOpsLibrary").As<Napi::String>().Utf8Value().c_str());
    }
    if (opts.Get("sessionConfig").IsObject()) {
      auto cfg = opts.Get("sessionConfig").As<Napi::Object>();
      auto keys = cfg.GetPropertyNames();
      for (uint32_t i = 0; i < keys.Length(); i++) {
        auto k = keys.Get(i).As<Napi::String>().Utf8Value();
        so.AddConfigEntry(k.c_str(), cfg.Get(k).ToString().Utf8Value().c_str());
      }
    }

    if (provider == "cuda") {
      std::vector<std::string> keys{"device_id"}, values{std::to_string(device)};
      if (opts.Get("cuda").IsObject()) {
        auto cfg = opts.Get("cuda").As<Napi::Object>();
        auto names = cfg.GetPropertyNames();
        for (uint32_t i = 0; i < names.Length(); i++) {
          auto k = names.Get(i).As<Napi::String>().Utf8Value();
          if (k == "device_id") continue;
          keys.push_back(k);
          values.push_back(cfg.Get(k).ToString().Utf8Value());
        }
      }
      std::vector<const char*> kp, vp;
      for (size_t i = 0; i < keys.size(); i++) kp.push_back(keys[i].c_str()), vp.push_back(values[i].c_str());
      OrtCUDAProviderOptionsV2* cudaOptions = nullptr;
      auto check = [&](OrtStatus* st, const char* what) {
        if (st == nullptr) return;
        std::string msg = trimmed(g_api->GetErrorMessage(st));
        g_api->ReleaseStatus(st);
        if (cudaOptions != nullptr) g_api->ReleaseCUDAProviderOptions(cudaOptions);
        if (isLoadFailure(msg)) throw UsageError(std::string("createSession(provider cuda): ") + kCudaInstallHint + ". ONNX Runtime said: " + msg);
        throw UsageError(std::string("createSession(provider cuda): ") + what + ": " + msg);
      };
      check(g_api->CreateCUDAProviderOptions(&cudaOptions), "CreateCUDAProviderOptions");
      check(g_api->UpdateCUDAProviderOptions(cudaOptions, kp.data(), vp.data(), kp.size()), "UpdateCUDAProviderOptions");
      check(g_api->SessionOptionsAppendExecutionProvider_CUDA_V2(so, cudaOptions), "SessionOptionsAppendExecutionProvider_CUDA_V2");
      g_api->ReleaseCUDAProviderOptions(cudaOptions);
    }

    auto core = std::make_shared<Core>();
    core->cuda = provider == "cuda";
    core->device = device;
    try {
      core->session = Ort::Session(ortEnv, path.c_str(), so);
    } catch (const Ort::Exception& ex) {
      std::string msg = trimmed(ex.what());
      if (core->cuda && isLoadFailure(msg))
        throw UsageError(std::string("createSession(provider cuda): ") + kCudaInstallHint + ". ONNX Runtime said: " + msg);
      throw UsageError("createSession(" + path + "): " + msg);
    }
    if (core->cuda) {
      core->memoryInfo = Ort::MemoryInfo("Cuda", OrtArenaAllocator, device, OrtMemTypeDefault);
      core->allocator = std::make_unique<Ort::Allocator>(core->session, core->memoryInfo);
    } else {
      core->memoryInfo = Ort::MemoryInfo::CreateCpu(OrtDeviceAllocator, OrtMemTypeDefault);
    }
    auto obj = sessionClass.New({Napi::External<void>::New(e, nullptr)});
    auto* s = Session::Unwrap(obj);
    s->provider_ = provider;
    s->Init(std::move(core));
    return obj;
  });
}

}  // namespace

NODE_API_ADDON(Addon)
