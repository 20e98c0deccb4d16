// How fast can a float16 GEMV stream a decode step's weights on this GPU, and which layout gets there?
//
// Inside ONNX Runtime sessions Llama 3 8B's MLP ran at 3.2-3.3 TB/s at one row through cuBLAS or chorus.Linear's first
// version (native/probes/mlp-fusion.ts, whose layer time includes the activation), 70% of the H200's 4.8 TB/s. This
// probe times each linear on the same buffers without ONNX Runtime (docs/benchmarks.md, "Chorus's float16 GEMV"):
//   read      a plain streaming read of the same bytes (the ceiling a GEMV can approach)
//   kn-256    f16_gemv.cuh as chorus.Linear runs it: W [K, N], a block 256 columns (a warp 512 contiguous bytes a row)
//   kn-wide   W [K, N], a block 2048 columns (its 8 warps 4 KB contiguous a row), K split to fill the GPU
//   nk        W [N, K] (each output's weights contiguous): a warp R outputs, its lanes along K
//   cublas    cublasGemmEx as ONNX Runtime's MatMul calls it (W [K, N]), and cublas-t with W [N, K] (op T)
// Each run reads a different copy of W (copies past the L2's size), results are checked against a float64 sum.
//
// Build and run (the GPU host has nvcc):
//   nvcc -O3 -std=c++17 -arch=sm_90 native/probes/gemv-bandwidth.cu -ldl -o native/build-cuda/gemv-bandwidth
//   LD_LIBRARY_PATH=/usr/local/cuda/lib64 native/build-cuda/gemv-bandwidth [rows: 1, 2, 4, 16 or 64]
// (16 and 64 rows: read and cuBLAS; 1-4 rows: the rest. A tensor-core kernel for 16-64 rows, f16_mma.cuh, was timed
// here on 2026-12-01 at 1.4-3.1 TB/s against cuBLAS's 2.6-4.3 and removed: commit 34fe4d6 has it.) The binary needs only the CUDA runtime and cuBLAS, so a GPU
// host can run it without the packed node_modules (carry native/build-cuda/gemv-bandwidth alone).
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <vector>

#include "../cuda/cublas_runtime.h"
#include "../cuda/f16_gemv.cuh"
#include "../cuda/int4_mma.cuh"  // int4SplitKSum: the split-K sum kernel chorus.Linear used before its last-slice sums

#define CHECK(call)                                                                                 \
  do {                                                                                              \
    cudaError_t e = (call);                                                                         \
    if (e != cudaSuccess) {                                                                         \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e)); \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

namespace {

constexpr int kWideWarps = 8, kWideColumns = kWideWarps * 256, kWideUnroll = 8;

// A 16-byte weight load: L 0 streaming (ld.global.cs, as f16_gemv.cuh), 1 non-coherent with a 256-byte L2 prefetch
// hint (Hopper's ld ... L2::256B: the sector's neighbours come in the same DRAM burst).
template <int L>
__device__ __forceinline__ uint4 loadW(const uint4* p) {
  if constexpr (L == 0) {
    return __ldcs(p);
  } else {
    uint4 v;
    asm("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
  }
}

template <int L>
__global__ void streamRead(const uint4* __restrict__ p, size_t n, unsigned* sink) {
  unsigned acc = 0;
  const size_t stride = static_cast<size_t>(gridDim.x) * blockDim.x;
  size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = loadW<L>(p + i), b = loadW<L>(p + i + stride), c = loadW<L>(p + i + 2 * stride), d = loadW<L>(p + i + 3 * stride);
    acc ^= a.x ^ b.y ^ c.z ^ d.w;
  }
  for (; i < n; i += stride) acc ^= __ldcs(p + i).x;
  if (acc == 0x9e3779b9u) *sink = acc;  // keeps the loads; practically never stores
}

// W [K, N]; a block owns kWideColumns columns (a warp 256 of them, a lane 8) and the k rows of its slice; every lane
// keeps kWideUnroll rows of loads in flight one batch ahead. Partial float32 sums [slice][M][N].
template <int M, int L>
__global__ void __launch_bounds__(kWideWarps * 32) knWide(const half* __restrict__ x, const half* __restrict__ w, float* __restrict__ partial,
                                                          int K, int N, int kPerSlice) {
  const int col = blockIdx.x * kWideColumns + 8 * threadIdx.x;
  if (col >= N) return;
  const int k0 = blockIdx.y * kPerSlice, k1 = min(K, k0 + kPerSlice);
  const uint4* wp = reinterpret_cast<const uint4*>(w + col);
  const size_t rowStride = static_cast<size_t>(N) / 8;
  float acc[M][8] = {};
  int k = k0;
  for (; k + kWideUnroll <= k1; k += kWideUnroll) {
    uint4 v[kWideUnroll];
#pragma unroll
    for (int u = 0; u < kWideUnroll; u++) v[u] = loadW<L>(wp + static_cast<size_t>(k + u) * rowStride);
#pragma unroll
    for (int u = 0; u < kWideUnroll; u++) chorus::f16GemvStep<M>(acc, v[u], x, K, k + u);
  }
  for (; k < k1; k++) chorus::f16GemvStep<M>(acc, __ldcs(wp + static_cast<size_t>(k) * rowStride), x, K, k);
#pragma unroll
  for (int m = 0; m < M; m++) {
    float* out = partial + (static_cast<size_t>(blockIdx.y) * M + m) * N + col;
    *reinterpret_cast<float4*>(out) = make_float4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
    *reinterpret_cast<float4*>(out + 4) = make_float4(acc[m][4], acc[m][5], acc[m][6], acc[m][7]);
  }
}

// W [N, K]: a warp owns R outputs; lane l reads the 16-byte chunks l, l + 32, ... of each output's K weights (a warp
// 512 contiguous bytes a step, K * 2 contiguous bytes an output), x's matching chunks read once for the R outputs.
template <int M, int R, int L>
__global__ void __launch_bounds__(256) nk(const half* __restrict__ x, const half* __restrict__ w, half* __restrict__ y, int K, int N) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
  const int n0 = warp * R;
  if (n0 >= N) return;
  const int chunks = K / 8;  // uint4s an output
  float acc[M][R] = {};
  constexpr int kUnroll = 4;
  int c = lane;
  for (; c + 32 * (kUnroll - 1) < chunks; c += 32 * kUnroll) {
    uint4 wv[kUnroll][R];
#pragma unroll
    for (int u = 0; u < kUnroll; u++)
#pragma unroll
      for (int r = 0; r < R; r++) wv[u][r] = loadW<L>(reinterpret_cast<const uint4*>(w + static_cast<size_t>(n0 + r) * K) + c + 32 * u);
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
#pragma unroll
      for (int m = 0; m < M; m++) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * K) + c + 32 * u);
        const half2* xh = reinterpret_cast<const half2*>(&xv);
#pragma unroll
        for (int r = 0; r < R; r++) {
          const half2* wh = reinterpret_cast<const half2*>(&wv[u][r]);
#pragma unroll
          for (int j = 0; j < 4; j++) {
            const float2 a = __half22float2(xh[j]), b = __half22float2(wh[j]);
            acc[m][r] += a.x * b.x + a.y * b.y;
          }
        }
      }
    }
  }
  for (; c < chunks; c += 32) {
#pragma unroll
    for (int r = 0; r < R; r++) {
      const uint4 wv = __ldcs(reinterpret_cast<const uint4*>(w + static_cast<size_t>(n0 + r) * K) + c);
      const half2* wh = reinterpret_cast<const half2*>(&wv);
#pragma unroll
      for (int m = 0; m < M; m++) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x + static_cast<size_t>(m) * K) + c);
        const half2* xh = reinterpret_cast<const half2*>(&xv);
#pragma unroll
        for (int j = 0; j < 4; j++) {
          const float2 a = __half22float2(xh[j]), b = __half22float2(wh[j]);
          acc[m][r] += a.x * b.x + a.y * b.y;
        }
      }
    }
  }
#pragma unroll
  for (int m = 0; m < M; m++)
#pragma unroll
    for (int r = 0; r < R; r++) {
      float s = acc[m][r];
#pragma unroll
      for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
      if (lane == 0 && n0 + r < N) y[static_cast<size_t>(m) * N + n0 + r] = __float2half(s);
    }
}

__global__ void transposeKN(const half* __restrict__ in, half* __restrict__ out, int K, int N) {  // [K, N] -> [N, K]
  const size_t total = static_cast<size_t>(K) * N;
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t k = i / N, n = i % N;
    out[n * K + k] = in[i];
  }
}

__global__ void fill(half* p, size_t n, unsigned seed, float scale) {
  for (size_t i = static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 13;
    h *= 0x5bd1e995u;
    h ^= h >> 15;
    p[i] = __float2half(scale * (static_cast<float>(h & 0xffff) / 32768.f - 1.f));
  }
}

struct Shape {
  const char* name;
  int K, N;
};

}  // namespace

int main(int argc, char** argv) {
  const int M = argc > 1 ? std::atoi(argv[1]) : 1;
  if (M != 1 && M != 2 && M != 4 && M != 16 && M != 64) {
    std::fprintf(stderr, "rows must be 1, 2, 4, 16 or 64\n");
    return 2;
  }
  cudaDeviceProp prop{};
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs, L2 %d MB, M = %d\n", prop.name, sms, prop.l2CacheSize >> 20, M);
  const chorus::Cublas& cb = chorus::cublas();
  if (!cb.error.empty()) {
    std::fprintf(stderr, "%s\n", cb.error.c_str());
    return 1;
  }
  chorus::cublasHandle handle = nullptr;
  if (cb.create(&handle) != 0) return 1;
  cudaStream_t stream;
  CHECK(cudaStreamCreate(&stream));
  cb.setStream(handle, stream);
  unsigned* sink;
  CHECK(cudaMalloc(&sink, 4));

  const std::vector<Shape> shapes = {{"gate|up", 4096, 28672}, {"down", 14336, 4096}, {"qkv", 4096, 6144}, {"o", 4096, 4096}, {"lm_head", 4096, 128256}};
  for (const Shape& s : shapes) {
    const size_t elems = static_cast<size_t>(s.K) * s.N, bytes = elems * 2;
    const int copies = std::max<int>(2, static_cast<int>((512ull << 20) / bytes) + 1);  // past the L2 several times over
    std::vector<half*> wkn(copies), wnk(copies);
    for (int c = 0; c < copies; c++) {
      CHECK(cudaMalloc(&wkn[c], bytes));
      CHECK(cudaMalloc(&wnk[c], bytes));
      fill<<<1024, 256, 0, stream>>>(wkn[c], elems, 17u + c, 0.05f);
      transposeKN<<<1024, 256, 0, stream>>>(wkn[c], wnk[c], s.K, s.N);
    }
    half *x, *y;
    float* partial;
    const int maxSlices = 256;
    CHECK(cudaMalloc(&x, static_cast<size_t>(M) * s.K * 2));
    CHECK(cudaMalloc(&y, static_cast<size_t>(M) * s.N * 2));
    CHECK(cudaMalloc(&partial, static_cast<size_t>(maxSlices) * M * s.N * 4));
    unsigned* arrivals;
    CHECK(cudaMalloc(&arrivals, 4096 * sizeof(unsigned)));
    CHECK(cudaMemset(arrivals, 0, 4096 * sizeof(unsigned)));
    fill<<<64, 256, 0, stream>>>(x, static_cast<size_t>(M) * s.K, 99u, 1.f);
    CHECK(cudaStreamSynchronize(stream));

    // float64 reference for copy 0, outputs 0..63 and the last, of the first and the last row
    std::vector<half> hw(elems), hx(static_cast<size_t>(M) * s.K);
    CHECK(cudaMemcpy(hw.data(), wkn[0], bytes, cudaMemcpyDeviceToHost));
    CHECK(cudaMemcpy(hx.data(), x, hx.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<int> probeCols;
    for (int n = 0; n < 64; n++) probeCols.push_back(n);
    probeCols.push_back(s.N - 1);
    std::vector<double> ref;  // [row 0 | row M - 1][probeCols]
    for (int m : {0, M - 1}) {
      for (int n : probeCols) {
        double acc = 0;
        for (int k = 0; k < s.K; k++) acc += static_cast<double>(__half2float(hx[static_cast<size_t>(m) * s.K + k])) * __half2float(hw[static_cast<size_t>(k) * s.N + n]);
        ref.push_back(acc);
      }
    }

    auto timeIt = [&](const char* label, const std::function<void(int)>& launch, bool gemv) {
      for (int i = 0; i < 5; i++) launch(i % copies);
      CHECK(cudaStreamSynchronize(stream));
      double worst = 0;
      if (gemv) {  // the run on copy 0 left y
        launch(0);
        std::vector<half> hy(static_cast<size_t>(M) * s.N);
        CHECK(cudaMemcpy(hy.data(), y, hy.size() * 2, cudaMemcpyDeviceToHost));
        for (size_t r = 0; r < 2; r++) {
          const size_t row = r == 0 ? 0 : static_cast<size_t>(M - 1);
          for (size_t i = 0; i < probeCols.size(); i++) {
            const double want = ref[r * probeCols.size() + i];
            worst = std::max(worst, std::fabs(__half2float(hy[row * s.N + probeCols[i]]) - want) / (std::fabs(want) + 1e-2));
          }
        }
      }
      cudaEvent_t a, b;
      CHECK(cudaEventCreate(&a));
      CHECK(cudaEventCreate(&b));
      const int runs = 60;
      CHECK(cudaEventRecord(a, stream));
      for (int i = 0; i < runs; i++) launch(i % copies);
      CHECK(cudaEventRecord(b, stream));
      CHECK(cudaEventSynchronize(b));
      CHECK(cudaGetLastError());
      float ms = 0;
      CHECK(cudaEventElapsedTime(&ms, a, b));
      const double us = 1e3 * ms / runs;
      std::printf("  %-8s %-22s %8.1f us  %5.2f TB/s%s\n", s.name, label, us, bytes / us / 1e6,
                  gemv ? (worst < 2e-2 ? "" : "  MISMATCH") : "");
      if (gemv && worst >= 2e-2) std::printf("    worst relative error %.3g\n", worst);
    };

    std::printf("%s: K %d N %d, %.1f MB, %d copies\n", s.name, s.K, s.N, bytes / 1e6, copies);
    for (int blocksPerSm : {8}) {
      const int grid = sms * blocksPerSm;
      timeIt((std::string("read ") + std::to_string(grid) + "x256").c_str(),
             [&](int c) { streamRead<0><<<grid, 256, 0, stream>>>(reinterpret_cast<const uint4*>(wkn[c]), bytes / 16, sink); }, false);
    }
    // f16_gemv.cuh by slice count: its split-K sums by a second kernel (kn-256) and by each column block's last slice
    // (kn-256-last), the slices from one resident wave of blocks (2 a multiprocessor) to many.
    if (M <= 4) {
      const int columnBlocks = (s.N + chorus::kF16GemvColumns - 1) / chorus::kF16GemvColumns;
      constexpr int kStep = chorus::kF16GemvWarps * chorus::kF16GemvUnroll;
      int previous = 0;
      for (int wanted : {1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 44, 64}) {
        const int kPerSlice = ((s.K + wanted - 1) / wanted + kStep - 1) / kStep * kStep;
        const int slices = (s.K + kPerSlice - 1) / kPerSlice;
        if (slices == previous || columnBlocks * slices > 16 * sms) continue;
        previous = slices;
        const dim3 grid(columnBlocks, slices);
        const size_t count = static_cast<size_t>(M) * s.N;
        for (bool last : {false, true}) {
          if (slices == 1 && last) continue;
          char label[64];
          std::snprintf(label, sizeof label, "%s %d sl %.2f w", last ? "kn-256-last" : "kn-256", slices, columnBlocks * slices / (2.0 * sms));
          timeIt(label, [&](int c) {
            unsigned* a = last ? arrivals : nullptr;
            if (M == 1) chorus::f16Gemv<1><<<grid, 256, 0, stream>>>(x, wkn[c], y, partial, a, s.K, s.N, kPerSlice);
            else if (M == 2) chorus::f16Gemv<2><<<grid, 256, 0, stream>>>(x, wkn[c], y, partial, a, s.K, s.N, kPerSlice);
            else chorus::f16Gemv<4><<<grid, 256, 0, stream>>>(x, wkn[c], y, partial, a, s.K, s.N, kPerSlice);
            if (slices > 1 && !last) chorus::int4SplitKSum<<<std::min<size_t>((count + 255) / 256, 4096), 256, 0, stream>>>(partial, y, slices, count);
          }, true);
        }
      }
    }
    for (int waves : {4}) for (int l2 : {0}) {
      if (M > 4) break;
      const int columnBlocks = (s.N + kWideColumns - 1) / kWideColumns;
      const int wanted = std::max(1, std::min(maxSlices, (waves * sms + columnBlocks - 1) / columnBlocks));
      const int kPerSlice = ((s.K + wanted - 1) / wanted + kWideUnroll - 1) / kWideUnroll * kWideUnroll;
      const int slices = (s.K + kPerSlice - 1) / kPerSlice;
      const dim3 grid(columnBlocks, slices);
      const size_t count = static_cast<size_t>(M) * s.N;
      timeIt((std::string(l2 ? "kn-wide-L2 " : "kn-wide ") + std::to_string(slices) + " slices").c_str(), [&](int c) {
        if (M == 1) (l2 ? knWide<1, 1> : knWide<1, 0>)<<<grid, kWideWarps * 32, 0, stream>>>(x, wkn[c], partial, s.K, s.N, kPerSlice);
        else if (M == 2) (l2 ? knWide<2, 1> : knWide<2, 0>)<<<grid, kWideWarps * 32, 0, stream>>>(x, wkn[c], partial, s.K, s.N, kPerSlice);
        else (l2 ? knWide<4, 1> : knWide<4, 0>)<<<grid, kWideWarps * 32, 0, stream>>>(x, wkn[c], partial, s.K, s.N, kPerSlice);
        chorus::int4SplitKSum<<<std::min<size_t>((count + 255) / 256, 4096), 256, 0, stream>>>(partial, y, slices, count);
      }, true);
    }
    using NkKernel = void (*)(const half*, const half*, half*, int, int);
    const struct {
      const char* label;
      int r;
      NkKernel one, two, four;
    } nks[] = {{"nk R1", 1, nk<1, 1, 0>, nk<2, 1, 0>, nk<4, 1, 0>}, {"nk R2", 2, nk<1, 2, 0>, nk<2, 2, 0>, nk<4, 2, 0>},
               {"nk R4", 4, nk<1, 4, 0>, nk<2, 4, 0>, nk<4, 4, 0>}};
    for (const auto& v : nks) {
      if (M > 4) break;
      const int warps = (s.N + v.r - 1) / v.r, blocks = (warps + 7) / 8;
      timeIt(v.label, [&](int c) { (M == 1 ? v.one : M == 2 ? v.two : v.four)<<<blocks, 256, 0, stream>>>(x, wnk[c], y, s.K, s.N); }, true);
    }
    const float one = 1.f, zero = 0.f;
    timeIt("cublas (W [K,N])", [&](int c) {
      cb.gemmEx(handle, chorus::kCublasOpN, chorus::kCublasOpN, s.N, M, s.K, &one, wkn[c], chorus::kCudaR16F, s.N, x, chorus::kCudaR16F, s.K, &zero, y,
                chorus::kCudaR16F, s.N, chorus::kCublasCompute32F, chorus::kCublasGemmDefault);
    }, true);
    timeIt("cublas-t (W [N,K])", [&](int c) {
      cb.gemmEx(handle, chorus::kCublasOpT, chorus::kCublasOpN, s.N, M, s.K, &one, wnk[c], chorus::kCudaR16F, s.K, x, chorus::kCudaR16F, s.K, &zero, y,
                chorus::kCudaR16F, s.N, chorus::kCublasCompute32F, chorus::kCublasGemmDefault);
    }, true);
    for (int c = 0; c < copies; c++) {
      CHECK(cudaFree(wkn[c]));
      CHECK(cudaFree(wnk[c]));
    }
    CHECK(cudaFree(x));
    CHECK(cudaFree(y));
    CHECK(cudaFree(partial));
    CHECK(cudaFree(arrivals));
  }
  return 0;
}
