// Chorus's own CUDA kernels, as an ONNX Runtime custom-op library for the CUDA execution provider
// (`npm run build:cuda-ops` builds native/build-cuda/libchorus_cuda_ops.so; docs/native.md).
//
// chorus.Int4Linear: Y[M, N] = X[M, K] * dequant(B)^T, where B, scales and zero_points are exactly the inputs of
// com.microsoft.MatMulNBits with bits 4 (MatMulNBitsPacking.ts: B uint8 [N, n_blocks, block/2], element 2j the low
// nibble of byte j; scales [N * n_blocks]; zero points two blocks a byte, low nibble first, absent = 8). A shard graph
// uses it by renaming its MatMulNBits nodes (src/core/native/CudaOps.ts); the weights stay byte for byte the same.
//
// Why: ORT 1.29's MatMulNBits moves 4-bit weights at about 1 TB/s at one row and dequantizes to float16 before a GEMM
// above it, 2x float16's time at 16-128 rows (docs/benchmarks.md, "What limits int4"). Paths (CHORUS_INT4_KERNEL):
//   auto (default)  up to kMmaMaxRows rows int4Mma, a tensor-core W4A16 kernel that dequantizes in registers on the
//                   way from HBM to mma.sync, so only 4-bit bytes cross HBM; above (long prompts) int4Dequantize +
//                   cuBLAS, where the GEMM's arithmetic outweighs the scratch's traffic.
//   mma             the same (a measurement name).
//   gemv1, gemv2    the GEMVs (int4Gemv, int4GemvHalf2) up to kGemvMaxRows rows, dequantize + cuBLAS above: the
//                   first versions, kept to measure against (docs/native.md has the figures).
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstdint>
#include <algorithm>
#include <cstdlib>
#include <mutex>
#include <string>

#define ORT_API_MANUAL_INIT
#include "onnxruntime_cxx_api.h"
#undef ORT_API_MANUAL_INIT

namespace {

constexpr int kGemvMaxRows = 8;
constexpr int kWarpsPerBlock = 8;

// ------------------------------------------------------------------------------------------------ kernels

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

// A warp's float32 partial sums of output n, one a row of X, summed over its lanes and stored as float16.
template <int M>
__device__ void storeRowSums(float (&acc)[M], half* y, int n, int N, int lane) {
#pragma unroll
  for (int m = 0; m < M; m++) {
    float v = acc[m];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) y[static_cast<size_t>(m) * N + n] = __float2half(v);
  }
}

// One warp a weight row n; lanes stride over the row's 16-byte words. `(code | 0x4B000000)` read as a float is
// 2^23 + code exactly, so subtracting 2^23 + zero_point leaves (code - zero_point) without an int-to-float conversion.
template <int M, bool kZeroPoints>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) int4Gemv(
    const half* __restrict__ x, const uint4* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, int K, int N, int blockSize, int nBlocks) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const int wordsPerRow = nBlocks * blockSize / 32;
  const WeightRow<kZeroPoints> row(b, scales, zeroPoints, n, blockSize, nBlocks);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; m++) acc[m] = 0.f;

#pragma unroll 2
  for (int w = lane; w < wordsPerRow; w += 32) {
    const int k0 = w * 32;
    if (k0 >= K) break;  // padding of a partial last block: codes equal to the zero point, worth 0
    const uint4 word = __ldg(row.words + w);
    const int block = k0 / blockSize;
    const float scale = __half2float(row.scales[block]);
    const float offset = 8388608.f + static_cast<float>(row.zeroOf(block));
    float q[32];
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
    for (int p = 0; p < 4; p++) {
#pragma unroll
      for (int t = 0; t < 8; t++) q[p * 8 + t] = __uint_as_float(((parts[p] >> (4 * t)) & 0xFu) | 0x4B000000u) - offset;
    }
    const int valid = K - k0 < 32 ? K - k0 : 32;
#pragma unroll
    for (int m = 0; m < M; m++) {
      const half* xm = x + static_cast<size_t>(m) * K + k0;
      float dot = 0.f;
      if (valid == 32) {
        const uint4* xv = reinterpret_cast<const uint4*>(xm);
#pragma unroll
        for (int v = 0; v < 4; v++) {
          const uint4 xx = __ldg(xv + v);
          const half2* h = reinterpret_cast<const half2*>(&xx);
#pragma unroll
          for (int j = 0; j < 4; j++) {
            const float2 f = __half22float2(h[j]);
            dot = fmaf(q[v * 8 + 2 * j], f.x, dot);
            dot = fmaf(q[v * 8 + 2 * j + 1], f.y, dot);
          }
        }
      } else {
        for (int i = 0; i < valid; i++) dot = fmaf(q[i], __half2float(xm[i]), dot);
      }
      acc[m] = fmaf(scale, dot, acc[m]);
    }
  }
  storeRowSums<M>(acc, y, n, N, lane);
}

// The same GEMV with half2 arithmetic (CHORUS_INT4_KERNEL=gemv2, docs/native.md). Version 1 spends about
// 165 instructions on each 16-byte word, unpacking codes one by one in float32; here a code pair becomes a half2 in
// one or two integer operations: (v >> 4i) & 0x000F000F | 0x64006400 is half2(1024 + e_i, 1024 + e_(i+4)) for the
// eight codes e_0..e_7 of a 32-bit word, exactly. Subtracting 1024 + zero point is exact, one multiply by the scale
// rounds once (the dequantized weight in float16, as MatMulNBits has it), and four products of a group of eight are
// summed in half2 before a float32 accumulator takes them (float16 sums of at most 4 products of a small weight and
// an activation). X is read as 16-byte words and its halves paired to match (x_i, x_(i+4)) with byte permutes.
template <int M, bool kZeroPoints>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) int4GemvHalf2(
    const half* __restrict__ x, const uint4* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, int K, int N, int blockSize, int nBlocks) {
  const int lane = threadIdx.x & 31;
  const int n = blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= N) return;
  const int fullWords = K / 32;  // words whose 32 codes all lie inside K; a partial tail goes the float32 way
  const WeightRow<kZeroPoints> row(b, scales, zeroPoints, n, blockSize, nBlocks);
  float acc[M];
#pragma unroll
  for (int m = 0; m < M; m++) acc[m] = 0.f;

#pragma unroll 4
  for (int w = lane; w < fullWords; w += 32) {
    const uint4 word = __ldg(row.words + w);
    const int k0 = w * 32;
    const int block = k0 / blockSize;
    const half2 offset = __half2half2(__ushort_as_half(static_cast<unsigned short>(0x6400 + row.zeroOf(block))));
    const half2 scale = __half2half2(row.scales[block]);
    // wq[p][i]: the dequantized pair (e_i, e_(i+4)) of part p (codes 8p .. 8p + 7 of the word).
    half2 wq[4][4];
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
#pragma unroll
    for (int p = 0; p < 4; p++) {
#pragma unroll
      for (int i = 0; i < 4; i++) {
        const uint32_t bits = ((parts[p] >> (4 * i)) & 0x000F000Fu) | 0x64006400u;
        wq[p][i] = __hmul2(__hsub2(*reinterpret_cast<const half2*>(&bits), offset), scale);
      }
    }
#pragma unroll
    for (int m = 0; m < M; m++) {
      const uint4* xv = reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * K + k0);
      float sum = 0.f;
#pragma unroll
      for (int p = 0; p < 4; p++) {
        const uint4 xx = __ldg(xv + p);  // x_0 .. x_7 of part p as (x0 x1) (x2 x3) (x4 x5) (x6 x7)
        const uint32_t x04 = __byte_perm(xx.x, xx.z, 0x5410), x15 = __byte_perm(xx.x, xx.z, 0x7632);
        const uint32_t x26 = __byte_perm(xx.y, xx.w, 0x5410), x37 = __byte_perm(xx.y, xx.w, 0x7632);
        half2 part = __hmul2(wq[p][0], *reinterpret_cast<const half2*>(&x04));
        part = __hfma2(wq[p][1], *reinterpret_cast<const half2*>(&x15), part);
        part = __hfma2(wq[p][2], *reinterpret_cast<const half2*>(&x26), part);
        part = __hfma2(wq[p][3], *reinterpret_cast<const half2*>(&x37), part);
        const float2 f = __half22float2(part);
        sum += f.x + f.y;
      }
      acc[m] += sum;
    }
  }
  // The tail word of a K that is not a multiple of 32 (none in Llama's shapes), as version 1 does it.
  if (fullWords * 32 < K && lane == 0) {
    const int w = fullWords, k0 = w * 32, block = k0 / blockSize;
    const uint4 word = __ldg(row.words + w);
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
    const int zero = row.zeroOf(block);
    const float scale = __half2float(row.scales[block]);
#pragma unroll
    for (int m = 0; m < M; m++) {
      float dot = 0.f;
      for (int e = 0; e < K - k0; e++) {
        const int q = static_cast<int>((parts[e / 8] >> (4 * (e % 8))) & 0xFu) - zero;
        dot = fmaf(static_cast<float>(q), __half2float(x[static_cast<size_t>(m) * K + k0 + e]), dot);
      }
      acc[m] = fmaf(scale, dot, acc[m]);
    }
  }
  storeRowSums<M>(acc, y, n, N, lane);
}

// ------------------------------------------------------------------------------------------------ tensor-core path

// chorus.Int4Linear on tensor cores (CHORUS_INT4_KERNEL=mma; the default up to kMmaMaxRows rows): each warp owns 16
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

__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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

__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

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
template <int MT, bool kZeroPoints>
__global__ void __launch_bounds__(kMmaWarps * 32, MT <= 8 ? 2 : 1) int4Mma(
    const half* __restrict__ x, const uint8_t* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, float* __restrict__ partial, int M, int K, int N,
    int blockSize, int nBlocks, int segsPerSlice) {
  constexpr bool kSharedX = MT > 1;
  constexpr int kPrefetch = mmaPrefetch<MT>();
  extern __shared__ uint4 xShared[];  // kSharedX: two buffers of 8 MT rows x 16 chunks
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int n0 = (blockIdx.x * kMmaWarps + (threadIdx.x >> 5)) * 16;
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
  const int rot = count == 0 ? 0 : (kSharedX ? blockIdx.x : blockIdx.x * kMmaWarps + (threadIdx.x >> 5)) % count;
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
    stageX<MT>(xShared, x, M, K, segOf(0));
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
      const uint4* xs = xShared + (it & 1) * (MT * 8 * 16);
      if (kSharedX) {
        if (it + 1 < count) {
          stageX<MT>(xShared + ((it + 1) & 1) * (MT * 8 * 16), x, M, K, segOf(it + 1));
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
          const int m = mt * 8 + g;
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
    const int m = mt * 8 + 2 * t;
#pragma unroll
    for (int c = 0; c < 4; c++) {
      const int mm = m + (c & 1), nn = c < 2 ? rowA : rowB;
      if (mm >= M || nn >= N) continue;
      if (partial != nullptr) partial[(static_cast<size_t>(blockIdx.y) * M + mm) * N + nn] = acc[mt][c];
      else y[static_cast<size_t>(mm) * N + nn] = __float2half(acc[mt][c]);
    }
  }
}

// The one-to-eight-row case with longer runs per weight row (CHORUS_INT4_KERNEL=mma-w2 | mma-w4, experimental, not
// yet measured). int4Mma's lanes read 16 bytes of a row each, so a row is read 64 bytes at a time; scattered 64-byte
// reads are a poor pattern for HBM, and MatMulNBits, which reads whole rows per warp, moves 1.5x the bytes a second
// at one row. Here lane t of a row's four reads kWords consecutive 16-byte words (k [128 kWords s + 32 kWords t,
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

template <bool kZeroPoints, int kWords>
__global__ void __launch_bounds__(kMmaWarps * 32, 2) int4MmaWide(
    const half* __restrict__ x, const uint8_t* __restrict__ b, const half* __restrict__ scales,
    const uint8_t* __restrict__ zeroPoints, half* __restrict__ y, float* __restrict__ partial, int M, int K, int N,
    int blockSize, int nBlocks, int segsPerSlice) {
  constexpr int kSegK = kMmaSegK * kWords;
  constexpr int kPrefetch = 4 / kWords;  // 4 KB of weights in flight a warp, as int4Mma at one m-tile
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

  float acc[4] = {0.f, 0.f, 0.f, 0.f};
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
#pragma unroll
        for (int j = 0; j < 4; j++) {
          uint32_t a[2][4];
          dequantWord(wa[j], wb[j], offA, sA, offB, sB, a[0], a[1]);
          mma16816(acc, a[0], xv[j].x, xv[j].y);
          mma16816(acc, a[1], xv[j].z, xv[j].w);
        }
      }
    }
  }

#pragma unroll
  for (int c = 0; c < 4; c++) {
    const int mm = 2 * t + (c & 1), nn = c < 2 ? rowA : rowB;
    if (mm >= M || nn >= N) continue;
    if (partial != nullptr) partial[(static_cast<size_t>(blockIdx.y) * M + mm) * N + nn] = acc[c];
    else y[static_cast<size_t>(mm) * N + nn] = __float2half(acc[c]);
  }
}

__global__ void int4SplitKSum(const float* __restrict__ partial, half* __restrict__ y, int slices, size_t count) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int p = 0; p < slices; p++) s += partial[static_cast<size_t>(p) * count + i];
    y[i] = __float2half(s);
  }
}

// The weight as float16 [N, K] (row n = output feature n), for the cuBLAS path.
template <bool kZeroPoints>
__global__ void int4Dequantize(const uint4* __restrict__ b, const half* __restrict__ scales,
                               const uint8_t* __restrict__ zeroPoints, half* __restrict__ out, int K, int N,
                               int blockSize, int nBlocks) {
  const int wordsPerRow = nBlocks * blockSize / 32;
  const size_t total = static_cast<size_t>(N) * wordsPerRow;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int n = static_cast<int>(i / wordsPerRow), w = static_cast<int>(i % wordsPerRow);
    const int k0 = w * 32;
    if (k0 >= K) continue;
    const int block = k0 / blockSize;
    const WeightRow<kZeroPoints> row(b, scales, zeroPoints, n, blockSize, nBlocks);
    const float scale = __half2float(row.scales[block]);
    const int zero = row.zeroOf(block);
    const uint4 word = row.words[w];
    const uint32_t parts[4] = {word.x, word.y, word.z, word.w};
    half* dst = out + static_cast<size_t>(n) * K + k0;
    const float base = 8388608.f + static_cast<float>(zero);
    if (K - k0 >= 32) {
      // 64 contiguous bytes a thread in four 16-byte stores: 2-byte stores at a 64-byte stride cost 2 ms a layer.
      uint4* dst4 = reinterpret_cast<uint4*>(dst);
#pragma unroll
      for (int p = 0; p < 4; p++) {
        half2 h[4];
#pragma unroll
        for (int t = 0; t < 4; t++) {
          const float lo = (__uint_as_float(((parts[p] >> (8 * t)) & 0xFu) | 0x4B000000u) - base) * scale;
          const float hi = (__uint_as_float(((parts[p] >> (8 * t + 4)) & 0xFu) | 0x4B000000u) - base) * scale;
          h[t] = __floats2half2_rn(lo, hi);
        }
        dst4[p] = *reinterpret_cast<const uint4*>(h);
      }
    } else {
      const int valid = K - k0;
      for (int e = 0; e < valid; e++) {
        dst[e] = __float2half((__uint_as_float(((parts[e / 8] >> (4 * (e % 8))) & 0xFu) | 0x4B000000u) - base) * scale);
      }
    }
  }
}

// ------------------------------------------------------------------------------------------------ cuBLAS, loaded
// at run time: the CUDA provider has already loaded libcublas.so.13 into the process, and no cuBLAS headers are
// needed to build this library (the declarations below are cuBLAS's stable C ABI).

using cublasHandle = void*;
using CublasCreate = int (*)(cublasHandle*);
using CublasSetStream = int (*)(cublasHandle, cudaStream_t);
using CublasSetWorkspace = int (*)(cublasHandle, void*, size_t);
using CublasGemmEx = int (*)(cublasHandle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                             const void*, void*, int, int, int, int);
constexpr int kCublasOpN = 0, kCublasOpT = 1, kCudaR16F = 2, kCublasCompute32F = 68, kCublasGemmDefault = -1;

struct Cublas {
  CublasCreate create = nullptr;
  CublasSetStream setStream = nullptr;
  CublasSetWorkspace setWorkspace = nullptr;
  CublasGemmEx gemmEx = nullptr;
  std::string error;
};

const Cublas& cublas() {
  static Cublas c;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libcublas.so.13", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) lib = dlopen("libcublas.so", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) {
      c.error = std::string("cannot load libcublas: ") + dlerror();
      return;
    }
    c.create = reinterpret_cast<CublasCreate>(dlsym(lib, "cublasCreate_v2"));
    c.setStream = reinterpret_cast<CublasSetStream>(dlsym(lib, "cublasSetStream_v2"));
    c.setWorkspace = reinterpret_cast<CublasSetWorkspace>(dlsym(lib, "cublasSetWorkspace_v2"));
    c.gemmEx = reinterpret_cast<CublasGemmEx>(dlsym(lib, "cublasGemmEx"));
    if (c.create == nullptr || c.setStream == nullptr || c.setWorkspace == nullptr || c.gemmEx == nullptr) c.error = "libcublas lacks cublasGemmEx or its companions";
  });
  return c;
}

// Per thread (each shard worker runs its session on its own thread): a cuBLAS handle with a fixed workspace (so that
// a captured CUDA graph holds no cuBLAS allocation) and the dequantization scratch, grown only outside a capture.
struct ThreadScratch {
  int device = -1;
  cublasHandle handle = nullptr;
  void* workspace = nullptr;
  half* weights = nullptr;
  size_t weightsBytes = 0;
  float* partial = nullptr;  // split-K partial sums of the tensor-core path
  size_t partialBytes = 0;
};
thread_local ThreadScratch tls;

// ------------------------------------------------------------------------------------------------ the op

Ort::Status statusOf(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Ort::Status{nullptr};
  return Ort::Status((std::string("chorus.Int4Linear: ") + what + ": " + cudaGetErrorString(e)).c_str(), ORT_EP_FAIL);
}

// One int4Mma launch; its shared memory (two X buffers above 8 rows: 4 KB an m-tile) is allowed past the 48 KB
// default once per instantiation.
template <int MT, bool kZeroPoints>
Ort::Status runMma(dim3 grid, dim3 block, cudaStream_t stream, const half* xp, const uint8_t* bp, const half* sp,
                   const uint8_t* zpp, half* yp, float* partial, int M, int k, int n, int bs, int nBlocks, int segsPerSlice) {
  constexpr size_t smem = MT > 1 ? static_cast<size_t>(MT) * 8 * 16 * sizeof(uint4) * 2 : 0;
  if constexpr (smem > 48 * 1024) {
    static const cudaError_t allowed = cudaFuncSetAttribute(int4Mma<MT, kZeroPoints>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (auto s = statusOf(allowed, "cudaFuncSetAttribute (shared memory)"); !s.IsOK()) return s;
  }
  int4Mma<MT, kZeroPoints><<<grid, block, smem, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);
  return statusOf(cudaGetLastError(), "tensor-core launch");
}

struct Int4LinearKernel {
  int64_t K = 0, N = 0, blockSize = 0;
  // CHORUS_INT4_KERNEL when the kernel is made (docs/native.md): `auto` (tensor cores up to kMmaMaxRows rows, then
  // dequantize + cuBLAS), or one path forced for measurements: `mma`, `gemv1`, `gemv2` (GEMVs up to kGemvMaxRows),
  // `mma-w2`, `mma-w4` (int4MmaWide up to 8 rows, int4Mma above). CHORUS_INT4_SPLITK=floor: as many split-K slices
  // as fit in one wave of two blocks a multiprocessor, rounded down (default `ceil`, measured).
  enum class Path { Auto, Mma, Gemv1, Gemv2, MmaW2, MmaW4 } path = Path::Auto;
  bool slicesRoundDown = false;
  int sms = 0;

  Ort::Status Init(const OrtKernelInfo* info) {
    Ort::ConstKernelInfo ki(info);
    K = ki.GetAttribute<int64_t>("K");
    N = ki.GetAttribute<int64_t>("N");
    blockSize = ki.GetAttribute<int64_t>("block_size");
    int64_t bits = 4;
    try {
      bits = ki.GetAttribute<int64_t>("bits");
    } catch (const Ort::Exception&) {
    }
    if (bits != 4) return Ort::Status("chorus.Int4Linear: bits must be 4", ORT_INVALID_ARGUMENT);
    if (blockSize < 32 || (blockSize & (blockSize - 1)) != 0) return Ort::Status("chorus.Int4Linear: block_size must be a power of two >= 32", ORT_INVALID_ARGUMENT);
    if (K % 8 != 0) return Ort::Status("chorus.Int4Linear: K must be a multiple of 8", ORT_INVALID_ARGUMENT);
    const char* choice = std::getenv("CHORUS_INT4_KERNEL");
    const std::string c = choice == nullptr ? "auto" : choice;
    if (c == "auto") path = Path::Auto;
    else if (c == "mma") path = Path::Mma;
    else if (c == "gemv1") path = Path::Gemv1;
    else if (c == "gemv2") path = Path::Gemv2;
    else if (c == "mma-w2") path = Path::MmaW2;
    else if (c == "mma-w4") path = Path::MmaW4;
    else return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_KERNEL must be auto, mma, mma-w2, mma-w4, gemv1 or gemv2, not " + c).c_str(), ORT_INVALID_ARGUMENT);
    const char* split = std::getenv("CHORUS_INT4_SPLITK");
    const std::string sk = split == nullptr ? "ceil" : split;
    if (sk != "ceil" && sk != "floor") return Ort::Status(("chorus.Int4Linear: CHORUS_INT4_SPLITK must be ceil or floor, not " + sk).c_str(), ORT_INVALID_ARGUMENT);
    slicesRoundDown = sk == "floor";
    return Ort::Status{nullptr};
  }

  OrtStatusPtr ComputeV2(OrtKernelContext* context) {
    try {
      Ort::Status s = Compute(context);
      return s.release();
    } catch (const Ort::Exception& e) {
      return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
    } catch (const std::exception& e) {
      return Ort::Status(e.what(), ORT_FAIL).release();
    }
  }

  // Split-K slices for N rows over K: none when N alone gives every multiprocessor a block (16 weight rows a warp,
  // kMmaWarps warps a block: the partial sums cost M N 8 bytes a slice), else about two blocks a multiprocessor,
  // never finer than one segment a slice.
  int slicesFor(int segs) const {
    const int blocksN = static_cast<int>((N + 16 * kMmaWarps - 1) / (16 * kMmaWarps));
    if (blocksN >= sms) return 1;
    const int want = slicesRoundDown ? 2 * sms / blocksN : (2 * sms + blocksN - 1) / blocksN;
    return std::max(1, std::min(segs, want));
  }
  Ort::Status launchMma(cudaStream_t stream, const half* xp, const uint8_t* bp, const half* sp, const uint8_t* zpp, half* yp, int M, int nBlocks) {
    if (sms == 0) {
      int device = 0;
      if (auto s = statusOf(cudaGetDevice(&device), "cudaGetDevice"); !s.IsOK()) return s;
      if (auto s = statusOf(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute"); !s.IsOK()) return s;
    }
    const int k = static_cast<int>(K), n = static_cast<int>(N), bs = static_cast<int>(blockSize);
    // int4MmaWide's segments are kWords times int4Mma's.
    const int words = M > 8 ? 1 : path == Path::MmaW2 ? 2 : path == Path::MmaW4 ? 4 : 1;
    const int segs = (k + kMmaSegK * words - 1) / (kMmaSegK * words);
    int slices = slicesFor(segs);
    const int segsPerSlice = (segs + slices - 1) / slices;
    slices = (segs + segsPerSlice - 1) / segsPerSlice;
    float* partial = nullptr;
    if (slices > 1) {
      // Sized for the most rows this path takes, so that a CUDA graph captured later at any batch finds it grown.
      const size_t need = static_cast<size_t>(slices) * kMmaMaxRows * static_cast<size_t>(N) * sizeof(float);
      if (tls.partialBytes < need) {
        cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
        if (auto s = statusOf(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"); !s.IsOK()) return s;
        if (capture != cudaStreamCaptureStatusNone) return Ort::Status("chorus.Int4Linear: split-K scratch must grow inside a CUDA graph capture", ORT_EP_FAIL);
        if (tls.partial != nullptr) {
          if (auto s = statusOf(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); !s.IsOK()) return s;
          cudaFree(tls.partial);
          tls.partial = nullptr;
          tls.partialBytes = 0;
        }
        if (auto s = statusOf(cudaMalloc(&tls.partial, need), "cudaMalloc (split-K scratch)"); !s.IsOK()) return s;
        tls.partialBytes = need;
      }
      partial = tls.partial;
    }
    const dim3 grid(static_cast<unsigned>((N + 16 * kMmaWarps - 1) / (16 * kMmaWarps)), static_cast<unsigned>(slices)), block(kMmaWarps * 32);
    const int tiles = (M + 7) / 8;
    Ort::Status s{nullptr};
    if (words > 1) {
      if (zpp != nullptr && words == 2) int4MmaWide<true, 2><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);
      else if (zpp != nullptr) int4MmaWide<true, 4><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);
      else if (words == 2) int4MmaWide<false, 2><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);
      else int4MmaWide<false, 4><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);
      s = statusOf(cudaGetLastError(), "tensor-core launch");
    }
#define CHORUS_MMA(T)                                                                                                  \
  case T:                                                                                                              \
    if (zpp != nullptr) s = runMma<T, true>(grid, block, stream, xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice); \
    else s = runMma<T, false>(grid, block, stream, xp, bp, sp, zpp, yp, partial, M, k, n, bs, nBlocks, segsPerSlice);             \
    break;
    if (words == 1) switch (tiles) {
      CHORUS_MMA(1) CHORUS_MMA(2) CHORUS_MMA(3) CHORUS_MMA(4) CHORUS_MMA(5) CHORUS_MMA(6) CHORUS_MMA(7) CHORUS_MMA(8)
      CHORUS_MMA(9) CHORUS_MMA(10) CHORUS_MMA(11) CHORUS_MMA(12) CHORUS_MMA(13) CHORUS_MMA(14) CHORUS_MMA(15) CHORUS_MMA(16)
    }
#undef CHORUS_MMA
    if (!s.IsOK()) return s;
    if (partial != nullptr) {
      const size_t count = static_cast<size_t>(M) * static_cast<size_t>(N);
      const unsigned blocks = static_cast<unsigned>(std::min<size_t>((count + 255) / 256, static_cast<size_t>(sms) * 8));
      int4SplitKSum<<<blocks, 256, 0, stream>>>(partial, yp, slices, count);
      if (auto s = statusOf(cudaGetLastError(), "split-K sum launch"); !s.IsOK()) return s;
    }
    return Ort::Status{nullptr};
  }

  Ort::Status Compute(OrtKernelContext* context) {
    Ort::KernelContext ctx(context);
    const size_t inputs = ctx.GetInputCount();
    Ort::ConstValue x = ctx.GetInput(0), b = ctx.GetInput(1), scales = ctx.GetInput(2);
    Ort::ConstValue zp{nullptr};
    if (inputs > 3) zp = ctx.GetInput(3);
    const bool zeroPoints = zp != nullptr;
    auto shape = x.GetTensorTypeAndShapeInfo().GetShape();
    if (shape.empty() || shape.back() != K) return Ort::Status("chorus.Int4Linear: the input's last dim must be K", ORT_INVALID_ARGUMENT);
    int64_t M = 1;
    for (size_t i = 0; i + 1 < shape.size(); i++) M *= shape[i];
    shape.back() = N;
    Ort::UnownedValue y = ctx.GetOutput(0, shape.data(), shape.size());
    if (M == 0) return Ort::Status{nullptr};
    const int nBlocks = static_cast<int>((K + blockSize - 1) / blockSize);
    cudaStream_t stream = static_cast<cudaStream_t>(ctx.GetGPUComputeStream());
    const half* xp = reinterpret_cast<const half*>(x.GetTensorData<Ort::Float16_t>());
    const uint4* bp = reinterpret_cast<const uint4*>(b.GetTensorData<uint8_t>());
    const half* sp = reinterpret_cast<const half*>(scales.GetTensorData<Ort::Float16_t>());
    const uint8_t* zpp = zeroPoints ? zp.GetTensorData<uint8_t>() : nullptr;
    half* yp = reinterpret_cast<half*>(y.GetTensorMutableData<Ort::Float16_t>());
    const int k = static_cast<int>(K), n = static_cast<int>(N), bs = static_cast<int>(blockSize);

    const bool mmaFits = K % 32 == 0 && M <= kMmaMaxRows;
    if (mmaFits && (path == Path::Auto || path == Path::Mma || path == Path::MmaW2 || path == Path::MmaW4)) return launchMma(stream, xp, b.GetTensorData<uint8_t>(), sp, zpp, yp, static_cast<int>(M), nBlocks);
    if (M <= kGemvMaxRows) {
      const bool half2Gemv = path == Path::Gemv2;
      const dim3 grid(static_cast<unsigned>((N + kWarpsPerBlock - 1) / kWarpsPerBlock)), block(kWarpsPerBlock * 32);
#define CHORUS_GEMV(R)                                                                                             \
  case R:                                                                                                          \
    if (half2Gemv && zeroPoints) int4GemvHalf2<R, true><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks); \
    else if (half2Gemv) int4GemvHalf2<R, false><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks);      \
    else if (zeroPoints) int4Gemv<R, true><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks);          \
    else int4Gemv<R, false><<<grid, block, 0, stream>>>(xp, bp, sp, zpp, yp, k, n, bs, nBlocks);                          \
    break;
      switch (M) {
        CHORUS_GEMV(1) CHORUS_GEMV(2) CHORUS_GEMV(3) CHORUS_GEMV(4) CHORUS_GEMV(5) CHORUS_GEMV(6) CHORUS_GEMV(7) CHORUS_GEMV(8)
      }
#undef CHORUS_GEMV
      return statusOf(cudaGetLastError(), "GEMV launch");
    }

    const Cublas& cb = cublas();
    if (!cb.error.empty()) return Ort::Status(("chorus.Int4Linear: " + cb.error).c_str(), ORT_EP_FAIL);
    int device = 0;
    if (auto s = statusOf(cudaGetDevice(&device), "cudaGetDevice"); !s.IsOK()) return s;
    cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
    if (auto s = statusOf(cudaStreamIsCapturing(stream, &capture), "cudaStreamIsCapturing"); !s.IsOK()) return s;
    const bool capturing = capture != cudaStreamCaptureStatusNone;
    if (tls.device != device) {
      if (capturing) return Ort::Status("chorus.Int4Linear: first batch above 8 rows inside a CUDA graph capture", ORT_EP_FAIL);
      if (cb.create(&tls.handle) != 0) return Ort::Status("chorus.Int4Linear: cublasCreate failed", ORT_EP_FAIL);
      constexpr size_t kWorkspace = 32u << 20;
      if (auto s = statusOf(cudaMalloc(&tls.workspace, kWorkspace), "cudaMalloc (cuBLAS workspace)"); !s.IsOK()) return s;
      if (cb.setWorkspace(tls.handle, tls.workspace, kWorkspace) != 0) return Ort::Status("chorus.Int4Linear: cublasSetWorkspace failed", ORT_EP_FAIL);
      tls.device = device;
    }
    const size_t need = static_cast<size_t>(N) * static_cast<size_t>(K) * sizeof(half);
    if (tls.weightsBytes < need) {
      if (capturing) return Ort::Status("chorus.Int4Linear: dequantization scratch must grow inside a CUDA graph capture", ORT_EP_FAIL);
      if (tls.weights != nullptr) {
        if (auto s = statusOf(cudaStreamSynchronize(stream), "cudaStreamSynchronize"); !s.IsOK()) return s;
        cudaFree(tls.weights);
        tls.weights = nullptr;
        tls.weightsBytes = 0;
      }
      if (auto s = statusOf(cudaMalloc(&tls.weights, need), "cudaMalloc (dequantization scratch)"); !s.IsOK()) return s;
      tls.weightsBytes = need;
    }
    {
      const size_t words = static_cast<size_t>(N) * (nBlocks * blockSize / 32);
      const unsigned blocks = static_cast<unsigned>(std::min<size_t>((words + 255) / 256, 65535u * 8));
      if (zeroPoints) int4Dequantize<true><<<blocks, 256, 0, stream>>>(bp, sp, zpp, tls.weights, k, n, bs, nBlocks);
      else int4Dequantize<false><<<blocks, 256, 0, stream>>>(bp, sp, zpp, tls.weights, k, n, bs, nBlocks);
      if (auto s = statusOf(cudaGetLastError(), "dequantize launch"); !s.IsOK()) return s;
    }
    if (cb.setStream(tls.handle, stream) != 0) return Ort::Status("chorus.Int4Linear: cublasSetStream failed", ORT_EP_FAIL);
    // Row-major Y[M, N] = X[M, K] W[N, K]^T is column-major Y^T[N, M] = W^T... i.e. op(A) = T on W seen as [K, N].
    const float one = 1.f, zero = 0.f;
    const int rc = cb.gemmEx(tls.handle, kCublasOpT, kCublasOpN, n, static_cast<int>(M), k, &one, tls.weights, kCudaR16F, k, xp,
                             kCudaR16F, k, &zero, yp, kCudaR16F, n, kCublasCompute32F, kCublasGemmDefault);
    if (rc != 0) return Ort::Status(("chorus.Int4Linear: cublasGemmEx failed with status " + std::to_string(rc)).c_str(), ORT_EP_FAIL);
    return Ort::Status{nullptr};
  }
};

struct Int4LinearOp : Ort::CustomOpBase<Int4LinearOp, Int4LinearKernel, true> {
  OrtStatusPtr CreateKernelV2(const OrtApi& /*api*/, const OrtKernelInfo* info, void** kernel) const {
    auto* k = new Int4LinearKernel();
    Ort::Status s = k->Init(info);
    if (!s.IsOK()) {
      delete k;
      return s.release();
    }
    *kernel = k;
    return nullptr;
  }
  const char* GetName() const { return "Int4Linear"; }
  const char* GetExecutionProviderType() const { return "CUDAExecutionProvider"; }
  size_t GetInputTypeCount() const { return 4; }
  ONNXTensorElementDataType GetInputType(size_t index) const {
    return index == 0 || index == 2 ? ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 : ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
  }
  OrtCustomOpInputOutputCharacteristic GetInputCharacteristic(size_t index) const {
    return index == 3 ? INPUT_OUTPUT_OPTIONAL : INPUT_OUTPUT_REQUIRED;
  }
  size_t GetOutputTypeCount() const { return 1; }
  ONNXTensorElementDataType GetOutputType(size_t /*index*/) const { return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16; }
};

}  // namespace

extern "C" __attribute__((visibility("default"))) OrtStatus* ORT_API_CALL RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api) {
  // The headers are C API 21 (Debian's libonnxruntime-dev); the runtime (1.29) serves every older version.
  Ort::InitApi(api->GetApi(ORT_API_VERSION));
  static Int4LinearOp int4Linear;
  static Ort::CustomOpDomain* domain = nullptr;
  static std::mutex mutex;
  std::lock_guard<std::mutex> lock(mutex);
  try {
    if (domain == nullptr) {
      domain = new Ort::CustomOpDomain("chorus");
      domain->Add(&int4Linear);
    }
    Ort::UnownedSessionOptions(options).Add(*domain);
  } catch (const Ort::Exception& e) {
    return Ort::Status(e.what(), e.GetOrtErrorCode()).release();
  }
  return nullptr;
}
