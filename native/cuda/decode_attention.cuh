// chorus.DecodeAttention's kernels (experimental, opt-in: `--decode-attention chorus`): GroupQueryAttention over a
// share-buffer KV cache for packed QKV with rotary inside (head dims 16, 64, 128; 2, 3, 4 or 8 query heads a KV
// head: Llama 3's and the test fixtures'), built for decode steps (one query token a row); prompt chunks (S tokens a
// row) go through the same kernels with several tokens a block (with a block a token, a 512-token prompt's first token
// came 4-6 ms later than through GroupQueryAttention's flash kernel; now its 64-stream TTFT is the lower one).
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

// Query tokens a block for prompt chunks: as many as fill the mma's 16 rows with their group of query heads (a decode
// step's one token a row uses kGroup rows).
template <int kGroup>
constexpr int promptTokensPerBlock() { return 16 / kGroup; }

// Dynamic shared memory of decodeAttentionSplit<D, kGroup, kTokens>: the tiles' keys and values, reused after the last
// tile for the four warps' running maxima, sums and outputs of each mma row.
template <int D, int kGroup, int kTokens>
constexpr int attentionTileBytes() {
  constexpr int tiles = kAttnStages * 2 * kAttnTile * (D + 8) * 2;
  constexpr int warps = (kAttnThreads / 32) * kTokens * kGroup * (D + 2) * 4;
  return tiles > warps ? tiles : warps;
}

// Head dim D; kGroup query heads share a KV head; kTokens query tokens of a row a block (1 for decode steps,
// promptTokensPerBlock for prompt chunks, which then read each tile once for all of them instead of once a token);
// grid (splits, kvHeads, B ceil(S / kTokens)), kAttnThreads threads. Each split is a run of whole tiles of the
// block's positions (up to its last token's), copied into shared memory with cp.async (kAttnStages - 1 tiles loading
// while one is computed; rows past the last position are zero-filled, so a zero weight never meets a NaN).
// Tensor cores do the arithmetic, as XQA does, with about a fifth of the instructions of the CUDA-core version (a
// lane per position, a thread per two value dims; in git history) and, measured, the same speed at decode (64 rows of
// 1k tokens at 2.5 TB/s: the limit is elsewhere, docs/native.md). The mma's rows are (token, query head) pairs, row
// r = token kGroup + head (up to 16; rows g and g + 8 of lane 4g + t), and warp w owns positions 8w .. 8w + 7 of every
// tile, with each row's own running maximum, sum and output, so the tile needs no exchange between warps:
//   scores  S[row][8 positions] = Q K^T: D/16 m16n8k16 steps, K's fragments by ldmatrix from the tile's rows; each
//           row masked past its own token's position (causal inside a prompt chunk);
//   softmax on S's fragment in registers (each row's 8 scores on its lane quad);
//   values  O[row][D] += P V: P's float16 fragment is S's accumulator layout, V's fragments by ldmatrix.trans,
//           D/8 m16n8k8 steps.
// The four warps' results are combined at the end through shared memory. With one split (out != nullptr) the block
// writes the divided float16 output itself; otherwise partial results at ((token * numHeads + h) * splits + split):
// out [.., D] (not yet divided), max and sum [..], for decodeAttentionMerge. A padding token's output is zero.
template <int D, int kGroup, int kTokens>
__global__ void __launch_bounds__(kAttnThreads, kTokens * kGroup > 8 ? 3 : 4) decodeAttentionSplit(
    const half* __restrict__ qRot, const half* __restrict__ presentKey, const half* __restrict__ presentValue,
    const int* __restrict__ seqlensK, float* __restrict__ partialOut, float* __restrict__ partialMax,
    float* __restrict__ partialSum, half* __restrict__ out, int numHeads, int kvHeads, int presentLen, int splits, float scale, int S,
    bool firstPrompt, bool rotate) {
  constexpr int kRows = kTokens * kGroup;
  constexpr bool kHighRows = kRows > 8;  // rows g + 8 carry (token, head) pairs too
  static_assert(D % 16 == 0 && kGroup <= 8 && kRows <= 16, "head dim a multiple of 16, at most 16 mma rows");
  constexpr int kRow = D + 8, kChunks = D / 8, kSteps = D / 16, kWarps = kAttnThreads / 32;
  constexpr int kLoads = 2 * kAttnTile * kChunks / kAttnThreads;  // 16-byte copies a thread a tile
  static_assert(2 * kAttnTile * kChunks % kAttnThreads == 0, "whole copies a thread");
  extern __shared__ __align__(16) unsigned char tileBytes[];  // attentionTileBytes<D, kGroup, kTokens>()
  half (*ks)[kAttnTile][kRow] = reinterpret_cast<half (*)[kAttnTile][kRow]>(tileBytes);
  half (*vs)[kAttnTile][kRow] = reinterpret_cast<half (*)[kAttnTile][kRow]>(tileBytes + kAttnStages * kAttnTile * kRow * 2);
  const int tokenBlocks = (S + kTokens - 1) / kTokens;
  const int split = blockIdx.x, kh = blockIdx.y, b = blockIdx.z / tokenBlocks, first = (blockIdx.z % tokenBlocks) * kTokens;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t4 = lane & 3;
  // Row r's token (-1: past the chunk) and the positions it attends to (0: padding or past the chunk).
  const auto rowToken = [&](int r) { return r < kRows && first + r / kGroup < S ? first + r / kGroup : -1; };
  const auto rowLength = [&](int r) {
    const int i = rowToken(r);
    return i < 0 ? 0 : tokenPosition(seqlensK, b, i, S, firstPrompt, presentLen) + 1;
  };
  // The block's positions: its last token's (positions grow with the token in a chunk).
  int L = 0;
#pragma unroll
  for (int q = 0; q < kTokens; q++) L = max(L, rowLength(q * kGroup));
  const int lenA = rowLength(g), lenB = kHighRows ? rowLength(g + 8) : 0;
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
  const int start = rotate && count > 0 ? (7 * kh + 13 * static_cast<int>(blockIdx.z) + 5 * split) % count : 0;
  const auto tileAt = [&](int i) { return t0 + (i + start) % count; };
#pragma unroll
  for (int i = 0; i < kAttnStages - 1; i++) {
    if (i < count) load(i, tileAt(i));
    else cpAsyncCommit();
  }
  // Q as mma A fragments: rows g and g + 8 (their (token, head) pairs, scaled; zero past the rows or for padding).
  uint32_t qa[kSteps][4];
  {
    const half2 sc = __float2half2_rn(scale), zero = __float2half2_rn(0.f);
    const auto qRow = [&](int r) {
      const int i = rowToken(r);
      return qRot + ((static_cast<size_t>(b) * S + (i < 0 ? 0 : i)) * numHeads + kh * kGroup + r % kGroup) * D;
    };
    const half* qA = qRow(g);
    const half* qB = qRow(g + 8);
    const bool holdsA = lenA > 0, holdsB = lenB > 0;
#pragma unroll
    for (int k = 0; k < kSteps; k++) {
      const half2 a0 = holdsA ? __hmul2(*reinterpret_cast<const half2*>(qA + 16 * k + 2 * t4), sc) : zero;
      const half2 a2 = holdsA ? __hmul2(*reinterpret_cast<const half2*>(qA + 16 * k + 8 + 2 * t4), sc) : zero;
      const half2 a1 = holdsB ? __hmul2(*reinterpret_cast<const half2*>(qB + 16 * k + 2 * t4), sc) : zero;
      const half2 a3 = holdsB ? __hmul2(*reinterpret_cast<const half2*>(qB + 16 * k + 8 + 2 * t4), sc) : zero;
      qa[k][0] = *reinterpret_cast<const uint32_t*>(&a0);
      qa[k][1] = *reinterpret_cast<const uint32_t*>(&a1);
      qa[k][2] = *reinterpret_cast<const uint32_t*>(&a2);
      qa[k][3] = *reinterpret_cast<const uint32_t*>(&a3);
    }
  }
  // O rows g ([0], [1]) and g + 8 ([2], [3]), dims 8 nt + 2 t4 and + 1. Without rows g + 8 (decode steps), their mma
  // outputs (zero: P's rows there are) go to four pairs of scratch registers shared by the dims, so that successive
  // mmas do not wait on each other.
  float o[kChunks][kHighRows ? 4 : 2] = {};
  float rows8[4][2] = {};
  float maxA = -INFINITY, sumA = 0.f, maxB = -INFINITY, sumB = 0.f;  // of rows g and g + 8, over this warp's positions
  // One row's online softmax over the warp's 2 scores a lane (8 a lane quad): the correction of what came before and
  // the two weights.
  const auto softmax = [&](float s0, float s1, float& runMax, float& runSum, float& corr, float& p0, float& p1) {
    float tileMax = fmaxf(s0, s1);
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 1));
    tileMax = fmaxf(tileMax, __shfl_xor_sync(0xffffffffu, tileMax, 2));
    const float mNew = fmaxf(runMax, tileMax);
    // All of this warp's positions past the row's last (a short last tile): nothing to add.
    corr = mNew == -INFINITY ? 1.f : __expf(runMax - mNew);
    p0 = s0 == -INFINITY ? 0.f : __expf(s0 - mNew);
    p1 = s1 == -INFINITY ? 0.f : __expf(s1 - mNew);
    float pSum = p0 + p1;
    pSum += __shfl_xor_sync(0xffffffffu, pSum, 1);
    pSum += __shfl_xor_sync(0xffffffffu, pSum, 2);
    runSum = runSum * corr + pSum;
    runMax = mNew;
  };
  for (int i = 0; i < count; i++) {
    const int t = tileAt(i), stage = i % kAttnStages;
    cpAsyncWait<kAttnStages - 2>();
    __syncthreads();  // this tile is in for every thread; every thread is done with the stage loaded next
    const int next = i + kAttnStages - 1;
    if (next < count) load(next % kAttnStages, tileAt(next));
    else cpAsyncCommit();
    // Scores of positions 8 warp + 2 t4 and + 1 for rows g and g + 8.
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
    float corrA, pA0, pA1, corrB = 1.f, pB0 = 0.f, pB1 = 0.f;
    softmax(pos < lenA ? sc[0] : -INFINITY, pos + 1 < lenA ? sc[1] : -INFINITY, maxA, sumA, corrA, pA0, pA1);
    if constexpr (kHighRows) softmax(pos < lenB ? sc[2] : -INFINITY, pos + 1 < lenB ? sc[3] : -INFINITY, maxB, sumB, corrB, pB0, pB1);
    const half2 phA = __floats2half2_rn(pA0, pA1), phB = __floats2half2_rn(pB0, pB1);
    const uint32_t pa0 = *reinterpret_cast<const uint32_t*>(&phA), pa1 = kHighRows ? *reinterpret_cast<const uint32_t*>(&phB) : 0u;
#pragma unroll
    for (int nt = 0; nt < kChunks; nt++) {
      o[nt][0] *= corrA;
      o[nt][1] *= corrA;
      if constexpr (kHighRows) {
        o[nt][2] *= corrB;
        o[nt][3] *= corrB;
      }
    }
    // O[nt] += P V[nt]: rows g + 8 into o[nt][2..3], or into the scratch pairs.
    const auto pv = [&](int nt, int scratch, uint32_t vb) {
      if constexpr (kHighRows) mma1688(o[nt][0], o[nt][1], o[nt][2], o[nt][3], pa0, pa1, vb);
      else mma1688(o[nt][0], o[nt][1], rows8[scratch][0], rows8[scratch][1], pa0, pa1, vb);
    };
#pragma unroll
    for (int n0 = 0; n0 < kChunks; n0 += 4) {
      if constexpr (kChunks % 4 == 0) {
        uint32_t vb[4];
        ldmatrixX4Trans(vb, &vs[stage][8 * warp + (lane & 7)][8 * (n0 + (lane >> 3))]);
#pragma unroll
        for (int j = 0; j < 4; j++) pv(n0 + j, j, vb[j]);
      } else {
        uint32_t vb[2];
        ldmatrixX2Trans(vb, &vs[stage][8 * warp + (lane & 7)][8 * (n0 + ((lane >> 3) & 1))]);
        pv(n0, 0, vb[0]);
        pv(n0 + 1, 1, vb[1]);
      }
    }
  }
  cpAsyncWait<0>();  // only empty groups are left; the tile buffers are reused below
  __syncthreads();
  // The warps' results through the tile buffers: [warp][row][D] outputs, then [warp][row] maxima and sums.
  float (*wo)[kRows][D] = reinterpret_cast<float (*)[kRows][D]>(tileBytes);
  float (*wm)[kRows] = reinterpret_cast<float (*)[kRows]>(tileBytes + kWarps * kRows * D * 4);
  float (*wl)[kRows] = reinterpret_cast<float (*)[kRows]>(tileBytes + kWarps * kRows * (D + 1) * 4);
  if (g < kRows) {
#pragma unroll
    for (int nt = 0; nt < kChunks; nt++) *reinterpret_cast<float2*>(&wo[warp][g][8 * nt + 2 * t4]) = make_float2(o[nt][0], o[nt][1]);
    if (t4 == 0) {
      wm[warp][g] = maxA;
      wl[warp][g] = sumA;
    }
  }
  if constexpr (kHighRows) {
    if (g + 8 < kRows) {
#pragma unroll
      for (int nt = 0; nt < kChunks; nt++) *reinterpret_cast<float2*>(&wo[warp][g + 8][8 * nt + 2 * t4]) = make_float2(o[nt][2], o[nt][3]);
      if (t4 == 0) {
        wm[warp][g + 8] = maxB;
        wl[warp][g + 8] = sumB;
      }
    }
  }
  __syncthreads();
  for (int idx = tid; idx < kRows * D; idx += kAttnThreads) {
    const int r = idx / D, d = idx % D, i = rowToken(r);
    if (i < 0) continue;
    float mx = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; w++) mx = fmaxf(mx, wm[w][r]);
    float acc = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; w++) {
      const float weight = wm[w][r] == -INFINITY ? 0.f : __expf(wm[w][r] - mx);
      acc += weight * wo[w][r][d];
      sum += weight * wl[w][r];
    }
    const size_t head = (static_cast<size_t>(b) * S + i) * numHeads + kh * kGroup + r % kGroup;
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
