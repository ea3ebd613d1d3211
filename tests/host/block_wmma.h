// The WMMA API of CUDA's mma.h (namespace nvcuda::wmma) for the block emulator.
//
// Semantics follow the CUDA documentation:
// - fragment<matrix_a, M, N, K, T, Layout> holds an M x K matrix, matrix_b a K x N one and
//   accumulator<M, N, K, float> an M x N one, spread over the 32 lanes of a warp: each lane
//   holds num_elements = rows * cols / 32 of them in x[]. Which lane and element holds
//   which matrix position is unspecified by CUDA; here it is a fixed pseudo-random
//   permutation per (use, shape, layout), so a kernel that assumes a mapping gets wrong
//   results. Element-wise work on x[] (scaling, __float_to_tf32) is fine.
// - load_matrix_sync(a or b, pointer, ldm): the Layout template argument says how the
//   matrix lies in memory: row_major puts (r, c) at pointer[r * ldm + c], col_major at
//   pointer[c * ldm + r]; ldm counts elements. An accumulator takes the layout as an
//   argument (mem_row_major / mem_col_major), as does store_matrix_sync.
// - mma_sync(d, a, b, c): d = a * b + c, products exact and sums in float32 in k order
//   (16-bit products are exact in float32). For precision::tf32 the fragment elements are
//   floats and the hardware reads only their TF32 bits: the emulator truncates them, so a
//   kernel must round with __float_to_tf32 (round to nearest, ties away) first.
// - every *_sync call is a warp collective: all 32 lanes must make it, at the same line,
//   with the same pointer, ldm and layout (else the launch fails); the pointer must be
//   32-byte aligned and ldm a multiple of 16 bytes. Shared-memory reads and writes are
//   recorded for the lane that holds the element (a collective is not a memory barrier:
//   reading back another lane's stored element needs __syncwarp or __syncthreads).
// Shapes: m16n16k16 with __half or __nv_bfloat16, and m16n16k8 with precision::tf32.

#ifndef CUDEFORM_TESTS_HOST_BLOCK_WMMA_H
#define CUDEFORM_TESTS_HOST_BLOCK_WMMA_H

#include <cstdint>
#include <type_traits>

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

// Rounds to the nearest TF32 value (10 explicit mantissa bits), ties away from zero.
inline float __float_to_tf32(float value) {
  const std::uint32_t bits = cudeform_host::float_bits(value);
  if ((bits & 0x7f800000u) == 0x7f800000u) return value;  // Inf and NaN stay
  return cudeform_host::bits_float((bits + 0x1000u) & 0xffffe000u);
}

namespace detail {

template <typename Use, int M, int N, int K>
struct shape;
template <int M, int N, int K>
struct shape<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K, id = 1;
};
template <int M, int N, int K>
struct shape<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N, id = 2;
};
template <int M, int N, int K>
struct shape<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N, id = 3;
};

template <typename T>
struct storage {
  typedef T type;
};
template <>
struct storage<precision::tf32> {
  typedef float type;
};

template <typename Layout>
constexpr int layout_id = 0;
template <>
constexpr int layout_id<row_major> = 1;
template <>
constexpr int layout_id<col_major> = 2;

// The matrix position (row * cols + col) of element e of lane l is positions[l * E + e].
template <int ID, int ROWS, int COLS, int LAYOUT>
const std::vector<int>& positions() {
  static const std::vector<int> table = [] {
    std::vector<int> p(ROWS * COLS);
    for (int i = 0; i < ROWS * COLS; ++i) p[i] = i;
    unsigned long long state = 0x9E3779B97F4A7C15ull * (ID * 1000003ull + ROWS * 1009ull +
                                                        COLS * 31ull + LAYOUT + 1);
    for (int i = ROWS * COLS - 1; i > 0; --i) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      std::swap(p[i], p[(state >> 33) % (i + 1)]);
    }
    return p;
  }();
  return table;
}

inline float value(float v) { return v; }
inline float value(__half v) { return __half2float(v); }
inline float value(__nv_bfloat16 v) { return __bfloat162float(v); }

// What the tensor core reads of a TF32 operand: its top 19 bits.
inline float tf32_bits(float v) {
  return cudeform_host::bits_float(cudeform_host::float_bits(v) & 0xffffe000u);
}

// Global memory (a plain pointer) and shared memory (a tracked SharedPtr), read and
// written on behalf of thread t.
template <typename T>
T read(const T* p, long long i, unsigned int) { return p[i]; }
template <typename T>
T read(T* p, long long i, unsigned int) { return p[i]; }
template <typename T>
T read(const cudeform_host::SharedPtr<T>& p, long long i, unsigned int t) {
  return p.read(p.offset + i, t);
}
template <typename T>
void write(T* p, long long i, T v, unsigned int) { p[i] = v; }
template <typename T>
void write(const cudeform_host::SharedPtr<T>& p, long long i, T v, unsigned int t) {
  p.write(p.offset + i, v, t);
}
template <typename T>
const void* address(const T* p) { return p; }
template <typename T>
const void* address(const cudeform_host::SharedPtr<T>& p) { return p.address(); }

template <typename P>
struct pointee;
template <typename T>
struct pointee<T*> {
  typedef std::remove_const_t<T> type;
};
template <typename T>
struct pointee<cudeform_host::SharedPtr<T>> {
  typedef T type;
};

// The text every lane's arguments must agree on, after the documented checks.
template <typename P>
std::string arguments(const char* call, const P& pointer, unsigned int ldm, int layout) {
  const auto where = reinterpret_cast<std::uintptr_t>(address(pointer));
  const unsigned int element = sizeof(typename pointee<P>::type);
  if (where % 32 != 0) {
    cudeform_host::fail(cudeform_host::format("%s: the pointer is not 32-byte aligned", call));
  }
  if ((ldm * element) % 16 != 0) {
    cudeform_host::fail(cudeform_host::format(
        "%s: ldm %u is not a multiple of 16 bytes (%u elements)", call, ldm, 16 / element));
  }
  return cudeform_host::format("%p ldm %u layout %d", address(pointer), ldm, layout);
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
  typedef typename detail::storage<T>::type element_type;
  static constexpr int rows = detail::shape<Use, M, N, K>::rows;
  static constexpr int cols = detail::shape<Use, M, N, K>::cols;
  static constexpr int num_elements = rows * cols / 32;
  element_type x[num_elements];

  // Lane l's element e: its (row, col).
  static void position(unsigned int lane, int e, int& row, int& col) {
    const int p = detail::positions<detail::shape<Use, M, N, K>::id, rows, cols,
                                    detail::layout_id<Layout>>()[lane * num_elements + e];
    row = p / cols;
    col = p % cols;
  }
};

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& f,
                   const typename fragment<Use, M, N, K, T, Layout>::element_type& v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

namespace detail {

// The collective of a load: every lane's fragment filled from the matrix at `pointer`,
// row-major when `row`, else column-major.
template <typename Fragment, typename P>
void load(Fragment& f, const P& pointer, unsigned int ldm, bool row, unsigned int line) {
  const std::string args = arguments("load_matrix_sync", pointer, ldm, row);
  cudeform_host::warp_collective({"load_matrix_sync", line}, args, &f, [&](void* const* lanes) {
    const unsigned int first = cudeform_host::this_thread() / 32 * 32;
    for (unsigned int lane = 0; lane < 32; ++lane) {
      Fragment& out = *static_cast<Fragment*>(lanes[lane]);
      for (int e = 0; e < Fragment::num_elements; ++e) {
        int r, c;
        Fragment::position(lane, e, r, c);
        out.x[e] = read(pointer, row ? r * ldm + c : c * ldm + r, first + lane);
      }
    }
  });
}

}  // namespace detail

// matrix_a / matrix_b: the layout is the fragment's.
template <typename Use, int M, int N, int K, typename T, typename Layout, typename P>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const P& pointer, unsigned int ldm,
                      std::source_location where = std::source_location::current()) {
  static_assert(!std::is_same_v<Use, accumulator>, "an accumulator load takes a layout_t");
  static_assert(std::is_same_v<typename detail::pointee<P>::type,
                               std::conditional_t<std::is_same_v<T, precision::tf32>, float, T>>,
                "load_matrix_sync: the pointer's type does not match the fragment's");
  detail::load(f, pointer, ldm, std::is_same_v<Layout, row_major>, where.line());
}

template <int M, int N, int K, typename P>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& f, const P& pointer,
                      unsigned int ldm, layout_t layout,
                      std::source_location where = std::source_location::current()) {
  detail::load(f, pointer, ldm, layout == mem_row_major, where.line());
}

template <int M, int N, int K, typename P>
void store_matrix_sync(const P& pointer, const fragment<accumulator, M, N, K, float>& f,
                       unsigned int ldm, layout_t layout,
                       std::source_location where = std::source_location::current()) {
  typedef fragment<accumulator, M, N, K, float> Fragment;
  const bool row = layout == mem_row_major;
  const std::string args = detail::arguments("store_matrix_sync", pointer, ldm, layout);
  cudeform_host::warp_collective(
      {"store_matrix_sync", where.line()}, args, const_cast<Fragment*>(&f),
      [&](void* const* lanes) {
        const unsigned int first = cudeform_host::this_thread() / 32 * 32;
        for (unsigned int lane = 0; lane < 32; ++lane) {
          const Fragment& in = *static_cast<const Fragment*>(lanes[lane]);
          for (int e = 0; e < Fragment::num_elements; ++e) {
            int r, c;
            Fragment::position(lane, e, r, c);
            detail::write(pointer, row ? r * ldm + c : c * ldm + r, in.x[e], first + lane);
          }
        }
      });
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d,
              const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b,
              const fragment<accumulator, M, N, K, float>& c,
              std::source_location where = std::source_location::current()) {
  typedef fragment<accumulator, M, N, K, float> Acc;
  typedef fragment<matrix_a, M, N, K, T, LayoutA> A;
  typedef fragment<matrix_b, M, N, K, T, LayoutB> B;
  struct Operands {
    Acc* d;
    const A* a;
    const B* b;
    const Acc* c;
  } mine = {&d, &a, &b, &c};
  cudeform_host::warp_collective({"mma_sync", where.line()}, "", &mine, [](void* const* lanes) {
    float ma[M][K], mb[K][N], mc[M][N];
    for (unsigned int lane = 0; lane < 32; ++lane) {
      const Operands& in = *static_cast<const Operands*>(lanes[lane]);
      int r, col;
      for (int e = 0; e < A::num_elements; ++e) {
        A::position(lane, e, r, col);
        ma[r][col] = detail::value(in.a->x[e]);
      }
      for (int e = 0; e < B::num_elements; ++e) {
        B::position(lane, e, r, col);
        mb[r][col] = detail::value(in.b->x[e]);
      }
      for (int e = 0; e < Acc::num_elements; ++e) {
        Acc::position(lane, e, r, col);
        mc[r][col] = in.c->x[e];
      }
    }
    if (std::is_same_v<T, precision::tf32>) {
      for (auto& row : ma) for (float& v : row) v = detail::tf32_bits(v);
      for (auto& row : mb) for (float& v : row) v = detail::tf32_bits(v);
    }
    for (unsigned int lane = 0; lane < 32; ++lane) {
      const Operands& out = *static_cast<const Operands*>(lanes[lane]);
      for (int e = 0; e < Acc::num_elements; ++e) {
        int r, col;
        Acc::position(lane, e, r, col);
        float sum = mc[r][col];
        for (int k = 0; k < K; ++k) sum += ma[r][k] * mb[k][col];
        out.d->x[e] = sum;
      }
    }
  });
}

}  // namespace wmma
}  // namespace nvcuda

#endif  // CUDEFORM_TESTS_HOST_BLOCK_WMMA_H
