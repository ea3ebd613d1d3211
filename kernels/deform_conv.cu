// Deformable convolution (DCNv1, and DCNv2 when mask is not null): im2col,
// col2im and col2im_coord. Compiled after common.cuh and bilinear.cuh.
//
// Column buffer of a batch chunk of `batch` images, P = out_h * out_w, taps = kh * kw:
//   columns[(c * taps + k) * (batch * P) + n * P + p]
// so that one GEMM per weight group gives (C_out, batch * P), and the weight
// gradient is one GEMM per group over batch * P.

namespace cudeform {

template <typename I>
struct ConvShape {
  I batch, channels, height, width;
  I kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  I out_h, out_w, offset_groups;

  __device__ I taps() const { return kernel_h * kernel_w; }
  __device__ I out_plane() const { return out_h * out_w; }
  __device__ I group_of_channel(I c) const { return c / (channels / offset_groups); }
};

#define CUDEFORM_CONV_SHAPE_PARAMS                                                      \
  I batch, I channels, I height, I width, I kernel_h, I kernel_w, I pad_h, I pad_w,     \
      I stride_h, I stride_w, I dilation_h, I dilation_w, I out_h, I out_w, I offset_groups
#define CUDEFORM_CONV_SHAPE                                                             \
  ConvShape<I> s = {batch, channels, height, width, kernel_h, kernel_w, pad_h, pad_w,   \
                    stride_h, stride_w, dilation_h, dilation_w, out_h, out_w, offset_groups}

// Sampling point of tap k at output pixel p for offset group g of image n: the
// only copy of the DCN sampling formula. offset is (batch, 2*groups*taps, P)
// with dy at channel 2k and dx at 2k+1 of each group.
template <typename A, typename T, typename I>
__device__ __forceinline__ void tap_position(const ConvShape<I>& s, const T* offset, I n, I g,
                                             I k, I p, A& y, A& x) {
  const I plane = s.out_plane();
  const T* dy = offset + ((n * s.offset_groups + g) * 2 * s.taps() + 2 * k) * plane + p;
  const I ho = p / s.out_w;
  const I wo = p - ho * s.out_w;
  const I i = k / s.kernel_w;
  const I j = k - i * s.kernel_w;
  y = A(ho * s.stride_h - s.pad_h + i * s.dilation_h) + load(dy);
  x = A(wo * s.stride_w - s.pad_w + j * s.dilation_w) + load(dy + plane);
}

// DCNv2 modulation of tap k at pixel p; 1 for DCNv1 (mask == nullptr).
template <typename A, typename T, typename I>
__device__ __forceinline__ A tap_mask(const ConvShape<I>& s, const T* mask, I n, I g, I k, I p) {
  if (mask == nullptr) return A(1);
  return load(mask + ((n * s.offset_groups + g) * s.taps() + k) * s.out_plane() + p);
}

// One thread per (channel, image, pixel); it writes the column entries of all taps.
template <typename T, typename I>
__global__ void deform_im2col(const T* input, const T* offset, const T* mask, T* columns,
                              CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I plane = s.out_plane();
  const I taps = s.taps();
  const I count = s.channels * s.batch * plane;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const I p = index % plane;
    const I n = (index / plane) % s.batch;
    const I c = index / (plane * s.batch);
    const I g = s.group_of_channel(c);
    const T* image = input + (n * s.channels + c) * s.height * s.width;
    T* column = columns + c * taps * s.batch * plane + n * plane + p;
    for (I k = 0; k < taps; ++k) {
      A y, x;
      tap_position(s, offset, n, g, k, p, y, x);
      BilinearCorners<A, I> corners;
      zero_padded_corners(y, x, s.height, s.width, corners);
      const A value = bilinear_value(image, corners) * tap_mask<A>(s, mask, n, g, k, p);
      column[k * s.batch * plane] = from_acc<T>(value);
    }
  }
}

// Input gradient: one thread per column entry scatters it into the input
// gradient with atomicAdd (accumulated in float for 16-bit types).
template <typename T, typename I>
__global__ void deform_col2im(const T* grad_columns, const T* offset, const T* mask,
                              typename accumulate<T>::type* grad_input,
                              CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I plane = s.out_plane();
  const I taps = s.taps();
  const I count = s.channels * taps * s.batch * plane;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const I p = index % plane;
    const I n = (index / plane) % s.batch;
    const I k = (index / (plane * s.batch)) % taps;
    const I c = index / (plane * s.batch * taps);
    const I g = s.group_of_channel(c);
    A y, x;
    tap_position(s, offset, n, g, k, p, y, x);
    BilinearCorners<A, I> corners;
    if (!zero_padded_corners(y, x, s.height, s.width, corners)) continue;
    const A grad = load(grad_columns + index) * tap_mask<A>(s, mask, n, g, k, p);
    bilinear_scatter(grad_input + (n * s.channels + c) * s.height * s.width, corners, grad);
  }
}

// Offset and mask gradients: one thread per (image, offset group, tap, pixel)
// sums over the channels of its group.
template <typename T, typename I>
__global__ void deform_col2im_coord(const T* grad_columns, const T* input, const T* offset,
                                    const T* mask, T* grad_offset, T* grad_mask,
                                    CUDEFORM_CONV_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_CONV_SHAPE;
  const I plane = s.out_plane();
  const I taps = s.taps();
  const I group_channels = s.channels / s.offset_groups;
  const I count = s.batch * s.offset_groups * taps * plane;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const I p = index % plane;
    const I k = (index / plane) % taps;
    const I g = (index / (plane * taps)) % s.offset_groups;
    const I n = index / (plane * taps * s.offset_groups);
    A y, x;
    tap_position(s, offset, n, g, k, p, y, x);
    BilinearCorners<A, I> corners;
    A grad_y = A(0), grad_x = A(0), grad_m = A(0);
    if (zero_padded_corners(y, x, s.height, s.width, corners)) {
      for (I c = g * group_channels; c < (g + 1) * group_channels; ++c) {
        const A grad = load(grad_columns + ((c * taps + k) * s.batch + n) * plane + p);
        const T* image = input + (n * s.channels + c) * s.height * s.width;
        A dy, dx;
        bilinear_coordinate_grad(image, corners, dy, dx);
        grad_y += grad * dy;
        grad_x += grad * dx;
        if (mask != nullptr) grad_m += grad * bilinear_value(image, corners);
      }
    }
    const A m = tap_mask<A>(s, mask, n, g, k, p);
    T* out = grad_offset + ((n * s.offset_groups + g) * 2 * taps + 2 * k) * plane + p;
    out[0] = from_acc<T>(grad_y * m);
    out[plane] = from_acc<T>(grad_x * m);
    if (mask != nullptr) grad_mask[index] = from_acc<T>(grad_m);
  }
}

#undef CUDEFORM_CONV_SHAPE
#undef CUDEFORM_CONV_SHAPE_PARAMS

}  // namespace cudeform
