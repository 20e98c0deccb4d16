// chorus.Linear's tensor-core path (written 2026-12-01h, after that session's device time was spent: not yet run on a
// GPU; `CHORUS_F16_MMA=1` turns it on for 3-64 rows, native/probes/gemv-bandwidth.cu times it at 16 and 64):
// Y[M, N] = X[M, K] W[K, N], W float16 in MatMul's layout [K, N].
//
// Why: at 64 rows (a decode step of 64 sequences) cuBLAS streams Llama 3 8B's MLP weights at 2.8-3.0 TB/s
// (docs/benchmarks.md), where a plain read of the same bytes reaches 4.0-4.3; the step is memory-bound (64 rows of
// float16 are about 60 flops a weight byte, under the tensor cores' rate), so a kernel that keeps W's loads in flight
// and computes on what has arrived can approach the read.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cp_async.cuh"
#include "mma.cuh"

namespace chorus {

// Y[M, N] = X[M, K] W[K, N] for M <= 16 MT on the tensor cores. Block: 4 warps, 128 columns (a warp 32: four n-tiles
// of 8), the k rows of its slice (blockIdx.y) in chunks of kF16MmaK; each chunk's W [kF16MmaK][128] and X [16 MT]
// [kF16MmaK] copied into shared memory with cp.async, kF16MmaStages - 1 chunks loading while one is computed; X's
// fragments by ldmatrix, W's by ldmatrix.trans (W's rows are k), m16n8k16 into float32. Rows of X past M are zeros.
// K a multiple of kF16MmaK, N of 8. With one slice the block writes Y; with more, float32 sums to partial[slice][M][N]
// and the column block's last slice to finish adds them up (arrivals: a zeroed counter a column block, left zeroed).
constexpr int kF16MmaK = 32, kF16MmaColumns = 128, kF16MmaStages = 3, kF16MmaThreads = 128, kF16MmaMaxRows = 64;
template <int MT>
constexpr int f16MmaSharedBytes() { return kF16MmaStages * (kF16MmaK * (kF16MmaColumns + 8) + 16 * MT * (kF16MmaK + 8)) * 2; }

template <int MT>
__global__ void __launch_bounds__(kF16MmaThreads) f16Mma(const half* __restrict__ x, const half* __restrict__ w, half* __restrict__ y,
                                                         float* __restrict__ partial, unsigned* __restrict__ arrivals, int M, int K,
                                                         int N, int kPerSlice) {
  constexpr int kWRow = kF16MmaColumns + 8, kXRow = kF16MmaK + 8, kRows = 16 * MT;
  extern __shared__ __align__(16) unsigned char smem[];
  half (*ws)[kF16MmaK][kWRow] = reinterpret_cast<half (*)[kF16MmaK][kWRow]>(smem);
  half (*xs)[kRows][kXRow] = reinterpret_cast<half (*)[kRows][kXRow]>(smem + kF16MmaStages * kF16MmaK * kWRow * 2);
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int n0 = blockIdx.x * kF16MmaColumns, k0 = blockIdx.y * kPerSlice, k1 = min(K, k0 + kPerSlice);
  const int chunks = (k1 - k0) / kF16MmaK;  // K and kPerSlice are multiples of kF16MmaK
  const auto load = [&](int stage, int chunk) {
    const int kb = k0 + chunk * kF16MmaK;
#pragma unroll
    for (int i = 0; i < kF16MmaK * kF16MmaColumns / 8 / kF16MmaThreads; i++) {  // W: 16-byte pieces, 16 a k row
      const int c = tid + kF16MmaThreads * i, r = c / (kF16MmaColumns / 8), part = c % (kF16MmaColumns / 8);
      half* dst = &ws[stage][r][8 * part];
      if (n0 + 8 * part < N) cpAsync16(dst, w + static_cast<size_t>(kb + r) * N + n0 + 8 * part);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
    for (int c = tid; c < kRows * kF16MmaK / 8; c += kF16MmaThreads) {  // X: 4 pieces a row
      const int r = c / (kF16MmaK / 8), part = c % (kF16MmaK / 8);
      half* dst = &xs[stage][r][8 * part];
      if (r < M) cpAsync16(dst, x + static_cast<size_t>(r) * K + kb + 8 * part);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
    cpAsyncCommit();
  };
#pragma unroll
  for (int i = 0; i < kF16MmaStages - 1; i++) {
    if (i < chunks) load(i, i);
    else cpAsyncCommit();
  }
  float acc[MT][4][4] = {};
  for (int i = 0; i < chunks; i++) {
    const int stage = i % kF16MmaStages;
    cpAsyncWait<kF16MmaStages - 2>();
    __syncthreads();
    if (i + kF16MmaStages - 1 < chunks) load((i + kF16MmaStages - 1) % kF16MmaStages, i + kF16MmaStages - 1);
    else cpAsyncCommit();
#pragma unroll
    for (int ks = 0; ks < kF16MmaK; ks += 16) {
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; mt++) ldmatrixX4(a[mt], &xs[stage][16 * mt + (lane & 15)][ks + 8 * (lane >> 4)]);
#pragma unroll
      for (int j = 0; j < 4; j += 2) {
        uint32_t b[4];  // n-tiles j and j + 1: k 0-7 and 8-15 of each
        ldmatrixX4Trans(b, &ws[stage][ks + ((lane >> 3) & 1) * 8 + (lane & 7)][32 * warp + 8 * (j + (lane >> 4))]);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          mma16816(acc[mt][j], a[mt], b[0], b[1]);
          mma16816(acc[mt][j + 1], a[mt], b[2], b[3]);
        }
      }
    }
  }
  // Rows g and g + 8 of each m-tile, columns 2 t4 and + 1 of each n-tile.
  const bool split = gridDim.y > 1;
#pragma unroll
  for (int mt = 0; mt < MT; mt++)
#pragma unroll
    for (int j = 0; j < 4; j++)
#pragma unroll
      for (int h = 0; h < 2; h++) {
        const int m = 16 * mt + g + 8 * h, n = n0 + 32 * warp + 8 * j + 2 * t4;
        if (m >= M || n >= N) continue;
        if (split) *reinterpret_cast<float2*>(partial + (static_cast<size_t>(blockIdx.y) * M + m) * N + n) = make_float2(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
        else *reinterpret_cast<half2*>(y + static_cast<size_t>(m) * N + n) = __floats2half2_rn(acc[mt][j][2 * h], acc[mt][j][2 * h + 1]);
      }
  if (!split) return;
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(&arrivals[blockIdx.x], 1u) == gridDim.y - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int idx = tid; idx < M * kF16MmaColumns; idx += kF16MmaThreads) {
    const int m = idx / kF16MmaColumns, n = n0 + idx % kF16MmaColumns;
    if (n >= N) continue;
    float sum = 0.f;
    for (int sl = 0; sl < static_cast<int>(gridDim.y); sl++) sum += __ldcg(partial + (static_cast<size_t>(sl) * M + m) * N + n);
    y[static_cast<size_t>(m) * N + n] = __float2half(sum);
  }
  if (tid == 0) arrivals[blockIdx.x] = 0u;
}

}  // namespace chorus
