// Deformable RoI pooling (OPS_SPEC section 2, mmcv semantics): forward, input
// gradient and offset gradient. Compiled after common.cuh, fixed_point.cuh and
// bilinear.cuh.
//
// rois is (R, 5) rows (batch_index, x1, y1, x2, y2); offset is (R, 2, ph, pw) with
// dx at channel 0 and dy at channel 1, or null; output is (R, C, ph, pw).
//
// Bad RoIs: a RoI whose batch index, truncated toward zero, is outside [0, N), or
// whose scaled corners or size are NaN or infinite, has no samples: it pools to 0
// and gets zero gradients, and nothing is read or written for it.
//
// Huge RoIs: the adaptive grid ceil(roi_h / ph) of a RoI far larger than the map
// is astronomically large, so a bin does not loop over its whole grid. It visits
// only the window of grid indices whose samples can land in [-1, H] x [-1, W]
// (sample_window below); every other sample is outside the map and adds 0, so
// the result is the spec's. With sampling_ratio = 0 a bin then visits at most
// about (2H + 5) x (2W + 5) samples, whatever the RoI (with a fixed ratio, at
// most its grid). The grid size and the denominator stay real numbers (A),
// never integers that could overflow. Beyond about 2^22 feature pixels in
// float32 (2^51 in float64) sample positions round to more than a pixel, and
// results are only as good as that rounding; the window still bounds the work.

namespace cudeform {

template <typename I>
struct RoIPoolShape {
  I batch, channels, height, width, rois, pooled_h, pooled_w, sampling_ratio;

  __device__ I bins() const { return pooled_h * pooled_w; }

  // Output element (r, c, i, j) of a flat output index.
  __device__ void output_position(I index, I& r, I& c, I& i, I& j) const {
    j = index % pooled_w;
    i = (index / pooled_w) % pooled_h;
    c = (index / bins()) % channels;
    r = index / (bins() * channels);
  }
};

#define CUDEFORM_ROI_POOL_PARAMS                                                   \
  I batch, I channels, I height, I width, I num_rois, I pooled_h, I pooled_w,      \
      I sampling_ratio, typename accumulate<T>::type spatial_scale,                \
      typename accumulate<T>::type gamma
#define CUDEFORM_ROI_POOL_SHAPE                                                    \
  RoIPoolShape<I> s = {batch, channels, height, width, num_rois, pooled_h,         \
                       pooled_w, sampling_ratio}

// Samples k in [0, grid) of one axis of a bin sit at start + (k + 0.5) * step.
// Returns how many to visit, from grid index `first`: all those that can land in
// [-1, size], widened by one on each side (each sample's RoIAlign test then
// decides exactly), and never more than (size + 1) / step + 3. A bin with
// step <= 0 (a fixed sampling_ratio on an empty or inverted RoI) visits its
// whole grid, which is then sampling_ratio long. ceil(v) is written -floor(-v).
template <typename A, typename I>
__device__ __forceinline__ I sample_window(A start, A step, A grid, I size, A& first) {
  first = A(0);
  if (!(grid > A(0))) return 0;
  if (!(step > A(0))) return static_cast<I>(grid);
  if (!is_finite(start)) return 0;
  A low = -floor(-((A(-1) - start) / step - A(0.5))) - A(1);
  A high = floor((A(size) - start) / step - A(0.5)) + A(1);
  if (low < A(0)) low = A(0);
  if (high > grid - A(1)) high = grid - A(1);
  A n = high - low + A(1);
  const A bound = floor(A(size + 1) / step) + A(3);
  if (n > bound) n = bound;
  if (!(n > A(0))) return 0;
  first = low;
  return static_cast<I>(n);
}

// One bin (i, j) of RoI r: where its samples are and what it divides by.
template <typename A, typename I>
struct RoIBin {
  I image;              // batch index of the RoI
  A roi_h, roi_w;       // RoI size on the feature map
  A start_y, start_x;   // bin start, offset included
  A step_y, step_x;     // distance between samples
  A first_y, first_x;   // first grid index visited
  I n_y, n_x;           // grid indices visited
  A count;              // the average's denominator, max(grid_y * grid_x, 1)

  __device__ A y(I k) const { return start_y + (first_y + A(k) + A(0.5)) * step_y; }
  __device__ A x(I k) const { return start_x + (first_x + A(k) + A(0.5)) * step_x; }
};

// The only copy of the RoI and bin formulas on the GPU. Returns false (no
// samples, count 1) for a bad RoI.
template <typename A, typename T, typename I>
__device__ __forceinline__ bool roi_bin(const RoIPoolShape<I>& s, const T* rois,
                                        const T* offset, I r, I i, I j, A spatial_scale,
                                        A gamma, RoIBin<A, I>& bin) {
  bin.image = 0;
  bin.n_y = bin.n_x = 0;
  bin.count = A(1);
  const T* roi = rois + r * 5;
  const A batch_index = load(roi);
  const A x1 = load(roi + 1) * spatial_scale - A(0.5);
  const A y1 = load(roi + 2) * spatial_scale - A(0.5);
  bin.roi_w = load(roi + 3) * spatial_scale - A(0.5) - x1;
  bin.roi_h = load(roi + 4) * spatial_scale - A(0.5) - y1;
  if (!(batch_index > A(-1) && batch_index < A(s.batch) && is_finite(x1) && is_finite(y1) &&
        is_finite(bin.roi_w) && is_finite(bin.roi_h))) {
    return false;
  }
  bin.image = static_cast<I>(batch_index);  // truncation toward zero, as mmcv
  const A bin_h = bin.roi_h / A(s.pooled_h);
  const A bin_w = bin.roi_w / A(s.pooled_w);
  A grid_y = s.sampling_ratio > 0 ? A(s.sampling_ratio) : -floor(-bin_h);
  A grid_x = s.sampling_ratio > 0 ? A(s.sampling_ratio) : -floor(-bin_w);
  if (!(grid_y > A(0))) grid_y = A(0);
  if (!(grid_x > A(0))) grid_x = A(0);
  const A samples = grid_y * grid_x;
  bin.count = samples > A(1) ? samples : A(1);
  bin.step_y = grid_y > A(0) ? bin_h / grid_y : A(0);
  bin.step_x = grid_x > A(0) ? bin_w / grid_x : A(0);
  bin.start_y = y1 + A(i) * bin_h;
  bin.start_x = x1 + A(j) * bin_w;
  if (offset != nullptr) {
    const T* dx = offset + (r * 2 * s.pooled_h + i) * s.pooled_w + j;
    bin.start_x += gamma * bin.roi_w * load(dx);
    bin.start_y += gamma * bin.roi_h * load(dx + s.bins());
  }
  bin.n_y = sample_window(bin.start_y, bin.step_y, grid_y, s.height, bin.first_y);
  bin.n_x = sample_window(bin.start_x, bin.step_x, grid_x, s.width, bin.first_x);
  return true;
}

// One thread per output element (r, c, i, j).
template <typename T, typename I>
__global__ void deform_roi_pool_forward(const T* input, const T* rois, const T* offset,
                                        T* output, CUDEFORM_ROI_POOL_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_ROI_POOL_SHAPE;
  const I count = s.rois * s.channels * s.bins();
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    I r, c, i, j;
    s.output_position(index, r, c, i, j);
    RoIBin<A, I> bin;
    A sum = A(0);
    if (roi_bin(s, rois, offset, r, i, j, spatial_scale, gamma, bin)) {
      const T* plane = input + (bin.image * s.channels + c) * s.height * s.width;
      for (I ky = 0; ky < bin.n_y; ++ky) {
        const A y = bin.y(ky);
        for (I kx = 0; kx < bin.n_x; ++kx) {
          BilinearCorners<A, I> corners;
          roi_align_corners(y, bin.x(kx), s.height, s.width, corners);
          sum += bilinear_value(plane, corners);
        }
      }
    }
    output[index] = from_acc<T>(sum / bin.count);
  }
}

// Input gradient: one thread per output element scatters its gradient over the
// corners of its samples (float atomics or fixed point, see fixed_point.cuh). The
// weights of one output's samples add up to at most 1 (it visits at most `count`
// samples, each of total weight 1, and divides by count), so an input element gets at
// most max|grad_output| from each of the rois * bins outputs of its channel: the
// host's fixed-point count bound. Only the RoIs of images [first_image, first_image +
// images) scatter, into sums that hold those images only.
template <typename T, typename I>
__global__ void deform_roi_pool_backward_input(const T* grad_output, const T* rois,
                                               const T* offset, CUDEFORM_SCATTER_PARAMS,
                                               I first_image, I images,
                                               CUDEFORM_ROI_POOL_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_ROI_POOL_SHAPE;
  const Scatter<A, I> out = CUDEFORM_SCATTER;
  const I count = s.rois * s.channels * s.bins();
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    I r, c, i, j;
    s.output_position(index, r, c, i, j);
    RoIBin<A, I> bin;
    if (!roi_bin(s, rois, offset, r, i, j, spatial_scale, gamma, bin)) continue;
    if (bin.image < first_image || bin.image - first_image >= images) continue;
    const A grad = load(grad_output + index) / bin.count;
    const I plane = ((bin.image - first_image) * s.channels + c) * s.height * s.width;
    for (I ky = 0; ky < bin.n_y; ++ky) {
      const A y = bin.y(ky);
      for (I kx = 0; kx < bin.n_x; ++kx) {
        BilinearCorners<A, I> corners;
        if (roi_align_corners(y, bin.x(kx), s.height, s.width, corners)) {
          bilinear_scatter(out, plane, corners, grad);
        }
      }
    }
  }
}

// Offset gradient, without atomics: one thread per bin (r, i, j) sums over its
// samples and every channel. d start_x / d offset[r, 0, i, j] = gamma * roi_w,
// d start_y / d offset[r, 1, i, j] = gamma * roi_h.
template <typename T, typename I>
__global__ void deform_roi_pool_backward_offset(const T* grad_output, const T* input,
                                                const T* rois, const T* offset,
                                                T* grad_offset, CUDEFORM_ROI_POOL_PARAMS) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_ROI_POOL_SHAPE;
  const I plane = s.height * s.width;
  const I count = s.rois * s.bins();
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const I j = index % s.pooled_w;
    const I i = (index / s.pooled_w) % s.pooled_h;
    const I r = index / s.bins();
    RoIBin<A, I> bin;
    A grad_y = A(0), grad_x = A(0);
    if (roi_bin(s, rois, offset, r, i, j, spatial_scale, gamma, bin)) {
      const T* image = input + bin.image * s.channels * plane;
      const T* grad = grad_output + r * s.channels * s.bins() + i * s.pooled_w + j;
      for (I ky = 0; ky < bin.n_y; ++ky) {
        const A y = bin.y(ky);
        for (I kx = 0; kx < bin.n_x; ++kx) {
          BilinearCorners<A, I> corners;
          if (!roi_align_corners(y, bin.x(kx), s.height, s.width, corners)) continue;
          for (I c = 0; c < s.channels; ++c) {
            A dy, dx;
            bilinear_coordinate_grad(image + c * plane, corners, dy, dx);
            const A g = load(grad + c * s.bins());
            grad_y += g * dy;
            grad_x += g * dx;
          }
        }
      }
      grad_y *= gamma * bin.roi_h / bin.count;
      grad_x *= gamma * bin.roi_w / bin.count;
    }
    T* out = grad_offset + (r * 2 * s.pooled_h + i) * s.pooled_w + j;
    out[0] = from_acc<T>(grad_x);
    out[s.bins()] = from_acc<T>(grad_y);
  }
}

#undef CUDEFORM_ROI_POOL_SHAPE
#undef CUDEFORM_ROI_POOL_PARAMS

}  // namespace cudeform
