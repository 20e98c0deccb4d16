// chorus.DecodeAttention's kernels (experimental, opt-in: `--decode-attention chorus`): GroupQueryAttention over a
// share-buffer KV cache for packed QKV with rotary inside (head dims 16, 64, 128; 2, 3, 4 or 8 query heads a KV
// head: Llama 3's and the test fixtures'), built for decode steps (one query token a row) and correct, not fast, for
// prompt chunks (S tokens a row: a block a token, each reading the row's keys and values up to its own position, from
// L2 mostly).
//
// Why: every decode kernel of ORT 1.29's GroupQueryAttention (flash decoding, flash, XQA) takes 25-38 us a layer at
// one row of 1k cached tokens, where the 4 MB of keys and values a layer would take about 1 us at bandwidth
// (docs/benchmarks.md, "Decode attention by kernel"): about 1 ms of a 6 ms single-stream token. Three short kernels:
//   decodeRotaryAppend   each new token's query heads rotated into a scratch, its key rotated and its value copied
//                        into the cache at its position (tokenPosition);
//   decodeAttentionSplit one block per (split of the token's positions, KV head, token), tiles of 32 positions
//                        through shared memory (see the kernel); float32 partial sums, maxima and sums per split;
//   decodeAttentionMerge the splits of each (token, head) combined, divided, written as float16.
// The splits give one row enough blocks to use the GPU (flash decoding's idea); more rows need fewer.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cp_async.cuh"

namespace chorus {

constexpr int kAttnMaxSplits = 64;

// Token i (of S) of row b: its position in the cache, or -1 for padding. As GroupQueryAttention: seqlens_k[b] is the
// row's last position; the first prompt of a batch (total_sequence_length == S) starts every row at 0 (rows shorter
// than S are padded at the end), later chunks end every row's S tokens at seqlens_k[b].
__device__ __forceinline__ int tokenPosition(const int* seqlensK, int b, int i, int S, bool firstPrompt, int presentLen) {
  const int last = seqlensK[b];
  const int p = firstPrompt ? i : last + 1 - S + i;
  return p < 0 || p > last || p >= presentLen ? -1 : p;
}

// Grid (numHeads + 2 kvHeads, S, B), D / 2 threads: a block a head of a token (query and key heads rotated, value heads
// copied), a thread a rotary pair or two value dims, so every load of a decode step's few tokens is in flight at once.
__global__ void decodeRotaryAppend(const half* __restrict__ qkv, const int* __restrict__ seqlensK, const half* __restrict__ cosCache,
                                   const half* __restrict__ sinCache, half* __restrict__ presentKey, half* __restrict__ presentValue,
                                   half* __restrict__ qRot, int numHeads, int kvHeads, int presentLen, int S, bool firstPrompt, int D) {
  const int H = D / 2;
  const int h = blockIdx.x, i = blockIdx.y, b = blockIdx.z, token = b * S + i, t = threadIdx.x;
  const int p = tokenPosition(seqlensK, b, i, S, firstPrompt, presentLen);
  if (p < 0) return;  // padding: nothing written (its output is zero)
  const half* src = qkv + (static_cast<size_t>(token) * (numHeads + 2 * kvHeads) + h) * D;
  if (h >= numHeads + kvHeads) {
    const size_t at = ((static_cast<size_t>(b) * kvHeads + (h - numHeads - kvHeads)) * presentLen + p) * D;
    reinterpret_cast<half2*>(presentValue + at)[t] = reinterpret_cast<const half2*>(src)[t];
    return;
  }
  // Rotary as GroupQueryAttention applies it with rotary_interleaved 0: dims t and t + D/2 rotate together.
  const float c = __half2float(cosCache[static_cast<size_t>(p) * H + t]), sn = __half2float(sinCache[static_cast<size_t>(p) * H + t]);
  const float x0 = __half2float(src[t]), x1 = __half2float(src[t + H]);
  half* dst = h < numHeads ? qRot + (static_cast<size_t>(token) * numHeads + h) * D
                           : presentKey + ((static_cast<size_t>(b) * kvHeads + (h - numHeads)) * presentLen + p) * D;
  dst[t] = __float2half(x0 * c - x1 * sn);
  dst[t + H] = __float2half(x1 * c + x0 * sn);
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

// Positions a tile: the score phase's lanes.
constexpr int kAttnTile = 32;
constexpr int kAttnThreads = 128;
// Tiles a block has in shared memory: the one being computed and kAttnStages - 1 loading. A block streams its tiles
// one after another, so its rate is the bytes it has in flight over the memory latency: with one tile loading ahead
// (two stages, 17 KB at head dim 128) 64 rows of 1k cached tokens ran at 2.6 TB/s, a latency a tile.
constexpr int kAttnStages = 3;

// Dynamic shared memory of decodeAttentionSplit<D, kGroup>: the tiles' keys and values, reused after the last tile for
// the partial value sums.
template <int D, int kGroup>
constexpr int attentionTileBytes() {
  constexpr int tiles = kAttnStages * 2 * kAttnTile * (D + 8) * 2;
  constexpr int sums = (kAttnThreads / (D / 2)) * kGroup * D * 4;
  return tiles > sums ? tiles : sums;
}

// Head dim D; kGroup query heads share a KV head; grid (splits, kvHeads, B S), kAttnThreads threads. Each split is a
// run of whole tiles of the token's positions. A tile's keys and values are copied into shared memory with cp.async
// (the next tile's copy in flight while this one is computed: the block's loads do not wait on each other, which the
// first version's per-position global reads did, 0.1-1 TB/s); then a warp per query head scores the tile (a lane per
// position, the key row from shared memory, 16 bytes of padding a row so a quarter warp's reads of 8 rows hit all 32
// banks) and updates the head's running maximum and sum; then a thread per (2 value dims, every kReps-th position)
// accumulates all kGroup heads, so each value is read from shared memory once. With one split (out != nullptr) the
// block writes the divided float16 output itself; otherwise partial results at ((token * numHeads + h) * splits +
// split): out [.., D] (not yet divided), max and sum [..], for decodeAttentionMerge.
template <int D, int kGroup>
__global__ void __launch_bounds__(kAttnThreads) decodeAttentionSplit(
    const half* __restrict__ qRot, const half* __restrict__ presentKey, const half* __restrict__ presentValue,
    const int* __restrict__ seqlensK, float* __restrict__ partialOut, float* __restrict__ partialMax,
    float* __restrict__ partialSum, half* __restrict__ out, int numHeads, int kvHeads, int presentLen, int splits, float scale, int S,
    bool firstPrompt) {
  constexpr int kRow = D + 8, kChunks = D / 8, kPairs = D / 2, kReps = kAttnThreads / kPairs;
  extern __shared__ __align__(16) unsigned char tileBytes[];  // attentionTileBytes<D, kGroup>()
  half (*ks)[kAttnTile][kRow] = reinterpret_cast<half (*)[kAttnTile][kRow]>(tileBytes);
  half (*vs)[kAttnTile][kRow] = reinterpret_cast<half (*)[kAttnTile][kRow]>(tileBytes + kAttnStages * kAttnTile * kRow * 2);
  __shared__ __align__(16) float qs[kGroup][D];
  __shared__ __align__(16) float ps[kAttnTile][kGroup];
  __shared__ float runMax[kGroup], runSum[kGroup], corr[kGroup];
  const int split = blockIdx.x, kh = blockIdx.y, token = blockIdx.z, b = token / S;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int L = tokenPosition(seqlensK, b, token % S, S, firstPrompt, presentLen) + 1;  // positions it attends to (0: padding)
  const int tiles = (L + kAttnTile - 1) / kAttnTile, per = (tiles + splits - 1) / splits;
  const int t0 = min(tiles, split * per), t1 = min(tiles, t0 + per);
  for (int idx = tid; idx < kGroup * D; idx += kAttnThreads) {
    const int g = idx / D, d = idx % D;
    qs[g][d] = L == 0 ? 0.f : __half2float(qRot[(static_cast<size_t>(token) * numHeads + kh * kGroup + g) * D + d]) * scale;
  }
  if (tid < kGroup) {
    runMax[tid] = -INFINITY;
    runSum[tid] = 0.f;
  }
  const size_t cache = (static_cast<size_t>(b) * kvHeads + kh) * presentLen * D;
  const half* K = presentKey + cache;
  const half* V = presentValue + cache;
  // Rows past the token's last position are not copied (the cache may hold anything there): the score phase skips
  // them and the value phase stops before them.
  const auto load = [&](int stage, int tile) {
    const int base = tile * kAttnTile, n = min(kAttnTile, L - base);
    for (int c = tid; c < 2 * kAttnTile * kChunks; c += kAttnThreads) {
      const bool isValue = c >= kAttnTile * kChunks;
      const int cc = isValue ? c - kAttnTile * kChunks : c, j = cc / kChunks, part = cc % kChunks;
      if (j < n) {
        half* dst = isValue ? &vs[stage][j][8 * part] : &ks[stage][j][8 * part];
        cpAsync16(dst, (isValue ? V : K) + static_cast<size_t>(base + j) * D + 8 * part);
      }
    }
    cpAsyncCommit();
  };
  const int pair = tid % kPairs, rep = tid / kPairs;
  float acc[kGroup][2] = {};
  // Tile t0 + i goes to stage i % kAttnStages; a group is committed for every tile slot, empty past t1, so waiting
  // for all but the newest kAttnStages - 2 groups always means this tile's copy is done.
#pragma unroll
  for (int i = 0; i < kAttnStages - 1; i++) {
    if (t0 + i < t1) load(i, t0 + i);
    else cpAsyncCommit();
  }
  for (int t = t0; t < t1; t++) {
    const int stage = (t - t0) % kAttnStages;
    cpAsyncWait<kAttnStages - 2>();
    __syncthreads();  // this tile is in for every thread; every thread is done with the stage loaded next
    const int next = t + kAttnStages - 1;
    if (next < t1) load((next - t0) % kAttnStages, next);
    else cpAsyncCommit();
    const int n = min(kAttnTile, L - t * kAttnTile);
    for (int g = warp; g < kGroup; g += kAttnThreads / 32) {
      float score = -INFINITY;
      if (lane < n) {
        const uint4* kr = reinterpret_cast<const uint4*>(&ks[stage][lane][0]);
        const float4* q4 = reinterpret_cast<const float4*>(&qs[g][0]);
        float dot = 0.f;
#pragma unroll
        for (int c = 0; c < kChunks; c++) {
          const uint4 w = kr[c];
          const float4 qa = q4[2 * c], qb = q4[2 * c + 1];
          const float2 f0 = __half22float2(*reinterpret_cast<const half2*>(&w.x)), f1 = __half22float2(*reinterpret_cast<const half2*>(&w.y));
          const float2 f2 = __half22float2(*reinterpret_cast<const half2*>(&w.z)), f3 = __half22float2(*reinterpret_cast<const half2*>(&w.w));
          dot += f0.x * qa.x + f0.y * qa.y + f1.x * qa.z + f1.y * qa.w + f2.x * qb.x + f2.y * qb.y + f3.x * qb.z + f3.y * qb.w;
        }
        score = dot;
      }
      // Online softmax: the tile's largest score is finite (lane 0's position is inside), then what came before is
      // rescaled by corr.
      const float mOld = runMax[g];
      const float mNew = fmaxf(mOld, warpMax(score));
      const float p = lane < n ? __expf(score - mNew) : 0.f;
      const float sum = warpSum(p);
      ps[lane][g] = p;
      if (lane == 0) {
        const float c = __expf(mOld - mNew);
        corr[g] = c;
        runSum[g] = runSum[g] * c + sum;
        runMax[g] = mNew;
      }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < kGroup; g++) {
      const float c = corr[g];
      acc[g][0] *= c;
      acc[g][1] *= c;
    }
    for (int j = rep; j < n; j += kReps) {
      const float2 v = __half22float2(reinterpret_cast<const half2*>(&vs[stage][j][0])[pair]);
#pragma unroll
      for (int g = 0; g < kGroup; g++) {
        const float p = ps[j][g];
        acc[g][0] += p * v.x;
        acc[g][1] += p * v.y;
      }
    }
  }
  cpAsyncWait<0>();  // only empty groups are left; the tile buffers are reused below
  __syncthreads();
  // The kReps partial sums of each (head, dim), through the tile buffers (free now).
  float (*sums)[kGroup][D] = reinterpret_cast<float (*)[kGroup][D]>(tileBytes);
#pragma unroll
  for (int g = 0; g < kGroup; g++) *reinterpret_cast<float2*>(&sums[rep][g][2 * pair]) = make_float2(acc[g][0], acc[g][1]);
  __syncthreads();  // also: runMax and runSum as the last tile's warps wrote them (or as set above when there was none)
  for (int idx = tid; idx < kGroup * D; idx += kAttnThreads) {
    const int g = idx / D, d = idx % D;
    float o = 0.f;
#pragma unroll
    for (int r = 0; r < kReps; r++) o += sums[r][g][d];
    const size_t head = static_cast<size_t>(token) * numHeads + kh * kGroup + g;
    if (out != nullptr) {
      out[head * D + d] = __float2half(runSum[g] > 0.f ? o / runSum[g] : 0.f);
    } else {
      partialOut[(head * splits + split) * D + d] = o;
    }
  }
  if (out == nullptr && tid < kGroup) {
    const size_t at = (static_cast<size_t>(token) * numHeads + kh * kGroup + tid) * splits + split;
    partialMax[at] = runMax[tid];  // -inf for an empty split: its weight in the merge is 0
    partialSum[at] = runSum[tid];
  }
}

// One block of D threads per (head, token): out [B, S, numHeads * D]; a padding token's output is zero. Each split's
// weight is computed once into shared memory, and the partial outputs' loads are unrolled so they are in flight
// together (a loop of dependent loads cost a memory latency a split: most of a one-row step).
__global__ void decodeAttentionMerge(const float* __restrict__ partialOut, const float* __restrict__ partialMax,
                                     const float* __restrict__ partialSum, half* __restrict__ out, int numHeads, int splits, int D) {
  __shared__ float weight[kAttnMaxSplits], weighted[kAttnMaxSplits];
  const int h = blockIdx.x, token = blockIdx.y, d = threadIdx.x;
  const size_t base = (static_cast<size_t>(token) * numHeads + h) * splits;
  for (int s = d; s < splits; s += D) weight[s] = partialMax[base + s];
  __syncthreads();
  float mx = -INFINITY;
  for (int s = 0; s < splits; s++) mx = fmaxf(mx, weight[s]);
  __syncthreads();
  for (int s = d; s < splits; s += D) {
    const float ms = partialMax[base + s];
    const float w = ms == -INFINITY ? 0.f : __expf(ms - mx);
    weight[s] = w;
    weighted[s] = w * partialSum[base + s];
  }
  __syncthreads();
  float sum = 0.f, o = 0.f;
#pragma unroll 8
  for (int s = 0; s < splits; s++) {
    sum += weighted[s];
    o += weight[s] * partialOut[(base + s) * D + d];
  }
  out[(static_cast<size_t>(token) * numHeads + h) * D + d] = __float2half(sum > 0.f ? o / sum : 0.f);
}

}  // namespace chorus
