// Deformable position-sensitive RoI pooling (R-FCN head; MXNet's
// DeformablePSROIPooling), OPS_SPEC.md section 3. Compiled after common.cuh,
// fixed_point.cuh and bilinear.cuh.
//
// Output (r, ctop, ph, pw) is the mean of the samples of bin (ph, pw) of RoI r in
// input channel (ctop*group_size + gh)*group_size + gw, the bin moved by the
// offset pair of class ctop / channels_each_class at part cell (part_h, part_w).
// The input gradient is scattered (float atomics, or fixed point in deterministic
// mode); the offset gradient is gathered (one thread per offset pair, fixed summation order: deterministic).

namespace cudeform {

template <typename I>
struct PSRoIShape {
  I batch, channels, height, width, num_rois;
  I output_dim, group_size, pooled_size, part_size, sample_per_part, num_classes;

  __device__ I channels_each_class() const { return output_dim / num_classes; }
  __device__ I plane() const { return height * width; }

  // Output element (r, ctop, ph, pw) of a flat output index.
  __device__ void output_position(I index, I& r, I& ctop, I& ph, I& pw) const {
    pw = index % pooled_size;
    ph = (index / pooled_size) % pooled_size;
    ctop = (index / (pooled_size * pooled_size)) % output_dim;
    r = index / (pooled_size * pooled_size * output_dim);
  }
};

#define CUDEFORM_PSROI_SHAPE_PARAMS                                                     \
  I batch, I channels, I height, I width, I num_rois, I output_dim, I group_size,      \
      I pooled_size, I part_size, I sample_per_part, I num_classes
#define CUDEFORM_PSROI_SHAPE                                                            \
  PSRoIShape<I> s = {batch,      channels,   height,      width,     num_rois,          \
                     output_dim, group_size, pooled_size, part_size, sample_per_part,   \
                     num_classes}

// A product the compiler may not fuse into a multiply-add, so that sample
// positions round exactly as on the NumPy path: the skip test and the slope at
// integer positions depend on them discontinuously.
__device__ __forceinline__ float unfused_product(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
__device__ __forceinline__ double unfused_product(double a, double b) {
#ifdef __CUDA_ARCH__
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// A RoI on the feature map, with MXNet's rounding of its corners.
template <typename A, typename I>
struct PSRoIBox {
  I batch;                 // image index
  A x1, y1;                // scaled start corner
  A width, height;         // roi_w, roi_h (at least 0.1)
  A bin_w, bin_h;          // bin size
  A sub_w, sub_h;          // sample spacing inside a bin
};

// The box of RoI r; false for a RoI that pools to zero: a batch index outside
// [0, batch) after truncation toward zero (NaN included) or a non-finite corner.
template <typename A, typename T, typename I>
__device__ __forceinline__ bool psroi_box(const PSRoIShape<I>& s, const T* rois, I r,
                                          A spatial_scale, PSRoIBox<A, I>& box) {
  const T* roi = rois + r * 5;
  const A index = load(roi);
  const A x1 = load(roi + 1), y1 = load(roi + 2), x2 = load(roi + 3), y2 = load(roi + 4);
  if (!(index > A(-1) && index < A(s.batch))) return false;
  if (!(is_finite(x1) && is_finite(y1) && is_finite(x2) && is_finite(y2))) return false;
  box.batch = static_cast<I>(index);
  // C round: halves away from zero, on the device and on the host alike.
  box.x1 = unfused_product(A(round(x1)), spatial_scale) - A(0.5);
  box.y1 = unfused_product(A(round(y1)), spatial_scale) - A(0.5);
  const A x2s = unfused_product(A(round(x2)) + A(1), spatial_scale) - A(0.5);
  const A y2s = unfused_product(A(round(y2)) + A(1), spatial_scale) - A(0.5);
  const A roi_w = x2s - box.x1;
  const A roi_h = y2s - box.y1;
  box.width = roi_w > A(0.1) ? roi_w : A(0.1);
  box.height = roi_h > A(0.1) ? roi_h : A(0.1);
  box.bin_w = box.width / A(s.pooled_size);
  box.bin_h = box.height / A(s.pooled_size);
  box.sub_w = box.bin_w / A(s.sample_per_part);
  box.sub_h = box.bin_h / A(s.sample_per_part);
  return true;
}

// Part cell of bin p: floor(p / pooled_size * part_size) in floating point, as
// MXNet computes it (clamped below part_size, which only absurd sizes could reach).
template <typename A, typename I>
__device__ __forceinline__ I part_cell(const PSRoIShape<I>& s, I p) {
  const I cell = static_cast<I>(floor(A(p) / A(s.pooled_size) * A(s.part_size)));
  return cell < s.part_size - 1 ? cell : s.part_size - 1;
}

// Position-sensitive group of bin p: floor(p * group_size / pooled_size), clamped
// to group_size - 1 (MXNet's float quotient has the same floor for these sizes).
template <typename I>
__device__ __forceinline__ I group_cell(const PSRoIShape<I>& s, I p) {
  const I cell = p * s.group_size / s.pooled_size;
  return cell < s.group_size - 1 ? cell : s.group_size - 1;
}

// Index of the dx entry of the offset pair (r, cls, part_h, part_w); dy follows
// part_size**2 entries later.
template <typename I>
__device__ __forceinline__ I offset_index(const PSRoIShape<I>& s, I r, I cls, I part_h,
                                          I part_w) {
  return ((r * s.num_classes + cls) * 2 * s.part_size + part_h) * s.part_size + part_w;
}

// First sample of bin (ph, pw) of class cls: the bin start moved by
// trans_std * offset times the RoI size (no move without offset).
template <typename A, typename T, typename I>
__device__ __forceinline__ void bin_start(const PSRoIShape<I>& s, const PSRoIBox<A, I>& box,
                                          const T* offset, A trans_std, I r, I cls, I ph,
                                          I pw, A& hstart, A& wstart) {
  A tx = A(0), ty = A(0);
  if (offset != nullptr) {
    const T* dx = offset + offset_index(s, r, cls, part_cell<A>(s, ph), part_cell<A>(s, pw));
    tx = unfused_product(load(dx), trans_std);
    ty = unfused_product(load(dx + s.part_size * s.part_size), trans_std);
  }
  wstart = unfused_product(A(pw), box.bin_w) + box.x1 + unfused_product(tx, box.width);
  hstart = unfused_product(A(ph), box.bin_h) + box.y1 + unfused_product(ty, box.height);
}

// Position of sample (ih, iw) of a bin; false when it is skipped: outside
// [-0.5, height - 0.5] x [-0.5, width - 0.5], or NaN (which fails every test).
template <typename A, typename I>
__device__ __forceinline__ bool sample_position(const PSRoIShape<I>& s,
                                                const PSRoIBox<A, I>& box, A hstart,
                                                A wstart, I ih, I iw, A& h, A& w) {
  h = hstart + unfused_product(A(ih), box.sub_h);
  w = wstart + unfused_product(A(iw), box.sub_w);
  return h >= A(-0.5) && h <= A(s.height) - A(0.5) && w >= A(-0.5) &&
         w <= A(s.width) - A(0.5);
}

// Number of samples of a bin that are not skipped.
template <typename A, typename I>
__device__ __forceinline__ I sample_count(const PSRoIShape<I>& s, const PSRoIBox<A, I>& box,
                                          A hstart, A wstart) {
  I count = 0;
  for (I ih = 0; ih < s.sample_per_part; ++ih) {
    for (I iw = 0; iw < s.sample_per_part; ++iw) {
      A h, w;
      if (sample_position(s, box, hstart, wstart, ih, iw, h, w)) ++count;
    }
  }
  return count;
}

// Input channel of output channel ctop at bin (ph, pw).
template <typename I>
__device__ __forceinline__ I input_channel(const PSRoIShape<I>& s, I ctop, I ph, I pw) {
  return (ctop * s.group_size + group_cell(s, ph)) * s.group_size + group_cell(s, pw);
}

// Forward: one thread per output element (r, ctop, ph, pw).
template <typename T, typename I>
__global__ void deform_psroi_pool_forward(const T* input, const T* rois, const T* offset,
                                          T* output, CUDEFORM_PSROI_SHAPE_PARAMS,
                                          typename accumulate<T>::type spatial_scale,
                                          typename accumulate<T>::type trans_std) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_PSROI_SHAPE;
  const I pooled = s.pooled_size;
  const I count = s.num_rois * s.output_dim * pooled * pooled;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    I r, ctop, ph, pw;
    s.output_position(index, r, ctop, ph, pw);
    A mean = A(0);
    PSRoIBox<A, I> box;
    if (psroi_box(s, rois, r, spatial_scale, box)) {
      A hstart, wstart;
      bin_start(s, box, offset, trans_std, r, ctop / s.channels_each_class(), ph, pw, hstart,
                wstart);
      const T* plane =
          input + (box.batch * s.channels + input_channel(s, ctop, ph, pw)) * s.plane();
      A sum = A(0);
      I samples = 0;
      for (I ih = 0; ih < s.sample_per_part; ++ih) {
        for (I iw = 0; iw < s.sample_per_part; ++iw) {
          A h, w;
          if (!sample_position(s, box, hstart, wstart, ih, iw, h, w)) continue;
          BilinearCorners<A, I> corners;
          clamped_corners(h, w, s.height, s.width, corners);
          sum += bilinear_value(plane, corners);
          ++samples;
        }
      }
      if (samples > 0) mean = sum / A(samples);
    }
    output[index] = from_acc<T>(mean);
  }
}

// Input gradient: one thread per output element scatters grad / samples times the
// corner weights of each sample (float atomics or fixed point, see fixed_point.cuh).
// The weights of one output add up to at most 1, so an input element gets at most
// max|grad_output| from each output that reads its channel, of which there are at
// most rois * pooled_size^2: the host's fixed-point count bound. Only the RoIs of
// images [first_image, first_image + images) scatter, into sums that hold those images.
template <typename T, typename I>
__global__ void deform_psroi_pool_backward_input(const T* grad_output, const T* rois,
                                                 const T* offset, CUDEFORM_SCATTER_PARAMS,
                                                 I first_image, I images,
                                                 CUDEFORM_PSROI_SHAPE_PARAMS,
                                                 typename accumulate<T>::type spatial_scale,
                                                 typename accumulate<T>::type trans_std) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_PSROI_SHAPE;
  const Scatter<A, I> out = CUDEFORM_SCATTER;
  const I pooled = s.pooled_size;
  const I count = s.num_rois * s.output_dim * pooled * pooled;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    I r, ctop, ph, pw;
    s.output_position(index, r, ctop, ph, pw);
    PSRoIBox<A, I> box;
    if (!psroi_box(s, rois, r, spatial_scale, box)) continue;
    if (box.batch < first_image || box.batch - first_image >= images) continue;
    A hstart, wstart;
    bin_start(s, box, offset, trans_std, r, ctop / s.channels_each_class(), ph, pw, hstart,
              wstart);
    const I samples = sample_count(s, box, hstart, wstart);
    if (samples == 0) continue;
    const A grad = load(grad_output + index) / A(samples);
    const I plane =
        ((box.batch - first_image) * s.channels + input_channel(s, ctop, ph, pw)) * s.plane();
    for (I ih = 0; ih < s.sample_per_part; ++ih) {
      for (I iw = 0; iw < s.sample_per_part; ++iw) {
        A h, w;
        if (!sample_position(s, box, hstart, wstart, ih, iw, h, w)) continue;
        BilinearCorners<A, I> corners;
        clamped_corners(h, w, s.height, s.width, corners);
        bilinear_scatter(out, plane, corners, grad);
      }
    }
  }
}

// Offset gradient, gathered: one thread per offset pair (r, cls, part_h, part_w)
// sums, in a fixed order, over the outputs that read it (the bins whose part
// cell it is, times the channels of class cls), so the result is deterministic.
template <typename T, typename I>
__global__ void deform_psroi_pool_backward_offset(const T* grad_output, const T* input,
                                                  const T* rois, const T* offset,
                                                  T* grad_offset, CUDEFORM_PSROI_SHAPE_PARAMS,
                                                  typename accumulate<T>::type spatial_scale,
                                                  typename accumulate<T>::type trans_std) {
  typedef typename accumulate<T>::type A;
  CUDEFORM_PSROI_SHAPE;
  const I pooled = s.pooled_size;
  const I part = s.part_size;
  const I per_class = s.channels_each_class();
  const I count = s.num_rois * s.num_classes * part * part;
  CUDEFORM_GRID_STRIDE_LOOP(I, index, count) {
    const I part_w = index % part;
    const I part_h = (index / part) % part;
    const I cls = (index / (part * part)) % s.num_classes;
    const I r = index / (part * part * s.num_classes);
    A grad_x = A(0), grad_y = A(0);
    bool sampled = false;  // some bin has a sample, so the RoI size is finite
    PSRoIBox<A, I> box;
    if (psroi_box(s, rois, r, spatial_scale, box)) {
      for (I ph = 0; ph < pooled; ++ph) {
        if (part_cell<A>(s, ph) != part_h) continue;
        for (I pw = 0; pw < pooled; ++pw) {
          if (part_cell<A>(s, pw) != part_w) continue;
          A hstart, wstart;
          bin_start(s, box, offset, trans_std, r, cls, ph, pw, hstart, wstart);
          const I samples = sample_count(s, box, hstart, wstart);
          if (samples == 0) continue;
          sampled = true;
          for (I ih = 0; ih < s.sample_per_part; ++ih) {
            for (I iw = 0; iw < s.sample_per_part; ++iw) {
              A h, w;
              if (!sample_position(s, box, hstart, wstart, ih, iw, h, w)) continue;
              BilinearCorners<A, I> corners;
              clamped_corners(h, w, s.height, s.width, corners);
              for (I ctop = cls * per_class; ctop < (cls + 1) * per_class; ++ctop) {
                const A grad =
                    load(grad_output + ((r * s.output_dim + ctop) * pooled + ph) * pooled + pw) /
                    A(samples);
                const T* plane =
                    input + (box.batch * s.channels + input_channel(s, ctop, ph, pw)) * s.plane();
                A dy, dx;
                bilinear_coordinate_grad(plane, corners, dy, dx);
                grad_y += grad * dy;
                grad_x += grad * dx;
              }
            }
          }
        }
      }
    }
    if (sampled) {  // d w / d offset = trans_std * roi_w, d h / d offset = trans_std * roi_h
      grad_x *= trans_std * box.width;
      grad_y *= trans_std * box.height;
    }
    T* out = grad_offset + offset_index(s, r, cls, part_h, part_w);
    out[0] = from_acc<T>(grad_x);
    out[part * part] = from_acc<T>(grad_y);
  }
}

#undef CUDEFORM_PSROI_SHAPE
#undef CUDEFORM_PSROI_SHAPE_PARAMS

}  // namespace cudeform
