// chorus.Int4Linear through Marlin (IST-DASLab's FP16 x INT4 kernel, Apache-2.0, vendored unchanged in
// third_party/marlin/): MatMulNBits' symmetric block-128 weights rewritten once into Marlin's tile layout.
//
// Why Marlin: Chorus's own tensor-core kernels (int4_mma.cuh) stream the 4-bit bytes at about 1 TB/s at one row and
// fall below float16 at 64 rows (docs/benchmarks.md, "4-bit weights on the GPU host"); Marlin keeps the weights in a
// layout where one 16-byte load a thread feeds its mma fragments directly, dequantizes with two LOP3s and an FMA per
// four codes, and pipelines four stages through shared memory, which is what a W4A16 GEMM needs to stay bound by HBM
// up to 64 rows and more.
//
// Marlin's layout (its Python `Layer.pack`, ported here to two CUDA kernels): codes are the same as MatMulNBits'
// symmetric ones (weight = (q - 8) * scale, q in [0, 15]); B is int32 [K / 16, 2 N], scales float16 [K / 128, N], both
// permuted. Both arrays have exactly MatMulNBits' sizes (K N / 2 bytes of codes, N K / 128 scales), so the rewrite is
// done in place, over the session's own initializers: a 4-bit model costs no second copy of its weights.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chorus {

// Marlin's `_perm` (1024 entries) at index x: the position, within a 1024-wide chunk of a row of the 16 x 16-tiled
// weight, whose code lands at x. `_get_perms` builds, for i in 0..31, j in 0..3, p in 0..7, entry 32 i + 8 j + p =
// 16 row + i / 4 + 8 (p / 4) + 256 j with row one of (2 (i % 4), 2 (i % 4) + 1, 2 (i % 4 + 4), 2 (i % 4 + 4) + 1) by
// p % 4, then interleaves each 8 by (0, 2, 4, 6, 1, 3, 5, 7).
__host__ __device__ inline int marlinPerm(int x) {
  constexpr int interleave[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  const int q = x / 8, t = x % 8;
  const int i = q / 4, j = q % 4, p = interleave[t];
  const int block = p / 4, sel = p % 4;
  const int base = 2 * (i % 4);
  const int row = sel == 0 ? base : sel == 1 ? base + 1 : sel == 2 ? base + 8 : base + 9;
  return 16 * row + i / 4 + 8 * block + 256 * j;
}

// Marlin's B word (r, j), r < K / 16, j < 2 N, from MatMulNBits' B ([N, K / 2] bytes, code k of row n the low nibble
// of byte k / 2 when k is even): nibble i of the word is column c = 8 j + i of the permuted tiled row r; the tiled row
// holds, at column 256 nt + 16 kk + nn, the code of k = 16 r + kk, n = 16 nt + nn.
__global__ void marlinRepackCodes(const uint8_t* __restrict__ src, uint32_t* __restrict__ dst, int K, int N) {
  const size_t words = static_cast<size_t>(K / 16) * (2 * static_cast<size_t>(N));
  for (size_t w = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; w < words; w += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int r = static_cast<int>(w / (2 * static_cast<size_t>(N)));
    const int j = static_cast<int>(w % (2 * static_cast<size_t>(N)));
    uint32_t word = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
      const int c = 8 * j + i;
      const int tiled = (c & ~1023) + marlinPerm(c & 1023);
      const int nt = tiled / 256, kk = (tiled / 16) % 16, nn = tiled % 16;
      const int k = 16 * r + kk, n = 16 * nt + nn;
      const uint8_t byte = src[static_cast<size_t>(n) * (K / 2) + k / 2];
      const uint32_t code = (k & 1) ? (byte >> 4) : (byte & 0xF);
      word |= code << (4 * i);
    }
    dst[w] = word;
  }
}

// Marlin's scales: MatMulNBits' [N, K / 128] transposed to [K / 128, N], then each run of 64 permuted by `_scale_perm`
// (entry 8 a + b = b * 8 + a: an 8 x 8 transpose).
__global__ void marlinRepackScales(const half* __restrict__ src, half* __restrict__ dst, int groups, int N) {
  const size_t total = static_cast<size_t>(groups) * N;
  for (size_t o = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; o < total; o += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t x = o % 64;
    const size_t flat = o - x + (x % 8) * 8 + x / 8;  // index into [groups, N]
    const size_t g = flat / N, n = flat % N;
    dst[o] = src[n * groups + g];
  }
}

}  // namespace chorus
