// SwiGLU of a Llama MLP, swiglu(gate, up) = silu(gate) * up over X [M, 2K] = gate | up, as the reference computes it in
// float16. chorus.Linear applies it inside its GEMV (f16_gemv.cuh) or, above the GEMV's rows, with swigluRows in
// place of the gate half for cuBLAS; chorus.SwiGLU (for down projections that are not chorus.Linear: 4-bit
// MatMulNBits, ORT's MatMul) runs swigluRows into its own output: one kernel where the graph had Split, Sigmoid (ORT
// fuses it with its Mul into QuickGelu) and Mul, 7.7 us a layer at one row on an H200 (ncu, 2026-12-02).
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chorus {

// transformers' act_fn(gate) * up in float16: silu rounded, then the product.
__device__ __forceinline__ half swigluHalf(half gate, half up) {
  const float g = __half2float(gate);
  return __hmul(__float2half(g / (1.f + __expf(-g))), up);
}

// Y[m, k] = swiglu(X[m, k], X[m, K + k]) for X [M, 2K]; row m of Y starts at y + m * yStride: yStride 2K with y == x
// writes over the gate half (chorus.Linear above its GEMV's rows), yStride K a plain [M, K] output (chorus.SwiGLU).
// Eight values a thread when K % 8 == 0.
__global__ void swigluRows(const half* x, half* y, int M, int K, int yStride) {
  const bool wide = K % 8 == 0;
  const size_t perRow = wide ? K / 8 : K, total = static_cast<size_t>(M) * perRow;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t m = i / perRow, j = i % perRow;
    const half* row = x + m * 2 * K;
    half* out = y + m * static_cast<size_t>(yStride);
    if (wide) {
      uint4 g = *reinterpret_cast<const uint4*>(row + 8 * j), u = *reinterpret_cast<const uint4*>(row + K + 8 * j);
      half* gh = reinterpret_cast<half*>(&g);
      const half* uh = reinterpret_cast<const half*>(&u);
#pragma unroll
      for (int e = 0; e < 8; e++) gh[e] = swigluHalf(gh[e], uh[e]);
      *reinterpret_cast<uint4*>(out + 8 * j) = g;
    } else {
      out[j] = swigluHalf(row[j], row[K + j]);
    }
  }
}

// Blocks for swigluRows over M rows of K: a thread per eight values, at most 8192 blocks of 256.
inline unsigned swigluBlocks(int64_t M, int64_t K) {
  const size_t work = static_cast<size_t>(M) * static_cast<size_t>(K % 8 == 0 ? K / 8 : K);
  const size_t blocks = (work + 255) / 256;
  return static_cast<unsigned>(blocks < 1 ? 1 : blocks > 8192 ? 8192 : blocks);
}

}  // namespace chorus
