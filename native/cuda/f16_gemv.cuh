// chorus.Linear's GEMV: Y[M, N] = X[M, K] W[K, N] for up to kF16GemvMaxRows rows, W float16 in MatMul's layout (row k
// holds the k-th weight of all N outputs, contiguous).
//
// Why: ONNX Runtime's MatMul (cuBLAS) streams a decode step's float16 weights at 1.8-4.1 TB/s by shape at one row
// (native/probes/gemv-bandwidth.cu on an H200, where a plain read reaches 3.1-4.6 TB/s by size): the 4096 x 4096 and
// QKV projections at 1.8-2.9, lm_head at 4.05. This kernel, with the split below: 12.2, 16.3, 57.3, 30.6 and 237 us
// for o, qkv, gate|up, down and lm_head against cuBLAS's 13.6, 17.2, 57.8, 34.4 and 260 (2026-12-01h).
// A lane owns 8 adjacent outputs (16 bytes of each W row: a warp reads 512 contiguous bytes a row) and a warp a
// stride of k rows, loaded kF16GemvUnroll rows at a time one batch ahead of the rows being summed (written out as
// two register batches: with one unrolled batch ptxas interleaved loads and sums, 32 registers at one row, so fewer
// loads were in flight; 100 with two), x read as a broadcast; the block's warps are summed through shared memory
// and, when K is split over blockIdx.y (so that N / 256 column blocks still fill the GPU), each column block's last
// slice to finish adds the slices' float32 sums. The down projection reads gate | up and applies SwiGLU to it
// (F16GemvInput), which spares the Split, Sigmoid and two Muls of a layer's MLP.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "swiglu.cuh"

namespace chorus {

constexpr int kF16GemvMaxRows = 2;  // above, cuBLAS (gemv-bandwidth.cu: at 4 rows it was faster on gate|up and qkv)
constexpr int kF16GemvWarps = 8;
constexpr int kF16GemvUnroll = 8;
constexpr int kF16GemvColumns = 256;  // outputs a block: 32 lanes x 8

// Row m's k-th input: X[m][k], or with kSwiglu swiglu(X[m][k], X[m][K + k]) from X [M, 2K] = gate | up (the MLP's
// Split, Sigmoid and two Muls folded into the down projection's read of its input).
template <bool kSwiglu>
__device__ __forceinline__ float f16GemvInput(const half* __restrict__ x, int K, int m, int k) {
  if constexpr (kSwiglu) {
    const half* row = x + static_cast<size_t>(m) * 2 * K;
    return __half2float(swigluHalf(__ldg(row + k), __ldg(row + K + k)));
  } else {
    return __half2float(__ldg(x + static_cast<size_t>(m) * K + k));
  }
}

// Where a row's k-th input comes from: X itself (kPlain), swiglu of X's two halves read from global memory as the
// weights stream (kSwigluLoad, for slices too long to stage), or swiglu computed once a block into shared memory
// before the weights' first use (kSwigluStaged). The staged form exists because kSwigluLoad's per-weight-row loads,
// exponential and division made the down projection instruction-bound: 40.0 us a call at one row against 30.8 for the
// plain GEMV of the same shape (ncu, 8B, 2026-12-02); the staging is one pass over the slice's 2 x 896 values.
enum F16GemvInput { kPlain = 0, kSwigluLoad = 1, kSwigluStaged = 2 };
// Shared-memory floats for the staged inputs of one block (all its rows): the 8B's down projection needs 896 a row,
// the 70B's 3584 (larger slices take kSwigluLoad).
constexpr int kF16SwigluStage = 4096;

template <int M, int kInput>
__device__ __forceinline__ void f16GemvStep(float (&acc)[M][8], uint4 wv, const half* __restrict__ x, int K, int k, const float* staged, int k0,
                                            int span) {
  const float2 w0 = __half22float2(*reinterpret_cast<const half2*>(&wv.x)), w1 = __half22float2(*reinterpret_cast<const half2*>(&wv.y));
  const float2 w2 = __half22float2(*reinterpret_cast<const half2*>(&wv.z)), w3 = __half22float2(*reinterpret_cast<const half2*>(&wv.w));
#pragma unroll
  for (int m = 0; m < M; m++) {
    float xs;
    if constexpr (kInput == kSwigluStaged) xs = staged[m * span + (k - k0)];
    else xs = f16GemvInput<kInput == kSwigluLoad>(x, K, m, k);
    acc[m][0] += xs * w0.x;
    acc[m][1] += xs * w0.y;
    acc[m][2] += xs * w1.x;
    acc[m][3] += xs * w1.y;
    acc[m][4] += xs * w2.x;
    acc[m][5] += xs * w2.y;
    acc[m][6] += xs * w3.x;
    acc[m][7] += xs * w3.y;
  }
}

// Grid (ceil(N / 256), slices), kF16GemvWarps warps; slice s covers k in [s kPerSlice, (s + 1) kPerSlice). N % 8 == 0.
// With one slice the block writes Y (float16), otherwise its float32 sums to partial[slice][M][N], which the column
// block's last slice adds into Y where `arrivals` (a zeroed counter per column block) is given, or a later kernel.
// kInput other than kPlain: X is [M, 2K], gate | up, and the product runs on swiglu(gate, up) (f16GemvInput).
// kInput: F16GemvInput (kSwigluStaged needs (min(K, k0 + kPerSlice) - k0) * M <= kF16SwigluStage for every slice).
template <int M, int kInput = kPlain>
__global__ void __launch_bounds__(kF16GemvWarps * 32) f16Gemv(const half* __restrict__ x, const half* __restrict__ w, half* __restrict__ y,
                                                              float* __restrict__ partial, unsigned* __restrict__ arrivals, int K, int N,
                                                              int kPerSlice) {
  __shared__ __align__(16) float sums[kF16GemvWarps][M][kF16GemvColumns];
  __shared__ float staged[kInput == kSwigluStaged ? kF16SwigluStage : 1];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col = blockIdx.x * kF16GemvColumns + 8 * lane;
  const bool holds = col < N;
  const int k0 = blockIdx.y * kPerSlice, k1 = min(K, k0 + kPerSlice), span = k1 - k0;
  float acc[M][8] = {};
  // A lane past N reads column 0's weights (in bounds, unconditional loads batch) and writes nothing.
  const uint4* wp = reinterpret_cast<const uint4*>(w + (holds ? col : 0));
  const size_t rowStride = static_cast<size_t>(N) / 8;  // uint4s a W row
  int k = k0 + warp;
  constexpr int kBatch = kF16GemvUnroll * kF16GemvWarps;
  const bool batched = k + kBatch - kF16GemvWarps < k1;
  uint4 cur[kF16GemvUnroll];
  if (batched) {
#pragma unroll
    for (int u = 0; u < kF16GemvUnroll; u++) cur[u] = __ldcs(wp + static_cast<size_t>(k + u * kF16GemvWarps) * rowStride);
  }
  if constexpr (kInput == kSwigluStaged) {
    // While the first weight rows are on their way: swiglu of this slice's inputs, once for the block.
    for (int i = threadIdx.x; i < M * span; i += kF16GemvWarps * 32) {
      const int m = i / span;
      staged[i] = f16GemvInput<true>(x, K, m, k0 + (i - m * span));
    }
    __syncthreads();
  }
  if (batched) {
    for (; k + 2 * kBatch - kF16GemvWarps < k1; k += kBatch) {
      uint4 next[kF16GemvUnroll];
#pragma unroll
      for (int u = 0; u < kF16GemvUnroll; u++) next[u] = __ldcs(wp + static_cast<size_t>(k + kBatch + u * kF16GemvWarps) * rowStride);
#pragma unroll
      for (int u = 0; u < kF16GemvUnroll; u++) f16GemvStep<M, kInput>(acc, cur[u], x, K, k + u * kF16GemvWarps, staged, k0, span);
#pragma unroll
      for (int u = 0; u < kF16GemvUnroll; u++) cur[u] = next[u];
    }
#pragma unroll
    for (int u = 0; u < kF16GemvUnroll; u++) f16GemvStep<M, kInput>(acc, cur[u], x, K, k + u * kF16GemvWarps, staged, k0, span);
    k += kBatch;
  }
  for (; k < k1; k += kF16GemvWarps) {
    const uint4 wv = __ldcs(wp + static_cast<size_t>(k) * rowStride);
    f16GemvStep<M, kInput>(acc, wv, x, K, k, staged, k0, span);
  }
#pragma unroll
  for (int m = 0; m < M; m++) {
    *reinterpret_cast<float4*>(&sums[warp][m][8 * lane]) = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    *reinterpret_cast<float4*>(&sums[warp][m][8 * lane + 4]) = make_float4(acc[m][4], acc[m][5], acc[m][6], acc[m][7]);
  }
  __syncthreads();
  for (int idx = threadIdx.x; idx < M * kF16GemvColumns; idx += kF16GemvWarps * 32) {
    const int m = idx / kF16GemvColumns, c = idx % kF16GemvColumns, n = blockIdx.x * kF16GemvColumns + c;
    if (n >= N) continue;
    float s = 0.f;
#pragma unroll
    for (int v = 0; v < kF16GemvWarps; v++) s += sums[v][m][c];
    if (gridDim.y == 1) y[static_cast<size_t>(m) * N + n] = __float2half(s);
    else partial[(static_cast<size_t>(blockIdx.y) * M + m) * N + n] = s;
  }
  if (gridDim.y == 1 || arrivals == nullptr) return;
  // The last slice of a column block to finish adds the slices up (CUDA's threadFenceReduction): a separate sum
  // kernel cost ~2 us a call, a seventh of a 4096 x 4096 GEMV. arrivals[blockIdx.x] is back to 0 when it is done.
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(&arrivals[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int idx = threadIdx.x; idx < M * kF16GemvColumns; idx += kF16GemvWarps * 32) {
    const int m = idx / kF16GemvColumns, n = blockIdx.x * kF16GemvColumns + idx % kF16GemvColumns;
    if (n >= N) continue;
    float s = 0.f;
    for (int slice = 0; slice < static_cast<int>(gridDim.y); slice++) s += __ldcg(partial + (static_cast<size_t>(slice) * M + m) * N + n);
    y[static_cast<size_t>(m) * N + n] = __float2half(s);
  }
  if (threadIdx.x == 0) arrivals[blockIdx.x] = 0;
}

}  // namespace chorus
