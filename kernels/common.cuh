// Shared definitions for every cudeform kernel family.
//
// A module's source is this header, fixed_point.cuh, bilinear.cuh, conv_sampling.cuh,
// then one family file, joined as text by cudeform/_gpu/source.py (so CuPy's cache key
// sees every byte). Most kernels are grid-stride loops without shared memory or warp
// intrinsics, so the same text also compiles as plain C++ under tests/host/shim.h; the
// fused forward (shared memory, barriers, WMMA) runs under tests/host/block_shim.h.
//
// CUDEFORM_16BIT_TYPES is defined only for __half and __nv_bfloat16 modules, so
// that float and double builds do not need CUDA's fp16/bf16 headers.

#ifdef CUDEFORM_16BIT_TYPES
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#endif

namespace cudeform {

// Accumulation type: 16-bit storage types accumulate in float.
template <typename T> struct accumulate { typedef T type; };
#ifdef CUDEFORM_16BIT_TYPES
template <> struct accumulate<__half> { typedef float type; };
template <> struct accumulate<__nv_bfloat16> { typedef float type; };
#endif

template <typename T> __device__ __forceinline__ typename accumulate<T>::type to_acc(T v) {
  return v;
}
template <typename T> __device__ __forceinline__ T from_acc(typename accumulate<T>::type v) {
  return v;
}
#ifdef CUDEFORM_16BIT_TYPES
template <> __device__ __forceinline__ float to_acc<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ float to_acc<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
#endif

// False for NaN and +-Inf (their difference with themselves is NaN).
template <typename A>
__device__ __forceinline__ bool is_finite(A v) {
  return v - v == A(0);
}

// Read-only load through the texture path, converted to the accumulation type.
template <typename T>
__device__ __forceinline__ typename accumulate<T>::type load(const T* p) {
  return to_acc<T>(__ldg(p));
}

// +Infinity and a quiet NaN of the accumulation type.
template <typename A> __device__ __forceinline__ A infinity();
template <> __device__ __forceinline__ float infinity<float>() { return __int_as_float(0x7f800000); }
template <> __device__ __forceinline__ double infinity<double>() {
  return __longlong_as_double(0x7ff0000000000000LL);
}
template <typename A> __device__ __forceinline__ A quiet_nan() { return infinity<A>() - infinity<A>(); }

}  // namespace cudeform

// Grid-stride loop over [0, count) with an index of type I. The host picks a
// 64-bit I whenever a count or a buffer size could overflow 32-bit arithmetic.
// (The host-run tests define their own, which can walk the range in other orders.)
#ifndef CUDEFORM_GRID_STRIDE_LOOP
#define CUDEFORM_GRID_STRIDE_LOOP(I, i, count)                                   \
  for (I i = static_cast<I>(blockIdx.x) * static_cast<I>(blockDim.x) +           \
             static_cast<I>(threadIdx.x);                                        \
       i < (count); i += static_cast<I>(blockDim.x) * static_cast<I>(gridDim.x))
#endif
