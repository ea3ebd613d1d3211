// Where a scatter kernel adds its contributions: float atomics (the default), or 64-bit
// fixed point with integer atomics (deterministic mode).
//
// Float atomicAdd rounds after every addition, so the result depends on the order in
// which the atomics arrive. In fixed point each contribution v adds round(v * 2^s) to a
// 64-bit integer with integer atomicAdd (two's complement). Integer addition is
// associative, so every order gives the same bits.
//
// The scale 2^s comes from a bound computed on the device before the scatter, with no
// host synchronisation:
// - bound[0] holds the largest exponent_word of the contributions' factors (their
//   corner weights are at most 1), so every contribution has |v| < 2^e;
// - the host knows K, a bound on the sum of |v| over one element in units of max|v|
//   (how many contributions can land there), and passes scale_shift = 62 - ceil(log2 K).
// s = scale_shift - e gives K * max|v| * 2^s <= 2^62: the rounded contributions of one
// element add up to less than 2^62 + K / 2 < 2^63, so no sum can overflow. Rounding each
// contribution to a multiple of 2^-s costs at most 2^-(s+1) <= K * max|v| * 2^-61.
// A non-finite contribution sets a bit of the element's flag word instead (atomicOr),
// so that the element becomes NaN or +-Inf, as a float sum would.

namespace cudeform {

// (maybe_unused: families without scatters, such as the fused forward, include them too.)
// Exponent words: 0 for no nonzero finite value, else e + kExponentBias where v = f * 2^e
// with 0.5 <= |f| < 1 (frexp). Every finite double has e >= -1073.
[[maybe_unused]] constexpr unsigned int kExponentBias = 1100;
// Flag bits of the non-finite contributions to one element.
[[maybe_unused]] constexpr unsigned int kPositiveInfinity = 1u;
[[maybe_unused]] constexpr unsigned int kNegativeInfinity = 2u;
[[maybe_unused]] constexpr unsigned int kNotANumber = 4u;

template <typename A>
__device__ __forceinline__ unsigned int exponent_word(A v) {
  if (!is_finite(v) || v == A(0)) return 0u;
  int e;
  frexp(v, &e);
  return static_cast<unsigned int>(e + static_cast<int>(kExponentBias));
}

// Raise the bound to `word`. Reading it first skips the atomic once it is as high,
// which is almost always soon after the start.
__device__ __forceinline__ void raise_bound(unsigned int* bound, unsigned int word) {
  if (word > *static_cast<volatile unsigned int*>(bound)) atomicMax(bound, word);
}

// The largest |s| for which 2^s and 2^-s are normal numbers of A.
template <typename A> struct scale_limit;
template <> struct scale_limit<float> { static constexpr int value = 126; };
template <> struct scale_limit<double> { static constexpr int value = 1022; };

// The exponent s of the scale 2^s. With scale_shift >= 2 and finite contributions
// (e <= 128 in float, 1024 in double), s never passes -limit; a clamp at +limit only
// makes the sums smaller.
template <typename A>
__device__ __forceinline__ int fixed_point_exponent(unsigned int word, int scale_shift) {
  if (word == 0u) return 0;  // every finite contribution is 0
  const int s = scale_shift - (static_cast<int>(word) - static_cast<int>(kExponentBias));
  const int limit = scale_limit<A>::value;
  return s < -limit ? -limit : (s > limit ? limit : s);
}

template <typename A, typename I>
struct Scatter {
  A* floats;                  // float atomics when not null; else fixed point:
  unsigned long long* fixed;  // the 64-bit sums
  unsigned int* flags;        // the non-finite flag words
  A scale;                    // 2^s

  __device__ __forceinline__ void add(I i, A v) const {
    if (floats != nullptr) {
      atomicAdd(floats + i, v);
    } else if (!is_finite(v)) {
      atomicOr(flags + i, v != v ? kNotANumber : (v > A(0) ? kPositiveInfinity
                                                           : kNegativeInfinity));
    } else {
      const long long units = llrint(v * scale);  // |units| <= 2^62: no overflow
      atomicAdd(fixed + i, static_cast<unsigned long long>(units));
    }
  }
};

template <typename A, typename I>
__device__ __forceinline__ Scatter<A, I> make_scatter(A* grad_input,
                                                      unsigned long long* grad_fixed,
                                                      unsigned int* grad_flags,
                                                      const unsigned int* bound,
                                                      I scale_shift) {
  Scatter<A, I> out = {grad_input, grad_fixed, grad_flags, A(1)};
  if (grad_input == nullptr) {
    out.scale = ldexp(A(1), fixed_point_exponent<A>(__ldg(bound), static_cast<int>(scale_shift)));
  }
  return out;
}

}  // namespace cudeform

// The scatter parameters of a kernel (signatures.SCATTER), and the Scatter they make.
#define CUDEFORM_SCATTER_PARAMS                                                        \
  typename accumulate<T>::type *grad_input, unsigned long long *grad_fixed,            \
      unsigned int *grad_flags, const unsigned int *bound, I scale_shift
#define CUDEFORM_SCATTER make_scatter(grad_input, grad_fixed, grad_flags, bound, scale_shift)
