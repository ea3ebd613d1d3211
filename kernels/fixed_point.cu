// The kernels around a deterministic scatter (fixed_point.cuh): the bound of a plain
// array of contribution factors, and the conversion of the fixed-point sums to the
// element type. Compiled after common.cuh, fixed_point.cuh and bilinear.cuh.

namespace cudeform {

// bound[0] = max(bound[0], exponent_word of every values[i]); each thread keeps its own
// maximum over its iterations and raises the bound once.
template <typename T, typename I>
__global__ void max_abs_exponent(const T* values, unsigned int* bound, I size) {
  unsigned int local = 0u;
  CUDEFORM_GRID_STRIDE_LOOP(I, i, size) {
    const unsigned int word = exponent_word(load(values + i));
    if (word > local) local = word;
  }
  raise_bound(bound, local);
}

// output[i] = fixed[i] * 2^-s (one rounding to A, one to T), or the NaN or +-Inf that
// the element's non-finite contributions make: NaN if one was NaN or both infinities
// came, else the infinity that came.
template <typename T, typename I>
__global__ void fixed_point_to_float(const unsigned long long* fixed, const unsigned int* flags,
                                     const unsigned int* bound, T* output, I size,
                                     I scale_shift) {
  typedef typename accumulate<T>::type A;
  const A unit =
      ldexp(A(1), -fixed_point_exponent<A>(__ldg(bound), static_cast<int>(scale_shift)));
  CUDEFORM_GRID_STRIDE_LOOP(I, i, size) {
    const unsigned int flag = __ldg(flags + i);
    A value;
    if (flag == 0u) {
      value = A(static_cast<long long>(__ldg(fixed + i))) * unit;
    } else if ((flag & kNotANumber) != 0u || flag == (kPositiveInfinity | kNegativeInfinity)) {
      value = quiet_nan<A>();
    } else {
      value = flag == kPositiveInfinity ? infinity<A>() : -infinity<A>();
    }
    output[i] = from_acc<T>(value);
  }
}

}  // namespace cudeform
