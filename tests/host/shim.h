// Makes the CUDA kernel source plain C++ for the host-run tests.
//
// One "thread" runs each kernel: blockIdx = threadIdx = 0 and blockDim = gridDim = 1,
// so every grid-stride loop walks its whole range. It walks it in the order chosen by
// cudeform_set_loop_order: forward (0), reversed (1) or a fixed shuffle (2). A GPU runs
// the iterations in no fixed order; the other orders stand in for that, so that a
// result that depends on the order (float atomics) shows it and one that must not
// (fixed point, gathers) is checked. With a single thread, atomics are plain
// read-modify-writes.

#ifndef CUDEFORM_TESTS_HOST_SHIM_H
#define CUDEFORM_TESTS_HOST_SHIM_H

// CUDEFORM_16BIT_TYPES stays undefined: common.cuh then skips the cuda_fp16/cuda_bf16
// headers and their specialisations.

// Math overloads, execution-space qualifiers and CUDA's built-ins: builtins.h.

struct cudeform_host_dim3 {
  unsigned int x, y, z;
};
static const cudeform_host_dim3 blockIdx = {0, 0, 0};
static const cudeform_host_dim3 threadIdx = {0, 0, 0};
static const cudeform_host_dim3 blockDim = {1, 1, 1};
static const cudeform_host_dim3 gridDim = {1, 1, 1};

// --- the order of the grid-stride loop ------------------------------------------------

// Per thread: host runs in several Python threads (ctypes releases the GIL) each set it.
static thread_local int cudeform_loop_order = 0;

extern "C" void cudeform_set_loop_order(int order) { cudeform_loop_order = order; }

// A bijection of [0, 2^bits): multiply by an odd number, then xor-shift, twice.
static inline unsigned long long cudeform_mix(unsigned long long x, unsigned long long mask,
                                              int bits) {
  const int shift = bits > 1 ? bits / 2 : 1;
  x = (x * 0x9E3779B97F4A7C15ull) & mask;
  x ^= x >> shift;
  x = (x * 0xBF58476D1CE4E5B9ull + 0x94D049BB133111EBull) & mask;
  x ^= x >> shift;
  return x;
}

// Iteration `step` of a loop over [0, count) in the current order. The shuffle is a
// bijection of the next power of two, walked along its cycles until it lands in range
// (cycle walking), so it is a permutation of [0, count).
template <typename I>
inline I cudeform_iteration(I step, I count) {
  if (cudeform_loop_order == 1) return count - 1 - step;
  if (cudeform_loop_order != 2) return step;
  int bits = 1;
  while ((1ull << bits) < static_cast<unsigned long long>(count)) ++bits;
  const unsigned long long mask = (1ull << bits) - 1;
  unsigned long long x = static_cast<unsigned long long>(step);
  do {
    x = cudeform_mix(x, mask, bits);
  } while (x >= static_cast<unsigned long long>(count));
  return static_cast<I>(x);
}

#define CUDEFORM_GRID_STRIDE_LOOP(I, i, count)                                           \
  for (I cudeform_step_##i = 0, i = 0;                                                   \
       cudeform_step_##i < (count) &&                                                    \
       ((i = cudeform_iteration<I>(cudeform_step_##i, (count))), true);                  \
       ++cudeform_step_##i)

// The CUDA built-ins the kernels call (atomics, __ldg, bit casts) are in builtins.h,
// joined after this file.

#endif  // CUDEFORM_TESTS_HOST_SHIM_H
