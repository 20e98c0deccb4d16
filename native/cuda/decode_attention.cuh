// chorus.DecodeAttention's kernels (experimental, a probe's op: written 2026-12-01f, not yet run on a GPU): one query
// token a row against a share-buffer KV cache, as GroupQueryAttention decodes it (packed QKV, rotary inside, the new
// key and value written at the row's position), for head dim 128.
//
// Why: every decode kernel of ORT 1.29's GroupQueryAttention (flash decoding, flash, XQA) takes 28-38 us a layer at
// one row of 1k cached tokens, where the 0.5 MB of keys and values a layer would take about 1 us at bandwidth
// (docs/benchmarks.md, "Decode attention by kernel"): about 1 ms of a 6 ms single-stream token. Three short kernels:
//   decodeRotaryAppend   the new token's query heads rotated into a scratch, its key rotated and its value copied into
//                        the cache at the row's position (seqlens_k: the index of the new token);
//   decodeAttentionSplit one block per (split of the row's positions, KV head, row): a warp per query head of the KV
//                        head's group, a lane per cached position for the scores (the 256-byte key row read once by
//                        the group's warps, from L1 after the first), online softmax over chunks of 32 positions, a
//                        lane per 4 dims for the values; float32 partial sums, maxima and sums per split;
//   decodeAttentionMerge the splits of each (row, head) combined, divided, written as float16.
// The splits give one row enough blocks to use the GPU (flash decoding's idea); more rows need fewer.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chorus {

constexpr int kAttnHeadDim = 128;
constexpr int kAttnMaxSplits = 32;

__global__ void decodeRotaryAppend(const half* __restrict__ qkv, const int* __restrict__ seqlensK, const half* __restrict__ cosCache,
                                   const half* __restrict__ sinCache, half* __restrict__ presentKey, half* __restrict__ presentValue,
                                   half* __restrict__ qRot, int numHeads, int kvHeads, int presentLen) {
  constexpr int D = kAttnHeadDim, H = D / 2;
  const int b = blockIdx.x;
  const int p = seqlensK[b];
  if (p < 0 || p >= presentLen) return;  // a position past the cache is never written (the split kernel clamps too)
  const half* row = qkv + static_cast<size_t>(b) * (numHeads + 2 * kvHeads) * D;
  // Rotary as GroupQueryAttention applies it with rotary_interleaved 0: dims i and i + D/2 rotate together.
  for (int idx = threadIdx.x; idx < (numHeads + kvHeads) * H; idx += blockDim.x) {
    const int h = idx / H, i = idx % H;
    const float c = __half2float(cosCache[static_cast<size_t>(p) * H + i]), s = __half2float(sinCache[static_cast<size_t>(p) * H + i]);
    const float x0 = __half2float(row[h * D + i]), x1 = __half2float(row[h * D + i + H]);
    const half r0 = __float2half(x0 * c - x1 * s), r1 = __float2half(x1 * c + x0 * s);
    half* dst = h < numHeads ? qRot + (static_cast<size_t>(b) * numHeads + h) * D
                             : presentKey + ((static_cast<size_t>(b) * kvHeads + (h - numHeads)) * presentLen + p) * D;
    dst[i] = r0;
    dst[i + H] = r1;
  }
  for (int idx = threadIdx.x; idx < kvHeads * D; idx += blockDim.x) {
    const int kh = idx / D, d = idx % D;
    presentValue[((static_cast<size_t>(b) * kvHeads + kh) * presentLen + p) * D + d] = row[(numHeads + kvHeads + kh) * D + d];
  }
}

__device__ __forceinline__ float warpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// kGroup query heads share a KV head (blockDim = 32 kGroup). Partial results at index ((b * numHeads + h) * splits +
// split): out [.., D], max and sum [..].
template <int kGroup>
__global__ void __launch_bounds__(32 * kGroup) decodeAttentionSplit(
    const half* __restrict__ qRot, const half* __restrict__ presentKey, const half* __restrict__ presentValue,
    const int* __restrict__ seqlensK, float* __restrict__ partialOut, float* __restrict__ partialMax,
    float* __restrict__ partialSum, int numHeads, int kvHeads, int presentLen, int splits, float scale) {
  constexpr int D = kAttnHeadDim;
  const int split = blockIdx.x, kh = blockIdx.y, b = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = kh * kGroup + warp;
  const int L = min(seqlensK[b] + 1, presentLen);  // the cached positions, the new token's included
  const int per = (L + splits - 1) / splits;
  const int s0 = min(L, split * per), s1 = min(L, s0 + per);
  __shared__ float qs[kGroup][D];
  for (int d = lane; d < D; d += 32) qs[warp][d] = __half2float(qRot[(static_cast<size_t>(b) * numHeads + h) * D + d]) * scale;
  __syncwarp();
  const size_t cache = (static_cast<size_t>(b) * kvHeads + kh) * presentLen * D;
  const half* K = presentKey + cache;
  const half* V = presentValue + cache;
  float m = -INFINITY, l = 0.f;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int base = s0; base < s1; base += 32) {
    const int j = base + lane;
    float score = -INFINITY;
    if (j < s1) {
      const uint4* kr = reinterpret_cast<const uint4*>(K + static_cast<size_t>(j) * D);
      float dot = 0.f;
#pragma unroll 4
      for (int c = 0; c < D / 8; c++) {
        const uint4 w = __ldg(kr + c);
        const uint32_t words[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int e = 0; e < 4; e++) {
          const float2 f = __half22float2(*reinterpret_cast<const half2*>(&words[e]));
          dot += f.x * qs[warp][8 * c + 2 * e] + f.y * qs[warp][8 * c + 2 * e + 1];
        }
      }
      score = dot;
    }
    // Online softmax: the chunk's largest score (finite: lane 0's position is inside), then rescale what came before.
    const float mNew = fmaxf(m, warpMax(score));
    const float pj = j < s1 ? __expf(score - mNew) : 0.f;
    const float correction = __expf(m - mNew);
    l = l * correction + warpSum(pj);
#pragma unroll
    for (int e = 0; e < 4; e++) acc[e] *= correction;
    const int n = min(32, s1 - base);
    for (int t = 0; t < n; t++) {
      const float pt = __shfl_sync(0xffffffffu, pj, t);
      const uint2 vv = __ldg(reinterpret_cast<const uint2*>(V + static_cast<size_t>(base + t) * D + 4 * lane));
      const float2 v01 = __half22float2(*reinterpret_cast<const half2*>(&vv.x)), v23 = __half22float2(*reinterpret_cast<const half2*>(&vv.y));
      acc[0] += pt * v01.x;
      acc[1] += pt * v01.y;
      acc[2] += pt * v23.x;
      acc[3] += pt * v23.y;
    }
    m = mNew;
  }
  const size_t at = (static_cast<size_t>(b) * numHeads + h) * splits + split;
#pragma unroll
  for (int e = 0; e < 4; e++) partialOut[at * D + 4 * lane + e] = acc[e];
  if (lane == 0) {
    partialMax[at] = m;  // -inf for an empty split: its weight below is 0
    partialSum[at] = l;
  }
}

// One block of D threads per (head, row): out [B, 1, numHeads * D].
__global__ void decodeAttentionMerge(const float* __restrict__ partialOut, const float* __restrict__ partialMax,
                                     const float* __restrict__ partialSum, half* __restrict__ out, int numHeads, int splits) {
  constexpr int D = kAttnHeadDim;
  const int h = blockIdx.x, b = blockIdx.y, d = threadIdx.x;
  const size_t base = (static_cast<size_t>(b) * numHeads + h) * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; s++) mx = fmaxf(mx, partialMax[base + s]);
  float sum = 0.f, o = 0.f;
  for (int s = 0; s < splits; s++) {
    const float ms = partialMax[base + s];
    const float w = ms == -INFINITY ? 0.f : __expf(ms - mx);
    sum += w * partialSum[base + s];
    o += w * partialOut[(base + s) * D + d];
  }
  out[(static_cast<size_t>(b) * numHeads + h) * D + d] = __float2half(o / sum);
}

}  // namespace chorus
