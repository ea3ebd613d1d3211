// Bilinear sampling and its two gradients (value and coordinate), written once,
// with the three border rules of the operators: zero padding (deformable
// convolution), RoIAlign clamping (deformable RoI pooling) and MXNet's clamping
// (deformable position-sensitive RoI pooling).
//
// The corners of a point (y, x) are (y0, x0), (y0, x1), (y1, x0), (y1, x1),
// numbered 0..3 in that order; y1 = y0 + 1 unless a rule clamps it.

namespace cudeform {

template <typename A, typename I>
struct BilinearCorners {
  I index[4];      // row * width + col inside one H x W plane, when valid
  bool valid[4];   // the corner lies inside the plane
  A weight[4];     // bilinear weight of the corner
  A weight_dy[4];  // d weight / d y
  A weight_dx[4];  // d weight / d x
};

// Every corner invalid, with zero weights.
template <typename A, typename I>
__device__ __forceinline__ void clear_corners(BilinearCorners<A, I>& c) {
  for (int q = 0; q < 4; ++q) {
    c.index[q] = 0;
    c.valid[q] = false;
    c.weight[q] = A(0);
    c.weight_dy[q] = A(0);
    c.weight_dx[q] = A(0);
  }
}

// Corner q = 2a + b at (rows[a], cols[b]) with weight wy[a] * wx[b] and its
// derivatives; a corner outside the plane stays invalid when check_bounds is set.
template <typename A, typename I>
__device__ __forceinline__ void set_corners(const I rows[2], const I cols[2], I height, I width,
                                            const A wy[2], const A wx[2], const A dwy[2],
                                            const A dwx[2], bool check_bounds,
                                            BilinearCorners<A, I>& c) {
  for (int a = 0; a < 2; ++a) {
    for (int b = 0; b < 2; ++b) {
      const int q = 2 * a + b;
      if (check_bounds && !(rows[a] >= 0 && rows[a] < height && cols[b] >= 0 && cols[b] < width)) {
        continue;
      }
      c.index[q] = rows[a] * width + cols[b];
      c.valid[q] = true;
      c.weight[q] = wy[a] * wx[b];
      c.weight_dy[q] = dwy[a] * wx[b];
      c.weight_dx[q] = wy[a] * dwx[b];
    }
  }
}

// DCNv2 border rule, i.e. sampling the plane zero-padded by one pixel: the point
// contributes only if -1 < y < height and -1 < x < width (NaN and Inf fail the
// test), and only its corners inside the plane are read. Returns false (every
// corner invalid) outside that range.
template <typename A, typename I>
__device__ __forceinline__ bool zero_padded_corners(A y, A x, I height, I width,
                                                    BilinearCorners<A, I>& c) {
  clear_corners(c);
  if (!(y > A(-1) && y < A(height) && x > A(-1) && x < A(width))) return false;
  const A y_floor = floor(y);
  const A x_floor = floor(x);
  const I y0 = static_cast<I>(y_floor);
  const I x0 = static_cast<I>(x_floor);
  const I rows[2] = {y0, y0 + 1};
  const I cols[2] = {x0, x0 + 1};
  const A ly = y - y_floor;
  const A lx = x - x_floor;
  const A wy[2] = {A(1) - ly, ly};
  const A wx[2] = {A(1) - lx, lx};
  const A slope[2] = {A(-1), A(1)};  // d wy / d y and d wx / d x
  set_corners(rows, cols, height, width, wy, wx, slope, slope, true, c);
  return true;
}

// RoIAlign rule (deformable RoI pooling): the point contributes only if
// -1 <= y <= height and -1 <= x <= width (NaN fails). Negative coordinates clamp
// to 0, and a low corner at or past the last row (column) clamps both corners
// to it. A clamped coordinate has zero derivative. Returns false outside.
template <typename A, typename I>
__device__ __forceinline__ bool roi_align_corners(A y, A x, I height, I width,
                                                  BilinearCorners<A, I>& c) {
  clear_corners(c);
  if (!(y >= A(-1) && y <= A(height) && x >= A(-1) && x <= A(width))) return false;
  bool clamped_y = false, clamped_x = false;
  if (y <= A(0)) { y = A(0); clamped_y = true; }
  if (x <= A(0)) { x = A(0); clamped_x = true; }
  I y0 = static_cast<I>(floor(y));
  I x0 = static_cast<I>(floor(x));
  I y1 = y0 + 1, x1 = x0 + 1;
  if (y0 >= height - 1) { y0 = y1 = height - 1; y = A(y0); clamped_y = true; }
  if (x0 >= width - 1) { x0 = x1 = width - 1; x = A(x0); clamped_x = true; }
  const A ly = y - A(y0);
  const A lx = x - A(x0);
  const A wy[2] = {A(1) - ly, ly};
  const A wx[2] = {A(1) - lx, lx};
  const A dwy[2] = {clamped_y ? A(0) : A(-1), clamped_y ? A(0) : A(1)};
  const A dwx[2] = {clamped_x ? A(0) : A(-1), clamped_x ? A(0) : A(1)};
  const I rows[2] = {y0, y1};
  const I cols[2] = {x0, x1};
  set_corners(rows, cols, height, width, wy, wx, dwy, dwx, false, c);
  return true;
}

// Position-sensitive RoI pooling rule (MXNet): the caller has skipped samples
// outside [-0.5, height - 0.5] x [-0.5, width - 0.5]; the point is clamped to
// [0, height-1] x [0, width-1] and read from its floor and ceil corners. The
// derivative is the slope at the clamped position (0 where floor == ceil).
template <typename A, typename I>
__device__ __forceinline__ void clamped_corners(A y, A x, I height, I width,
                                                BilinearCorners<A, I>& c) {
  y = y < A(0) ? A(0) : (y > A(height - 1) ? A(height - 1) : y);
  x = x < A(0) ? A(0) : (x > A(width - 1) ? A(width - 1) : x);
  const A y_floor = floor(y);
  const A x_floor = floor(x);
  const I rows[2] = {static_cast<I>(y_floor), static_cast<I>(ceil(y))};
  const I cols[2] = {static_cast<I>(x_floor), static_cast<I>(ceil(x))};
  const A ly = y - y_floor;
  const A lx = x - x_floor;
  const A wy[2] = {A(1) - ly, ly};
  const A wx[2] = {A(1) - lx, lx};
  const A slope[2] = {A(-1), A(1)};
  set_corners(rows, cols, height, width, wy, wx, slope, slope, false, c);
}

// Sampled value: sum of weight * plane[corner] over valid corners.
template <typename A, typename T, typename I>
__device__ __forceinline__ A bilinear_value(const T* plane, const BilinearCorners<A, I>& c) {
  A value = A(0);
  for (int q = 0; q < 4; ++q) {
    if (c.valid[q]) value += c.weight[q] * load(plane + c.index[q]);
  }
  return value;
}

// Coordinate gradient: d value / d y and d value / d x.
template <typename A, typename T, typename I>
__device__ __forceinline__ void bilinear_coordinate_grad(const T* plane,
                                                         const BilinearCorners<A, I>& c,
                                                         A& grad_y, A& grad_x) {
  grad_y = A(0);
  grad_x = A(0);
  for (int q = 0; q < 4; ++q) {
    if (c.valid[q]) {
      const A v = load(plane + c.index[q]);
      grad_y += c.weight_dy[q] * v;
      grad_x += c.weight_dx[q] * v;
    }
  }
}

// Value gradient: add grad * weight to each valid corner of the plane that starts
// at element `plane` of `out` (float atomics or fixed point, see fixed_point.cuh).
template <typename A, typename I>
__device__ __forceinline__ void bilinear_scatter(const Scatter<A, I>& out, I plane,
                                                 const BilinearCorners<A, I>& c, A grad) {
  for (int q = 0; q < 4; ++q) {
    if (c.valid[q]) out.add(plane + c.index[q], c.weight[q] * grad);
  }
}

}  // namespace cudeform
