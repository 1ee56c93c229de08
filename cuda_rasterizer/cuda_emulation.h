// CUDA on the CPU for tests (DGRD_EMULATE_CUDA): kernels run unchanged, threads as fibers.
#pragma once

#ifndef DGRD_EMULATE_CUDA

// nvcc: the two macros expand to exactly what the kernels would write by hand.
#define DGRD_SHARED(Type, name) __shared__ Type name
#define DGRD_SHARED_ARRAY(Type, name, count) __shared__ Type name[count]
#define DGRD_LAUNCH(kernel, grid, block, stream) kernel<<<(grid), (block), 0, (stream)>>>

#else  // DGRD_EMULATE_CUDA: host compiler, no CUDA headers

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

using cudaStream_t = struct CUstream_st*;
enum cudaError_t { cudaSuccess = 0 };
// Emulated launches report errors by throwing, so there is never an error left to fetch.
inline cudaError_t cudaGetLastError() { return cudaSuccess; }

// Events: an emulated launch runs to completion before it returns, so an event is the host's
// clock when it is recorded.
struct CUevent_st {
  std::chrono::steady_clock::time_point at;
};
using cudaEvent_t = CUevent_st*;
inline cudaError_t cudaEventCreate(cudaEvent_t* event) {
  *event = new CUevent_st{};
  return cudaSuccess;
}
inline cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete event;
  return cudaSuccess;
}
inline cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t = nullptr) {
  event->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
inline cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
inline cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  *ms = std::chrono::duration<float, std::milli>(end->at - start->at).count();
  return cudaSuccess;
}
inline cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
inline const char* cudaGetErrorString(cudaError_t) { return "no error"; }

constexpr int warpSize = 32;

// The running fiber's coordinates; the scheduler sets them at every switch (one launch runs at a
// time, see run_grid).
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

namespace dgrd {
namespace emu {

// Every operation a thread waits in: block barriers, then warp collectives.
enum class Op : uint8_t {
  SyncThreads, SyncCount, SyncAnd, SyncOr,  // block
  SyncWarp, ShflIdx, ShflUp, ShflDown, ShflXor, Any, All, Ballot  // warp
};

// Suspends the calling thread until the collective completes; returns its result (the value
// read by a shuffle, the vote, the count). `value` holds the caller's operand bits.
uint64_t collective(Op op, unsigned mask, uint64_t value, int arg, int width, const char* file,
                    int line);

// Storage of one __shared__ variable of the running block, the same for all its threads,
// filled with the poison bytes when the block first asks for it. `key` identifies the variable.
void* shared_storage(const void* key, size_t bytes, size_t align, const char* name);

// Runs body(ctx) once per thread of every block of the grid; throws std::runtime_error naming
// the kernel on a deadlock, a mismatched barrier, a bad collective or an invalid memory access.
void run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* ctx);

// Tests: which kernels a call launches, and on how many blocks. While recording is on, every
// launch appends (the kernel as written at its DGRD_LAUNCH, grid.x, grid.y); take_launches
// returns them and empties the record.
struct LaunchRecord {
  std::string kernel;
  unsigned grid_x, grid_y;
};
void record_launches(bool on);
std::vector<LaunchRecord> take_launches();

// Thread order between sync points, and the order of a grid's blocks: "asc", "desc" or
// "random:SEED" (also read once from the environment variable DGRD_EMU_ORDER). Throws
// std::invalid_argument on anything else.
void set_thread_order(const std::string& order);
std::string thread_order();

// Fills uninitialized "device" memory so that reading it shows: 0xFF bytes (a NaN for floats,
// true-ish garbage for bytes) for floating point and byte buffers, and for 32/64-bit integers
// the pattern MIN + (index & 1), a huge negative index whose consecutive pairs form a
// non-empty range, so an unwritten (begin, end) pair reads far outside any buffer.
// Under valgrind's memcheck the poisoned bytes also count as unwritten until written, as does
// every __shared__ variable when its block starts and a shuffle's value from a lane outside the
// mask, so that memcheck reports a kernel that branches on, or indexes by, such a value.
enum class PoisonKind { Bytes, Int32, Int64 };
void poison(void* data, size_t bytes, PoisonKind kind);

// Under valgrind's memcheck: the offset of the first byte of [data, data + bytes) that nothing
// wrote since it was poisoned, else (and when not under valgrind) -1.
int64_t first_unwritten_byte(const void* data, size_t bytes);
bool tells_valgrind();  // built with valgrind's headers (valgrind/memcheck.h)
bool under_valgrind();  // ... and running under it

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= sizeof(uint64_t) && std::is_trivially_copyable<T>::value,
                "emulated warp collectives take values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

// DGRD_LAUNCH(kernel, grid, block, stream)(args...): copies the arguments once, as CUDA does,
// and calls the kernel with them in every thread.
template <typename Kernel>
struct Launch {
  const char* name;
  Kernel* kernel;
  dim3 grid, block;

  template <typename... Args>
  void operator()(Args&&... args) const {
    using Params = std::tuple<std::decay_t<Args>...>;
    struct Call {
      Kernel* kernel;
      Params* params;
    };
    Params params(std::forward<Args>(args)...);
    Call call{kernel, &params};
    run_grid(name, grid, block,
             [](void* c) {
               auto* call = static_cast<Call*>(c);
               std::apply(*call->kernel, *call->params);
             },
             &call);
  }
};

}  // namespace emu
}  // namespace dgrd

#define DGRD_SHARED(Type, name)                                                          \
  static const char name##_dgrd_shared_key = 0;                                          \
  Type& name = *static_cast<Type*>(::dgrd::emu::shared_storage(                          \
      &name##_dgrd_shared_key, sizeof(Type), alignof(Type), #name))
#define DGRD_SHARED_ARRAY(Type, name, count)                                             \
  static const char name##_dgrd_shared_key = 0;                                          \
  Type(&name)[count] = *static_cast<Type(*)[count]>(::dgrd::emu::shared_storage(         \
      &name##_dgrd_shared_key, sizeof(Type[count]), alignof(Type), #name))
// (`kernel` may also name a pointer to a kernel.)
// The stream is not used (a launch runs before it returns, so launches keep their order) but is
// named, as under nvcc, so that a variable holding it is used in both builds.
#define DGRD_LAUNCH(kernel, grid, block, stream)                                           \
  ((void)(stream), ::dgrd::emu::Launch<std::remove_pointer_t<std::decay_t<decltype(kernel)>>>{ \
                       #kernel, kernel, dim3(grid), dim3(block)})

// ------------------------------------------------------------------ intrinsics the kernels use
// The call site (file, line) of every barrier and collective is recorded for error messages.
#define DGRD_EMU_SITE const char *file = __builtin_FILE(), int line = __builtin_LINE()

inline void __syncthreads(DGRD_EMU_SITE) {
  ::dgrd::emu::collective(::dgrd::emu::Op::SyncThreads, 0, 0, 0, 0, file, line);
}
inline int __syncthreads_count(int predicate, DGRD_EMU_SITE) {
  return int(::dgrd::emu::collective(::dgrd::emu::Op::SyncCount, 0, predicate != 0, 0, 0, file,
                                     line));
}
inline int __syncthreads_and(int predicate, DGRD_EMU_SITE) {
  return int(::dgrd::emu::collective(::dgrd::emu::Op::SyncAnd, 0, predicate != 0, 0, 0, file,
                                     line));
}
inline int __syncthreads_or(int predicate, DGRD_EMU_SITE) {
  return int(::dgrd::emu::collective(::dgrd::emu::Op::SyncOr, 0, predicate != 0, 0, 0, file,
                                     line));
}
inline void __syncwarp(unsigned mask = 0xffffffffu, DGRD_EMU_SITE) {
  ::dgrd::emu::collective(::dgrd::emu::Op::SyncWarp, mask, 0, 0, 32, file, line);
}
inline int __any_sync(unsigned mask, int predicate, DGRD_EMU_SITE) {
  return int(::dgrd::emu::collective(::dgrd::emu::Op::Any, mask, predicate != 0, 0, 32, file,
                                     line));
}
inline int __all_sync(unsigned mask, int predicate, DGRD_EMU_SITE) {
  return int(::dgrd::emu::collective(::dgrd::emu::Op::All, mask, predicate != 0, 0, 32, file,
                                     line));
}
inline unsigned __ballot_sync(unsigned mask, int predicate, DGRD_EMU_SITE) {
  return unsigned(::dgrd::emu::collective(::dgrd::emu::Op::Ballot, mask, predicate != 0, 0, 32,
                                          file, line));
}
template <typename T>
T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize, DGRD_EMU_SITE) {
  return ::dgrd::emu::from_bits<T>(::dgrd::emu::collective(
      ::dgrd::emu::Op::ShflIdx, mask, ::dgrd::emu::to_bits(var), src_lane, width, file, line));
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize, DGRD_EMU_SITE) {
  return ::dgrd::emu::from_bits<T>(::dgrd::emu::collective(
      ::dgrd::emu::Op::ShflUp, mask, ::dgrd::emu::to_bits(var), int(delta), width, file, line));
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize, DGRD_EMU_SITE) {
  return ::dgrd::emu::from_bits<T>(::dgrd::emu::collective(
      ::dgrd::emu::Op::ShflDown, mask, ::dgrd::emu::to_bits(var), int(delta), width, file, line));
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize, DGRD_EMU_SITE) {
  return ::dgrd::emu::from_bits<T>(::dgrd::emu::collective(
      ::dgrd::emu::Op::ShflXor, mask, ::dgrd::emu::to_bits(var), lane_mask, width, file, line));
}
#undef DGRD_EMU_SITE

// Atomics: the threads of all blocks run on one OS thread and switch only at sync points, so a
// plain read-modify-write is atomic.
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}
template <typename T>
T atomicMax(T* address, T value) {
  const T old = *address;
  if (value > old) *address = value;
  return old;
}
template <typename T>
T atomicMin(T* address, T value) {
  const T old = *address;
  if (value < old) *address = value;
  return old;
}
template <typename T>
T atomicExch(T* address, T value) {
  const T old = *address;
  *address = value;
  return old;
}
template <typename T>
T atomicCAS(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

template <typename To, typename From>
To dgrd_emu_bit_cast(From v) {
  return ::dgrd::emu::from_bits<To>(::dgrd::emu::to_bits(v));
}
// 1 + the index of the lowest set bit, 0 for none (CUDA's __ffs). A plain loop: MSVC, which
// also compiles the kernels as C++ (tools/check_msvc_build.py), has no __builtin_ffs.
inline int __ffs(int x) {
  unsigned v = unsigned(x);
  if (v == 0) return 0;
  int index = 1;
  for (; (v & 1u) == 0; v >>= 1) ++index;
  return index;
}
// The number of set bits (CUDA's __popc), a plain loop for the same reason.
inline int __popc(unsigned x) {
  int count = 0;
  for (; x != 0; x &= x - 1) ++count;
  return count;
}
inline unsigned __float_as_uint(float v) { return dgrd_emu_bit_cast<unsigned>(v); }
inline int __float_as_int(float v) { return dgrd_emu_bit_cast<int>(v); }
inline float __uint_as_float(unsigned v) { return dgrd_emu_bit_cast<float>(v); }
inline float __int_as_float(int v) { return dgrd_emu_bit_cast<float>(v); }

// CUDA's integer and float min/max overloads.
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return a < b ? a : b; }
inline float max(float a, float b) { return a > b ? a : b; }

// ---------------------------------------------------------------- host versions of the CUB calls
// Same contracts as CUB: with temp == nullptr only temp_bytes is set; the sort is a stable LSD
// radix sort over key bits [begin_bit, end_bit) that uses the caller's temp memory.
namespace cub {

struct DeviceScan {
  template <typename In, typename Out>
  static cudaError_t InclusiveSum(void* temp, size_t& temp_bytes, In in, Out out, int count,
                                  cudaStream_t = nullptr) {
    using Value = std::decay_t<decltype(*out)>;
    if (temp == nullptr) {
      temp_bytes = sizeof(Value);
      return cudaSuccess;
    }
    Value* running = static_cast<Value*>(temp);  // the scratch is really used
    *running = Value(0);
    for (int i = 0; i < count; ++i) {
      *running = *running + Value(in[i]);
      out[i] = *running;
    }
    return cudaSuccess;
  }
};

// Two arrays of one sort's keys (or values); `selector` names the one that holds them.
template <typename T>
struct DoubleBuffer {
  T* d_buffers[2] = {nullptr, nullptr};
  int selector = 0;
  DoubleBuffer() = default;
  DoubleBuffer(T* current, T* alternate) : d_buffers{current, alternate} {}
  T* Current() const { return d_buffers[selector]; }
  T* Alternate() const { return d_buffers[selector ^ 1]; }
};

// CUB sorts up to this many items in one block (its single-tile path, SM 9.0's policy: 256
// threads x 19 items), which leaves a DoubleBuffer's data in the other buffer whatever the bits.
constexpr int kSingleTileItems = 256 * 19;

struct DeviceRadixSort {
  // In place (CUB's DoubleBuffer form): no scratch copy of the data, each pass moving keys and
  // values to the other buffer, as CUB's passes do; the single-tile path moves them once. So the
  // sorted data ends in either buffer, as on a GPU, and callers must read `selector`.
  template <typename Key, typename Value>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, DoubleBuffer<Key>& keys,
                               DoubleBuffer<Value>& values, int count, int begin_bit = 0,
                               int end_bit = int(sizeof(Key) * 8), cudaStream_t = nullptr) {
    static_assert(std::is_unsigned<Key>::value, "emulated SortPairs takes unsigned keys");
    const size_t n = size_t(count > 0 ? count : 0);
    const int passes = (end_bit - begin_bit + 7) / 8;
    if (temp == nullptr) {
      temp_bytes = size_t(passes) * 257 * sizeof(size_t);  // digit counts, as CUB's bins
      return cudaSuccess;
    }
    if (n == 0) return cudaSuccess;
    auto* start = static_cast<size_t*>(temp);  // the scratch is really used
    for (int bit = begin_bit; bit < end_bit; bit += 8, start += 257) {
      const int bits = end_bit - bit < 8 ? end_bit - bit : 8;
      const Key digit_mask = Key((1u << bits) - 1);
      std::fill(start, start + 257, size_t(0));
      const Key* src_k = keys.Current();
      const Value* src_v = values.Current();
      for (size_t i = 0; i < n; ++i) ++start[((src_k[i] >> bit) & digit_mask) + 1];
      for (int d = 0; d < 256; ++d) start[d + 1] += start[d];
      for (size_t i = 0; i < n; ++i) {
        const size_t to = start[(src_k[i] >> bit) & digit_mask]++;
        keys.Alternate()[to] = src_k[i];
        values.Alternate()[to] = src_v[i];
      }
      keys.selector ^= 1;
      values.selector ^= 1;
    }
    if (count <= kSingleTileItems && passes % 2 == 0) {  // one move in all, not `passes`
      std::copy(keys.Current(), keys.Current() + n, keys.Alternate());
      std::copy(values.Current(), values.Current() + n, values.Alternate());
      keys.selector ^= 1;
      values.selector ^= 1;
    }
    return cudaSuccess;
  }
};

}  // namespace cub

// Thrust's permutation iterator, as far as the emulated scan reads it: element k is
// values[order[k]].
namespace thrust {

template <typename Values, typename Order>
struct permutation_iterator {
  Values values;
  Order order;
  decltype(auto) operator[](std::ptrdiff_t k) const { return values[order[k]]; }
};

template <typename Values, typename Order>
permutation_iterator<Values, Order> make_permutation_iterator(Values values, Order order) {
  return {values, order};
}

}  // namespace thrust

#endif  // DGRD_EMULATE_CUDA
