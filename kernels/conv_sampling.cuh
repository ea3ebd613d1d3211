// The shape of a deformable convolution and the sampling of one tap, shared by the
// im2col kernels (deform_conv.cu) and the fused forward (deform_conv_fused.cu): the only
// copy of the DCN sampling formula.
//
// A tap is (image n, offset group g, kernel tap k, output pixel p), numbered
//   tap = ((n * offset_groups + g) * taps + k) * P + p,   P = out_h * out_w,
// the index of its mask entry.

namespace cudeform {

template <typename I>
struct ConvShape {
  I batch, channels, height, width;
  I kernel_h, kernel_w, pad_h, pad_w, stride_h, stride_w, dilation_h, dilation_w;
  I out_h, out_w, offset_groups, slice_channels;

  __device__ I taps() const { return kernel_h * kernel_w; }
  __device__ I out_plane() const { return out_h * out_w; }
  __device__ I group_channels() const { return channels / offset_groups; }
  __device__ I slices() const { return (group_channels() + slice_channels - 1) / slice_channels; }
  // Every (image, offset group, tap, pixel), and every run of the run kernels.
  __device__ I tap_count() const { return batch * offset_groups * taps() * out_plane(); }
  __device__ I run_count() const { return slices() * tap_count(); }
  __device__ I column(I c, I k, I n, I p) const {
    return (c * taps() + k) * (batch * out_plane()) + n * out_plane() + p;
  }
  __device__ I input_plane(I n, I c) const { return (n * channels + c) * height * width; }
  // The dy entry of a tap in offset (batch, 2 * groups * taps, P); dx follows P later.
  __device__ I offset_entry(I n, I g, I k, I p) const {
    return ((n * offset_groups + g) * 2 * taps() + 2 * k) * out_plane() + p;
  }
};

// One tap and its number.
template <typename I>
struct TapTask {
  I tap, n, g, k, p;
};

// DCNv2 modulation of a tap; 1 for DCNv1 (mask == nullptr).
template <typename A, typename T, typename I>
__device__ __forceinline__ A tap_mask(const T* mask, const TapTask<I>& r) {
  return mask == nullptr ? A(1) : load(mask + r.tap);
}

// Sampling point of a tap: the only copy of the DCN sampling formula.
template <typename A, typename T, typename I>
__device__ __forceinline__ void tap_position(const ConvShape<I>& s, const T* offset,
                                             const TapTask<I>& r, A& y, A& x) {
  const T* dy = offset + s.offset_entry(r.n, r.g, r.k, r.p);
  const I ho = r.p / s.out_w;
  const I wo = r.p - ho * s.out_w;
  const I i = r.k / s.kernel_w;
  const I j = r.k - i * s.kernel_w;
  y = A(ho * s.stride_h - s.pad_h + i * s.dilation_h) + load(dy);
  x = A(wo * s.stride_w - s.pad_w + j * s.dilation_w) + load(dy + s.out_plane());
}

// The corners of a tap's sampling point (every one invalid outside the map); returns
// whether the point is inside.
template <typename A, typename T, typename I>
__device__ __forceinline__ bool sample_tap(const ConvShape<I>& s, const T* offset,
                                           const TapTask<I>& r, BilinearCorners<A, I>& c) {
  A y, x;
  tap_position(s, offset, r, y, x);
  return zero_padded_corners(y, x, s.height, s.width, c);
}

}  // namespace cudeform
