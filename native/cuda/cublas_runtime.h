// cuBLAS for chorus.Int4Linear's wide path, resolved at run time (no cuBLAS headers or link needed to build).
#pragma once
#include <cuda_runtime.h>
#include <dlfcn.h>

#include <cstddef>
#include <mutex>
#include <string>

namespace chorus {

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

}  // namespace chorus
