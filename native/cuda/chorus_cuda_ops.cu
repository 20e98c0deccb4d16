// Chorus's own CUDA kernels, as an ONNX Runtime custom-op library for the CUDA execution provider
// (`npm run build:cuda-ops` builds native/build-cuda/libchorus_cuda_ops.so; docs/native.md).
//
// chorus.Int4Linear: Y[M, N] = X[M, K] * dequant(B)^T, where B, scales and zero_points are exactly the inputs of
// com.microsoft.MatMulNBits with bits 4 (MatMulNBitsPacking.ts: B uint8 [N, n_blocks, block/2], element 2j the low
// nibble of byte j; scales [N * n_blocks]; zero points two blocks a byte, low nibble first, absent = 8). A shard graph
// uses it by renaming its MatMulNBits nodes (src/core/native/CudaOps.ts); the weights stay byte for byte the same.
//
// Why: ORT 1.29's MatMulNBits moves 4-bit weights at about 1 TB/s at one row and dequantizes to float16 before a GEMM
// above it, 2x float16's time at 16-128 rows (docs/benchmarks.md, "What limits int4"). Paths (CHORUS_INT4_KERNEL):
//   auto (default)  up to 8 rows int4MmaWide (64-byte runs of a weight row a lane), up to kMmaMaxRows rows int4Mma:
//                   tensor-core W4A16 kernels that dequantize in registers on the way from HBM to mma.sync, so only
//                   4-bit bytes cross HBM; above (long prompts) int4Dequantize + cuBLAS, where the GEMM's arithmetic
//                   outweighs the scratch's traffic.
//   mma             int4Mma from one row (the default before 2026-12-01f; a measurement name).
//   mma-w2, mma-w4  int4MmaWide with 32- or 64-byte runs up to 8 rows (mma-w4 is auto's), int4Mma above.
//   (staged-w2, staged-w4: int4MmaWide's loads through shared memory with cp.async, measured slower and removed;
//   commit 5e41e70 has them.)
//   gemv1, gemv2    the GEMVs (int4Gemv, int4GemvHalf2) up to kGemvMaxRows rows, dequantize + cuBLAS above: the
//                   first versions, kept to measure against (docs/native.md has the figures).
//   marlin          a measurement setting, not a serving path: Marlin (third_party/marlin, int4_marlin.cuh) at every row
//                   count, for symmetric block-128 weights with K a multiple of 128 and N of 256; the weights are
//                   rewritten into Marlin's layout in place at the first run, so an op on this path takes no other
//                   path afterwards. Other shapes keep `auto`. As first run on an H200 it gave sporadic wrong elements
//                   (max abs error 0.04-0.13 against 0.001, differing run to run at the same inputs;
//                   native/probes/marlin-check.cu); the barrier added at the end of its write_result did not remove
//                   them (0.05-0.14 at 64-512 rows, run on an H200 afterwards; docs/native.md), so nothing picks it.
//
// chorus.DecodeAttention (decode_attention.cuh): GroupQueryAttention's decode case for the row cache
// (`--decode-attention chorus`). chorus.Linear (f16_gemv.cuh): float16 MatMul with a GEMV up to 2 rows and cuBLAS
// above (`--linear-kernels auto`, the default, on float16 shards). chorus.SwiGLU (swiglu.cuh) and chorus.GreedyArgMax
// (greedy_argmax.cuh): one kernel each where the graph had three and ten (`auto` and `chorus`, float16 and 4-bit shards).
//
// The kernels live in the headers beside this file (int4_mma.cuh, int4_gemv.cuh, int4_dequantize.cuh,
// decode_attention.cuh, f16_gemv.cuh, swiglu.cuh, greedy_argmax.cuh); this file is the ops: path choice, scratch buffers, launches and ORT's
// registration.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

#include "cublas_runtime.h"
#include "decode_attention.cuh"
#include "f16_gemv.cuh"
#include "greedy_argmax.cuh"
#include "int4_dequantize.cuh"
#include "int4_gemv.cuh"
#include "int4_marlin.cuh"
#include "swiglu.cuh"
#include "int4_mma.cuh"
// Marlin's own code, unchanged: its group_blocks = -1 instances divide by a constant zero in branches they never take.
#pragma nv_diag_suppress 39, 177, 179
#include "third_party/marlin/marlin_cuda_kernel.cuh"
#pragma nv_diag_default 39, 177, 179

namespace {

using namespace chorus;

struct ThreadScratch {
  int device = -1;
  cublasHandle handle = nullptr;
  void* workspace = nullptr;
  void* weights = nullptr;  // the dequantized weight, float16
  size_t weightsBytes = 0;
  void* partial = nullptr;  // split-K partial sums of the tensor-core path, float32
  size_t partialBytes = 0;
  void* attention = nullptr;  // chorus.DecodeAttention's rotated queries and split partials, decode steps
  size_t attentionBytes = 0;
  void* attentionPrompt = nullptr;  // the same for prompt chunks
  size_t attentionPromptBytes = 0;
  void* linear = nullptr;  // chorus.Linear's split-K partial sums, then its arrival counters (kept zeroed)
  size_t linearBytes = 0;
  void* argmax = nullptr;  // chorus.GreedyArgMax's arrival counters (kept zeroed), then its slices' bests
  size_t argmaxBytes = 0;
};
thread_local ThreadScratch tls;

// ------------------------------------------------------------------------------------------------ the op

Ort::Status statusOf(cudaError_t e, const char* what, const char* op = "chorus.Int4Linear") {
  if (e == cudaSuccess) return Ort::Status{nullptr};
  return Ort::Status((std::string(op) + ": " + what + ": " + cudaGetErrorString(e)).c_str(), ORT_EP_FAIL);
}

// A kernel's Compute as ORT's ComputeV2 wants it: errors, thrown or returned, as a status.
template <typename F>
OrtStatusPtr guarded(F&& compute) {
  try {
    return compute().release();
  } catch (const Ort::Exception& e) {
    return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
  } catch (const std::exception& e) {
    return Ort::Status(e.what(), ORT_FAIL).release();
  }
}

// A kernel made and initialized from the node's attributes, or the status Init refused it with.
template <typename Kernel>
OrtStatusPtr createKernel(const OrtKernelInfo* info, void** kernel) {
  auto* k = new Kernel();
  Ort::Status s = k->Init(info);
  if (!s.IsOK()) {
    delete k;
    return s.release();
  }
  *kernel = k;
  return nullptr;
}

// A per-thread scratch buffer at least `need` bytes: grown (the stream drained first, the old buffer freed) only
// outside a CUDA graph capture, since a captured graph keeps the address it was captured with.
Ort::Status growScratch(void*& ptr, size_t& bytes, size_t need, cudaStream_t stream, const char* what,
                        const char* op = "chorus.Int4Linear") {
  if (bytes >= need) return Ort::Status{nullptr};
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  if (auto s = statusOf(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing", op); !s.IsOK()) return s;
  if (capture != cudaStreamCaptureStatusNone) return Ort::Status((std::string(op) + ": " + what + " must grow inside a CUDA graph capture").c_str(), ORT_EP_FAIL);
  if (ptr != nullptr) {
    if (auto s = statusOf(cudaStreamSynchronize(stream), "cudaStreamSynchronize", op); !s.IsOK()) return s;
    cudaFree(ptr);
    ptr = nullptr;
    bytes = 0;
  }
  if (auto s = statusOf(cudaMalloc(&ptr, need), (std::string("cudaMalloc (") + what + ")").c_str(), op); !s.IsOK()) return s;
  bytes = need;
  return Ort::Status{nullptr};
}

// This thread's cuBLAS handle (made with its workspace on the first call, which must not be inside a CUDA graph
// capture: ORT runs each graph's shapes uncaptured first), bound to `stream`.
Ort::Status threadCublas(cudaStream_t stream, const char* op) {
  const Cublas& cb = cublas();
  if (!cb.error.empty()) return Ort::Status((std::string(op) + ": " + cb.error).c_str(), ORT_EP_FAIL);
  int device = 0;
  if (auto s = statusOf(cudaGetDevice(&device), "cudaGetDevice", op); !s.IsOK()) return s;
  if (tls.device != device) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (auto s = statusOf(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing", op); !s.IsOK()) return s;
    if (capture != cudaStreamCaptureStatusNone) return Ort::Status((std::string(op) + ": first cuBLAS call inside a CUDA graph capture").c_str(), ORT_EP_FAIL);
    if (cb.create(&tls.handle) != 0) return Ort::Status((std::string(op) + ": cublasCreate failed").c_str(), ORT_EP_FAIL);
    constexpr size_t kWorkspace = 32u << 20;
    if (auto s = statusOf(cudaMalloc(&tls.workspace, kWorkspace), "cudaMalloc (cuBLAS workspace)", op); !s.IsOK()) return s;
    if (cb.setWorkspace(tls.handle, tls.workspace, kWorkspace) != 0) return Ort::Status((std::string(op) + ": cublasSetWorkspace failed").c_str(), ORT_EP_FAIL);
    tls.device = device;
  }
  if (cb.setStream(tls.handle, stream) != 0) return Ort::Status((std::string(op) + ": cublasSetStream failed").c_str(), ORT_EP_FAIL);
  return Ort::Status{nullptr};
}

// Row-major Y[M, N] = X[M, K] W in float16 through this thread's cuBLAS handle (threadCublas first): column-major
// Y^T[N, M] = op(W') X^T[K, M], where W' is W's bytes seen column-major with leading dimension ldw (opW kCublasOpN for
// W [K, N], ldw N; kCublasOpT for W stored [N, K], ldw K) and X^T is X's bytes (leading dimension ldx: K, more when
// X is the first part of each row). No copies.
Ort::Status halfGemm(int opW, int n, int m, int k, const void* w, int ldw, const half* x, int ldx, half* y, const char* op) {
  const float one = 1.f, zero = 0.f;
  const int rc = cublas().gemmEx(tls.handle, opW, kCublasOpN, n, m, k, &one, w, kCudaR16F, ldw, x, kCudaR16F, ldx, &zero, y, kCudaR16F, n,
                                 kCublasCompute32F, kCublasGemmDefault);
  if (rc != 0) return Ort::Status((std::string(op) + ": cublasGemmEx failed with status " + std::to_string(rc)).c_str(), ORT_EP_FAIL);
  return Ort::Status{nullptr};
}

// Lets `kernel` use `bytes` of dynamic shared memory past the 48 KB default, once per kernel and device (shards on
// several GPUs share this process).
Ort::Status allowSharedMemory(const void* kernel, size_t bytes, const char* op = "chorus.Int4Linear") {
  if (bytes <= 48 * 1024) return Ort::Status{nullptr};
  static std::mutex mutex;
  static std::set<std::pair<const void*, int>> allowed;
  int device = 0;
  if (auto s = statusOf(cudaGetDevice(&device), "cudaGetDevice", op); !s.IsOK()) return s;
  std::lock_guard<std::mutex> lock(mutex);
  if (allowed.count({kernel, device}) != 0) return Ort::Status{nullptr};
  const cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
  if (auto s = statusOf(e, "cudaFuncSetAttribute (shared memory)", op); !s.IsOK()) return s;
  allowed.insert({kernel, device});
  return Ort::Status{nullptr};
}

// The current device's multiprocessors into `sms`, looked up once (an op's kernel runs on one device).
Ort::Status multiprocessors(int& sms, const char* op) {
  if (sms != 0) return Ort::Status{nullptr};
  int device = 0;
  if (auto s = statusOf(cudaGetDevice(&device), "cudaGetDevice", op); !s.IsOK()) return s;
  return statusOf(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute", op);
}

// One int4Mma launch; its shared memory (two X buffers above 8 rows: 4 KB an m-tile) may pass the 48 KB default.
template <int MT, bool kZeroPoints, int MH = 1>
Ort::Status runMma(dim3 grid, dim3 block, cudaStream_t stream, const half* xp, const uint8_t* bp, const half* sp,
                   const uint8_t* zpp, half* yp, float* partial, int M, int k, int n, int bs, int nBlocks, int segsPerSlice) {
  constexpr size_t smem = MT > 1 || MH > 1 ? static_cast<size_t>(MT) * MH * 8 * 16 * sizeof(uint4) * 2 : 0;
  if (auto s = allowSharedMemory(reinterpret_cast<const void*>(int4Mma<MT, kZeroPoints, MH>), smem); !s.IsOK()) return s;
  int4Mma<MT, kZeroPoints, MH><<<grid, block, smem, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);
  return statusOf(cudaGetLastError(), "tensor-core launch");
}

// Keeps the stream busy while the host queues the timed launches, so that the start event marks the GPU's start,
// not the host's launch latency (the timed call before it has waited for the stream).
__global__ void holdStream(unsigned ns) {
#if __CUDA_ARCH__ >= 700
  for (unsigned waited = 0; waited < ns; waited += 1000) __nanosleep(1000);
#endif
}

// CHORUS_INT4_TIMING=1 (read once): every uncaptured call timed with CUDA events around its launches (the stream
// waits for each, so use it to measure, not to serve), summed by path, shape and rows, printed to stderr at exit.
// Calls inside a CUDA graph capture run untimed.
struct KernelTiming {
  using Key = std::tuple<std::string, int64_t, int64_t, int64_t>;  // path, N, K, rows
  bool enabled = false;
  std::mutex mutex;
  std::map<Key, std::pair<double, long>> byKey;  // ms summed, calls

  // `keyOf` is asked after the launches: the call's path is known only once it has been taken.
  template <typename Launch, typename KeyOf>
  Ort::Status time(cudaStream_t stream, Launch&& launch, KeyOf&& keyOf) {
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(stream, &capture) != cudaSuccess || capture != cudaStreamCaptureStatusNone) return launch();
    cudaEvent_t start, stop;
    if (cudaEventCreate(&start) != cudaSuccess) return launch();
    if (cudaEventCreate(&stop) != cudaSuccess) {
      cudaEventDestroy(start);
      return launch();
    }
    holdStream<<<1, 1, 0, stream>>>(50000);
    cudaEventRecord(start, stream);
    Ort::Status s = launch();
    cudaEventRecord(stop, stream);
    float ms = 0.f;
    if (s.IsOK() && cudaEventSynchronize(stop) == cudaSuccess && cudaEventElapsedTime(&ms, start, stop) == cudaSuccess) {
      std::lock_guard<std::mutex> lock(mutex);
      auto& e = byKey[keyOf()];
      e.first += ms;
      e.second++;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return s;
  }

  void print() {
    std::lock_guard<std::mutex> lock(mutex);
    if (byKey.empty()) return;
    std::fprintf(stderr, "\nchorus.Int4Linear kernel times (CHORUS_INT4_TIMING):\n| path | N x K | rows | calls | us a call |\n|---|---|--:|--:|--:|\n");
    for (const auto& [key, e] : byKey) {
      std::fprintf(stderr, "| %s | %lld x %lld | %lld | %ld | %.1f |\n", std::get<0>(key).c_str(), static_cast<long long>(std::get<1>(key)),
                   static_cast<long long>(std::get<2>(key)), static_cast<long long>(std::get<3>(key)), e.second, 1000.0 * e.first / e.second);
    }
  }
};

KernelTiming& kernelTiming() {
  static KernelTiming* t = [] {
    auto* made = new KernelTiming();
    const char* on = std::getenv("CHORUS_INT4_TIMING");
    made->enabled = on != nullptr && std::string(on) == "1";
    if (made->enabled) std::atexit([] { kernelTiming().print(); });
    return made;
  }();
  return *t;
}

struct Int4LinearKernel {
  int64_t K = 0, N = 0, blockSize = 0;
  // CHORUS_INT4_KERNEL when the kernel is made (docs/native.md): `auto` (int4MmaWide up to 8 rows, int4Mma up to
  // kMmaMaxRows, then dequantize + cuBLAS), or one path forced for measurements: `mma`, `gemv1`, `gemv2` (GEMVs up to
  // kGemvMaxRows), `mma-w2`, `mma-w4` (up to 8 rows, int4Mma above). CHORUS_INT4_SPLITK=floor: as many split-K slices
  // as fit in one wave of two blocks a multiprocessor, rounded down (the default since 2026-12-01f: 8-12% faster at
  // 16-128 rows than `ceil`, which overfills the wave by one partial).
  // CHORUS_INT4_MMA_ROWS=256: above 64 rows the block's warps split X's rows in two (int4Mma's MH = 2), up to 256
  // rows (default 128: one row group).
  enum class Path { Auto, Mma, Gemv1, Gemv2, MmaW2, MmaW4, Marlin } path = Path::Auto;
  bool slicesRoundDown = true;
  int mmaMaxRows = kMmaMaxRows;
  // int4MmaWide's accumulator chains (mma-w2 / mma-w4, a measurement setting: CHORUS_INT4_CHAINS 1, 2 or 4).
  int wideChains = 1;
  // int4MmaWide's dequantization (CHORUS_INT4_DEQUANT prmt, the default, or lop3: measured no faster, 2026-12-01g; mma-w4 only).
  bool lop3 = false;
  std::string wideLabel;  // CHORUS_INT4_TIMING's name of the wide path
  int sms = 0;

  Ort::Status Init(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    K = ki.GetAttribute<int64_t>("K");
    N = ki.GetAttribute<int64_t>("N");
    blockSize = ki.GetAttribute<int64_t>("block_size");
    int64_t bits = 4;
    try {
      bits = ki.GetAttribute<int64_t>("bits");
    } catch (const Ort::Exception&) {
    }
    if (bits != 4) return Ort::Status("chorus.Int4Linear: bits must be 4", ORT_INVALID_ARGUMENT);
    if (blockSize < 32 || (blockSize & (blockSize - 1)) != 0) return Ort::Status("chorus.Int4Linear: block_size must be a power of two >= 32", ORT_INVALID_ARGUMENT);
    if (K % 8 != 0) return Ort::Status("chorus.Int4Linear: K must be a multiple of 8", ORT_INVALID_ARGUMENT);
    const char* choice = std::getenv("CHORUS_INT4_KERNEL");
    const std::string c = choice == nullptr ? "auto" : choice;
    if (c == "auto") path = Path::Auto;
    else if (c == "mma") path = Path::Mma;
    else if (c == "gemv1") path = Path::Gemv1;
    else if (c == "gemv2") path = Path::Gemv2;
    else if (c == "mma-w2") path = Path::MmaW2;
    else if (c == "mma-w4") path = Path::MmaW4;
    else if (c == "marlin") path = Path::Marlin;
    else return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_KERNEL must be auto, marlin, mma, mma-w2, mma-w4, gemv1 or gemv2, not " + c).c_str(), ORT_INVALID_ARGUMENT);
    const char* split = std::getenv("CHORUS_INT4_SPLITK");
    const std::string sk = split == nullptr ? "floor" : split;
    if (sk != "ceil" && sk != "floor") return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_SPLITK must be ceil or floor, not " + sk).c_str(), ORT_INVALID_ARGUMENT);
    slicesRoundDown = sk == "floor";
    const char* rows = std::getenv("CHORUS_INT4_MMA_ROWS");
    const std::string r = rows == nullptr ? "128" : rows;
    if (r != "128" && r != "256") return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_MMA_ROWS must be 128 or 256, not " + r).c_str(), ORT_INVALID_ARGUMENT);
    mmaMaxRows = r == "256" ? 256 : 128;
    const char* chains = std::getenv("CHORUS_INT4_CHAINS");
    const std::string ch = chains == nullptr ? "1" : chains;
    if (ch != "1" && ch != "2" && ch != "4") return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_CHAINS must be 1, 2 or 4, not " + ch).c_str(), ORT_INVALID_ARGUMENT);
    wideChains = std::stoi(ch);
    const char* dq = std::getenv("CHORUS_INT4_DEQUANT");
    const std::string d = dq == nullptr ? "prmt" : dq;
    if (d != "prmt" && d != "lop3") return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_DEQUANT must be prmt or lop3, not " + d).c_str(), ORT_INVALID_ARGUMENT);
    lop3 = d == "lop3";
    if (lop3 && (wideWords() != 4 || wideChains != 1)) {
      return Ort::Status("chorus.Int4Linear: CHORUS_INT4_DEQUANT=lop3 needs the mma-w4 path (the default) with one accumulator chain", ORT_INVALID_ARGUMENT);
    }
    wideLabel = std::string(path == Path::MmaW2 ? "mma-w2" : "mma-w4") + (wideChains > 1 ? ", " + ch + " chains" : "") + (lop3 ? ", lop3" : "");
    return Ort::Status{nullptr};
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return guarded([&] { return Compute(context); }); }

  // ---- Marlin (CHORUS_INT4_KERNEL=marlin)
  // Marlin's shapes: its tiles are 128 k x 128 n (up to 16 rows) or 64 k x 256 n, and one scale group is 128 k.
  bool marlinFits(bool zeroPoints) const { return path == Path::Marlin && !zeroPoints && blockSize == 128 && K % 128 == 0 && N % 256 == 0; }
  // Marlin's barrier counters: N / 128 a 64-row problem, kMarlinMaxPar problems a launch; it leaves them at zero.
  static constexpr int kMarlinMaxPar = 16;
  int* marlinLocks = nullptr;
  const void* marlinB = nullptr;  // the B this kernel has rewritten (or found rewritten) into Marlin's layout
  bool marlinOwner = false;
  std::mutex marlinMutex;
  // Every B rewritten in this process, so that an initializer two nodes share is rewritten once; a kernel removes
  // its own when its session ends (before ORT frees the initializer, whose address a later session may get).
  static std::set<const void*>& marlinLayouts() {
    static std::set<const void*> layouts;
    return layouts;
  }
  static std::mutex& marlinLayoutsMutex() {
    static std::mutex m;
    return m;
  }
  ~Int4LinearKernel() {
    if (marlinOwner) {
      std::lock_guard<std::mutex> lock(marlinLayoutsMutex());
      marlinLayouts().erase(marlinB);
    }
    if (marlinLocks != nullptr) cudaFree(marlinLocks);
  }

  // B and scales into Marlin's layout, in place (the same sizes), once: at the first run, which ORT makes outside
  // any CUDA graph capture (its graphs are captured on a shape's second run).
  Ort::Status ensureMarlin(cudaStream_t stream, const uint4* bp, const half* sp) {
    std::lock_guard<std::mutex> lock(marlinMutex);
    if (marlinB == bp) return Ort::Status{nullptr};
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (auto s = statusOf(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"); !s.IsOK()) return s;
    if (capture != cudaStreamCaptureStatusNone) return Ort::Status("chorus.Int4Linear: Marlin's weight layout must be made before a CUDA graph capture", ORT_EP_FAIL);
    if (marlinLocks == nullptr) {
      const size_t bytes = static_cast<size_t>(N / 128) * kMarlinMaxPar * sizeof(int);
      if (auto s = statusOf(cudaMalloc(&marlinLocks, bytes), "cudaMalloc (Marlin's locks)"); !s.IsOK()) return s;
      if (auto s = statusOf(cudaMemsetAsync(marlinLocks, 0, bytes, stream), "zeroing Marlin's locks"); !s.IsOK()) return s;
    }
    std::lock_guard<std::mutex> registry(marlinLayoutsMutex());
    if (marlinLayouts().count(bp) != 0) {
      marlinB = bp;
      return statusOf(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    }
    const size_t codeBytes = static_cast<size_t>(K) * static_cast<size_t>(N) / 2;
    const size_t scaleBytes = static_cast<size_t>(K / 128) * static_cast<size_t>(N) * sizeof(half);
    void* tmp = nullptr;
    if (auto s = statusOf(cudaMalloc(&tmp, codeBytes + scaleBytes), "cudaMalloc (Marlin repack)"); !s.IsOK()) return s;
    uint32_t* codes = static_cast<uint32_t*>(tmp);
    half* scales = reinterpret_cast<half*>(static_cast<uint8_t*>(tmp) + codeBytes);
    const int k = static_cast<int>(K), n = static_cast<int>(N);
    marlinRepackCodes<<<1024, 256, 0, stream>>>(reinterpret_cast<const uint8_t*>(bp), codes, k, n);
    marlinRepackScales<<<256, 256, 0, stream>>>(sp, scales, k / 128, n);
    Ort::Status s = statusOf(cudaGetLastError(), "Marlin repack launch");
    // The session's initializers are ORT's const inputs; this op is their only reader (the shard graph's rename of
    // one MatMulNBits node each), and the registry above keeps a shared one from being rewritten twice.
    if (s.IsOK()) s = statusOf(cudaMemcpyAsync(const_cast<uint4*>(bp), codes, codeBytes, cudaMemcpyDeviceToDevice, stream), "copying Marlin's codes");
    if (s.IsOK()) s = statusOf(cudaMemcpyAsync(const_cast<half*>(sp), scales, scaleBytes, cudaMemcpyDeviceToDevice, stream), "copying Marlin's scales");
    if (s.IsOK()) s = statusOf(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    cudaFree(tmp);
    if (!s.IsOK()) return s;
    marlinLayouts().insert(bp);
    marlinB = bp;
    marlinOwner = true;
    return Ort::Status{nullptr};
  }

  Ort::Status launchMarlin(cudaStream_t stream, const half* xp, const uint4* bp, const half* sp, half* yp, int M) {
    if (auto s = multiprocessors(sms, "chorus.Int4Linear"); !s.IsOK()) return s;
    if (auto s = ensureMarlin(stream, bp, sp); !s.IsOK()) return s;
    const int err = marlin_cuda(xp, bp, yp, const_cast<half*>(sp), M, static_cast<int>(N), static_cast<int>(K), marlinLocks, 128, 0, stream, -1, -1, sms, kMarlinMaxPar);
    if (err != 0) return Ort::Status(("chorus.Int4Linear: Marlin refused M=" + std::to_string(M) + ", N=" + std::to_string(N) + ", K=" + std::to_string(K) + " (error " + std::to_string(err) + ")").c_str(), ORT_EP_FAIL);
    return statusOf(cudaGetLastError(), "Marlin launch");
  }

  // Split-K slices for N rows over K: none when N alone gives every multiprocessor a block (16 weight rows a warp,
  // kMmaWarps warps a block: the partial sums cost M N 8 bytes a slice), else about two blocks a multiprocessor,
  // never finer than one segment a slice.
  int slicesFor(int segs, int warpsN) const {
    const int blocksN = static_cast<int>((N + 16 * warpsN - 1) / (16 * warpsN));
    if (blocksN >= sms) return 1;
    const int want = slicesRoundDown ? 2 * sms / blocksN : (2 * sms + blocksN - 1) / blocksN;
    const int slices = std::max(1, std::min(segs, want));
    const int segsPerSlice = (segs + slices - 1) / slices;
    return (segs + segsPerSlice - 1) / segsPerSlice;  // no slice left empty
  }
  // int4MmaWide's 16-byte words a lane (up to 8 rows) on the mma-w2 / mma-w4 paths; 1: int4Mma.
  int wideWords() const {
    return path == Path::MmaW2 ? 2 : path == Path::Auto || path == Path::MmaW4 ? 4 : 1;
  }
  // The most slices any row count takes on this op: the split-K scratch is sized by it, so that no later call (a
  // prompt after a decode graph was captured) has to grow, and free, a buffer a captured graph writes to.
  int maxSlices() const {
    const int segs = static_cast<int>((K + kMmaSegK - 1) / kMmaSegK);
    int most = slicesFor(segs, kMmaWarps);
    if (mmaMaxRows > kMmaMaxRows) most = std::max(most, slicesFor(segs, kMmaWarps / 2));
    const int words = wideWords();
    if (words > 1) most = std::max(most, slicesFor(static_cast<int>((K + kMmaSegK * words - 1) / (kMmaSegK * words)), kMmaWarps));
    return most;
  }
  Ort::Status launchMma(cudaStream_t stream, const half* xp, const uint8_t* bp, const half* sp, const uint8_t* zpp, half* yp, int M, int nBlocks,
                        const char*& taken) {
    if (auto s = multiprocessors(sms, "chorus.Int4Linear"); !s.IsOK()) return s;
    const int k = static_cast<int>(K), n = static_cast<int>(N), bs = static_cast<int>(blockSize);
    // int4MmaWide's segments are kWords times int4Mma's.
    const int words = M > 8 ? 1 : wideWords();
    const int segs = (k + kMmaSegK * words - 1) / (kMmaSegK * words);
    const int groups = mmaMaxRows > kMmaMaxRows && M > 64 ? 2 : 1;  // X row groups a block (int4Mma's MH)
    const int warpsN = kMmaWarps / groups;
    taken = words > 1 ? wideLabel.c_str() : groups == 2 ? "mma (2 row groups)" : "mma";
    const int slices = slicesFor(segs, warpsN);
    const int segsPerSlice = (segs + slices - 1) / slices;
    float* partial = nullptr;
    if (slices > 1) {
      // Sized for the most rows and slices this op takes, so that a CUDA graph captured at any batch keeps its buffer.
      const size_t need = static_cast<size_t>(maxSlices()) * mmaMaxRows * static_cast<size_t>(N) * sizeof(float);
      if (auto s = growScratch(tls.partial, tls.partialBytes, need, stream, "split-K scratch"); !s.IsOK()) return s;
      partial = static_cast<float*>(tls.partial);
    }
    const dim3 grid(static_cast<unsigned>((N + 16 * warpsN - 1) / (16 * warpsN)), static_cast<unsigned>(slices)), block(kMmaWarps * 32);
    const int tiles = (M + 8 * groups - 1) / (8 * groups);  // m-tiles a row group
    Ort::Status launched{nullptr};
    if (words > 1) {
      const auto wide = [&](auto kernel) { kernel<<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice); };
      if (lop3 && zpp != nullptr) wide(int4MmaWide<true, 4, 1, 1, true>);
      else if (lop3) wide(int4MmaWide<false, 4, 1, 1, true>);
      else if (zpp != nullptr && words == 2) wide(int4MmaWide<true, 2>);
      else if (zpp != nullptr) wide(int4MmaWide<true, 4>);
      else if (words == 2) {
        if (wideChains == 1) wide(int4MmaWide<false, 2, 2, 1>);
        else if (wideChains == 2) wide(int4MmaWide<false, 2, 2, 2>);
        else wide(int4MmaWide<false, 2, 2, 4>);
      } else {
        if (wideChains == 1) wide(int4MmaWide<false, 4, 1, 1>);
        else if (wideChains == 2) wide(int4MmaWide<false, 4, 1, 2>);
        else wide(int4MmaWide<false, 4, 1, 4>);
      }
      launched = statusOf(cudaGetLastError(), "tensor-core launch");
    }
#define CHORUS_MMA(T)                                                                                                  \
  case T:                                                                                                              \
    if (zpp != nullptr) launched = runMma<T, true>(grid, block, stream, xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice); \
    else launched = runMma<T, false>(grid, block, stream, xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);             \
    break;
#define CHORUS_MMA2(T)                                                                                                 \
  case T:                                                                                                              \
    if (zpp != nullptr) launched = runMma<T, true, 2>(grid, block, stream, xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice); \
    else launched = runMma<T, false, 2>(grid, block, stream, xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);             \
    break;
    if (words == 1 && groups == 2) switch (tiles) {
      CHORUS_MMA2(5) CHORUS_MMA2(6) CHORUS_MMA2(7) CHORUS_MMA2(8) CHORUS_MMA2(9) CHORUS_MMA2(10) CHORUS_MMA2(11) CHORUS_MMA2(12)
      CHORUS_MMA2(13) CHORUS_MMA2(14) CHORUS_MMA2(15) CHORUS_MMA2(16)
    }
#undef CHORUS_MMA2
    if (words == 1 && groups == 1) switch (tiles) {
      CHORUS_MMA(1) CHORUS_MMA(2) CHORUS_MMA(3) CHORUS_MMA(4) CHORUS_MMA(5) CHORUS_MMA(6) CHORUS_MMA(7) CHORUS_MMA(8)
      CHORUS_MMA(9) CHORUS_MMA(10) CHORUS_MMA(11) CHORUS_MMA(12) CHORUS_MMA(13) CHORUS_MMA(14) CHORUS_MMA(15) CHORUS_MMA(16)
    }
#undef CHORUS_MMA
    if (!launched.IsOK()) return launched;
    if (partial != nullptr) {
      const size_t count = static_cast<size_t>(M) * static_cast<size_t>(N);
      const unsigned blocks = static_cast<unsigned>(std::min<size_t>((count + 255) / 256, static_cast<size_t>(sms) * 8));
      int4SplitKSum<<<blocks, 256, 0, stream>>>(partial, yp, slices, count);
      if (auto s = statusOf(cudaGetLastError(), "split-K sum launch"); !s.IsOK()) return s;
    }
    return Ort::Status{nullptr};
  }

  Ort::Status Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const size_t inputs = ctx.GetInputCount();
    Ort::ConstValue x = ctx.GetInput(0), b = ctx.GetInput(1), scales = ctx.GetInput(2);
    Ort::ConstValue zp{nullptr};
    if (inputs > 3) zp = ctx.GetInput(3);
    const bool zeroPoints = zp != nullptr;
    auto shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != K) return Ort::Status("chorus.Int4Linear: the input's last dim must be K", ORT_INVALID_ARGUMENT);
    int64_t M = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) M *= shape[i];
    shape.back() = N;
    Ort::UnownedValue y = ctx.GetOutput(0, shape.data(), shape.size());
    if (M == 0) return Ort::Status{nullptr};
    const int nBlocks = static_cast<int>((K + blockSize - 1) / blockSize);
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    const half* xp = reinterpret_cast<const half*>(x.GetTensorData<Ort::Float16_t>());
    const uint4* bp = reinterpret_cast<const uint4*>(b.GetTensorData<uint8_t>());
    const half* sp = reinterpret_cast<const half*>(scales.GetTensorData<Ort::Float16_t>());
    const uint8_t* zpp = zeroPoints ? zp.GetTensorData<uint8_t>() : nullptr;
    half* yp = reinterpret_cast<half*>(y.GetTensorMutableData<Ort::Float16_t>());
    const char* taken = nullptr;
    if (!kernelTiming().enabled) return Dispatch(stream, M, nBlocks, xp, bp, sp, zpp, yp, taken);
    return kernelTiming().time(
        stream, [&] { return Dispatch(stream, M, nBlocks, xp, bp, sp, zpp, yp, taken); },
        [&] { return KernelTiming::Key{std::string(taken) + (zeroPoints ? ", zero points" : "") + (slicesRoundDown ? "" : ", split-K ceil"), N, K, M}; });
  }

  // The launches for M rows (Compute has checked the shapes): the tensor-core kernel, a GEMV, or dequantize + cuBLAS;
  // `taken` names the path (CHORUS_INT4_TIMING's table).
  Ort::Status Dispatch(cudaStream_t stream, int64_t M, int nBlocks, const half* xp, const uint4* bp, const half* sp,
                       const uint8_t* zpp, half* yp, const char*& taken) {
    const bool zeroPoints = zpp != nullptr;
    const int k = static_cast<int>(K), n = static_cast<int>(N), bs = static_cast<int>(blockSize);

    if (marlinFits(zeroPoints)) {
      taken = "marlin";
      return launchMarlin(stream, xp, bp, sp, yp, static_cast<int>(M));
    }
    const bool mmaFits = K % 32 == 0 && M <= mmaMaxRows;
    if (mmaFits && (path == Path::Auto || path == Path::Mma || path == Path::MmaW2 || path == Path::MmaW4)) return launchMma(stream, xp, reinterpret_cast<const uint8_t*>(bp), sp, zpp, yp, static_cast<int>(M), nBlocks, taken);
    if (M <= kGemvMaxRows) {
      const bool half2Gemv = path == Path::Gemv2;
      taken = half2Gemv ? "gemv2" : "gemv1";
      const dim3 grid(static_cast<unsigned>((N + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(kWarpsPerBlock * 32);
#define CHORUS_GEMV(R)                                                                                             \
  case R:                                                                                                          \
    if (half2Gemv && zeroPoints) int4GemvHalf2<R, true><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks); \
    else if (half2Gemv) int4GemvHalf2<R, false><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks);      \
    else if (zeroPoints) int4Gemv<R, true><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks);          \
    else int4Gemv<R, false><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks);                          \
    break;
      switch (M) {
        CHORUS_GEMV(1) CHORUS_GEMV(2) CHORUS_GEMV(3) CHORUS_GEMV(4) CHORUS_GEMV(5) CHORUS_GEMV(6) CHORUS_GEMV(7) CHORUS_GEMV(8)
      }
#undef CHORUS_GEMV
      return statusOf(cudaGetLastError(), "GEMV launch");
    }

    taken = "dequantize + cuBLAS";
    if (auto s = threadCublas(stream, "chorus.Int4Linear"); !s.IsOK()) return s;
    const size_t need = static_cast<size_t>(N) * static_cast<size_t>(K) * sizeof(half);
    if (auto s = growScratch(tls.weights, tls.weightsBytes, need, stream, "dequantization scratch"); !s.IsOK()) return s;
    {
      const size_t words = static_cast<size_t>(N) * (nBlocks * blockSize / 32);
      const unsigned blocks = static_cast<unsigned>(std::min<size_t>((words + 255) / 256, 65535u * 8));
      if (zeroPoints) int4Dequantize<true><<<blocks, 256, 0, stream>>>(bp, sp, zpp, static_cast<half*>(tls.weights), k, n, bs, nBlocks);
      else int4Dequantize<false><<<blocks, 256, 0, stream>>>(bp, sp, zpp, static_cast<half*>(tls.weights), k, n, bs, nBlocks);
      if (auto s = statusOf(cudaGetLastError(), "dequantize launch"); !s.IsOK()) return s;
    }
    // The dequantized weight is [N, K] (MatMulNBits' order): op T.
    return halfGemm(kCublasOpT, n, static_cast<int>(M), k, tls.weights, k, xp, k, yp, "chorus.Int4Linear");
  }
};

struct Int4LinearOp : Ort::CustomOpBase<Int4LinearOp, Int4LinearKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return createKernel<Int4LinearKernel>(info, kernel);
  }
  const char* GetName() const { return "Int4Linear"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 || index == 2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};


// ------------------------------------------------------------------------------------------------ chorus.Linear

// chorus.Linear (`--linear-kernels chorus` on float16 shards; probes native/probes/gemv-bandwidth.cu and
// mlp-fusion.ts's a-chorus): MatMul's float16 Y = X W with W an initializer [K, N], through f16_gemv.cuh's GEMV up to
// kF16GemvMaxRows rows and cuBLAS above (or when N is not a multiple of 8, or the GPU has no kernel image here).
// Attribute activation = "swiglu" (rewriteForChorusOps folds a Llama MLP's Split, Sigmoid, Mul, Mul into its down
// projection): X is [..., 2K], gate | up, and Y = swiglu(gate, up) W; the GEMV applies it as it reads X, and above
// its rows swigluRows overwrites the gate half (X has no other reader) for cuBLAS to read with leading dimension 2K.
struct LinearKernel {
  bool swiglu = false;
  int sms = 0;
  // Blocks a multiprocessor holds at once, by f16Gemv variant (gemvVariant).
  int residentPerSm[3 * kF16GemvMaxRows] = {};
  // Whether this library has f16Gemv for the device (built for sm_80 and sm_90, and PTX for later GPUs): -1 not yet
  // known. Without it every call goes to cuBLAS, so `--linear-kernels auto` is safe on any GPU ORT runs on.
  int gemvRuns = -1;

  using Gemv = void (*)(const half*, const half*, half*, float*, unsigned*, int, int, int);
  // By rows and input (F16GemvInput): plain, SwiGLU loaded with the weights, SwiGLU staged in shared memory.
  static constexpr Gemv kGemvs[3 * kF16GemvMaxRows] = {f16Gemv<1, kPlain>,       f16Gemv<2, kPlain>,       f16Gemv<1, kSwigluLoad>,
                                                       f16Gemv<2, kSwigluLoad>,  f16Gemv<1, kSwigluStaged>, f16Gemv<2, kSwigluStaged>};
  static int gemvVariant(int64_t rows, int input) { return static_cast<int>(rows) - 1 + input * kF16GemvMaxRows; }

  Ort::Status Init(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    std::string activation;
    try {
      activation = ki.GetAttribute<std::string>("activation");
    } catch (const Ort::Exception&) {  // absent: none
    }
    if (!activation.empty() && activation != "swiglu") {
      return Ort::Status(("chorus.Linear: activation must be swiglu or absent, not " + activation).c_str(), ORT_INVALID_ARGUMENT);
    }
    swiglu = activation == "swiglu";
    return Ort::Status{nullptr};
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return guarded([&] { return Compute(context); }); }

  Ort::Status Compute(OrtKernelContext* context) {
    constexpr const char* op = "chorus.Linear";
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0), w = ctx.GetInput(1);
    const auto xs = x.GetTensorTypeAndShapeInfo().GetShape();
    const auto ws = w.GetTensorTypeAndShapeInfo().GetShape();
    if (ws.size() != 2 || xs.empty() || xs.back() != (swiglu ? 2 : 1) * ws[0]) {
      return Ort::Status(swiglu ? "chorus.Linear: activation swiglu needs X [..., 2K] (gate | up) and W [K, N]" : "chorus.Linear: needs X [..., K] and W [K, N]",
                         ORT_INVALID_ARGUMENT);
    }
    const int64_t K = ws[0], N = ws[1];
    std::vector<int64_t> ys(xs);
    ys.back() = N;
    Ort::UnownedValue y = ctx.GetOutput(0, ys.data(), ys.size());
    int64_t M = 1;
    for (size_t i = 0; i + 1 < xs.size(); i++) M *= xs[i];
    if (M == 0 || N == 0) return Ort::Status{nullptr};
    if (2 * K > INT32_MAX || N > INT32_MAX || M > INT32_MAX) return Ort::Status("chorus.Linear: dimensions past 2^31", ORT_INVALID_ARGUMENT);
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    half* yp = reinterpret_cast<half*>(y.GetTensorMutableData<Ort::Float16_t>());
    if (K == 0) return statusOf(cudaMemsetAsync(yp, 0, static_cast<size_t>(M) * N * sizeof(half), stream), "zeroing an empty sum", op);
    const half* xp = reinterpret_cast<const half*>(x.GetTensorData<Ort::Float16_t>());
    const half* wp = reinterpret_cast<const half*>(w.GetTensorData<Ort::Float16_t>());
    const int k = static_cast<int>(K), n = static_cast<int>(N);
    if (gemvRuns < 0) {
      cudaFuncAttributes attributes{};
      gemvRuns = cudaFuncGetAttributes(&attributes, f16Gemv<1, kPlain>) == cudaSuccess ? 1 : 0;
      cudaGetLastError();  // a missing kernel image is not this call's error
    }
    if (gemvRuns == 1 && M <= kF16GemvMaxRows && N % 8 == 0) {
      if (auto s = multiprocessors(sms, op); !s.IsOK()) return s;
      constexpr int threads = kF16GemvWarps * 32;
      const int columnBlocks = (n + kF16GemvColumns - 1) / kF16GemvColumns;
      constexpr int kStep = kF16GemvWarps * kF16GemvUnroll;
      // K split into as many slices as keep the blocks within one resident wave (gemv-bandwidth.cu: a second,
      // partial wave cost 10-20%, e.g. gate|up 64 us at 1.27 waves against 57 at 0.85; 4096 x 4096 12.2 us at 16
      // slices, 14.4 at 22), whole steps a slice. Depends on N, K and M only, so a shape's scratch is the same in
      // every run of it, captured or not. SwiGLU's inputs are staged in shared memory where a slice's fit.
      int input = swiglu ? kSwigluStaged : kPlain, kPerSlice = 0;
      for (;;) {
        int& perSm = residentPerSm[gemvVariant(M, input)];
        if (perSm == 0) {
          if (auto s = statusOf(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, kGemvs[gemvVariant(M, input)], threads, 0), "occupancy", op); !s.IsOK()) return s;
          perSm = std::max(1, perSm);
        }
        const int wanted = std::max(1, std::min(perSm * sms / columnBlocks, (k + kStep - 1) / kStep));
        kPerSlice = ((k + wanted - 1) / wanted + kStep - 1) / kStep * kStep;
        if (input != kSwigluStaged || std::min(kPerSlice, k) * M <= kF16SwigluStage) break;
        input = kSwigluLoad;
      }
      const Gemv kernel = kGemvs[gemvVariant(M, input)];
      const int slices = (k + kPerSlice - 1) / kPerSlice;
      float* partial = nullptr;
      unsigned* arrivals = nullptr;
      if (slices > 1) {
        // Arrival counters a column block at the start (every shape's at the same place: a launch leaves them zeroed,
        // and no shape's partial sums land on them), then the partial sums. slices > 1 means columnBlocks <= perSm
        // sms / 2.
        constexpr size_t kArrivalSlots = 8192;
        if (static_cast<size_t>(columnBlocks) > kArrivalSlots) return Ort::Status("chorus.Linear: too many column blocks to split K", ORT_EP_FAIL);
        const size_t need = kArrivalSlots * sizeof(unsigned) + static_cast<size_t>(slices) * kF16GemvMaxRows * N * sizeof(float);
        if (tls.linearBytes < need) {
          if (auto s = growScratch(tls.linear, tls.linearBytes, need, stream, "split-K scratch", op); !s.IsOK()) return s;
          if (auto s = statusOf(cudaMemsetAsync(tls.linear, 0, need, stream), "zeroing split-K scratch", op); !s.IsOK()) return s;
        }
        arrivals = static_cast<unsigned*>(tls.linear);
        partial = reinterpret_cast<float*>(arrivals + kArrivalSlots);
      }
      kernel<<<dim3(static_cast<unsigned>(columnBlocks), static_cast<unsigned>(slices)), threads, 0, stream>>>(xp, wp, yp, partial, arrivals, k, n, kPerSlice);
      return statusOf(cudaGetLastError(), "GEMV launch", op);
    }
    if (swiglu) {
      if (gemvRuns != 1) {
        return Ort::Status("chorus.Linear: activation swiglu needs this library's kernels, which have no image for this GPU (rebuild with npm run build:cuda-ops, or --linear-kernels ort)",
                           ORT_EP_FAIL);
      }
      swigluRows<<<swigluBlocks(M, K), 256, 0, stream>>>(xp, const_cast<half*>(xp), static_cast<int>(M), k, 2 * k);
      if (auto s = statusOf(cudaGetLastError(), "SwiGLU launch", op); !s.IsOK()) return s;
    }
    if (auto s = threadCublas(stream, op); !s.IsOK()) return s;
    return halfGemm(kCublasOpN, n, static_cast<int>(M), k, wp, n, xp, swiglu ? 2 * k : k, yp, op);
  }
};

struct LinearOp : Ort::CustomOpBase<LinearOp, LinearKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return createKernel<LinearKernel>(info, kernel);
  }
  const char* GetName() const { return "Linear"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 2; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};


// ------------------------------------------------------------------------------------------------ chorus.DecodeAttention

// chorus.DecodeAttention (experimental; native/probes/decode-attention-check.ts checks it against GroupQueryAttention,
// gqa-backends.ts --op chorus times it; `--decode-attention chorus` renames a shard's GroupQueryAttention nodes to it):
// GroupQueryAttention's inputs, outputs and attributes for the row cache's graphs (packed QKV, rotary inside, not
// interleaved, present bound to past, head dim 16, 64 or 128, 2, 3, 4 or 8 query heads a KV head, no window or
// softcap), through decode_attention.cuh's kernels: one query token a block for decode steps, several for prompt
// chunks. A present buffer that is not the past buffer gets a copy of it first (correct, slow: the probe and the
// server bind them together).
using SplitKernel = void (*)(const half*, const half*, const half*, const int*, float*, float*, float*, half*, int, int, int, int, float, int, bool, bool);
struct SplitLaunch {
  SplitKernel kernel;
  int sharedBytes;  // its dynamic shared memory
  int tokensPerBlock;
};
template <int D, int kGroup>
SplitLaunch splitKernelFor(bool prompt) {
  constexpr int kPrompt = promptTokensPerBlock<kGroup>();
  return prompt ? SplitLaunch{decodeAttentionSplit<D, kGroup, kPrompt>, attentionTileBytes<D, kGroup, kPrompt>(), kPrompt}
                : SplitLaunch{decodeAttentionSplit<D, kGroup, 1>, attentionTileBytes<D, kGroup, 1>(), 1};
}
template <int D>
SplitLaunch splitKernelFor(int group, bool prompt) {
  switch (group) {
    case 2: return splitKernelFor<D, 2>(prompt);
    case 3: return splitKernelFor<D, 3>(prompt);
    case 4: return splitKernelFor<D, 4>(prompt);
    default: return splitKernelFor<D, 8>(prompt);
  }
}
// The split kernel for head dim D and the group: one query token a block for decode steps, several for prompt chunks.
SplitLaunch splitKernelFor(int D, int group, bool prompt) {
  return D == 128 ? splitKernelFor<128>(group, prompt) : D == 64 ? splitKernelFor<64>(group, prompt) : splitKernelFor<16>(group, prompt);
}

struct DecodeAttentionKernel {
  int numHeads = 0, kvHeads = 0;
  float scale = 0.f;
  int sms = 0;
  // Per split kernel used (decode, prompt): its blocks resident on the GPU at once.
  std::vector<std::pair<SplitKernel, int>> residentBlocks;
  bool rotate = false;   // CHORUS_ATTN_ROTATE=1: each block's tiles from a place of its own (a measurement setting)

  Ort::Status Init(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    numHeads = static_cast<int>(ki.GetAttribute<int64_t>("num_heads"));
    kvHeads = static_cast<int>(ki.GetAttribute<int64_t>("kv_num_heads"));
    const auto intOr = [&](const char* name, int64_t fallback) {
      try {
        return ki.GetAttribute<int64_t>(name);
      } catch (const Ort::Exception&) {
        return fallback;
      }
    };
    const auto floatOr = [&](const char* name, float fallback) {
      try {
        return ki.GetAttribute<float>(name);
      } catch (const Ort::Exception&) {
        return fallback;
      }
    };
    scale = floatOr("scale", 0.f);  // 0: 1 / sqrt(head dim), set when the head dim is known
    const char* rotateEnv = std::getenv("CHORUS_ATTN_ROTATE");
    rotate = rotateEnv != nullptr && std::string(rotateEnv) == "1";
    if (intOr("do_rotary", 0) != 1 || intOr("rotary_interleaved", 0) != 0) return Ort::Status("chorus.DecodeAttention: needs do_rotary 1 and rotary_interleaved 0", ORT_INVALID_ARGUMENT);
    if (intOr("local_window_size", -1) != -1 || floatOr("softcap", 0.f) != 0.f) return Ort::Status("chorus.DecodeAttention: no local window or softcap", ORT_INVALID_ARGUMENT);
    const int group = kvHeads <= 0 || numHeads % kvHeads != 0 ? 0 : numHeads / kvHeads;
    if (group != 2 && group != 3 && group != 4 && group != 8) {
      return Ort::Status("chorus.DecodeAttention: num_heads must be 2, 3, 4 or 8 times kv_num_heads", ORT_INVALID_ARGUMENT);
    }
    return Ort::Status{nullptr};
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return guarded([&] { return Compute(context); }); }

  Ort::Status Compute(OrtKernelContext* context) {
    constexpr const char* op = "chorus.DecodeAttention";
    Ort::KernelContext ctx(context);
    Ort::ConstValue qkv = ctx.GetInput(0), pastKey = ctx.GetInput(3), pastValue = ctx.GetInput(4), seqlens = ctx.GetInput(5),
                    total = ctx.GetInput(6), cosCache = ctx.GetInput(7), sinCache = ctx.GetInput(8);
    const auto q = qkv.GetTensorTypeAndShapeInfo().GetShape();
    const auto past = pastKey.GetTensorTypeAndShapeInfo().GetShape();
    if (past.size() != 4 || past[0] != (q.empty() ? -1 : q[0]) || past[1] != kvHeads || (past[3] != 16 && past[3] != 64 && past[3] != 128)) {
      return Ort::Status("chorus.DecodeAttention: past_key must be [B, kv_num_heads, max_len, head dim 16, 64 or 128]", ORT_INVALID_ARGUMENT);
    }
    const int64_t D = past[3];
    if (q.size() != 3 || q[2] != (numHeads + 2 * kvHeads) * D) {
      return Ort::Status("chorus.DecodeAttention: query must be packed QKV [B, S, (num_heads + 2 kv_num_heads) head dim]", ORT_INVALID_ARGUMENT);
    }
    const float softmaxScale = scale != 0.f ? scale : 1.f / std::sqrt(static_cast<float>(D));
    const int B = static_cast<int>(q[0]), S = static_cast<int>(q[1]), presentLen = static_cast<int>(past[2]);
    const std::vector<int64_t> outShape{q[0], q[1], numHeads * D};
    Ort::UnownedValue out = ctx.GetOutput(0, outShape.data(), outShape.size());
    Ort::UnownedValue presentKey = ctx.GetOutput(1, past.data(), past.size());
    Ort::UnownedValue presentValue = ctx.GetOutput(2, past.data(), past.size());
    if (B == 0 || S == 0) return Ort::Status{nullptr};
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    half* pk = reinterpret_cast<half*>(presentKey.GetTensorMutableData<Ort::Float16_t>());
    half* pv = reinterpret_cast<half*>(presentValue.GetTensorMutableData<Ort::Float16_t>());
    const half* inK = reinterpret_cast<const half*>(pastKey.GetTensorData<Ort::Float16_t>());
    const half* inV = reinterpret_cast<const half*>(pastValue.GetTensorData<Ort::Float16_t>());
    const size_t cacheBytes = static_cast<size_t>(B) * kvHeads * presentLen * D * sizeof(half);
    if (pk != inK) {
      if (auto s = statusOf(cudaMemcpyAsync(pk, inK, cacheBytes, cudaMemcpyDeviceToDevice, stream), "copying past_key", op); !s.IsOK()) return s;
    }
    if (pv != inV) {
      if (auto s = statusOf(cudaMemcpyAsync(pv, inV, cacheBytes, cudaMemcpyDeviceToDevice, stream), "copying past_value", op); !s.IsOK()) return s;
    }
    if (auto s = multiprocessors(sms, op); !s.IsOK()) return s;
    const int tokens = B * S;
    if (tokens > 65535) return Ort::Status("chorus.DecodeAttention: at most 65,535 query tokens a call", ORT_INVALID_ARGUMENT);
    const SplitLaunch split = splitKernelFor(static_cast<int>(D), numHeads / kvHeads, S > 1);
    auto known = std::find_if(residentBlocks.begin(), residentBlocks.end(), [&](const auto& e) { return e.first == split.kernel; });
    if (known == residentBlocks.end()) {
      if (auto s = allowSharedMemory(reinterpret_cast<const void*>(split.kernel), split.sharedBytes, op); !s.IsOK()) return s;
      int perSm = 0;
      if (auto s = statusOf(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&perSm, split.kernel, kAttnThreads, split.sharedBytes), "occupancy", op); !s.IsOK()) {
        return s;
      }
      known = residentBlocks.insert(residentBlocks.end(), {split.kernel, std::max(1, perSm) * sms});
    }
    const int slots = known->second;
    const int tokenBlocks = B * ((S + split.tokensPerBlock - 1) / split.tokensPerBlock);
    // A decode step's single token is its row's last position whether or not it is the row's first (seqlens_k 0), so
    // S == 1 is never treated as a first prompt: a CUDA graph captured at total_sequence_length 1 replays correctly.
    const int longest = *total.GetTensorData<int32_t>();
    const bool firstPrompt = S > 1 && longest == S;
    // Splits: as many blocks as fit on the GPU at once (no second, partial wave), at least one tile of 32 positions a
    // split. The longest row (total_sequence_length, on the host) bounds the tiles, except while a CUDA graph is being
    // captured: the graph keeps the count for every later length, so then the cache's length does. The kernels divide
    // each token's own length by the count, so any count is correct.
    cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
    if (auto s = statusOf(cudaStreamIsCapturing(stream, &capturing), "cudaStreamIsCapturing", op); !s.IsOK()) return s;
    const int span = capturing == cudaStreamCaptureStatusNone ? longest : presentLen;
    const int blocks = tokenBlocks * kvHeads;
    const int splits = std::max(1, std::min({kAttnMaxSplits, slots / blocks, (span + kAttnTile - 1) / kAttnTile}));
    // Scratch: rotated queries (float16), then partial sums, maxima and sums (float32). Decode steps (captured in CUDA
    // graphs) share one buffer sized once for up to kDecodeRows rows, which no later call grows (a captured graph
    // keeps its address); prompt chunks, never captured, use their own, grown as needed.
    const size_t qBytes = static_cast<size_t>(tokens) * numHeads * D * sizeof(half);
    const size_t partials = splits == 1 ? 0 : static_cast<size_t>(tokens) * numHeads * splits;
    size_t need = qBytes + partials * (D + 2) * sizeof(float);
    const bool decode = S == 1;
    if (decode) {
      // B splits <= slots / kvHeads by the rule above.
      constexpr int kDecodeRows = 1024;
      if (B > kDecodeRows) return Ort::Status("chorus.DecodeAttention: at most 1024 rows a decode step", ORT_INVALID_ARGUMENT);
      const size_t capacity = static_cast<size_t>(kDecodeRows) * numHeads * D * sizeof(half) +
                              static_cast<size_t>(slots / kvHeads + 1) * numHeads * (D + 2) * sizeof(float);
      need = std::max(need, capacity);
    }
    void*& buffer = decode ? tls.attention : tls.attentionPrompt;
    size_t& bufferBytes = decode ? tls.attentionBytes : tls.attentionPromptBytes;
    if (auto s = growScratch(buffer, bufferBytes, need, stream, "attention scratch", op); !s.IsOK()) return s;
    half* qRot = static_cast<half*>(buffer);
    float* partialOut = reinterpret_cast<float*>(static_cast<char*>(buffer) + qBytes);
    float* partialMax = partialOut + partials * D;
    float* partialSum = partialMax + partials;
    half* output = reinterpret_cast<half*>(out.GetTensorMutableData<Ort::Float16_t>());
    const int* lengths = seqlens.GetTensorData<int32_t>();
    decodeRotaryAppend<<<dim3(static_cast<unsigned>(numHeads + 2 * kvHeads), static_cast<unsigned>(S), static_cast<unsigned>(B)),
                         static_cast<unsigned>(D / 2), 0, stream>>>(
        reinterpret_cast<const half*>(qkv.GetTensorData<Ort::Float16_t>()), lengths, reinterpret_cast<const half*>(cosCache.GetTensorData<Ort::Float16_t>()),
        reinterpret_cast<const half*>(sinCache.GetTensorData<Ort::Float16_t>()), pk, pv, qRot, numHeads, kvHeads, presentLen, S, firstPrompt,
        static_cast<int>(D));
    if (auto s = statusOf(cudaGetLastError(), "rotary launch", op); !s.IsOK()) return s;
    // One split writes the output itself; more are combined by the merge.
    const dim3 grid(static_cast<unsigned>(splits), static_cast<unsigned>(kvHeads), static_cast<unsigned>(tokenBlocks));
    split.kernel<<<grid, kAttnThreads, static_cast<size_t>(split.sharedBytes), stream>>>(qRot, pk, pv, lengths, partialOut, partialMax, partialSum, splits == 1 ? output : nullptr,
                                              numHeads, kvHeads, presentLen, splits, softmaxScale, S, firstPrompt, rotate);
    if (auto s = statusOf(cudaGetLastError(), "attention launch", op); !s.IsOK()) return s;
    if (splits == 1) return Ort::Status{nullptr};
    decodeAttentionMerge<<<dim3(static_cast<unsigned>(numHeads), static_cast<unsigned>(tokens)), static_cast<unsigned>(D), 0, stream>>>(
        partialOut, partialMax, partialSum, output, numHeads, splits, static_cast<int>(D));
    return statusOf(cudaGetLastError(), "merge launch", op);
  }
};

struct DecodeAttentionOp : Ort::CustomOpBase<DecodeAttentionOp, DecodeAttentionKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return createKernel<DecodeAttentionKernel>(info, kernel);
  }
  const char* GetName() const { return "DecodeAttention"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  // GroupQueryAttention's first nine: query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
  // cos_cache, sin_cache.
  size_t GetInputTypeCount() const { return 9; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 5 || index == 6 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32 : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 1 || index == 2 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  // total_sequence_length stays on the host, as GroupQueryAttention takes it.
  OrtMemType GetInputMemoryType(size_t index) const { return index == 6 ? OrtMemTypeCPUInput : OrtMemTypeDefault; }
  size_t GetOutputTypeCount() const { return 3; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};

// ------------------------------------------------------------------------------------------------ chorus.SwiGLU

// chorus.SwiGLU: Y [..., K] = swiglu(X[..., :K], X[..., K:]) for X [..., 2K] (swiglu.cuh), where a graph's MLP feeds a
// down projection that is not chorus.Linear (which applies it itself): rewriteForChorusOps replaces the Split,
// Sigmoid and two Muls with it.
struct SwigluKernel {
  Ort::Status Init(const OrtKernelInfo* /*info*/) { return Ort::Status{nullptr}; }
  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return guarded([&] { return Compute(context); }); }
  Ort::Status Compute(OrtKernelContext* context) {
    constexpr const char* op = "chorus.SwiGLU";
    Ort::KernelContext ctx(context);
    Ort::ConstValue x = ctx.GetInput(0);
    auto shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() % 2 != 0) return Ort::Status("chorus.SwiGLU: X must be [..., 2K] (gate | up)", ORT_INVALID_ARGUMENT);
    const int64_t K = shape.back() / 2;
    int64_t M = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) M *= shape[i];
    shape.back() = K;
    Ort::UnownedValue y = ctx.GetOutput(0, shape.data(), shape.size());
    if (M == 0 || K == 0) return Ort::Status{nullptr};
    if (M > INT32_MAX || 2 * K > INT32_MAX) return Ort::Status("chorus.SwiGLU: dimensions past 2^31", ORT_INVALID_ARGUMENT);
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    swigluRows<<<swigluBlocks(M, K), 256, 0, stream>>>(reinterpret_cast<const half*>(x.GetTensorData<Ort::Float16_t>()),
                                                        reinterpret_cast<half*>(y.GetTensorMutableData<Ort::Float16_t>()), static_cast<int>(M), static_cast<int>(K),
                                                        static_cast<int>(K));
    return statusOf(cudaGetLastError(), "SwiGLU launch", op);
  }
};

struct SwigluOp : Ort::CustomOpBase<SwigluOp, SwigluKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return createKernel<SwigluKernel>(info, kernel);
  }
  const char* GetName() const { return "SwiGLU"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};


// ------------------------------------------------------------------------------------------------ chorus.GreedyArgMax

// chorus.GreedyArgMax: greedy_token int64 [...] from the float16 logits [..., V] (greedy_argmax.cuh), in place of the
// graph's Cast, chunked ArgMax and ReduceMax (rewriteForChorusOps).
struct GreedyArgmaxKernel {
  Ort::Status Init(const OrtKernelInfo* /*info*/) { return Ort::Status{nullptr}; }
  OrtStatusPtr ComputeV2(OrtKernelContext* context) { return guarded([&] { return Compute(context); }); }
  Ort::Status Compute(OrtKernelContext* context) {
    constexpr const char* op = "chorus.GreedyArgMax";
    Ort::KernelContext ctx(context);
    Ort::ConstValue logits = ctx.GetInput(0);
    auto shape = logits.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() <= 0 || shape.back() > INT32_MAX) return Ort::Status("chorus.GreedyArgMax: logits must be [..., V] with 0 < V < 2^31", ORT_INVALID_ARGUMENT);
    const int V = static_cast<int>(shape.back());
    int64_t rows = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) rows *= shape[i];
    shape.pop_back();
    Ort::UnownedValue out = ctx.GetOutput(0, shape.data(), shape.size());
    if (rows == 0) return Ort::Status{nullptr};
    if (rows > 65535) return Ort::Status("chorus.GreedyArgMax: at most 65,535 rows a call", ORT_INVALID_ARGUMENT);
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    const int perSlice = argmaxPerSlice(V, argmaxSlices(V));
    const int slices = (V + perSlice - 1) / perSlice;
    float* partialV = nullptr;
    int* partialI = nullptr;
    unsigned* arrivals = nullptr;
    if (slices > 1) {
      // Sized once for kArgmaxRows rows (a CUDA graph keeps the address it was captured with), grown for more
      // outside a capture; counters first, zeroed when the buffer is made and left zeroed by every launch.
      constexpr int64_t kArgmaxRows = 1024;
      const size_t capacity = static_cast<size_t>(std::max(rows, kArgmaxRows));
      const size_t need = capacity * sizeof(unsigned) + capacity * kArgmaxBlocks * (sizeof(float) + sizeof(int));
      if (tls.argmaxBytes < need) {
        if (auto s = growScratch(tls.argmax, tls.argmaxBytes, need, stream, "arg max scratch", op); !s.IsOK()) return s;
        if (auto s = statusOf(cudaMemsetAsync(tls.argmax, 0, need, stream), "zeroing arg max scratch", op); !s.IsOK()) return s;
      }
      arrivals = static_cast<unsigned*>(tls.argmax);
      partialV = reinterpret_cast<float*>(arrivals + capacity);
      partialI = reinterpret_cast<int*>(partialV + capacity * kArgmaxBlocks);
    }
    greedyArgmax<<<dim3(static_cast<unsigned>(slices), static_cast<unsigned>(rows)), kArgmaxThreads, 0, stream>>>(
        reinterpret_cast<const half*>(logits.GetTensorData<Ort::Float16_t>()), out.GetTensorMutableData<int64_t>(), partialV, partialI, arrivals, V, perSlice);
    return statusOf(cudaGetLastError(), "arg max launch", op);
  }
};

struct GreedyArgmaxOp : Ort::CustomOpBase<GreedyArgmaxOp, GreedyArgmaxKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    return createKernel<GreedyArgmaxKernel>(info, kernel);
  }
  const char* GetName() const { return "GreedyArgMax"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetInputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64; }
};
}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api) {
  // The headers are C API 21 (Debian's libonnxruntime-dev); the runtime (1.29) serves every older version.
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  static Int4LinearOp int4Linear;
  static DecodeAttentionOp decodeAttention;
  static LinearOp linear;
  static SwigluOp swiglu;
  static GreedyArgmaxOp greedyArgmax;
  static Ort::CustomOpDomain* domain = nullptr;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    if (domain == nullptr) {
      domain = new Ort::CustomOpDomain("chorus");
      domain->Add(&int4Linear);
      domain->Add(&decodeAttention);
      domain->Add(&linear);
      domain->Add(&swiglu);
      domain->Add(&greedyArgmax);
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
  }
  return nullptr;
}
