// Makes the CUDA kernel source plain C++ for the host-run tests.
//
// One "thread" runs each kernel: blockIdx = threadIdx = 0 and blockDim = gridDim = 1,
// so every grid-stride loop walks its whole range, in order. With a single thread,
// atomicAdd is a plain read-modify-write and the run is deterministic.

#ifndef CUDEFORM_TESTS_HOST_SHIM_H
#define CUDEFORM_TESTS_HOST_SHIM_H

// CUDEFORM_16BIT_TYPES stays undefined: common.cuh then skips the cuda_fp16/cuda_bf16
// headers and their specialisations.

#include <cmath>

// Unqualified floor(x) in the kernels must pick the float overload for float,
// as CUDA's does, not convert to double.
using std::floor;

// Execution-space qualifiers mean nothing on the host.
#define __global__
#define __device__
#define __forceinline__ inline

struct cudeform_host_dim3 {
  unsigned int x, y, z;
};
static const cudeform_host_dim3 blockIdx = {0, 0, 0};
static const cudeform_host_dim3 threadIdx = {0, 0, 0};
static const cudeform_host_dim3 blockDim = {1, 1, 1};
static const cudeform_host_dim3 gridDim = {1, 1, 1};

// Single-threaded, so no atomicity is needed; returns the old value like CUDA's.
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

// The read-only cache load is an ordinary load on the host.
template <typename T>
inline T __ldg(const T* address) {
  return *address;
}

#endif  // CUDEFORM_TESTS_HOST_SHIM_H
