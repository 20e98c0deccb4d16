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
// slice to finish adds the slices' float32 sums. The down projection reads gate | up and applies SwiGLU as it loads x
// (kSwiglu), which spares the Split, Sigmoid and two Muls of a layer's MLP.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chorus {

constexpr int kF16GemvMaxRows = 2;  // above, cuBLAS (gemv-bandwidth.cu: at 4 rows it was faster on gate|up and qkv)
constexpr int kF16GemvWarps = 8;
constexpr int kF16GemvUnroll = 8;
constexpr int kF16GemvColumns = 256;  // outputs a block: 32 lanes x 8

// SwiGLU as the reference computes it in float16 (transformers' act_fn(gate) * up): silu rounded, then the product.
__device__ __forceinline__ half swigluHalf(half gate, half up) {
  const float g = __half2float(gate);
  return __hmul(__float2half(g / (1.f + __expf(-g))), up);
}

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

template <int M, bool kSwiglu = false>
__device__ __forceinline__ void f16GemvStep(float (&acc)[M][8], uint4 wv, const half* __restrict__ x, int K, int k) {
  const float2 w0 = __half22float2(*reinterpret_cast<const half2*>(&wv.x)), w1 = __half22float2(*reinterpret_cast<const half2*>(&wv.y));
  const float2 w2 = __half22float2(*reinterpret_cast<const half2*>(&wv.z)), w3 = __half22float2(*reinterpret_cast<const half2*>(&wv.w));
#pragma unroll
  for (int m = 0; m < M; m++) {
    const float xs = f16GemvInput<kSwiglu>(x, K, m, k);
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
// kSwiglu: X is [M, 2K], gate | up, and the product runs on swiglu(gate, up) (f16GemvInput).
template <int M, bool kSwiglu = false>
__global__ void __launch_bounds__(kF16GemvWarps * 32) f16Gemv(const half* __restrict__ x, const half* __restrict__ w, half* __restrict__ y,
                                                              float* __restrict__ partial, unsigned* __restrict__ arrivals, int K, int N,
                                                              int kPerSlice) {
  __shared__ __align__(16) float sums[kF16GemvWarps][M][kF16GemvColumns];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int col = blockIdx.x * kF16GemvColumns + 8 * lane;
  const bool holds = col < N;
  const int k0 = blockIdx.y * kPerSlice, k1 = min(K, k0 + kPerSlice);
  float acc[M][8] = {};
  // A lane past N reads column 0's weights (in bounds, unconditional loads batch) and writes nothing.
  const uint4* wp = reinterpret_cast<const uint4*>(w + (holds ? col : 0));
  const size_t rowStride = static_cast<size_t>(N) / 8;  // uint4s a W row
  int k = k0 + warp;
  constexpr int kBatch = kF16GemvUnroll * kF16GemvWarps;
  if (k + kBatch - kF16GemvWarps < k1) {
    uint4 cur[kF16GemvUnroll];
#pragma unroll
    for (int u = 0; u < kF16GemvUnroll; u++) cur[u] = __ldcs(wp + static_cast<size_t>(k + u * kF16GemvWarps) * rowStride);
    for (; k + 2 * kBatch - kF16GemvWarps < k1; k += kBatch) {
      uint4 next[kF16GemvUnroll];
#pragma unroll
      for (int u = 0; u < kF16GemvUnroll; u++) next[u] = __ldcs(wp + static_cast<size_t>(k + kBatch + u * kF16GemvWarps) * rowStride);
#pragma unroll
      for (int u = 0; u < kF16GemvUnroll; u++) f16GemvStep<M, kSwiglu>(acc, cur[u], x, K, k + u * kF16GemvWarps);
#pragma unroll
      for (int u = 0; u < kF16GemvUnroll; u++) cur[u] = next[u];
    }
#pragma unroll
    for (int u = 0; u < kF16GemvUnroll; u++) f16GemvStep<M, kSwiglu>(acc, cur[u], x, K, k + u * kF16GemvWarps);
    k += kBatch;
  }
  for (; k < k1; k += kF16GemvWarps) {
    const uint4 wv = __ldcs(wp + static_cast<size_t>(k) * rowStride);
    f16GemvStep<M, kSwiglu>(acc, wv, x, K, k);
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

// X [M, 2K] = gate | up to swiglu(gate, up) in place of each row's gate half, for cuBLAS to read with leading
// dimension 2K (chorus.Linear's swiglu activation above kF16GemvMaxRows rows). Eight values a thread when K % 8 == 0.
__global__ void swigluInPlace(half* __restrict__ x, int M, int K) {
  const bool wide = K % 8 == 0;
  const size_t perRow = wide ? K / 8 : K, total = static_cast<size_t>(M) * perRow;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    half* row = x + (i / perRow) * 2 * K;
    const size_t j = i % perRow;
    if (wide) {
      uint4 g = *reinterpret_cast<const uint4*>(row + 8 * j), u = *reinterpret_cast<const uint4*>(row + K + 8 * j);
      half* gh = reinterpret_cast<half*>(&g);
      const half* uh = reinterpret_cast<const half*>(&u);
#pragma unroll
      for (int e = 0; e < 8; e++) gh[e] = swigluHalf(gh[e], uh[e]);
      *reinterpret_cast<uint4*>(row + 8 * j) = g;
    } else {
      row[j] = swigluHalf(row[j], row[K + j]);
    }
  }
}

}  // namespace chorus
