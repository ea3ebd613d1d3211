// Fused forward of deformable convolution: an implicit GEMM with no column buffer.
// Compiled after the shared headers (the sampling of a tap is conv_sampling.cuh's).
//
// Block (x, y, z) computes, for weight group z, the output tile of BLOCK_M output pixels,
// numbered across the images (q = n * P + p, P = out_h * out_w), by BLOCK_N output
// channels:  out[n, co, p] = bias[co] + sum over (c, k) of weight[co, c, k] * sample(n, c, k, p).
// The sum runs over the taps k, then over the offset groups the weight group's input
// channels fall in, then over chunks of BLOCK_K channels. The block has THREADS threads,
// G = THREADS / BLOCK_M per pixel: thread t owns pixel t % BLOCK_M of the tile. Per tap
// and offset group it computes the sampling point, corners, weights and mask once (so each
// pixel's sampling is computed G times a block, in registers, rather than shared through
// memory), and per chunk gathers that pixel's samples of every G-th channel of the chunk
// into the shared tile A (BLOCK_K x BLOCK_M, pixel-fastest), rounded to the storage type
// once, as im2col's columns are. The block copies the matching weights into tile B
// (BLOCK_N x BLOCK_K), then multiplies (see FusedWmma and FusedSimt). The epilogue adds
// the bias and writes NCHW directly.
//
// Every thread runs the same loops, so every __syncthreads is reached by the whole block;
// threads past the last pixel gather zeros and write nothing.

#ifndef CUDEFORM_SHARED
// A shared array (the host emulator declares a tracked one instead).
#define CUDEFORM_SHARED(T, name, size) __shared__ __align__(32) T name[size]
#endif
#include <mma.h>

namespace cudeform {

// A if PICK_A, else B (std::conditional, which NVRTC may lack).
template <bool PICK_A, typename A, typename B>
struct select_type {
  typedef A type;
};
template <typename A, typename B>
struct select_type<false, A, B> {
  typedef B type;
};

// Tensor cores: the warps form a WARPS_M x WARPS_N grid over the tile; each owns 32 pixels
// by BLOCK_N / WARPS_N channels, as 2 x COLS accumulator fragments (float). 16-bit types
// use m16n16k16; float32 uses m16n16k8 with its operands rounded to TF32. A is read as a
// col_major matrix_a (pixel x k) and B as a col_major matrix_b (k x channel). The epilogue
// stores each fragment to a per-warp staging area and reads it back element by element,
// so no fragment mapping is assumed.
template <typename T, int BLOCK_M, int BLOCK_N, int BLOCK_K, int THREADS>
struct FusedWmma {
  static constexpr bool TF32 = sizeof(T) == 4;
  typedef typename select_type<TF32, nvcuda::wmma::precision::tf32, T>::type Operand;
  static constexpr int FRAGMENT_K = TF32 ? 8 : 16;
  static constexpr int PAD = 16 / sizeof(T);  // rows of a multiple of 16 bytes
  static constexpr int LDA = BLOCK_M + PAD;
  static constexpr int LDB = BLOCK_K + PAD;
  static constexpr int WARPS = THREADS / 32;
  static constexpr int WARPS_M = BLOCK_M / 32;
  static constexpr int WARPS_N = WARPS / WARPS_M;
  static constexpr int ROWS = 2;                        // fragments along the pixels, per warp
  static constexpr int COLS = BLOCK_N / (16 * WARPS_N);  // fragments along the channels
  static_assert(BLOCK_M % 32 == 0 && WARPS % WARPS_M == 0 && BLOCK_N % (16 * WARPS_N) == 0 &&
                BLOCK_K % FRAGMENT_K == 0, "WMMA tiles are whole fragments and warps");

  typedef nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, FRAGMENT_K, float> Acc;
  struct Accumulators {
    Acc f[ROWS][COLS];
  };

  __device__ static void clear(Accumulators& acc) {
    #pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      #pragma unroll
      for (int j = 0; j < COLS; ++j) nvcuda::wmma::fill_fragment(acc.f[i][j], 0.0f);
    }
  }

  template <typename Fragment>
  __device__ static void round_operand(Fragment& f) {
    if constexpr (TF32) {
      #pragma unroll
      for (int e = 0; e < f.num_elements; ++e) f.x[e] = nvcuda::wmma::__float_to_tf32(f.x[e]);
    }
  }

  template <typename TileA, typename TileB>
  __device__ static void multiply(Accumulators& acc, const TileA& a_tile, const TileB& b_tile) {
    using namespace nvcuda;
    const int warp = threadIdx.x / 32;
    const int first_pixel = warp % WARPS_M * 32;
    const int first_channel = warp / WARPS_M * COLS * 16;
    #pragma unroll
    for (int step = 0; step < BLOCK_K; step += FRAGMENT_K) {
      wmma::fragment<wmma::matrix_a, 16, 16, FRAGMENT_K, Operand, wmma::col_major> a[ROWS];
      #pragma unroll
      for (int i = 0; i < ROWS; ++i) {
        wmma::load_matrix_sync(a[i], a_tile + step * LDA + first_pixel + 16 * i, LDA);
        round_operand(a[i]);
      }
      #pragma unroll
      for (int j = 0; j < COLS; ++j) {  // one B fragment at a time: fewer registers
        wmma::fragment<wmma::matrix_b, 16, 16, FRAGMENT_K, Operand, wmma::col_major> b;
        wmma::load_matrix_sync(b, b_tile + (first_channel + 16 * j) * LDB + step, LDB);
        round_operand(b);
        #pragma unroll
        for (int i = 0; i < ROWS; ++i) wmma::mma_sync(acc.f[i][j], a[i], b, acc.f[i][j]);
      }
    }
  }

  // Calls write(pixel row, channel column, value) for every entry of the tile.
  template <typename Write>
  __device__ static void store(const Accumulators& acc, const Write& write) {
    using namespace nvcuda;
    CUDEFORM_SHARED(float, staging, WARPS * 256);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    #pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      #pragma unroll
      for (int j = 0; j < COLS; ++j) {
        wmma::store_matrix_sync(staging + warp * 256, acc.f[i][j], 16, wmma::mem_col_major);
        __syncwarp();
        for (int e = lane; e < 256; e += 32) {  // (row e % 16, column e / 16)
          const float value = staging[warp * 256 + e];
          write(warp % WARPS_M * 32 + 16 * i + e % 16,
                warp / WARPS_M * COLS * 16 + 16 * j + e / 16, value);
        }
        __syncwarp();  // read before the next fragment overwrites it
      }
    }
  }
};

// SIMT: thread t computes TM x TN outputs, pixels t % ROWS + i * ROWS and channels
// t / ROWS + j * COLS, with exact multiply-adds in the accumulation type.
template <typename T, int BLOCK_M, int BLOCK_N, int BLOCK_K, int THREADS>
struct FusedSimt {
  typedef typename accumulate<T>::type A;
  static constexpr int TN = 8;
  static constexpr int TM = BLOCK_M * BLOCK_N / (THREADS * TN);
  static constexpr int ROWS = BLOCK_M / TM;  // threads along the pixels
  static constexpr int COLS = BLOCK_N / TN;  // threads along the channels
  static constexpr int LDA = BLOCK_M;
  static constexpr int LDB = BLOCK_K + 1;    // an odd row length spreads B's reads over banks
  static_assert(BLOCK_N % TN == 0 && BLOCK_M % TM == 0 && ROWS * COLS == THREADS,
                "the SIMT micro-tiles cover the tile with THREADS threads");

  struct Accumulators {
    A v[TM][TN];
  };

  __device__ static void clear(Accumulators& acc) {
    #pragma unroll
    for (int i = 0; i < TM; ++i) {
      #pragma unroll
      for (int j = 0; j < TN; ++j) acc.v[i][j] = A(0);
    }
  }

  template <typename TileA, typename TileB>
  __device__ static void multiply(Accumulators& acc, const TileA& a_tile, const TileB& b_tile) {
    const int row = threadIdx.x % ROWS;
    const int col = threadIdx.x / ROWS;
    #pragma unroll
    for (int k = 0; k < BLOCK_K; ++k) {
      A a[TM], b[TN];
      #pragma unroll
      for (int i = 0; i < TM; ++i) a[i] = to_acc<T>(a_tile[k * LDA + row + i * ROWS]);
      #pragma unroll
      for (int j = 0; j < TN; ++j) b[j] = to_acc<T>(b_tile[(col + j * COLS) * LDB + k]);
      #pragma unroll
      for (int i = 0; i < TM; ++i) {
        #pragma unroll
        for (int j = 0; j < TN; ++j) acc.v[i][j] += a[i] * b[j];
      }
    }
  }

  template <typename Write>
  __device__ static void store(const Accumulators& acc, const Write& write) {
    const int row = threadIdx.x % ROWS;
    const int col = threadIdx.x / ROWS;
    #pragma unroll
    for (int i = 0; i < TM; ++i) {
      #pragma unroll
      for (int j = 0; j < TN; ++j) write(row + i * ROWS, col + j * COLS, acc.v[i][j]);
    }
  }
};

#define CUDEFORM_FUSED_SHAPE_PARAMS                                                     \
  I batch, I channels, I height, I width, I kernel_h, I kernel_w, I pad_h, I pad_w,     \
      I stride_h, I stride_w, I dilation_h, I dilation_w, I out_h, I out_w,             \
      I offset_groups, I out_channels, I groups

// No __launch_bounds__: with it, ptxas aims at more resident blocks and spills some
// TF32 instantiations; without, each fits (tests/test_kernels_resources.py checks that
// none spills), and at most 255 registers x 256 threads fit any SM.
template <typename T, typename I, int BLOCK_M, int BLOCK_N, int BLOCK_K, int THREADS,
          bool TENSOR_CORES>
__global__ void deform_conv_fused(const T* input, const T* offset, const T* mask, const T* weight,
                                  const T* bias, T* output, CUDEFORM_FUSED_SHAPE_PARAMS) {
  typedef typename accumulate<T>::type A;
  typedef typename select_type<TENSOR_CORES, FusedWmma<T, BLOCK_M, BLOCK_N, BLOCK_K, THREADS>,
                               FusedSimt<T, BLOCK_M, BLOCK_N, BLOCK_K, THREADS>>::type Math;
  static_assert(THREADS % BLOCK_M == 0, "every pixel of the tile has the same gatherers");
  constexpr int GATHERERS = THREADS / BLOCK_M;  // threads per pixel
  // slice_channels is the im2col kernels' and unused here.
  const ConvShape<I> s = {batch,    channels,   height,   width,      kernel_h,
                          kernel_w, pad_h,      pad_w,    stride_h,   stride_w,
                          dilation_h, dilation_w, out_h,  out_w,      offset_groups,
                          channels / offset_groups};
  CUDEFORM_SHARED(T, a_tile, BLOCK_K * Math::LDA);
  CUDEFORM_SHARED(T, b_tile, BLOCK_N * Math::LDB);

  const int t = threadIdx.x;
  const int row = t % BLOCK_M;     // this thread's pixel in the tile
  const int first_k = t / BLOCK_M;  // and the first of its channels in a chunk
  const I plane = s.out_plane();
  const I taps = s.taps();
  const I pixels = batch * plane;
  const I first_pixel = static_cast<I>(blockIdx.x) * BLOCK_M;
  const I group = blockIdx.z;
  const I group_out = out_channels / groups;
  const I group_in = channels / groups;
  const I first_out = static_cast<I>(blockIdx.y) * BLOCK_N;  // within the group
  const I first_in = group * group_in;
  const I end_in = first_in + group_in;
  const I offset_group_channels = s.group_channels();

  // This thread's pixel.
  const I q = first_pixel + row;
  const bool active = q < pixels;
  const I n = active ? q / plane : 0;
  const I p = active ? q - n * plane : 0;
  const T zero = from_acc<T>(A(0));

  typename Math::Accumulators acc;
  Math::clear(acc);
  for (I k = 0; k < taps; ++k) {
    for (I segment = first_in; segment < end_in;) {
      // The channels [segment, segment_end) share one offset group, and so the sampling.
      const I g = segment / offset_group_channels;
      const I segment_end = (g + 1) * offset_group_channels < end_in
                                ? (g + 1) * offset_group_channels : end_in;
      BilinearCorners<A, I> corners;
      clear_corners(corners);
      A m = A(0);
      if (active) {
        const TapTask<I> tap = {((n * offset_groups + g) * taps + k) * plane + p, n, g, k, p};
        sample_tap(s, offset, tap, corners);
        m = tap_mask<A>(mask, tap);
      }
      for (I chunk = segment; chunk < segment_end; chunk += BLOCK_K) {
        __syncthreads();  // every thread is done with the previous chunk's tiles
        for (int kk = first_k; kk < BLOCK_K; kk += GATHERERS) {
          const I c = chunk + kk;
          T value = zero;
          if (active && c < segment_end) {
            value = from_acc<T>(bilinear_value(input + s.input_plane(n, c), corners) * m);
          }
          a_tile[kk * Math::LDA + row] = value;
        }
        for (int e = t; e < BLOCK_N * BLOCK_K; e += THREADS) {
          const int j = e / BLOCK_K;
          const int kk = e - j * BLOCK_K;
          const I co = first_out + j;
          const I c = chunk + kk;
          T w = zero;
          if (co < group_out && c < segment_end) {
            w = __ldg(weight + ((group * group_out + co) * group_in + (c - first_in)) * taps + k);
          }
          b_tile[j * Math::LDB + kk] = w;
        }
        __syncthreads();
        Math::multiply(acc, a_tile, b_tile);
      }
      segment = segment_end;
    }
  }

  Math::store(acc, [&](int tile_row, int col, A value) {
    const I pixel = first_pixel + tile_row;
    const I co = first_out + col;
    if (pixel >= pixels || co >= group_out) return;
    const I image = pixel / plane;
    const I channel = group * group_out + co;
    if (bias != nullptr) value += load(bias + channel);
    output[(image * out_channels + channel) * plane + (pixel - image * plane)] =
        from_acc<T>(value);
  });
}

#undef CUDEFORM_FUSED_SHAPE_PARAMS

}  // namespace cudeform
