// chorus.DecodeAttention's kernels (experimental, opt-in: `--decode-attention chorus`): GroupQueryAttention over a
// share-buffer KV cache for packed QKV with rotary inside (head dims 16, 64, 128; 2, 3, 4 or 8 query heads a KV
// head: Llama 3's and the test fixtures'), built for decode steps (one query token a row) and correct, not fast, for
// prompt chunks (S tokens a row: a block a token, each reading the row's keys and values up to its own position, from
// L2 mostly).
//
// Why: every decode kernel of ORT 1.29's GroupQueryAttention (flash decoding, flash, XQA) takes 22-38 us a layer at
// one row of 1k cached tokens, where the 4 MB of keys and values a layer would take about 1 us at bandwidth
// (docs/benchmarks.md, "Decode attention by kernel"): about 1 ms of a 6 ms single-stream token. Three short kernels:
//   decodeRotaryAppend   each new token's query heads rotated into a scratch, its key rotated and its value copied
//                        into the cache at its position (tokenPosition);
//   decodeAttentionSplit one block per (split of the token's positions, KV head, token), tiles of 32 positions
//                        through shared memory, tensor cores (see the kernel); float32 partial sums, maxima and sums
//                        per split, or the output itself when there is one split;
//   decodeAttentionMerge the splits of each (token, head) combined, divided, written as float16.
// The splits give one row enough blocks to use the GPU (flash decoding's idea); more rows need fewer.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cp_async.cuh"
#include "mma.cuh"

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

// Positions a tile (8 for each of the block's 4 warps).
constexpr int kAttnTile = 32;
constexpr int kAttnThreads = 128;
// Tiles a block has in shared memory: the one being computed and kAttnStages - 1 loading.
constexpr int kAttnStages = 3;

// Dynamic shared memory of decodeAttentionSplit<D, kGroup>: the tiles' keys and values, reused after the last tile for
// the four warps' running maxima, sums and outputs.
template <int D, int kGroup>
constexpr int attentionTileBytes() {
  constexpr int tiles = kAttnStages * 2 * kAttnTile * (D + 8) * 2;
  constexpr int warps = (kAttnThreads / 32) * kGroup * (D + 2) * 4;
  return tiles > warps ? tiles : warps;
}

// Head dim D; kGroup query heads share a KV head; grid (splits, kvHeads, B S), kAttnThreads threads. Each split is a
// run of whole tiles of the token's positions, copied into shared memory with cp.async (kAttnStages - 1 tiles loading
// while one is computed; rows past the token's last position are zero-filled, so a zero weight never meets a NaN).
// Tensor cores do the arithmetic, as XQA does, with about a fifth of the instructions of the CUDA-core version (a
// lane per position, a thread per two value dims; in git history) and, measured, the same speed (64 rows of 1k
// tokens at 2.5 TB/s: the limit is elsewhere, docs/native.md), which leaves the arithmetic room for more query rows
// a block: the group's query heads are the rows of an mma (padded to 16), and warp w owns positions 8w .. 8w + 7 of
// every tile, with its own running maximum, sum and output, so the tile needs no exchange between warps:
//   scores  S[head][8 positions] = Q K^T: D/16 m16n8k16 steps, K's fragments by ldmatrix from the tile's rows;
//   softmax on S's fragment in registers (each row's 8 scores on its lane quad);
//   values  O[head][D] += P V: P's float16 fragment is S's accumulator layout, V's fragments by ldmatrix.trans,
//           D/8 m16n8k8 steps.
// The four warps' results are combined at the end through shared memory. With one split (out != nullptr) the block
// writes the divided float16 output itself; otherwise partial results at ((token * numHeads + h) * splits + split):
// out [.., D] (not yet divided), max and sum [..], for decodeAttentionMerge.
template <int D, int kGroup>
__global__ void __launch_bounds__(kAttnThreads, 4) decodeAttentionSplit(
    const half* __restrict__ qRot, const half* __restrict__ presentKey, const half* __restrict__ presentValue,
    const int* __restrict__ seqlensK, float* __restrict__ partialOut, float* __restrict__ partialMax,
    float* __restrict__ partialSum, half* __restrict__ out, int numHeads, int kvHeads, int presentLen, int splits, float scale, int S,
    bool firstPrompt, bool rotate) {
  static_assert(D % 16 == 0 && kGroup <= 8, "head dim a multiple of 16, at most 8 query heads a KV head");
  constexpr int kRow = D + 8, kChunks = D / 8, kSteps = D / 16, kWarps = kAttnThreads / 32;
  constexpr int kLoads = 2 * kAttnTile * kChunks / kAttnThreads;  // 16-byte copies a thread a tile
  static_assert(2 * kAttnTile * kChunks % kAttnThreads == 0, "whole copies a thread");
  extern __shared__ __align__(16) unsigned char tileBytes[];  // attentionTileBytes<D, kGroup>()
  half (*ks)[kAttnTile][kRow] = reinterpret_cast<half (*)[kAttnTile][kRow]>(tileBytes);
  half (*vs)[kAttnTile][kRow] = reinterpret_cast<half (*)[kAttnTile][kRow]>(tileBytes + kAttnStages * kAttnTile * kRow * 2);
  const int split = blockIdx.x, kh = blockIdx.y, token = blockIdx.z, b = token / S;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  const int L = tokenPosition(seqlensK, b, token % S, S, firstPrompt, presentLen) + 1;  // positions it attends to (0: padding)
  const int tiles = (L + kAttnTile - 1) / kAttnTile, per = (tiles + splits - 1) / splits;
  const int t0 = min(tiles, split * per), t1 = min(tiles, t0 + per);
  const size_t cache = (static_cast<size_t>(b) * kvHeads + kh) * presentLen * D;
  const half* K = presentKey + cache;
  const half* V = presentValue + cache;
  const auto load = [&](int stage, int tile) {
    const int base = tile * kAttnTile, n = min(kAttnTile, L - base);
#pragma unroll
    for (int i = 0; i < kLoads; i++) {
      const int c = tid + kAttnThreads * i;
      const bool isValue = c >= kAttnTile * kChunks;
      const int cc = isValue ? c - kAttnTile * kChunks : c, j = cc / kChunks, part = cc % kChunks;
      half* dst = isValue ? &vs[stage][j][8 * part] : &ks[stage][j][8 * part];
      if (j < n) cpAsync16(dst, (isValue ? V : K) + static_cast<size_t>(base + j) * D + 8 * part);
      else *reinterpret_cast<uint4*>(dst) = make_uint4(0u, 0u, 0u, 0u);
    }
    cpAsyncCommit();
  };
  // The split's i-th tile: in order, or (rotate, CHORUS_ATTN_ROTATE=1, a measurement setting) starting at a place of
  // its own, so that the blocks, whose caches begin at the same offsets of 1 MB-aligned rows, do not walk the same
  // addresses in step (the softmax does not care about the order).
  const int count = t1 - t0;
  const int start = rotate && count > 0 ? (7 * kh + 13 * token + 5 * split) % count : 0;
  const auto tileAt = [&](int i) { return t0 + (i + start) % count; };
#pragma unroll
  for (int i = 0; i < kAttnStages - 1; i++) {
    if (i < count) load(i, tileAt(i));
    else cpAsyncCommit();
  }
  // Q as mma A fragments (row g = query head g of the group, scaled; rows g + 8 and heads past the group are zero).
  uint32_t qa[kSteps][4];  // [1] and [3] (rows g + 8) are zero
  {
    const bool holds = g < kGroup && L > 0;
    const half2 sc = __float2half2_rn(scale);
    const half* q = qRot + (static_cast<size_t>(token) * numHeads + kh * kGroup + (holds ? g : 0)) * D;
#pragma unroll
    for (int k = 0; k < kSteps; k++) {
      const half2 lo = holds ? __hmul2(*reinterpret_cast<const half2*>(q + 16 * k + 2 * t4), sc) : __float2half2_rn(0.f);
      const half2 hi = holds ? __hmul2(*reinterpret_cast<const half2*>(q + 16 * k + 8 + 2 * t4), sc) : __float2half2_rn(0.f);
      qa[k][0] = *reinterpret_cast<const uint32_t*>(&lo);
      qa[k][1] = 0u;
      qa[k][2] = *reinterpret_cast<const uint32_t*>(&hi);
      qa[k][3] = 0u;
    }
  }
  // O row g, dims 8 nt + 2 t4 and + 1. The mma's rows g + 8 (zero: P's rows past the group are) go to scratch
  // registers shared by the dims, four pairs so that successive mmas do not wait on each other.
  float o[kChunks][2] = {};
  float rows8[4][2] = {};
  float runMax = -INFINITY, runSum = 0.f;  // of row g, over this warp's positions
  for (int i = 0; i < count; i++) {
    const int t = tileAt(i), stage = i % kAttnStages;
    cpAsyncWait<kAttnStages - 2>();
    __syncthreads();  // this tile is in for every thread; every thread is done with the stage loaded next
    const int next = i + kAttnStages - 1;
    if (next < count) load(next % kAttnStages, tileAt(next));
    else cpAsyncCommit();
    // Scores of positions 8 warp + 2 t4 and + 1 for query head g.
    float sc[4] = {};
#pragma unroll
    for (int k0 = 0; k0 < kChunks; k0 += 4) {
      if constexpr (kChunks % 4 == 0) {
        uint32_t kb[4];
        ldmatrixX4(kb, &ks[stage][8 * warp + (lane & 7)][8 * (k0 + (lane >> 3))]);
        mma16816(sc, qa[k0 / 2], kb[0], kb[1]);
        mma16816(sc, qa[k0 / 2 + 1], kb[2], kb[3]);
      } else {
        uint32_t kb[2];
        ldmatrixX2(kb, &ks[stage][8 * warp + (lane & 7)][8 * (k0 + ((lane >> 3) & 1))]);
        mma16816(sc, qa[k0 / 2], kb[0], kb[1]);
      }
    }
    const int pos = t * kAttnTile + 8 * warp + 2 * t4;
    const float s0 = pos < L ? sc[0] : -INFINITY, s1 = pos + 1 < L ? sc[1] : -INFINITY;
    float tileMax = fmaxf(s0, s1);
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
    const float mNew = fmaxf(runMax, tileMax);
    // All of this warp's positions past the token's last (a short last tile): nothing to add.
    const float corr = mNew == -INFINITY ? 1.f : __expf(runMax - mNew);
    const float p0 = s0 == -INFINITY ? 0.f : __expf(s0 - mNew), p1 = s1 == -INFINITY ? 0.f : __expf(s1 - mNew);
    float pSum = p0 + p1;
    pSum += __shfl_xor_sync(0xffffffffu, pSum, 1);
    pSum += __shfl_xor_sync(0xffffffffu, pSum, 2);
    runSum = runSum * corr + pSum;
    runMax = mNew;
    const half2 ph = __floats2half2_rn(p0, p1);
    const uint32_t pa = *reinterpret_cast<const uint32_t*>(&ph);
#pragma unroll
    for (int nt = 0; nt < kChunks; nt++) {
      o[nt][0] *= corr;
      o[nt][1] *= corr;
    }
#pragma unroll
    for (int n0 = 0; n0 < kChunks; n0 += 4) {
      if constexpr (kChunks % 4 == 0) {
        uint32_t vb[4];
        ldmatrixX4Trans(vb, &vs[stage][8 * warp + (lane & 7)][8 * (n0 + (lane >> 3))]);
#pragma unroll
        for (int i = 0; i < 4; i++) mma1688(o[n0 + i][0], o[n0 + i][1], rows8[i][0], rows8[i][1], pa, 0u, vb[i]);
      } else {
        uint32_t vb[2];
        ldmatrixX2Trans(vb, &vs[stage][8 * warp + (lane & 7)][8 * (n0 + ((lane >> 3) & 1))]);
        mma1688(o[n0][0], o[n0][1], rows8[0][0], rows8[0][1], pa, 0u, vb[0]);
        mma1688(o[n0 + 1][0], o[n0 + 1][1], rows8[1][0], rows8[1][1], pa, 0u, vb[1]);
      }
    }
  }
  cpAsyncWait<0>();  // only empty groups are left; the tile buffers are reused below
  __syncthreads();
  // The warps' results through the tile buffers: [warp][head][D] outputs, then [warp][head] maxima and sums.
  float (*wo)[kGroup][D] = reinterpret_cast<float (*)[kGroup][D]>(tileBytes);
  float (*wm)[kGroup] = reinterpret_cast<float (*)[kGroup]>(tileBytes + kWarps * kGroup * D * 4);
  float (*wl)[kGroup] = reinterpret_cast<float (*)[kGroup]>(tileBytes + kWarps * kGroup * (D + 1) * 4);
  if (g < kGroup) {
#pragma unroll
    for (int nt = 0; nt < kChunks; nt++) *reinterpret_cast<float2*>(&wo[warp][g][8 * nt + 2 * t4]) = make_float2(o[nt][0], o[nt][1]);
    if (t4 == 0) {
      wm[warp][g] = runMax;
      wl[warp][g] = runSum;
    }
  }
  __syncthreads();
  for (int idx = tid; idx < kGroup * D; idx += kAttnThreads) {
    const int h = idx / D, d = idx % D;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) mx = fmaxf(mx, wm[w][h]);
    float acc = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      const float weight = wm[w][h] == -INFINITY ? 0.f : __expf(wm[w][h] - mx);
      acc += weight * wo[w][h][d];
      sum += weight * wl[w][h];
    }
    const size_t head = static_cast<size_t>(token) * numHeads + kh * kGroup + h;
    if (out != nullptr) {
      out[head * D + d] = __float2half(sum > 0.f ? acc / sum : 0.f);
    } else {
      const size_t at = head * splits + split;
      partialOut[at * D + d] = acc;
      if (d == 0) {
        partialMax[at] = mx;  // -inf for an empty split: its weight in the merge is 0
        partialSum[at] = sum;
      }
    }
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
