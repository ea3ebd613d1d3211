// Shared memory of the block emulator (block_shim.h): arrays declared with
// CUDEFORM_SHARED, whose every element access is checked against a missing barrier.
//
// Each element remembers its last write and its latest reads as (thread, block phase,
// warp phase): a block phase ends at __syncthreads, a warp phase at __syncwarp (and at
// __syncthreads). Two accesses by different threads are ordered when a barrier lies
// between them: a later block phase, or a later warp phase of their common warp. A read
// of a write that is not ordered before it (read-after-write), a write over an unordered
// write (write-after-write) or over an unordered read (write-after-read) fails the
// launch, as do a read of an element no thread of the block wrote and an index outside
// the array.

#ifndef CUDEFORM_TESTS_HOST_BLOCK_SHARED_H
#define CUDEFORM_TESTS_HOST_BLOCK_SHARED_H

namespace cudeform_host {

// --- shared memory ----------------------------------------------------------------------

// The last write of an element and its latest reads, by (thread, block phase, warp phase).
struct Shadow {
  static constexpr int NONE = -1, SEVERAL = -2;
  int writer = NONE;  // NONE: not written in this block
  unsigned long long write_phase = 0, write_warp_phase = 0;
  unsigned long long read_phase = 0, read_warp_phase = 0;
  int reader = NONE;       // the one reader at (read_phase, read_warp_phase), or SEVERAL
  int reader_warp = NONE;  // the one warp that read in read_phase, or SEVERAL
};

// Whether an access of thread t1 at (p1, w1) happens before one of t2 now.
inline bool ordered(int t1, unsigned long long p1, unsigned long long w1, unsigned int t2) {
  const Block& b = block();
  if (t1 == static_cast<int>(t2) || p1 < b.phase) return true;
  return static_cast<unsigned int>(t1) / WARP == t2 / WARP && w1 < b.warp_phase[t2 / WARP];
}

inline void check_read(Shadow& s, const char* name, long long index, unsigned int t) {
  Block& b = block();
  if (s.writer == Shadow::NONE) {
    fail(format("thread %u reads %s[%lld], which no thread of the block has written yet "
                "(uninitialised, or a missing barrier before its write)", t, name, index));
  }
  if (!ordered(s.writer, s.write_phase, s.write_warp_phase, t)) {
    fail(format("race: thread %u reads %s[%lld], written by thread %d with no barrier "
                "between (missing __syncthreads)", t, name, index, s.writer));
  }
  const unsigned int warp = t / WARP;
  const unsigned long long warp_phase = b.warp_phase[warp];
  if (s.reader == Shadow::NONE || s.read_phase < b.phase) {
    s.read_phase = b.phase;
    s.read_warp_phase = warp_phase;
    s.reader = static_cast<int>(t);
    s.reader_warp = static_cast<int>(warp);
  } else if (s.reader_warp != static_cast<int>(warp)) {
    s.reader_warp = Shadow::SEVERAL;
    s.reader = Shadow::SEVERAL;
  } else if (warp_phase > s.read_warp_phase) {  // the warp's earlier reads are ordered
    s.read_warp_phase = warp_phase;
    s.reader = static_cast<int>(t);
  } else if (s.reader != static_cast<int>(t)) {
    s.reader = Shadow::SEVERAL;
  }
}

inline void check_write(Shadow& s, const char* name, long long index, unsigned int t) {
  Block& b = block();
  if (s.writer != Shadow::NONE && !ordered(s.writer, s.write_phase, s.write_warp_phase, t)) {
    fail(format("race: thread %u writes %s[%lld], also written by thread %d with no barrier "
                "between", t, name, index, s.writer));
  }
  if (s.reader != Shadow::NONE && s.read_phase == b.phase) {
    const unsigned int warp = t / WARP;
    const bool read_before = s.reader_warp == static_cast<int>(warp) &&
                             (s.read_warp_phase < b.warp_phase[warp] ||
                              s.reader == static_cast<int>(t));
    if (!read_before) {
      fail(format("race: thread %u writes %s[%lld] while another thread may still read it "
                  "(no barrier since its read)", t, name, index));
    }
  }
  s.writer = static_cast<int>(t);
  s.reader = Shadow::NONE;  // every read so far happens before this write
  s.write_phase = b.phase;
  s.write_warp_phase = b.warp_phase[t / WARP];
}

template <typename T>
struct SharedRef;

// A pointer into a CUDEFORM_SHARED array: element accesses are checked and recorded.
template <typename T>
struct SharedPtr {
  T* values;
  Shadow* shadow;
  long long size;
  long long offset;
  const char* name;

  template <typename J>
  SharedRef<T> operator[](J i) const {
    return {*this, offset + static_cast<long long>(i)};
  }
  template <typename J>
  SharedPtr operator+(J i) const {
    SharedPtr moved = *this;
    moved.offset += static_cast<long long>(i);
    return moved;
  }
  long long checked(long long index) const {
    if (index < 0 || index >= size) {
      fail(format("thread %u accesses %s[%lld], outside its %lld elements", this_thread(), name,
                  index, size));
    }
    return index;
  }
  // Read and write of element `index` on behalf of thread t (a lane of a warp collective).
  T read(long long index, unsigned int t) const {
    check_read(shadow[checked(index)], name, index, t);
    return values[index];
  }
  void write(long long index, const T& value, unsigned int t) const {
    check_write(shadow[checked(index)], name, index, t);
    values[index] = value;
  }
  const void* address() const { return values + offset; }
};

template <typename T>
struct SharedRef {
  SharedPtr<T> pointer;
  long long index;

  operator T() const { return pointer.read(index, this_thread()); }
  SharedRef& operator=(const T& value) {
    pointer.write(index, value, this_thread());
    return *this;
  }
  SharedRef& operator=(const SharedRef& other) { return *this = static_cast<T>(other); }
};

// The storage of one CUDEFORM_SHARED declaration: one per OS thread, and so per block,
// poisoned (all bits set: NaN for floats) and forgotten when a new block starts.
template <typename T, long long N>
struct SharedArray {
  alignas(32) T values[N];
  Shadow shadow[N];
  unsigned long long generation = ~0ull;

  SharedPtr<T> pointer(const char* name) {
    if (generation != block().generation) {
      generation = block().generation;
      std::memset(static_cast<void*>(values), 0xff, sizeof values);
      for (auto& s : shadow) s = Shadow();
    }
    return {values, shadow, N, 0, name};
  }
};

}  // namespace cudeform_host

// Shared memory: a tracked array here, `__shared__ __align__(32) T name[size]` under CUDA.
#define CUDEFORM_SHARED(T, name, size)                                                   \
  static thread_local ::cudeform_host::SharedArray<T, (size)> name##_storage;            \
  const auto name = name##_storage.pointer(#name)

#endif  // CUDEFORM_TESTS_HOST_BLOCK_SHARED_H
