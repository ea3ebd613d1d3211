// A block-level CUDA emulator for the host-run tests of kernels that use shared memory,
// __syncthreads(), __syncwarp() and WMMA (block_wmma.h).
//
// launch() runs every block of a grid, one after another; each block runs its blockDim
// threads as fibers (ucontext) on one OS thread. A fiber runs until it reaches a barrier
// or a warp collective (or returns); the scheduler then resumes the next ready fiber, in
// an order shuffled by the launch's seed (seed 0: ascending thread index). So every thread
// sees its own threadIdx, and a barrier really waits for the whole block.
//
// Faults become a failure of the launch (a message, and launch() returns 1), never a hang:
// - a barrier that not every thread of the block reaches (some returned, or wait at
//   another __syncthreads or warp collective), or threads that reach different ones;
// - a shared-memory race, a read of unwritten shared memory or an index outside a
//   CUDEFORM_SHARED array (block_shared.h).
// Global memory is plain host memory: not tracked.

#ifndef CUDEFORM_TESTS_HOST_BLOCK_SHIM_H
#define CUDEFORM_TESTS_HOST_BLOCK_SHIM_H

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <source_location>
#include <string>
#include <vector>

// Math overloads, __global__, __device__ and __forceinline__: builtins.h.
#define __host__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
// __shared__ stays undefined: kernels declare shared memory with CUDEFORM_SHARED, which
// the emulator tracks (a plain __shared__ would not compile here).

namespace cudeform_host {

struct Dim3 {
  unsigned int x, y, z;
};

constexpr unsigned int WARP = 32;
constexpr std::size_t FIBER_STACK = 256 * 1024;

// Where a barrier or collective was called from, for messages.
struct Site {
  const char* what = "";
  unsigned int line = 0;
  bool operator==(const Site& other) const {
    return line == other.line && std::strcmp(what, other.what) == 0;
  }
};

enum class State { ready, at_barrier, at_collective, returned };

struct Fiber {
  ucontext_t context;
  State state = State::ready;
  Site site;
};

// One warp's collective in progress: its arguments (compared across lanes) and each
// arrived lane's payload.
struct Collective {
  unsigned int arrived = 0;
  Site site;
  std::string arguments;
  void* payloads[WARP] = {};
};

struct Block {
  Dim3 grid, block, index;
  unsigned int threads = 0;
  unsigned int current = 0;  // the running fiber
  unsigned long long generation = 0;  // distinct for every block run, for shared memory
  unsigned long long phase = 0;       // __syncthreads passed by the block
  std::vector<unsigned long long> warp_phase;  // per warp: __syncwarp and __syncthreads
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<Collective> collectives;  // per warp
  unsigned int at_barrier = 0;
  Site barrier_site;
  ucontext_t scheduler;
  const std::function<void()>* body = nullptr;
  bool failed = false;
  std::string message;
};

inline thread_local Block* g_block = nullptr;
inline thread_local unsigned long long g_generation = 0;

inline Block& block() { return *g_block; }
inline unsigned int this_thread() { return g_block->current; }

inline std::string format(const char* pattern, ...) __attribute__((format(printf, 1, 2)));
inline std::string format(const char* pattern, ...) {
  char text[512];
  va_list args;
  va_start(args, pattern);
  std::vsnprintf(text, sizeof text, pattern, args);
  va_end(args);
  return text;
}

inline void yield() {
  Block& b = block();
  swapcontext(&b.fibers[b.current].context, &b.scheduler);
}

// Ends the launch with `message`: the calling fiber is never resumed.
[[noreturn]] inline void fail(const std::string& message) {
  Block& b = block();
  if (!b.failed) {
    b.failed = true;
    b.message = format("block (%u, %u, %u), thread %u: ", b.index.x, b.index.y, b.index.z,
                       b.current) + message;
  }
  for (;;) yield();
}

inline Dim3 thread_index() {
  const Block& b = block();
  const unsigned int t = b.current;
  return {t % b.block.x, (t / b.block.x) % b.block.y, t / (b.block.x * b.block.y)};
}

// --- barriers ---------------------------------------------------------------------------

inline void block_barrier(Site site) {
  Block& b = block();
  if (b.at_barrier == 0) {
    b.barrier_site = site;
  } else if (!(site == b.barrier_site)) {
    fail(format("divergent __syncthreads: this thread is at line %u while others wait at "
                "line %u", site.line, b.barrier_site.line));
  }
  b.fibers[b.current].state = State::at_barrier;
  b.fibers[b.current].site = site;
  if (++b.at_barrier == b.threads) {  // the last one releases the block
    b.at_barrier = 0;
    ++b.phase;
    for (auto& phase : b.warp_phase) ++phase;
    for (auto& fiber : b.fibers) fiber.state = State::ready;
    return;
  }
  yield();
}

// Warp collective: every lane of the warp arrives with the same `arguments` (text); the
// last one to arrive calls perform(payloads of lanes 0..31), then all go on.
inline void warp_collective(Site site, const std::string& arguments, void* payload,
                            const std::function<void(void* const*)>& perform) {
  Block& b = block();
  if (b.threads % WARP != 0) {
    fail(format("%s needs whole warps, but the block has %u threads", site.what, b.threads));
  }
  const unsigned int warp = b.current / WARP;
  Collective& c = b.collectives[warp];
  if (c.arrived == 0) {
    c.site = site;
    c.arguments = arguments;
  } else if (!(site == c.site)) {
    fail(format("divergent warp %u: lane %u calls %s at line %u while other lanes wait in "
                "%s at line %u", warp, b.current % WARP, site.what, site.line, c.site.what,
                c.site.line));
  } else if (arguments != c.arguments) {
    fail(format("lanes of warp %u disagree on the arguments of %s at line %u: %s, then %s",
                warp, site.what, site.line, c.arguments.c_str(), arguments.c_str()));
  }
  c.payloads[b.current % WARP] = payload;
  b.fibers[b.current].state = State::at_collective;
  b.fibers[b.current].site = site;
  if (++c.arrived < WARP) {
    yield();
    return;
  }
  c.arrived = 0;
  perform(c.payloads);
  for (unsigned int lane = 0; lane < WARP; ++lane) {
    b.fibers[warp * WARP + lane].state = State::ready;
  }
}

// --- launch -----------------------------------------------------------------------------

inline void fiber_main() {
  Block& b = block();
  (*b.body)();
  b.fibers[b.current].state = State::returned;
}  // uc_link returns to the scheduler

inline std::string describe_deadlock(const Block& b) {
  std::string text = "deadlock: not every thread of the block reaches the same barrier:";
  for (unsigned int t = 0; t < b.threads; ++t) {
    const Fiber& f = b.fibers[t];
    const bool first = t == 0 || b.fibers[t - 1].state != f.state ||
                       !(b.fibers[t - 1].site == f.site);
    if (!first) continue;
    unsigned int last = t;
    while (last + 1 < b.threads && b.fibers[last + 1].state == f.state &&
           b.fibers[last + 1].site == f.site) {
      ++last;
    }
    text += format(" threads %u-%u ", t, last);
    text += f.state == State::returned ? std::string("have returned;")
                                       : format("wait in %s at line %u;", f.site.what, f.site.line);
  }
  return text;
}

// Runs one block; false (with b.message) on a failure.
inline bool run_block(Block& b, unsigned long long& random) {
  b.generation = ++g_generation;
  b.phase = 0;
  b.at_barrier = 0;
  std::fill(b.warp_phase.begin(), b.warp_phase.end(), 0ull);
  for (auto& c : b.collectives) c = Collective();
  for (unsigned int t = 0; t < b.threads; ++t) {
    Fiber& f = b.fibers[t];
    f = Fiber();
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = b.stacks[t].get();
    f.context.uc_stack.ss_size = FIBER_STACK;
    f.context.uc_link = &b.scheduler;
    makecontext(&f.context, fiber_main, 0);
  }
  std::vector<unsigned int> order(b.threads);
  for (;;) {
    order.clear();
    for (unsigned int t = 0; t < b.threads; ++t) {
      if (b.fibers[t].state == State::ready) order.push_back(t);
    }
    if (order.empty()) {
      for (const auto& f : b.fibers) {
        if (f.state != State::returned) {
          b.failed = true;
          b.message = format("block (%u, %u, %u): ", b.index.x, b.index.y, b.index.z) +
                      describe_deadlock(b);
          return false;
        }
      }
      return true;
    }
    if (random != 0) {  // Fisher-Yates with a 64-bit LCG
      for (std::size_t i = order.size(); i > 1; --i) {
        random = random * 6364136223846793005ull + 1442695040888963407ull;
        std::swap(order[i - 1], order[(random >> 33) % i]);
      }
    }
    for (unsigned int t : order) {
      if (b.fibers[t].state != State::ready) continue;
      b.current = t;
      swapcontext(&b.scheduler, &b.fibers[t].context);
      if (b.failed) return false;
    }
  }
}

// Runs `body` as every thread of every block of grid x block. Returns 0, or 1 with a
// message (truncated to message_size) on a failure.
inline int launch(const unsigned int* dims, unsigned long long seed, char* message,
                  unsigned int message_size, const std::function<void()>& body) {
  Block b;
  b.grid = {dims[0], dims[1], dims[2]};
  b.block = {dims[3], dims[4], dims[5]};
  b.threads = b.block.x * b.block.y * b.block.z;
  b.body = &body;
  std::string error;
  if (b.threads == 0 || b.threads > 1024) {
    error = format("invalid block of %u threads (1 to 1024)", b.threads);
  } else {
    const unsigned int warps = (b.threads + WARP - 1) / WARP;
    b.warp_phase.assign(warps, 0);
    b.collectives.resize(warps);
    b.fibers.resize(b.threads);
    for (unsigned int t = 0; t < b.threads; ++t) {
      b.stacks.emplace_back(new char[FIBER_STACK]);
    }
    Block* outer = g_block;
    g_block = &b;
    unsigned long long random = seed;
    for (unsigned int z = 0; z < b.grid.z && error.empty(); ++z) {
      for (unsigned int y = 0; y < b.grid.y && error.empty(); ++y) {
        for (unsigned int x = 0; x < b.grid.x && error.empty(); ++x) {
          b.index = {x, y, z};
          if (!run_block(b, random)) error = b.message;
        }
      }
    }
    g_block = outer;
  }
  if (error.empty()) return 0;
  std::snprintf(message, message_size, "%s", error.c_str());
  return 1;
}

}  // namespace cudeform_host

// --- CUDA built-ins -----------------------------------------------------------------------

#define threadIdx (::cudeform_host::thread_index())
#define blockIdx (::cudeform_host::block().index)
#define blockDim (::cudeform_host::block().block)
#define gridDim (::cudeform_host::block().grid)

inline void __syncthreads(std::source_location where = std::source_location::current()) {
  cudeform_host::block_barrier({"__syncthreads", where.line()});
}

// A barrier of the calling thread's warp (full mask only); it orders the warp's
// shared-memory accesses as __syncthreads orders the block's.
inline void __syncwarp(unsigned int mask = 0xffffffffu,
                       std::source_location where = std::source_location::current()) {
  const cudeform_host::Site site{"__syncwarp", where.line()};
  if (mask != 0xffffffffu) cudeform_host::fail("only __syncwarp() of the full warp is emulated");
  cudeform_host::warp_collective(site, "", nullptr, [](void* const*) {
    cudeform_host::Block& b = cudeform_host::block();
    ++b.warp_phase[b.current / cudeform_host::WARP];
  });
}

// atomics, __ldg and bit casts: builtins.h, joined after this file.

#endif  // CUDEFORM_TESTS_HOST_BLOCK_SHIM_H
