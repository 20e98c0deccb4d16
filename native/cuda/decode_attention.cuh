// chorus.DecodeAttention's kernels (experimental: written 2026-12-01f, not yet run on a GPU): GroupQueryAttention over a
// share-buffer KV cache for packed QKV with rotary inside (head dims 16, 64, 128; 2, 3, 4 or 8 query heads a KV
// head: Llama 3's and the test fixtures'), built for decode steps (one query token a
// row) and correct, not fast, for prompt chunks (S tokens a row: each token attends to the positions up to its own,
// reading the row's keys and values once a token, from L2 mostly).
//
// Why: every decode kernel of ORT 1.29's GroupQueryAttention (flash decoding, flash, XQA) takes 28-38 us a layer at
// one row of 1k cached tokens, where the 0.5 MB of keys and values a layer would take about 1 us at bandwidth
// (docs/benchmarks.md, "Decode attention by kernel"): about 1 ms of a 6 ms single-stream token. Three short kernels:
//   decodeRotaryAppend   each new token's query heads rotated into a scratch, its key rotated and its value copied
//                        into the cache at its position (tokenPosition);
//   decodeAttentionSplit one block per (split of the token's positions, KV head, token): a warp per query head of the KV
//                        head's group, a lane per cached position for the scores (the 256-byte key row read once by
//                        the group's warps, from L1 after the first), online softmax over chunks of 32 positions, a
//                        lane per 4 dims for the values; float32 partial sums, maxima and sums per split;
//   decodeAttentionMerge the splits of each (token, head) combined, divided, written as float16.
// The splits give one row enough blocks to use the GPU (flash decoding's idea); more rows need fewer.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace chorus {

constexpr int kAttnMaxSplits = 32;

// Token i (of S) of row b: its position in the cache, or -1 for padding. As GroupQueryAttention: seqlens_k[b] is the
// row's last position; the first prompt of a batch (total_sequence_length == S) starts every row at 0 (rows shorter
// than S are padded at the end), later chunks end every row's S tokens at seqlens_k[b].
__device__ __forceinline__ int tokenPosition(const int* seqlensK, int b, int i, int S, bool firstPrompt, int presentLen) {
  const int last = seqlensK[b];
  const int p = firstPrompt ? i : last + 1 - S + i;
  return p < 0 || p > last || p >= presentLen ? -1 : p;
}

// Grid (S, B).
__global__ void decodeRotaryAppend(const half* __restrict__ qkv, const int* __restrict__ seqlensK, const half* __restrict__ cosCache,
                                   const half* __restrict__ sinCache, half* __restrict__ presentKey, half* __restrict__ presentValue,
                                   half* __restrict__ qRot, int numHeads, int kvHeads, int presentLen, int S, bool firstPrompt, int D) {
  const int H = D / 2;
  const int i = blockIdx.x, b = blockIdx.y, token = b * S + i;
  const int p = tokenPosition(seqlensK, b, i, S, firstPrompt, presentLen);
  if (p < 0) return;  // padding: nothing written (its output is zero)
  const half* row = qkv + static_cast<size_t>(token) * (numHeads + 2 * kvHeads) * D;
  // Rotary as GroupQueryAttention applies it with rotary_interleaved 0: dims i and i + D/2 rotate together.
  for (int idx = threadIdx.x; idx < (numHeads + kvHeads) * H; idx += blockDim.x) {
    const int h = idx / H, i = idx % H;
    const float c = __half2float(cosCache[static_cast<size_t>(p) * H + i]), s = __half2float(sinCache[static_cast<size_t>(p) * H + i]);
    const float x0 = __half2float(row[h * D + i]), x1 = __half2float(row[h * D + i + H]);
    const half r0 = __float2half(x0 * c - x1 * s), r1 = __float2half(x1 * c + x0 * s);
    half* dst = h < numHeads ? qRot + (static_cast<size_t>(token) * numHeads + h) * D
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

// Head dim D; kGroup query heads share a KV head (blockDim = 32 kGroup); grid (splits, kvHeads, B S). Partial results
// at index ((token * numHeads + h) * splits + split): out [.., D], max and sum [..]. Lane l holds value dims
// [kDims l, kDims l + kDims) (lanes past D / kDims idle there).
template <int D, int kGroup>
__global__ void __launch_bounds__(32 * kGroup) decodeAttentionSplit(
    const half* __restrict__ qRot, const half* __restrict__ presentKey, const half* __restrict__ presentValue,
    const int* __restrict__ seqlensK, float* __restrict__ partialOut, float* __restrict__ partialMax,
    float* __restrict__ partialSum, int numHeads, int kvHeads, int presentLen, int splits, float scale, int S, bool firstPrompt) {
  constexpr int kDims = D >= 128 ? 4 : D >= 64 ? 2 : 1;
  const bool holdsDims = threadIdx.x % 32 < D / kDims;
  const int split = blockIdx.x, kh = blockIdx.y, token = blockIdx.z, b = token / S;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int h = kh * kGroup + warp;
  const int L = tokenPosition(seqlensK, b, token % S, S, firstPrompt, presentLen) + 1;  // positions it attends to (0: padding)
  const int per = (L + splits - 1) / splits;
  const int s0 = min(L, split * per), s1 = min(L, s0 + per);
  __shared__ float qs[kGroup][D];
  for (int d = lane; d < D; d += 32) qs[warp][d] = L == 0 ? 0.f : __half2float(qRot[(static_cast<size_t>(token) * numHeads + h) * D + d]) * scale;
  __syncwarp();
  const size_t cache = (static_cast<size_t>(b) * kvHeads + kh) * presentLen * D;
  const half* K = presentKey + cache;
  const half* V = presentValue + cache;
  float m = -INFINITY, l = 0.f;
  float acc[kDims] = {};
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
    for (int e = 0; e < kDims; e++) acc[e] *= correction;
    const int n = min(32, s1 - base);
    for (int t = 0; t < n; t++) {
      const float pt = __shfl_sync(0xffffffffu, pj, t);
      if (!holdsDims) continue;
      const half* v = V + static_cast<size_t>(base + t) * D + kDims * lane;
#pragma unroll
      for (int e = 0; e < kDims; e++) acc[e] += pt * __half2float(v[e]);
    }
    m = mNew;
  }
  const size_t at = (static_cast<size_t>(token) * numHeads + h) * splits + split;
  if (holdsDims) {
#pragma unroll
    for (int e = 0; e < kDims; e++) partialOut[at * D + kDims * lane + e] = acc[e];
  }
  if (lane == 0) {
    partialMax[at] = m;  // -inf for an empty split: its weight below is 0
    partialSum[at] = l;
  }
}

// One block of D threads per (head, token): out [B, S, numHeads * D]; a padding token's output is zero.
__global__ void decodeAttentionMerge(const float* __restrict__ partialOut, const float* __restrict__ partialMax,
                                     const float* __restrict__ partialSum, half* __restrict__ out, int numHeads, int splits, int D) {
  const int h = blockIdx.x, token = blockIdx.y, d = threadIdx.x;
  const size_t base = (static_cast<size_t>(token) * numHeads + h) * splits;
  float mx = -INFINITY;
  for (int s = 0; s < splits; s++) mx = fmaxf(mx, partialMax[base + s]);
  float sum = 0.f, o = 0.f;
  for (int s = 0; s < splits; s++) {
    const float ms = partialMax[base + s];
    const float w = ms == -INFINITY ? 0.f : __expf(ms - mx);
    sum += w * partialSum[base + s];
    o += w * partialOut[(base + s) * D + d];
  }
  out[(static_cast<size_t>(token) * numHeads + h) * D + d] = __float2half(sum > 0.f ? o / sum : 0.f);
}

}  // namespace chorus
