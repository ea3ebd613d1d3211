// CUDA built-ins for the host-run kernels, shared by the one-thread shim (shim.h) and the
// block emulator (block_shim.h); joined after either.

#ifndef CUDEFORM_TESTS_HOST_BUILTINS_H
#define CUDEFORM_TESTS_HOST_BUILTINS_H

#include <cmath>
#include <cstring>

// Unqualified math calls in the kernels must pick the float overload for float, as
// CUDA's do, not convert to double.
using std::floor;
using std::frexp;
using std::ldexp;
using std::llrint;

// Execution-space qualifiers mean nothing on the host.
#define __global__
#define __device__
#define __forceinline__ inline

// The host runs switch threads only at barriers (or run one thread), so a plain
// read-modify-write is atomic; each returns the old value like CUDA's.
template <typename T>
inline T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
inline unsigned int atomicOr(unsigned int* address, unsigned int value) {
  const unsigned int old = *address;
  *address = old | value;
  return old;
}
inline unsigned int atomicMax(unsigned int* address, unsigned int value) {
  const unsigned int old = *address;
  *address = old > value ? old : value;
  return old;
}

// The read-only cache load is an ordinary load on the host.
template <typename T>
inline T __ldg(const T* address) {
  return *address;
}

inline float __int_as_float(int bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}
inline double __longlong_as_double(long long bits) {
  double value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

#endif  // CUDEFORM_TESTS_HOST_BUILTINS_H
