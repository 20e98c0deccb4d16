// chorus.Int4Linear's first kernels: GEMVs up to kGemvMaxRows rows of X, one warp a weight row (CHORUS_INT4_KERNEL=gemv1|gemv2).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "int4_weights.cuh"

namespace chorus {

constexpr int kGemvMaxRows = 8;
constexpr int kWarpsPerBlock = 8;

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

// The same GEMV with half2 arithmetic (CHORUS_INT4_KERNEL=gemv2, docs/native.md). Version 1 spends about
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
        uint32_t xq[4];  // x_0 .. x_7 of part p as (x0 x4) (x1 x5) (x2 x6) (x3 x7)
        xPairsByFour(__ldg(xv + p), xq);
        half2 part = __hmul2(wq[p][0], *reinterpret_cast<const half2*>(&xq[0]));
        part = __hfma2(wq[p][1], *reinterpret_cast<const half2*>(&xq[1]), part);
        part = __hfma2(wq[p][2], *reinterpret_cast<const half2*>(&xq[2]), part);
        part = __hfma2(wq[p][3], *reinterpret_cast<const half2*>(&xq[3]), part);
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

}  // namespace chorus
