// Deformable convolution (DCNv1, and DCNv2 when mask is not null): im2col, col2im
// (with its bound for the fixed-point mode) and the offset/mask gradient in two passes.
// Compiled after the shared headers; the shape and the sampling of a tap are in
// conv_sampling.cuh, shared with the fused forward.
//
// Column buffer of a batch chunk of `batch` images, P = out_h * out_w, taps = kh * kw:
//   columns[(c * taps + k) * (batch * P) + n * P + p]
// so that one GEMM per weight group gives (C_out, batch * P), and the weight
// gradient is one GEMM per group over batch * P.
//
// The sampling work (position, corners, weights, mask) depends only on the tap
// (image n, offset group g, tap k, pixel p; numbered as in conv_sampling.cuh). The run
// kernels give each thread one run: a tap and a slice of at most slice_channels channels
// of its group, run = slice * taps_total + tap. The thread samples once and applies the
// result to every channel of its slice.

namespace cudeform {

#define CUDEFORM_CONV_SHAPE_PARAMS                                                      \
  I batch, I channels, I height, I width, I kernel_h, I kernel_w, I pad_h, I pad_w,     \
      I stride_h, I stride_w, I dilation_h, I dilation_w, I out_h, I out_w,             \
      I offset_groups, I slice_channels
#define CUDEFORM_CONV_SHAPE                                                             \
  ConvShape<I> s = {batch,      channels,   height, width,         kernel_h, kernel_w,  \
                    pad_h,      pad_w,      stride_h, stride_w,    dilation_h,          \
                    dilation_w, out_h,      out_w,  offset_groups, slice_channels}

// One run: a tap (n, g, k, p), numbered `tap`, and its channels [first, last).
template <typename I>
struct ChannelRun : TapTask<I> {
  I first, last;
};

// The only decoding of a run index (and, with index < tap_count(), of a tap index).
template <typename I>
__device__ __forceinline__ ChannelRun<I> channel_run(const ConvShape<I>& s, I index) {
  ChannelRun<I> r;
  const I plane = s.out_plane();
  const I taps = s.taps();
  const I slice = index / s.tap_count();
  r.tap = index - slice * s.tap_count();
  r.p = r.tap % plane;
  r.k = (r.tap / plane) % taps;
  r.g = (r.tap / (plane * taps)) % s.offset_groups;
  r.n = r.tap / (plane * taps * s.offset_groups);
  const I group_end = (r.g + 1) * s.group_channels();
  r.first = r.g * s.group_channels() + slice * s.slice_channels;
  r.last = r.first + s.slice_channels < group_end ? r.first + s.slice_channels : group_end;
  return r;
}

// Columns: each run writes the column entries of its tap for its channels.
template <typename T, typename I>
__global__ void deform_im2col(const T* input, const T* offset, const T* mask, T* columns,
                              CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I count = s.run_count();
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const ChannelRun<I> r = channel_run(s, index);
    BilinearCorners<A, I> corners;
    sample_tap(s, offset, r, corners);
    const A m = tap_mask<A>(mask, r);
    for (I c = r.first; c < r.last; ++c) {
      const A value = bilinear_value(input + s.input_plane(r.n, c), corners) * m;
      columns[s.column(c, r.k, r.n, r.p)] = from_acc<T>(value);
    }
  }
}

// Input gradient: each run scatters its column-gradient entries into the corners of
// its sampling point (float atomics or fixed point, see fixed_point.cuh).
template <typename T, typename I>
__global__ void deform_col2im(const T* grad_columns, const T* offset, const T* mask,
                              CUDEFORM_SCATTER_PARAMS, CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const Scatter<A, I> out = CUDEFORM_SCATTER;
  const I count = s.run_count();
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const ChannelRun<I> r = channel_run(s, index);
    BilinearCorners<A, I> corners;
    if (!sample_tap(s, offset, r, corners)) continue;
    const A m = tap_mask<A>(mask, r);
    for (I c = r.first; c < r.last; ++c) {
      const A grad = load(grad_columns + s.column(c, r.k, r.n, r.p)) * m;
      bilinear_scatter(out, s.input_plane(r.n, c), corners, grad);
    }
  }
}

// The fixed-point bound of deform_col2im: the largest exponent of grad_column * mask.
// A contribution is that times a corner weight <= 1; an input element receives at most
// one from each (tap, pixel) of its image, the host's count bound taps * P.
template <typename T, typename I>
__global__ void deform_col2im_bound(const T* grad_columns, const T* mask, unsigned int* bound,
                                    CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I count = s.run_count();
  unsigned int local = 0u;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const ChannelRun<I> r = channel_run(s, index);
    const A m = tap_mask<A>(mask, r);
    for (I c = r.first; c < r.last; ++c) {
      const unsigned int word = exponent_word(load(grad_columns + s.column(c, r.k, r.n, r.p)) * m);
      if (word > local) local = word;
    }
  }
  raise_bound(bound, local);
}

// Offset and mask gradients, first pass: each run sums over its channels
//   d value / d y, d value / d x (times the column gradient), and the value itself
// into partials[(component * slices + slice) * tap_count + tap], components dy, dx
// and, with a mask, dm.
template <typename T, typename I>
__global__ void deform_col2im_coord(const T* grad_columns, const T* input, const T* offset,
                                    const T* mask, typename accumulate<T>::type* partials,
                                    CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I count = s.run_count();
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const ChannelRun<I> r = channel_run(s, index);
    BilinearCorners<A, I> corners;
    A grad_y = A(0), grad_x = A(0), grad_m = A(0);
    if (sample_tap(s, offset, r, corners)) {
      for (I c = r.first; c < r.last; ++c) {
        const A grad = load(grad_columns + s.column(c, r.k, r.n, r.p));
        const T* image = input + s.input_plane(r.n, c);
        A dy, dx;
        bilinear_coordinate_grad(image, corners, dy, dx);
        grad_y += grad * dy;
        grad_x += grad * dx;
        if (mask != nullptr) grad_m += grad * bilinear_value(image, corners);
      }
    }
    partials[index] = grad_y;
    partials[count + index] = grad_x;
    if (mask != nullptr) partials[2 * count + index] = grad_m;
  }
}

// Second pass: one thread per gradient value (component, tap) adds the slices in
// order (no atomics: deterministic) and writes the offset gradient (times the mask)
// or the mask gradient.
template <typename T, typename I>
__global__ void deform_col2im_coord_reduce(const typename accumulate<T>::type* partials,
                                           const T* mask, T* grad_offset, T* grad_mask,
                                           CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I taps = s.tap_count();
  const I slices = s.slices();
  const I count = (mask != nullptr ? 3 : 2) * taps;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const I component = index / taps;
    const ChannelRun<I> r = channel_run(s, index - component * taps);
    const A* partial = partials + component * slices * taps + r.tap;
    A sum = A(0);
    for (I slice = 0; slice < slices; ++slice) sum += __ldg(partial + slice * taps);
    if (component == 2) {
      grad_mask[r.tap] = from_acc<T>(sum);
    } else {
      grad_offset[s.offset_entry(r.n, r.g, r.k, r.p) + component * s.out_plane()] =
          from_acc<T>(sum * tap_mask<A>(mask, r));
    }
  }
}

#undef CUDEFORM_CONV_SHAPE
#undef CUDEFORM_CONV_SHAPE_PARAMS

}  // namespace cudeform
