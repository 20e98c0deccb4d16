// chorus.Int4Linear's weights as MatMulNBits packs them (see chorus_cuda_ops.cu): one row's codes, scales, zero points.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chorus {

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


}  // namespace chorus
