// Chorus's own CUDA kernels, as an ONNX Runtime custom-op library for the CUDA execution provider
// (`npm run build:cuda-ops` builds native/build-cuda/libchorus_cuda_ops.so; docs/native.md).
//
// chorus.Int4Linear: Y[M, N] = X[M, K] * dequant(B)^T, where B, scales and zero_points are exactly the inputs of
// com.microsoft.MatMulNBits with bits 4 (MatMulNBitsPacking.ts: B uint8 [N, n_blocks, block/2], element 2j the low
// nibble of byte j; scales [N * n_blocks]; zero points two blocks a byte, low nibble first, absent = 8). A shard graph
// uses it by renaming its MatMulNBits nodes (src/core/native/CudaOps.ts); the weights stay byte for byte the same.
//
// Why: ORT 1.29's MatMulNBits moves 4-bit weights at about 1 TB/s at one row (docs/benchmarks.md, "What limits int4"),
// a quarter of what the card can stream. At up to kGemvMaxRows rows this kernel streams each weight row once per warp
// with 16-byte loads (one load = 32 codes = one block of 32) and uses it for every row of X. Above that it dequantizes
// the weight into a float16 scratch and calls cuBLAS (what MatMulNBits does at batch > 1 too).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <string>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

namespace {

constexpr int kGemvMaxRows = 8;
constexpr int kWarpsPerBlock = 8;

// ------------------------------------------------------------------------------------------------ kernels

// One weight row n of MatMulNBits' inputs: its 16-byte words of codes, its block scales and its zero points.
template <bool kZeroPoints>
struct WeightRow {
  const uint4* words;
  const half* scales;
  const uint8_t* zeros;
  __device__ WeightRow(const uint4* b, const half* s, const uint8_t* z, int n, int blockSize, int nBlocks)
      : words(b + static_cast<size_t>(n) * (nBlocks * blockSize / 32)),
        scales(s + static_cast<size_t>(n) * nBlocks),
        zeros(kZeroPoints ? z + static_cast<size_t>(n) * ((nBlocks + 1) / 2) : nullptr) {}
  // Two blocks a byte, low nibble first; 8 (the centre) without zero points.
  __device__ int zeroOf(int block) const { return kZeroPoints ? (zeros[block >> 1] >> ((block & 1) * 4)) & 0xF : 8; }
};

// A warp's float32 partial sums of output n, one a row of X, summed over its lanes and stored as float16.
template <int M>
__device__ void storeRowSums(float (&acc)[M], half* y, int n, int N, int lane) {
#pragma unroll
  for (int m = 0; m < M; m++) {
    float v = acc[m];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[static_cast<size_t>(m) * N + n] = __float2half(v);
  }
}

// One warp a weight row n; lanes stride over the row's 16-byte words. `(code | 0x4B000000)` read as a float is
// 2^23 + code exactly, so subtracting 2^23 + zero_point leaves (code - zero_point) without an int-to-float conversion.
template <int M, bool kZeroPoints>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) int4Gemv(
    const half* __restrict__ x, const uint4* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, int K, int N, int blockSize, int nBlocks) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const int wordsPerRow = nBlocks * blockSize / 32;
  const WeightRow<kZeroPoints> row(b, scales, zeroPoints, n, blockSize, nBlocks);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; m++) acc[m] = 0.f;

#pragma unroll 2
  for (int w = lane; w < wordsPerRow; w += 32) {
    const int k0 = w * 32;
    if (k0 >= K) break;  // padding of a partial last block: codes equal to the zero point, worth 0
    const uint4 word = __ldg(row.words + w);
    const int block = k0 / blockSize;
    const float scale = __half2float(row.scales[block]);
    const float offset = 8388608.f + static_cast<float>(row.zeroOf(block));
    float q[32];
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
    for (int p = 0; p < 4; p++) {
#pragma unroll
      for (int t = 0; t < 8; t++) q[p * 8 + t] = __uint_as_float(((parts[p] >> (4 * t)) & 0xFu) | 0x4B000000u) - offset;
    }
    const int valid = K - k0 < 32 ? K - k0 : 32;
#pragma unroll
    for (int m = 0; m < M; m++) {
      const half* xm = x + static_cast<size_t>(m) * K + k0;
      float dot = 0.f;
      if (valid == 32) {
        const uint4* xv = reinterpret_cast<const uint4*>(xm);
#pragma unroll
        for (int v = 0; v < 4; v++) {
          const uint4 xx = __ldg(xv + v);
          const half2* h = reinterpret_cast<const half2*>(&xx);
#pragma unroll
          for (int j = 0; j < 4; j++) {
            const float2 f = __half22float2(h[j]);
            dot = fmaf(q[v * 8 + 2 * j], f.x, dot);
            dot = fmaf(q[v * 8 + 2 * j + 1], f.y, dot);
          }
        }
      } else {
        for (int i = 0; i < valid; i++) dot = fmaf(q[i], __half2float(xm[i]), dot);
      }
      acc[m] = fmaf(scale, dot, acc[m]);
    }
  }
  storeRowSums<M>(acc, y, n, N, lane);
}

// The same GEMV with half2 arithmetic (CHORUS_INT4_GEMV=2, not yet measured: docs/native.md). Version 1 spends about
// 165 instructions on each 16-byte word, unpacking codes one by one in float32; here a code pair becomes a half2 in
// one or two integer operations: (v >> 4i) & 0x000F000F | 0x64006400 is half2(1024 + e_i, 1024 + e_(i+4)) for the
// eight codes e_0..e_7 of a 32-bit word, exactly. Subtracting 1024 + zero point is exact, one multiply by the scale
// rounds once (the dequantized weight in float16, as MatMulNBits has it), and four products of a group of eight are
// summed in half2 before a float32 accumulator takes them (float16 sums of at most 4 products of a small weight and
// an activation). X is read as 16-byte words and its halves paired to match (x_i, x_(i+4)) with byte permutes.
template <int M, bool kZeroPoints>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) int4GemvHalf2(
    const half* __restrict__ x, const uint4* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, int K, int N, int blockSize, int nBlocks) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const int fullWords = K / 32;  // words whose 32 codes all lie inside K; a partial tail goes the float32 way
  const WeightRow<kZeroPoints> row(b, scales, zeroPoints, n, blockSize, nBlocks);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; m++) acc[m] = 0.f;

#pragma unroll 4
  for (int w = lane; w < fullWords; w += 32) {
    const uint4 word = __ldg(row.words + w);
    const int k0 = w * 32;
    const int block = k0 / blockSize;
    const half2 offset = __half2half2(__ushort_as_half(static_cast<unsigned short>(0x6400 + row.zeroOf(block))));
    const half2 scale = __half2half2(row.scales[block]);
    // wq[p][i]: the dequantized pair (e_i, e_(i+4)) of part p (codes 8p .. 8p + 7 of the word).
    half2 wq[4][4];
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
    for (int p = 0; p < 4; p++) {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const uint32_t bits = ((parts[p] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
        wq[p][i] = __hmul2(__hsub2(*reinterpret_cast<const half2*>(&bits), offset), scale);
      }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
      const uint4* xv = reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * K + k0);
      float sum = 0.f;
#pragma unroll
      for (int p = 0; p < 4; p++) {
        const uint4 xx = __ldg(xv + p);  // x_0 .. x_7 of part p as (x0 x1) (x2 x3) (x4 x5) (x6 x7)
        const uint32_t x04 = __byte_perm(xx.x, xx.z, 0x5410), x15 = __byte_perm(xx.x, xx.z, 0x7632);
        const uint32_t x26 = __byte_perm(xx.y, xx.w, 0x5410), x37 = __byte_perm(xx.y, xx.w, 0x7632);
        half2 part = __hmul2(wq[p][0], *reinterpret_cast<const half2*>(&x04));
        part = __hfma2(wq[p][1], *reinterpret_cast<const half2*>(&x15), part);
        part = __hfma2(wq[p][2], *reinterpret_cast<const half2*>(&x26), part);
        part = __hfma2(wq[p][3], *reinterpret_cast<const half2*>(&x37), part);
        const float2 f = __half22float2(part);
        sum += f.x + f.y;
      }
      acc[m] += sum;
    }
  }
  // The tail word of a K that is not a multiple of 32 (none in Llama's shapes), as version 1 does it.
  if (fullWords * 32 < K && lane == 0) {
    const int w = fullWords, k0 = w * 32, block = k0 / blockSize;
    const uint4 word = __ldg(row.words + w);
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
    const int zero = row.zeroOf(block);
    const float scale = __half2float(row.scales[block]);
#pragma unroll
    for (int m = 0; m < M; m++) {
      float dot = 0.f;
      for (int e = 0; e < K - k0; e++) {
        const int q = static_cast<int>((parts[e / 8] >> (4 * (e % 8))) & 0xFu) - zero;
        dot = fmaf(static_cast<float>(q), __half2float(x[static_cast<size_t>(m) * K + k0 + e]), dot);
      }
      acc[m] = fmaf(scale, dot, acc[m]);
    }
  }
  storeRowSums<M>(acc, y, n, N, lane);
}

// The weight as float16 [N, K] (row n = output feature n), for the cuBLAS path.
template <bool kZeroPoints>
__global__ void int4Dequantize(const uint4* __restrict__ b, const half* __restrict__ scales,
                               const uint8_t* __restrict__ zeroPoints, half* __restrict__ out, int K, int N,
                               int blockSize, int nBlocks) {
  const int wordsPerRow = nBlocks * blockSize / 32;
  const size_t total = static_cast<size_t>(N) * wordsPerRow;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(i / wordsPerRow), w = static_cast<int>(i % wordsPerRow);
    const int k0 = w * 32;
    if (k0 >= K) continue;
    const int block = k0 / blockSize;
    const WeightRow<kZeroPoints> row(b, scales, zeroPoints, n, blockSize, nBlocks);
    const float scale = __half2float(row.scales[block]);
    const int zero = row.zeroOf(block);
    const uint4 word = row.words[w];
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
    half* dst = out + static_cast<size_t>(n) * K + k0;
    const float base = 8388608.f + static_cast<float>(zero);
    if (K - k0 >= 32) {
      // 64 contiguous bytes a thread in four 16-byte stores: 2-byte stores at a 64-byte stride cost 2 ms a layer.
      uint4* dst4 = reinterpret_cast<uint4*>(dst);
#pragma unroll
      for (int p = 0; p < 4; p++) {
        half2 h[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
          const float lo = (__uint_as_float(((parts[p] >> (8 * t)) & 0xFu) | 0x4B000000u) - base) * scale;
          const float hi = (__uint_as_float(((parts[p] >> (8 * t + 4)) & 0xFu) | 0x4B000000u) - base) * scale;
          h[t] = __floats2half2_rn(lo, hi);
        }
        dst4[p] = *reinterpret_cast<const uint4*>(h);
      }
    } else {
      const int valid = K - k0;
      for (int e = 0; e < valid; e++) {
        dst[e] = __float2half((__uint_as_float(((parts[e / 8] >> (4 * (e % 8))) & 0xFu) | 0x4B000000u) - base) * scale);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ cuBLAS, loaded
// at run time: the CUDA provider has already loaded libcublas.so.13 into the process, and no cuBLAS headers are
// needed to build this library (the declarations below are cuBLAS's stable C ABI).

using cublasHandle = void*;
using CublasCreate = int (*)(cublasHandle*);
using CublasSetStream = int (*)(cublasHandle, cudaStream_t);
using CublasSetWorkspace = int (*)(cublasHandle, void*, size_t);
using CublasGemmEx = int (*)(cublasHandle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                             const void*, void*, int, int, int, int);
constexpr int kCublasOpN = 0, kCublasOpT = 1, kCudaR16F = 2, kCublasCompute32F = 68, kCublasGemmDefault = -1;

struct Cublas {
  CublasCreate create = nullptr;
  CublasSetStream setStream = nullptr;
  CublasSetWorkspace setWorkspace = nullptr;
  CublasGemmEx gemmEx = nullptr;
  std::string error;
};

const Cublas& cublas() {
  static Cublas c;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) {
      c.error = std::string("cannot load libcublas: ") + dlerror();
      return;
    }
    c.create = reinterpret_cast<CublasCreate>(dlsym(lib, "cublasCreate_v2"));
    c.setStream = reinterpret_cast<CublasSetStream>(dlsym(lib, "cublasSetStream_v2"));
    c.setWorkspace = reinterpret_cast<CublasSetWorkspace>(dlsym(lib, "cublasSetWorkspace_v2"));
    c.gemmEx = reinterpret_cast<CublasGemmEx>(dlsym(lib, "cublasGemmEx"));
    if (c.create == nullptr || c.setStream == nullptr || c.setWorkspace == nullptr || c.gemmEx == nullptr) c.error = "libcublas lacks cublasGemmEx or its companions";
  });
  return c;
}

// Per thread (each shard worker runs its session on its own thread): a cuBLAS handle with a fixed workspace (so that
// a captured CUDA graph holds no cuBLAS allocation) and the dequantization scratch, grown only outside a capture.
struct ThreadScratch {
  int device = -1;
  cublasHandle handle = nullptr;
  void* workspace = nullptr;
  half* weights = nullptr;
  size_t weightsBytes = 0;
};
thread_local ThreadScratch tls;

// ------------------------------------------------------------------------------------------------ the op

Ort::Status statusOf(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Ort::Status{nullptr};
  return Ort::Status((std::string("chorus.Int4Linear: ") + what + ": " + cudaGetErrorString(e)).c_str(), ORT_EP_FAIL);
}

struct Int4LinearKernel {
  int64_t K = 0, N = 0, blockSize = 0;
  // CHORUS_INT4_GEMV=2 when the kernel is made: the half2 GEMV (int4GemvHalf2) instead of version 1.
  bool half2Gemv = false;

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
    const char* gemv = std::getenv("CHORUS_INT4_GEMV");
    half2Gemv = gemv != nullptr && std::string(gemv) == "2";
    return Ort::Status{nullptr};
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::Status s = Compute(context);
      return s.release();
    } catch (const Ort::Exception& e) {
      return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
    } catch (const std::exception& e) {
      return Ort::Status(e.what(), ORT_FAIL).release();
    }
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
    const int k = static_cast<int>(K), n = static_cast<int>(N), bs = static_cast<int>(blockSize);

    if (M <= kGemvMaxRows) {
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

    const Cublas& cb = cublas();
    if (!cb.error.empty()) return Ort::Status(("chorus.Int4Linear: " + cb.error).c_str(), ORT_EP_FAIL);
    int device = 0;
    if (auto s = statusOf(cudaGetDevice(&device), "cudaGetDevice"); !s.IsOK()) return s;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (auto s = statusOf(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"); !s.IsOK()) return s;
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    if (tls.device != device) {
      if (capturing) return Ort::Status("chorus.Int4Linear: first batch above 8 rows inside a CUDA graph capture", ORT_EP_FAIL);
      if (cb.create(&tls.handle) != 0) return Ort::Status("chorus.Int4Linear: cublasCreate failed", ORT_EP_FAIL);
      constexpr size_t kWorkspace = 32u << 20;
      if (auto s = statusOf(cudaMalloc(&tls.workspace, kWorkspace), "cudaMalloc (cuBLAS workspace)"); !s.IsOK()) return s;
      if (cb.setWorkspace(tls.handle, tls.workspace, kWorkspace) != 0) return Ort::Status("chorus.Int4Linear: cublasSetWorkspace failed", ORT_EP_FAIL);
      tls.device = device;
    }
    const size_t need = static_cast<size_t>(N) * static_cast<size_t>(K) * sizeof(half);
    if (tls.weightsBytes < need) {
      if (capturing) return Ort::Status("chorus.Int4Linear: dequantization scratch must grow inside a CUDA graph capture", ORT_EP_FAIL);
      if (tls.weights != nullptr) {
        if (auto s = statusOf(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); !s.IsOK()) return s;
        cudaFree(tls.weights);
        tls.weights = nullptr;
        tls.weightsBytes = 0;
      }
      if (auto s = statusOf(cudaMalloc(&tls.weights, need), "cudaMalloc (dequantization scratch)"); !s.IsOK()) return s;
      tls.weightsBytes = need;
    }
    {
      const size_t words = static_cast<size_t>(N) * (nBlocks * blockSize / 32);
      const unsigned blocks = static_cast<unsigned>(std::min<size_t>((words + 255) / 256, 65535u * 8));
      if (zeroPoints) int4Dequantize<true><<<blocks, 256, 0, stream>>>(bp, sp, zpp, tls.weights, k, n, bs, nBlocks);
      else int4Dequantize<false><<<blocks, 256, 0, stream>>>(bp, sp, zpp, tls.weights, k, n, bs, nBlocks);
      if (auto s = statusOf(cudaGetLastError(), "dequantize launch"); !s.IsOK()) return s;
    }
    if (cb.setStream(tls.handle, stream) != 0) return Ort::Status("chorus.Int4Linear: cublasSetStream failed", ORT_EP_FAIL);
    // Row-major Y[M, N] = X[M, K] W[N, K]^T is column-major Y^T[N, M] = W^T... i.e. op(A) = T on W seen as [K, N].
    const float one = 1.f, zero = 0.f;
    const int rc = cb.gemmEx(tls.handle, kCublasOpT, kCublasOpN, n, static_cast<int>(M), k, &one, tls.weights, kCudaR16F, k, xp,
                             kCudaR16F, k, &zero, yp, kCudaR16F, n, kCublasCompute32F, kCublasGemmDefault);
    if (rc != 0) return Ort::Status(("chorus.Int4Linear: cublasGemmEx failed with status " + std::to_string(rc)).c_str(), ORT_EP_FAIL);
    return Ort::Status{nullptr};
  }
};

struct Int4LinearOp : Ort::CustomOpBase<Int4LinearOp, Int4LinearKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    auto* k = new Int4LinearKernel();
    Ort::Status s = k->Init(info);
    if (!s.IsOK()) {
      delete k;
      return s.release();
    }
    *kernel = k;
    return nullptr;
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

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api) {
  // The headers are C API 21 (Debian's libonnxruntime-dev); the runtime (1.29) serves every older version.
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  static Int4LinearOp int4Linear;
  static Ort::CustomOpDomain* domain = nullptr;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    if (domain == nullptr) {
      domain = new Ort::CustomOpDomain("chorus");
      domain->Add(&int4Linear);
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
  }
  return nullptr;
}
