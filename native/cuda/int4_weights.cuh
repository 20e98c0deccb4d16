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

// X's eight halves (x0, x1), (x2, x3), (x4, x5), (x6, x7) of a 16-byte word as the pairs (x0, x4), (x1, x5), (x2, x6),
// (x3, x7): the order in which one AND/OR turns a 32-bit word of codes into half2s (code i with code i + 4).
__device__ __forceinline__ void xPairsByFour(uint4 xv, uint32_t (&q)[4]) {
  q[0] = __byte_perm(xv.x, xv.z, 0x5410);
  q[1] = __byte_perm(xv.x, xv.z, 0x7632);
  q[2] = __byte_perm(xv.y, xv.w, 0x5410);
  q[3] = __byte_perm(xv.y, xv.w, 0x7632);
}

}  // namespace chorus
