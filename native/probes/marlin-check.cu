// Marlin (native/cuda/third_party/marlin) outside ONNX Runtime: random MatMulNBits-layout symmetric block-128 weights
// rewritten by int4_marlin.cuh's repack kernels, Marlin's product against a plain float32 reference kernel over the
// same codes, then its time a call at each row count. For finding what goes wrong without a session around it (run it
// under compute-sanitizer), and for Marlin's kernel times by shape.
//
//   nvcc -O3 -std=c++17 --expt-relaxed-constexpr -arch=sm_90 native/probes/marlin-check.cu -o native/build-cuda/marlin-check
//   native/build-cuda/marlin-check [K N [M,M,...] [max_par [repeats]]]   (default 4096 28672 1,4,16,64,128,512 16 1)
// With repeats > 1 each row count is checked that many times (Marlin's wrong elements came and went from run to run
// before the barrier at the end of its write_result): the worst error over the repeats is reported.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "../cuda/int4_marlin.cuh"
#pragma nv_diag_suppress 39, 177, 179
#include "../cuda/third_party/marlin/marlin_cuda_kernel.cuh"
#pragma nv_diag_default 39, 177, 179

#define CHECK(x)                                                                                   \
  do {                                                                                             \
    cudaError_t e = (x);                                                                           \
    if (e != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e));       \
      std::exit(1);                                                                                \
    }                                                                                              \
  } while (0)

// Y[m, n] = sum_k X[m, k] (q[n, k] - 8) s[n, k / 128], MatMulNBits' layout, float32 sums.
__global__ void reference(const half* x, const uint8_t* b, const half* s, float* y, int M, int N, int K) {
  const int n = blockIdx.x * blockDim.x + threadIdx.x, m = blockIdx.y;
  if (n >= N) return;
  float acc = 0.f;
  for (int k = 0; k < K; k++) {
    const uint8_t byte = b[static_cast<size_t>(n) * (K / 2) + k / 2];
    const int q = (k & 1) ? (byte >> 4) : (byte & 0xF);
    acc += __half2float(x[static_cast<size_t>(m) * K + k]) * (q - 8) * __half2float(s[static_cast<size_t>(n) * (K / 128) + k / 128]);
  }
  y[static_cast<size_t>(m) * N + n] = acc;
}

int main(int argc, char** argv) {
  const int K = argc > 1 ? std::atoi(argv[1]) : 4096, N = argc > 2 ? std::atoi(argv[2]) : 28672;
  std::vector<int> rows;
  {
    std::string list = argc > 3 ? argv[3] : "1,4,16,64,128,512";
    size_t p = 0;
    while (p < list.size()) {
      size_t q = list.find(',', p);
      rows.push_back(std::atoi(list.substr(p, q - p).c_str()));
      p = q == std::string::npos ? list.size() : q + 1;
    }
  }
  const int maxPar = argc > 4 ? std::atoi(argv[4]) : 16;
  const int repeats = argc > 5 ? std::max(1, std::atoi(argv[5])) : 1;
  int maxM = 0;
  for (int m : rows) maxM = std::max(maxM, m);
  int dev = 0, sms = 0;
  CHECK(cudaGetDevice(&dev));
  CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
  std::mt19937 rng(7);
  std::vector<uint8_t> hb(static_cast<size_t>(N) * K / 2);
  for (auto& v : hb) v = static_cast<uint8_t>(rng() & 0xFF);
  std::vector<half> hs(static_cast<size_t>(N) * (K / 128));
  std::uniform_real_distribution<float> scale(0.5f / 8 / std::sqrt(static_cast<float>(K)), 1.5f / 8 / std::sqrt(static_cast<float>(K)));
  for (auto& v : hs) v = __float2half(scale(rng));
  std::vector<half> hx(static_cast<size_t>(maxM) * K);
  std::uniform_real_distribution<float> unit(-1.f, 1.f);
  for (auto& v : hx) v = __float2half(unit(rng));

  uint8_t* b = nullptr;
  half *s = nullptr, *x = nullptr, *y = nullptr;
  uint32_t* mb = nullptr;
  half* ms = nullptr;
  float* yref = nullptr;
  int* locks = nullptr;
  CHECK(cudaMalloc(&b, hb.size()));
  CHECK(cudaMalloc(&s, hs.size() * sizeof(half)));
  CHECK(cudaMalloc(&x, hx.size() * sizeof(half)));
  CHECK(cudaMalloc(&y, static_cast<size_t>(maxM) * N * sizeof(half)));
  CHECK(cudaMalloc(&yref, static_cast<size_t>(maxM) * N * sizeof(float)));
  CHECK(cudaMalloc(&mb, hb.size()));
  CHECK(cudaMalloc(&ms, hs.size() * sizeof(half)));
  CHECK(cudaMalloc(&locks, static_cast<size_t>(N / 128) * 16 * sizeof(int)));
  CHECK(cudaMemset(locks, 0, static_cast<size_t>(N / 128) * 16 * sizeof(int)));
  CHECK(cudaMemcpy(b, hb.data(), hb.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(s, hs.data(), hs.size() * sizeof(half), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(x, hx.data(), hx.size() * sizeof(half), cudaMemcpyHostToDevice));
  chorus::marlinRepackCodes<<<1024, 256>>>(b, mb, K, N);
  chorus::marlinRepackScales<<<256, 256>>>(s, ms, K / 128, N);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::printf("Marlin check: K %d, N %d, %d multiprocessors, max_par %d; repack ok\n", K, N, sms, maxPar);
  const double bytes = static_cast<double>(K) * N / 2 + static_cast<double>(K / 128) * N * 2;
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  for (int M : rows) {
    reference<<<dim3((N + 255) / 256, M), 256>>>(x, b, s, yref, M, N, K);
    CHECK(cudaGetLastError());
    std::vector<half> got(static_cast<size_t>(M) * N);
    std::vector<float> want(static_cast<size_t>(M) * N);
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(want.data(), yref, want.size() * sizeof(float), cudaMemcpyDeviceToHost));
    double rel = 0, worst = 0;
    int err = 0;
    for (int rep = 0; rep < repeats && err == 0; rep++) {
      CHECK(cudaMemset(y, 0, got.size() * sizeof(half)));
      err = marlin_cuda(x, mb, y, ms, M, N, K, locks, 128, dev, 0, -1, -1, sms, maxPar);
      CHECK(cudaGetLastError());
      CHECK(cudaDeviceSynchronize());
      CHECK(cudaMemcpy(got.data(), y, got.size() * sizeof(half), cudaMemcpyDeviceToHost));
      double num = 0, den = 0;
      for (size_t i = 0; i < got.size(); i++) {
        const double d = __half2float(got[i]) - want[i];
        num += d * d;
        den += static_cast<double>(want[i]) * want[i];
        worst = std::max(worst, std::fabs(d));
      }
      rel = std::max(rel, std::sqrt(num / den));
    }
    if (err != 0) {
      std::printf("  M=%d: marlin_cuda returned %d\n", M, err);
      continue;
    }
    for (int i = 0; i < 5; i++) marlin_cuda(x, mb, y, ms, M, N, K, locks, 128, dev, 0, -1, -1, sms, maxPar);
    const int runs = 100;
    CHECK(cudaEventRecord(e0));
    for (int i = 0; i < runs; i++) marlin_cuda(x, mb, y, ms, M, N, K, locks, 128, dev, 0, -1, -1, sms, maxPar);
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms_ = 0;
    CHECK(cudaEventElapsedTime(&ms_, e0, e1));
    const double us = ms_ * 1000.0 / runs;
    std::printf("  M=%4d: rel. error %.2e (max abs %.3g%s), %8.1f us a call, %.2f TB/s of packed weights\n", M, rel, worst,
                repeats > 1 ? (", worst of " + std::to_string(repeats)).c_str() : "", us,
                bytes / (us * 1e-6) / 1e12);
  }
  return 0;
}
