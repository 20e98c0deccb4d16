// chorus.Int4Linear on tensor cores: int4MmaWide (up to 8 rows), int4Mma (up to kMmaMaxRows rows), split-K sum.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "cp_async.cuh"
#include "mma.cuh"
#include "int4_weights.cuh"

namespace chorus {

// chorus.Int4Linear on tensor cores (the default from 9 to kMmaMaxRows rows; from one row with CHORUS_INT4_KERNEL=mma): each warp owns 16
// weight rows and computes Y^T[16, M] = W[16, K] X^T[K, M] with mma.m16n8k16 (float16 in, float32 accumulators), the
// weight dequantized in registers on its way from memory to the tensor cores, so that 4-bit bytes are all that
// crosses HBM. A segment is 128 k: lane (g, t) of the warp (g = lane / 4, t = lane % 4) loads the 16-byte word of
// rows g and g + 8 that holds k in [32t, 32t + 32) of the segment, and the same 32 k of X for the X rows it holds.
// The mma sums over k in any order, so each lane maps the 16 k of an mma step onto its own 32 k (both operands the
// same way): the 4-bit pair of byte i of a code word is A's (2t, 2t + 1) pair and the matching float16 pair of X
// is B's, with no shuffles. Rows split over more blocks (split-K, float32 partial sums and one reduction) when N
// alone gives too few warps to keep HBM busy (the MLP's down projection: N = 4096).
constexpr int kMmaMaxRows = 128;
constexpr int kMmaWarps = 8;
constexpr int kMmaSegK = 128;

// The two codes of byte I of v as half2((e_lo - z) * s, (e_hi - z) * s). The byte permute puts byte I under the
// exponent bytes 0x64 (low half) and 0x54 (high half); the AND keeps the low nibble as the low half's last mantissa
// bits (1024 + e_lo) and the high nibble as mantissa bits 4-7 of the high half (64 + e_hi: the step at 64 is 1/16).
// `offset` is half2(1024 + z, 64 + z): the subtraction is exact, the multiply rounds once (MatMulNBits' float16
// dequantized weight).
template <int I>
__device__ __forceinline__ uint32_t dequantPair(uint32_t v, half2 offset, half2 scale) {
  constexpr uint32_t sel = I | (5u << 4) | (I << 8) | (7u << 12);
  uint32_t r = __byte_perm(v, 0x54006400u, sel) & 0x54F0640Fu;
  const half2 h = __hmul2(__hsub2(*reinterpret_cast<const half2*>(&r), offset), scale);
  return *reinterpret_cast<const uint32_t*>(&h);
}

// The 16 A fragments' halves of the four 32-bit words of rows g (wa) and g + 8 (wb) over this lane's 32 k: word j
// serves steps 2j and 2j + 1; in step 2j + h, byte 2h is A's pair (2t, 2t + 1) and byte 2h + 1 the pair (2t + 8,
// 2t + 9).
__device__ __forceinline__ void dequantWord(uint32_t wa, uint32_t wb, half2 offA, half2 sA, half2 offB, half2 sB,
                                            uint32_t (&lo)[4], uint32_t (&hi)[4]) {
  lo[0] = dequantPair<0>(wa, offA, sA);
  lo[1] = dequantPair<0>(wb, offB, sB);
  lo[2] = dequantPair<1>(wa, offA, sA);
  lo[3] = dequantPair<1>(wb, offB, sB);
  hi[0] = dequantPair<2>(wa, offA, sA);
  hi[1] = dequantPair<2>(wb, offB, sB);
  hi[2] = dequantPair<3>(wa, offA, sA);
  hi[3] = dequantPair<3>(wb, offB, sB);
}

// CHORUS_INT4_DEQUANT=lop3 (int4MmaWide; a measurement setting: as fast as the default, 2026-12-01g): the codes of a 32-bit word
// (c0 .. c7, c0 the low nibble of byte 0) as four half2 pairs (c0, c4), (c1, c5), (c2, c6), (c3, c7) with one AND/OR
// each (LOP3: the low nibbles of bytes 0 and 2 under exponent 0x64 are 1024 + c; the high nibbles, as mantissa bits
// 4-7, are 1024 + 16 c), one shift for bytes 1 and 3, then an exact subtraction (1024 + z) or an exact fma (x 1/16,
// - (64 + z)) and one rounding at the scale: the same float16 weight as dequantPair, in 13 instructions for 8 codes
// instead of 16 and without the byte permute's selector registers (ncu: the one-row loop spent an IMAD per PRMT
// loading its selector). X's pairs are permuted to match (xPairsByFour), once for both rows.
__device__ __forceinline__ uint32_t asU32(half2 h) { return *reinterpret_cast<const uint32_t*>(&h); }
__device__ __forceinline__ half2 asHalf2(uint32_t u) { return *reinterpret_cast<const half2*>(&u); }

// half2(1024 + z) and half2(-(64 + z)) for dequantLop3, from a zero-point byte and its nibble.
__device__ __forceinline__ void lop3Offsets(uint8_t zeroByte, int shift, half2& low, half2& high) {
  const int z = (zeroByte >> shift) & 0xF;
  low = __half2half2(__ushort_as_half(static_cast<unsigned short>(0x6400 + z)));
  high = __half2half2(__ushort_as_half(static_cast<unsigned short>(0xD400 + 16 * z)));
}

// The A fragments of word v (one row): p[0] = (c0, c4), p[1] = (c1, c5), p[2] = (c2, c6), p[3] = (c3, c7).
__device__ __forceinline__ void dequantLop3(uint32_t v, half2 low, half2 high, half2 scale, uint32_t (&p)[4]) {
  constexpr uint32_t kMagic = 0x64006400u;
  const half2 sixteenth = __float2half2_rn(0.0625f);
  const uint32_t v8 = v >> 8;
  p[0] = asU32(__hmul2(__hsub2(asHalf2((v & 0x000F000Fu) | kMagic), low), scale));
  p[1] = asU32(__hmul2(__hfma2(asHalf2((v & 0x00F000F0u) | kMagic), sixteenth, high), scale));
  p[2] = asU32(__hmul2(__hsub2(asHalf2((v8 & 0x000F000Fu) | kMagic), low), scale));
  p[3] = asU32(__hmul2(__hfma2(asHalf2((v8 & 0x00F000F0u) | kMagic), sixteenth, high), scale));
}

// One lane's share of a segment: the two weight words, and the raw scale and zero-point byte of their blocks (zero
// for a row past N or k past K, so that the dequantized weight is exactly 0 there). The loads stay raw until the
// segment is used: converting a loaded value here would make the warp wait for it, and the prefetch would be none.
template <bool kZeroPoints>
struct SegmentLoad {
  uint4 wa, wb;
  half sA, sB;
  uint8_t zA, zB;  // the byte holding the block's zero point (two blocks a byte)
  int zShift;      // 0 or 4: which nibble
  __device__ void load(const uint8_t* b, const half* scales, const uint8_t* zeroPoints, int rowA, int rowB, bool okA,
                       bool okB, int k0, bool valid, int rowBytes, int blockSize, int nBlocks) {
    const int block = k0 / blockSize;
    const int zeroBytes = (nBlocks + 1) / 2;
    wa = wb = make_uint4(0, 0, 0, 0);
    sA = sB = __ushort_as_half(0);
    zA = zB = 0x88;
    zShift = (block & 1) * 4;
    if (valid && okA) {
      wa = __ldg(reinterpret_cast<const uint4*>(b + static_cast<size_t>(rowA) * rowBytes + k0 / 2));
      sA = scales[static_cast<size_t>(rowA) * nBlocks + block];
      if (kZeroPoints) zA = zeroPoints[static_cast<size_t>(rowA) * zeroBytes + (block >> 1)];
    }
    if (valid && okB) {
      wb = __ldg(reinterpret_cast<const uint4*>(b + static_cast<size_t>(rowB) * rowBytes + k0 / 2));
      sB = scales[static_cast<size_t>(rowB) * nBlocks + block];
      if (kZeroPoints) zB = zeroPoints[static_cast<size_t>(rowB) * zeroBytes + (block >> 1)];
    }
  }
};

// half2(1024 + z, 64 + z) for dequantPair, from a zero-point byte and its nibble.
__device__ __forceinline__ half2 pairOffset(uint8_t zeroByte, int shift) {
  const int z = (zeroByte >> shift) & 0xF;
  return __halves2half2(__ushort_as_half(static_cast<unsigned short>(0x6400 + z)), __ushort_as_half(static_cast<unsigned short>(0x5400 + 16 * z)));
}

// X's 16-byte chunk c (k 8c .. 8c + 7 of a segment) of X row r sits at chunk c ^ swizzle in r's 256 bytes of shared
// memory: lane (g, t) reads chunk 4t + j of row g, and the swizzle spreads the eight lanes of a quarter warp (rows 2q
// and 2q + 1, t = 0..3) over all 32 banks.
__device__ __forceinline__ int xChunkSlot(int c, int r) { return c ^ (((c >> 3) & 1) << 1) ^ (r & 1); }

// Segment seg of X rows [0, 8 MT) into one shared buffer: rows past M and k past K as zeros (a zero weight times a
// stale NaN would still be NaN).
template <int MT>
__device__ __forceinline__ void stageX(uint4* buf, const half* x, int M, int K, int seg) {
  for (int i = threadIdx.x; i < MT * 8 * 16; i += blockDim.x) {
    const int r = i >> 4, c = i & 15;
    const int k = seg * kMmaSegK + 8 * c;
    uint4* dst = buf + r * 16 + xChunkSlot(c, r);
    if (r < M && k < K) cpAsync16(dst, x + static_cast<size_t>(r) * K + k);
    else *dst = make_uint4(0, 0, 0, 0);
  }
}

// kPrefetch segments of weights in flight a warp: at one to eight rows each warp's loads are all that keeps HBM
// busy, and one segment ahead (1 KB a warp) left it at a quarter of its rate.
template <int MT>
__host__ __device__ constexpr int mmaPrefetch() { return MT <= 2 ? 4 : 2; }

// MT m-tiles of 8 X rows (M <= 8 MT). Up to 8 rows (MT = 1) lanes read X straight from global memory (L1 serves
// the block's warps); above, the block stages each segment of X in shared memory (cp.async, two buffers) once for
// all its warps, so that X costs 4 M / 128 bytes of L2 traffic a weight byte instead of 4 M / 16. blockIdx.y is the
// k slice: with gridDim.y > 1 the float32 sums go to partial[slice][M][N] and int4SplitKSum adds them up;
// otherwise straight to y.
//
// MH > 1 (CHORUS_INT4_MMA_ROWS=256; measured slower than dequantize + cuBLAS above 128 rows, 2026-12-01f): the block's warps split X's rows into MH groups
// of 8 MT rows, kMmaWarps / MH warps a group, each warp 16 weight rows; warps of one weight tile load the same words
// (the second from L1), so a weight byte serves 8 MT MH rows of X from one HBM read, up to 256 rows.
template <int MT, bool kZeroPoints, int MH = 1>
__global__ void __launch_bounds__(kMmaWarps * 32, MT <= 8 ? 2 : 1) int4Mma(
    const half* __restrict__ x, const uint8_t* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, float* __restrict__ partial, int M, int K, int N,
    int blockSize, int nBlocks, int segsPerSlice) {
  constexpr bool kSharedX = MT > 1 || MH > 1;
  constexpr int kPrefetch = mmaPrefetch<MT>();
  constexpr int kWarpsN = kMmaWarps / MH;  // warps a row group, each its own 16 weight rows
  constexpr int kRows = MT * 8 * MH;       // X rows staged a segment
  extern __shared__ uint4 xShared[];  // kSharedX: two buffers of kRows rows x 16 chunks
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warpN = MH == 1 ? threadIdx.x >> 5 : (threadIdx.x >> 5) % kWarpsN;
  const int mBase = MH == 1 ? 0 : ((threadIdx.x >> 5) / kWarpsN) * MT * 8;
  const int n0 = (blockIdx.x * kWarpsN + warpN) * 16;
  const int rowA = n0 + g, rowB = n0 + g + 8;
  const bool okA = rowA < N, okB = rowB < N;  // a warp past N still stages X for its block
  const int rowBytes = nBlocks * blockSize / 2;
  const int segs = (K + kMmaSegK - 1) / kMmaSegK;
  const int segBegin = blockIdx.y * segsPerSlice;
  const int segEnd = min(segs, segBegin + segsPerSlice);

  float acc[MT][4];
#pragma unroll
  for (int mt = 0; mt < MT; mt++) acc[mt][0] = acc[mt][1] = acc[mt][2] = acc[mt][3] = 0.f;

  // The warps (above 8 rows: the blocks, which share their X stages) walk their slice's segments from different
  // starts: in lockstep they would all read the same 64 bytes of rows 2-7 KB apart, concentrated on a few memory
  // channels. The sum's order per row changes; its terms do not.
  const int count = max(0, segEnd - segBegin);
  const int rot = count == 0 ? 0 : (kSharedX ? blockIdx.x : blockIdx.x * kWarpsN + warpN) % count;
  auto segOf = [&](int i) { const int r = i + rot; return segBegin + (r >= count ? r - count : r); };

  SegmentLoad<kZeroPoints> ring[kPrefetch];
#pragma unroll
  for (int i = 0; i < kPrefetch; i++) {
    if (i < count) {
      const int k0 = segOf(i) * kMmaSegK + 32 * t;
      ring[i].load(b, scales, zeroPoints, rowA, rowB, okA, okB, k0, k0 < K, rowBytes, blockSize, nBlocks);
    }
  }
  if (kSharedX && count > 0) {
    stageX<MT * MH>(xShared, x, M, K, segOf(0));
    cpAsyncCommit();
  }

  for (int base = 0; base < count; base += kPrefetch) {
#pragma unroll
    for (int i = 0; i < kPrefetch; i++) {
      const int it = base + i;
      if (it >= count) break;
      const SegmentLoad<kZeroPoints> cur = ring[i];
      const int k0 = segOf(it) * kMmaSegK + 32 * t;
      const bool valid = k0 < K;  // K is a multiple of 32: a lane's 32 k lie all inside K or all past it
      if (it + kPrefetch < count) {
        const int k1 = segOf(it + kPrefetch) * kMmaSegK + 32 * t;
        ring[i].load(b, scales, zeroPoints, rowA, rowB, okA, okB, k1, k1 < K, rowBytes, blockSize, nBlocks);
      }
      const uint4* xs = xShared + (it & 1) * (kRows * 16);
      if (kSharedX) {
        if (it + 1 < count) {
          stageX<MT * MH>(xShared + ((it + 1) & 1) * (kRows * 16), x, M, K, segOf(it + 1));
          cpAsyncCommit();
          cpAsyncWait<1>();
        } else {
          cpAsyncWait<0>();
        }
        __syncthreads();
      }
      const uint32_t wa[4] = {cur.wa.x, cur.wa.y, cur.wa.z, cur.wa.w}, wb[4] = {cur.wb.x, cur.wb.y, cur.wb.z, cur.wb.w};
      const half2 sA = __half2half2(cur.sA), sB = __half2half2(cur.sB);
      const half2 offA = pairOffset(cur.zA, cur.zShift), offB = pairOffset(cur.zB, cur.zShift);
#pragma unroll
      for (int j = 0; j < 4; j++) {
        // Word j of the lane's 16 bytes: steps 2j (a[0]) and 2j + 1 (a[1]) against X's k 8j .. 8j + 7 of its 32.
        uint32_t a[2][4];
        dequantWord(wa[j], wb[j], offA, sA, offB, sB, a[0], a[1]);
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
          const int m = mBase + mt * 8 + g;
          uint4 xv;
          if (kSharedX) {
            xv = xs[m * 16 + xChunkSlot(4 * t + j, m)];
          } else {
            xv = make_uint4(0, 0, 0, 0);
            if (valid && m < M) xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * K + k0) + j);
          }
          mma16816(acc[mt], a[0], xv.x, xv.y);
          mma16816(acc[mt], a[1], xv.z, xv.w);
        }
      }
      if (kSharedX) __syncthreads();  // the buffer just read is staged again two segments on
    }
  }

  // acc[mt]: (row g, X rows 2t and 2t + 1 of the tile) and (row g + 8, the same X rows).
#pragma unroll
  for (int mt = 0; mt < MT; mt++) {
    const int m = mBase + mt * 8 + 2 * t;
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const int mm = m + (c & 1), nn = c < 2 ? rowA : rowB;
      if (mm >= M || nn >= N) continue;
      if (partial != nullptr) partial[(static_cast<size_t>(blockIdx.y) * M + mm) * N + nn] = acc[mt][c];
      else y[static_cast<size_t>(mm) * N + nn] = __float2half(acc[mt][c]);
    }
  }
}

// The one-to-eight-row case with longer runs per weight row (the default up to 8 rows with kWords 4, since
// 2026-12-01f: one row 73-75 us an MLP layer against int4Mma's 92-94; CHORUS_INT4_KERNEL=mma-w2 | mma-w4 pick it for
// measurements). int4Mma's lanes read 16 bytes of a row each, so a row is read 64 bytes at a time; scattered 64-byte
// reads are a poor pattern for HBM. Here lane t of a row's four reads kWords consecutive 16-byte words (k [128 kWords s + 32 kWords t,
// + 32 kWords) of segment s), so a row is read 64 kWords bytes at a time. Each word is used exactly as int4Mma uses
// its one word (the mma's k mapping is per lane, so any lane-consistent placement is valid). X comes from global
// memory (L1 serves the block), as in int4Mma at one m-tile.
template <bool kZeroPoints, int kWords>
struct WideLoad {
  uint4 wa[kWords], wb[kWords];
  half sA[kWords], sB[kWords];
  uint8_t zA[kWords], zB[kWords];
  __device__ void load(const uint8_t* b, const half* scales, const uint8_t* zeroPoints, int rowA, int rowB, bool okA,
                       bool okB, int k0, int K, int rowBytes, int blockSize, int nBlocks) {
    const int zeroBytes = (nBlocks + 1) / 2;
#pragma unroll
    for (int w = 0; w < kWords; w++) {
      const int k = k0 + 32 * w, block = k / blockSize;
      wa[w] = wb[w] = make_uint4(0, 0, 0, 0);
      sA[w] = sB[w] = __ushort_as_half(0);
      zA[w] = zB[w] = 0x88;
      if (k < K && okA) {
        wa[w] = __ldg(reinterpret_cast<const uint4*>(b + static_cast<size_t>(rowA) * rowBytes + k / 2));
        sA[w] = scales[static_cast<size_t>(rowA) * nBlocks + block];
        if (kZeroPoints) zA[w] = zeroPoints[static_cast<size_t>(rowA) * zeroBytes + (block >> 1)];
      }
      if (k < K && okB) {
        wb[w] = __ldg(reinterpret_cast<const uint4*>(b + static_cast<size_t>(rowB) * rowBytes + k / 2));
        sB[w] = scales[static_cast<size_t>(rowB) * nBlocks + block];
        if (kZeroPoints) zB[w] = zeroPoints[static_cast<size_t>(rowB) * zeroBytes + (block >> 1)];
      }
    }
  }
};

// kPrefetch: WideLoads in flight a warp (4 / kWords: 4 KB; 8 KB spills at two blocks a multiprocessor); kChains:
// independent accumulators the mma steps alternate between (CHORUS_INT4_CHAINS, a measurement setting), so that a
// step need not wait for the one before it.
template <bool kZeroPoints, int kWords, int kPrefetch = 4 / kWords, int kChains = 1, bool kLop3 = false>
__global__ void __launch_bounds__(kMmaWarps * 32, 2) int4MmaWide(
    const half* __restrict__ x, const uint8_t* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, float* __restrict__ partial, int M, int K, int N,
    int blockSize, int nBlocks, int segsPerSlice) {
  constexpr int kSegK = kMmaSegK * kWords;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int warp = blockIdx.x * kMmaWarps + (threadIdx.x >> 5);
  const int n0 = warp * 16;
  if (n0 >= N) return;
  const int rowA = n0 + g, rowB = n0 + g + 8;
  const bool okA = rowA < N, okB = rowB < N;
  const int rowBytes = nBlocks * blockSize / 2;
  const int segs = (K + kSegK - 1) / kSegK;
  const int segBegin = blockIdx.y * segsPerSlice;
  const int count = max(0, min(segs, segBegin + segsPerSlice) - segBegin);
  const int rot = count == 0 ? 0 : warp % count;
  auto kOf = [&](int i) {
    const int r = i + rot;
    return (segBegin + (r >= count ? r - count : r)) * kSegK + 32 * kWords * t;
  };

  float acc[kChains][4];
#pragma unroll
  for (int c = 0; c < kChains; c++) acc[c][0] = acc[c][1] = acc[c][2] = acc[c][3] = 0.f;
  WideLoad<kZeroPoints, kWords> ring[kPrefetch];
#pragma unroll
  for (int i = 0; i < kPrefetch; i++)
    if (i < count) ring[i].load(b, scales, zeroPoints, rowA, rowB, okA, okB, kOf(i), K, rowBytes, blockSize, nBlocks);

  for (int base = 0; base < count; base += kPrefetch) {
#pragma unroll
    for (int i = 0; i < kPrefetch; i++) {
      const int it = base + i;
      if (it >= count) break;
      const WideLoad<kZeroPoints, kWords> cur = ring[i];
      const int k0 = kOf(it);
      if (it + kPrefetch < count) ring[i].load(b, scales, zeroPoints, rowA, rowB, okA, okB, kOf(it + kPrefetch), K, rowBytes, blockSize, nBlocks);
#pragma unroll
      for (int w = 0; w < kWords; w++) {
        const int k = k0 + 32 * w;
        const int shift = ((k / blockSize) & 1) * 4;
        const half2 sA = __half2half2(cur.sA[w]), sB = __half2half2(cur.sB[w]);
        const half2 offA = pairOffset(cur.zA[w], shift), offB = pairOffset(cur.zB[w], shift);
        uint4 xv[4] = {make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0), make_uint4(0, 0, 0, 0)};
        if (k < K && g < M) {
          const uint4* xp = reinterpret_cast<const uint4*>(x + static_cast<size_t>(g) * K + k);
#pragma unroll
          for (int j = 0; j < 4; j++) xv[j] = __ldg(xp + j);
        }
        const uint32_t wa[4] = {cur.wa[w].x, cur.wa[w].y, cur.wa[w].z, cur.wa[w].w};
        const uint32_t wb[4] = {cur.wb[w].x, cur.wb[w].y, cur.wb[w].z, cur.wb[w].w};
        if constexpr (kLop3) {
          half2 lowA, highA, lowB, highB;
          lop3Offsets(cur.zA[w], shift, lowA, highA);
          lop3Offsets(cur.zB[w], shift, lowB, highB);
#pragma unroll
          for (int j = 0; j < 4; j++) {
            uint32_t pa[4], pb[4], q[4];
            dequantLop3(wa[j], lowA, highA, sA, pa);
            dequantLop3(wb[j], lowB, highB, sB, pb);
            xPairsByFour(xv[j], q);
            // Step 2j: (c0, c4) in slots (2t, 2t + 1), (c1, c5) in (2t + 8, 2t + 9); step 2j + 1: (c2, c6), (c3, c7).
            const uint32_t a0[4] = {pa[0], pb[0], pa[1], pb[1]}, a1[4] = {pa[2], pb[2], pa[3], pb[3]};
            mma16816(acc[(8 * w + 2 * j) % kChains], a0, q[0], q[1]);
            mma16816(acc[(8 * w + 2 * j + 1) % kChains], a1, q[2], q[3]);
          }
        } else {
#pragma unroll
          for (int j = 0; j < 4; j++) {
            uint32_t a[2][4];
            dequantWord(wa[j], wb[j], offA, sA, offB, sB, a[0], a[1]);
            mma16816(acc[(8 * w + 2 * j) % kChains], a[0], xv[j].x, xv[j].y);
            mma16816(acc[(8 * w + 2 * j + 1) % kChains], a[1], xv[j].z, xv[j].w);
          }
        }
      }
    }
  }

#pragma unroll
  for (int ch = 1; ch < kChains; ch++)
#pragma unroll
    for (int c = 0; c < 4; c++) acc[0][c] += acc[ch][c];
#pragma unroll
  for (int c = 0; c < 4; c++) {
    const int mm = 2 * t + (c & 1), nn = c < 2 ? rowA : rowB;
    if (mm >= M || nn >= N) continue;
    if (partial != nullptr) partial[(static_cast<size_t>(blockIdx.y) * M + mm) * N + nn] = acc[0][c];
    else y[static_cast<size_t>(mm) * N + nn] = __float2half(acc[0][c]);
  }
}

__global__ void int4SplitKSum(const float* __restrict__ partial, half* __restrict__ y, int slices, size_t count) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int p = 0; p < slices; p++) s += partial[static_cast<size_t>(p) * count + i];
    y[i] = __float2half(s);
  }
}


}  // namespace chorus
