// cp.async (sm_80+): 16-byte copies from global to shared memory that do not hold a register while in flight, so a
// block can keep many bytes of its next tile loading while it computes on the current one.
#pragma once
#include <cuda_runtime.h>

namespace chorus {

__device__ __forceinline__ void cpAsync16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void cpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
__device__ __forceinline__ void cpAsyncWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

}  // namespace chorus
