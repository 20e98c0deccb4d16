// chorus.Int4Linear above kMmaMaxRows rows: the weight dequantized to float16 for cuBLAS.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "int4_weights.cuh"

namespace chorus {

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

}  // namespace chorus
