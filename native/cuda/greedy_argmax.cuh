// chorus.GreedyArgMax: each row's greedy token, the index of its largest float16 logit (ties to the lowest index, as
// ONNX ArgMax with select_last_index 0 and Chorus's sampler), int64.
//
// Why: the graph's greedy ArgMax over Llama 3's 128,256 logits a row ran as ten ORT/cuDNN kernels (a Cast to float32,
// a chunked ArgMax, ReduceMax, the best chunk's index and offset arithmetic): 93 us of a 5.0 ms one-row decode step on
// an H200 (ncu, 2026-12-02), 52 us of it one ArgMax kernel whose threads each scan a 334-entry chunk. Here a row is cut
// into up to kArgmaxBlocks slices read with 16-byte loads, each block's best goes to a scratch slot, and the last block
// of a row to finish (CUDA's threadFenceReduction, as chorus.Linear's split-K) picks the row's best: one kernel.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

namespace chorus {

constexpr int kArgmaxThreads = 256;
constexpr int kArgmaxBlocks = 64;  // slices a row at most

// (v, i) beats (bestV, bestI): larger, or equal and earlier. NaN never beats; a row of -inf keeps its first index.
__device__ __forceinline__ bool argmaxBeats(float v, int i, float bestV, int bestI) { return v > bestV || (v == bestV && i < bestI); }

// The block's best (v, i), valid in thread 0.
__device__ __forceinline__ void argmaxBlockBest(float& v, int& i) {
  __shared__ float warpV[kArgmaxThreads / 32];
  __shared__ int warpI[kArgmaxThreads / 32];
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    const float ov = __shfl_down_sync(0xffffffffu, v, d);
    const int oi = __shfl_down_sync(0xffffffffu, i, d);
    if (argmaxBeats(ov, oi, v, i)) v = ov, i = oi;
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) warpV[warp] = v, warpI[warp] = i;
  __syncthreads();
  if (warp == 0) {
    v = lane < kArgmaxThreads / 32 ? warpV[lane] : -INFINITY;
    i = lane < kArgmaxThreads / 32 ? warpI[lane] : INT_MAX;
#pragma unroll
    for (int d = 16; d > 0; d >>= 1) {
      const float ov = __shfl_down_sync(0xffffffffu, v, d);
      const int oi = __shfl_down_sync(0xffffffffu, i, d);
      if (argmaxBeats(ov, oi, v, i)) v = ov, i = oi;
    }
  }
  __syncthreads();  // warpV / warpI are reused by a second call
}

// Grid (slices, rows), kArgmaxThreads threads; slice s of a row covers [s perSlice, (s + 1) perSlice), perSlice a
// multiple of 8. With more than one slice, partialV / partialI hold rows x slices entries and arrivals a zeroed counter
// a row, which the row's last block leaves at zero again.
__global__ void __launch_bounds__(kArgmaxThreads) greedyArgmax(const half* __restrict__ logits, int64_t* __restrict__ out, float* __restrict__ partialV,
                                                               int* __restrict__ partialI, unsigned* __restrict__ arrivals, int V, int perSlice) {
  const int row = blockIdx.y;
  const half* r = logits + static_cast<size_t>(row) * V;
  const int begin = blockIdx.x * perSlice, end = min(V, begin + perSlice);
  float v = -INFINITY;
  int i = INT_MAX;
  if (V % 8 == 0) {  // rows and slices start on 16 bytes
    for (int j = begin + 8 * threadIdx.x; j < end; j += 8 * kArgmaxThreads) {
      const uint4 raw = __ldcs(reinterpret_cast<const uint4*>(r + j));
      const half* h = reinterpret_cast<const half*>(&raw);
#pragma unroll
      for (int e = 0; e < 8; e++) {
        const float x = __half2float(h[e]);
        if (argmaxBeats(x, j + e, v, i)) v = x, i = j + e;
      }
    }
  } else {
    for (int j = begin + threadIdx.x; j < end; j += kArgmaxThreads) {
      const float x = __half2float(r[j]);
      if (argmaxBeats(x, j, v, i)) v = x, i = j;
    }
  }
  argmaxBlockBest(v, i);
  if (gridDim.x == 1) {
    if (threadIdx.x == 0) out[row] = i == INT_MAX ? 0 : i;
    return;
  }
  __shared__ bool last;
  if (threadIdx.x == 0) {
    partialV[static_cast<size_t>(row) * gridDim.x + blockIdx.x] = v;
    partialI[static_cast<size_t>(row) * gridDim.x + blockIdx.x] = i;
    __threadfence();
    last = atomicAdd(&arrivals[row], 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  v = -INFINITY;
  i = INT_MAX;
  if (threadIdx.x < gridDim.x) {
    v = __ldcg(partialV + static_cast<size_t>(row) * gridDim.x + threadIdx.x);
    i = __ldcg(partialI + static_cast<size_t>(row) * gridDim.x + threadIdx.x);
  }
  argmaxBlockBest(v, i);
  if (threadIdx.x == 0) {
    out[row] = i == INT_MAX ? 0 : i;  // a row of NaN only: index 0
    arrivals[row] = 0;
  }
}

// Slices a row of V logits: one per 4,096 (two 16-byte loads a thread), at most kArgmaxBlocks; a multiple of 8 each.
inline int argmaxSlices(int V) {
  const int slices = (V + 4095) / 4096;
  return slices < 1 ? 1 : slices > kArgmaxBlocks ? kArgmaxBlocks : slices;
}
inline int argmaxPerSlice(int V, int slices) { return ((V + slices - 1) / slices + 7) / 8 * 8; }

}  // namespace chorus
