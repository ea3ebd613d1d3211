// Kernels that test the block emulator itself (tests/test_fused_emulator.py): correct
// ones that must give NumPy's results, and broken ones whose fault it must report.
// Compiled only by the host tests, after the emulator's headers.

#include <mma.h>

#define COMMA ,
#define CHECK_LAUNCH(name, params, call)                                                 \
  extern "C" int name(const unsigned int* dims, unsigned long long seed, char* message,  \
                      unsigned int message_size, params) {                              \
    return cudeform_host::launch(dims, seed, message, message_size, [=]() { call; });   \
  }

// --- a tiled GEMM: C (m x n) = A (m x k) B (k x n), row-major, 16 x 16 threads a block ---
// missing: 0 for the correct kernel; 1 drops the barrier after the tiles are written
// (a read-after-write race), 2 the one after they are used (write-after-read).
constexpr int TILE = 16;

template <int MISSING>
__global__ void tiled_gemm(const float* a, const float* b, float* c, int m, int n, int k) {
  CUDEFORM_SHARED(float, a_tile, TILE * TILE);
  CUDEFORM_SHARED(float, b_tile, TILE * TILE);
  const int row = blockIdx.y * TILE + threadIdx.y;
  const int col = blockIdx.x * TILE + threadIdx.x;
  float sum = 0.0f;
  for (int start = 0; start < k; start += TILE) {
    const int ak = start + threadIdx.x, bk = start + threadIdx.y;
    a_tile[threadIdx.y * TILE + threadIdx.x] = row < m && ak < k ? a[row * k + ak] : 0.0f;
    b_tile[threadIdx.y * TILE + threadIdx.x] = bk < k && col < n ? b[bk * n + col] : 0.0f;
    if (MISSING != 1) __syncthreads();
    for (int i = 0; i < TILE; ++i) {
      const float x = a_tile[threadIdx.y * TILE + i];
      const float y = b_tile[i * TILE + threadIdx.x];
      sum += x * y;
    }
    if (MISSING != 2) __syncthreads();
  }
  if (row < m && col < n) c[row * n + col] = sum;
}

#define GEMM_PARAMS const float *a, const float *b, float *c, int m, int n, int k
CHECK_LAUNCH(tiled_gemm_ok, GEMM_PARAMS, tiled_gemm<0>(a, b, c, m, n, k))
CHECK_LAUNCH(tiled_gemm_no_barrier_after_writes, GEMM_PARAMS, tiled_gemm<1>(a, b, c, m, n, k))
CHECK_LAUNCH(tiled_gemm_no_barrier_after_reads, GEMM_PARAMS, tiled_gemm<2>(a, b, c, m, n, k))

// --- a block sum: a tree over shared memory, one partial sum per block ---------------------
// WARP_STEPS: 0 uses __syncthreads at every step; 1 ends the last five steps (32 values)
// within warp 0 with __syncwarp; 2 is that without any barrier (a race); 3 drops the
// barrier of the tree steps above 32 (a race).
template <int WARP_STEPS>
__global__ void block_sum(const double* in, double* sums, int count) {
  CUDEFORM_SHARED(double, partial, 256);
  const int t = threadIdx.x;
  const int i = blockIdx.x * blockDim.x + t;
  partial[t] = i < count ? in[i] : 0.0;
  __syncthreads();
  const int last_block_step = WARP_STEPS == 0 ? 1 : 64;
  for (int half = blockDim.x / 2; half >= last_block_step; half /= 2) {
    if (t < half) partial[t] = partial[t] + partial[t + half];
    if (WARP_STEPS != 3) __syncthreads();
  }
  if (WARP_STEPS != 0 && t < 32) {
    for (int half = 32; half >= 1; half /= 2) {
      double value = 0.0;
      if (t < half) value = partial[t] + partial[t + half];
      if (WARP_STEPS == 1) __syncwarp();
      if (t < half) partial[t] = value;
      if (WARP_STEPS == 1) __syncwarp();
    }
  }
  if (t == 0) sums[blockIdx.x] = partial[0];
}

#define SUM_PARAMS const double *in, double *sums, int count
CHECK_LAUNCH(block_sum_ok, SUM_PARAMS, block_sum<0>(in, sums, count))
CHECK_LAUNCH(block_sum_syncwarp, SUM_PARAMS, block_sum<1>(in, sums, count))
CHECK_LAUNCH(block_sum_warp_without_barrier, SUM_PARAMS, block_sum<2>(in, sums, count))
CHECK_LAUNCH(block_sum_tree_without_barrier, SUM_PARAMS, block_sum<3>(in, sums, count))

// --- faults -----------------------------------------------------------------------------
__global__ void every_thread_writes_one_element(float* out) {
  CUDEFORM_SHARED(float, cell, 1);
  cell[0] = static_cast<float>(threadIdx.x);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = cell[0];
}

__global__ void reads_unwritten_shared_memory(float* out) {
  CUDEFORM_SHARED(float, cells, 64);
  if (threadIdx.x > 0) cells[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = cells[threadIdx.x];
}

__global__ void indexes_past_shared_memory(float* out) {
  CUDEFORM_SHARED(float, cells, 32);
  cells[threadIdx.x] = 1.0f;  // 64 threads
  __syncthreads();
  out[threadIdx.x] = 0.0f;
}

__global__ void half_the_block_returns_before_a_barrier(float* out) {
  if (threadIdx.x >= 32) return;
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

__global__ void threads_reach_different_barriers(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.0f;
}

CHECK_LAUNCH(write_write_conflict, float* out, every_thread_writes_one_element(out))
CHECK_LAUNCH(uninitialised_read, float* out, reads_unwritten_shared_memory(out))
CHECK_LAUNCH(out_of_bounds, float* out, indexes_past_shared_memory(out))
CHECK_LAUNCH(early_return, float* out, half_the_block_returns_before_a_barrier(out))
CHECK_LAUNCH(divergent_barriers, float* out, threads_reach_different_barriers(out))

// --- WMMA ---------------------------------------------------------------------------------
// One warp computes D (16 x 16, float) = A (16 x K) B (K x 16) + C through shared memory,
// with the layouts given: a and b in global memory as the fragments' layouts say (row_major
// or col_major, leading dimension lda / ldb), C and D as mem_row_major / mem_col_major.
template <typename T, typename Operand, int K, typename LayoutA, typename LayoutB>
__global__ void wmma_gemm(const T* a, const T* b, const float* c, float* d, int lda, int ldb,
                          int ldc, int c_row_major, int d_row_major) {
  using namespace nvcuda;
  CUDEFORM_SHARED(T, a_tile, 16 * 64);
  CUDEFORM_SHARED(T, b_tile, 16 * 64);
  for (int i = threadIdx.x; i < 16 * lda; i += 32) a_tile[i] = a[i];
  for (int i = threadIdx.x; i < 16 * ldb; i += 32) b_tile[i] = b[i];
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, K, Operand, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, K, Operand, LayoutB> fb;
  wmma::fragment<wmma::accumulator, 16, 16, K, float> acc;
  wmma::load_matrix_sync(fa, a_tile, lda);
  wmma::load_matrix_sync(fb, b_tile, ldb);
  if constexpr (sizeof(T) == 4) {
    for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
    for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
  }
  wmma::load_matrix_sync(acc, c, ldc, c_row_major ? wmma::mem_row_major : wmma::mem_col_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d, acc, 16, d_row_major ? wmma::mem_row_major : wmma::mem_col_major);
}

#define WMMA_PARAMS(T) \
  const T *a, const T *b, const float *c, float *d, int lda, int ldb, int ldc, int crm, int drm
#define WMMA_ARGS a, b, c, d, lda, ldb, ldc, crm, drm
#define WMMA_CASE(label, T, Operand, K, LA, LB)                                          \
  CHECK_LAUNCH(wmma_##label, WMMA_PARAMS(T),                                             \
               (wmma_gemm<T, Operand, K, nvcuda::wmma::LA, nvcuda::wmma::LB>(WMMA_ARGS)))
WMMA_CASE(half_row_col, __half, __half, 16, row_major, col_major)
WMMA_CASE(half_col_row, __half, __half, 16, col_major, row_major)
WMMA_CASE(bfloat16_row_row, __nv_bfloat16, __nv_bfloat16, 16, row_major, row_major)
WMMA_CASE(bfloat16_col_col, __nv_bfloat16, __nv_bfloat16, 16, col_major, col_major)
WMMA_CASE(tf32_row_col, float, nvcuda::wmma::precision::tf32, 8, row_major, col_major)
WMMA_CASE(tf32_col_row, float, nvcuda::wmma::precision::tf32, 8, col_major, row_major)

// A kernel that assumes a fragment mapping (lane l holds row l / 2, columns 8 * (l % 2)
// onwards) instead of storing the accumulator with store_matrix_sync.
__global__ void assumes_a_fragment_mapping(const __half* a, const __half* b, float* d) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  wmma::load_matrix_sync(fa, a, 16);
  wmma::load_matrix_sync(fb, b, 16);
  wmma::mma_sync(acc, fa, fb, acc);
  const int lane = threadIdx.x;
  for (int e = 0; e < acc.num_elements; ++e) d[(lane / 2) * 16 + 8 * (lane % 2) + e] = acc.x[e];
}

// Lanes that pass different pointers to one load_matrix_sync.
__global__ void lanes_disagree_on_the_pointer(const __half* a, float* d) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a + (threadIdx.x % 2) * 256, 16);
  d[threadIdx.x] = 0.0f;
}

CHECK_LAUNCH(wmma_assumed_mapping, const __half* a COMMA const __half* b COMMA float* d,
             assumes_a_fragment_mapping(a, b, d))
CHECK_LAUNCH(wmma_lanes_disagree, const __half* a COMMA float* d,
             lanes_disagree_on_the_pointer(a, d))

// --- the host 16-bit conversions, element by element --------------------------------------
extern "C" void float_to_half(const float* in, unsigned short* out, long long count) {
  for (long long i = 0; i < count; ++i) out[i] = __float2half_rn(in[i]).bits;
}
extern "C" void half_to_float(const unsigned short* in, float* out, long long count) {
  for (long long i = 0; i < count; ++i) out[i] = __half2float(__half{in[i]});
}
extern "C" void float_to_bfloat16(const float* in, unsigned short* out, long long count) {
  for (long long i = 0; i < count; ++i) out[i] = __float2bfloat16_rn(in[i]).bits;
}
extern "C" void bfloat16_to_float(const unsigned short* in, float* out, long long count) {
  for (long long i = 0; i < count; ++i) out[i] = __bfloat162float(__nv_bfloat16{in[i]});
}
extern "C" void float_to_tf32(const float* in, float* out, long long count) {
  for (long long i = 0; i < count; ++i) out[i] = nvcuda::wmma::__float_to_tf32(in[i]);
}
