// Runtime of the CUDA emulation: fibers, the block scheduler, collectives, shared memory, poison.
#include "cuda_emulation.h"

#include <setjmp.h>
#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <climits>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>

#if defined(__SANITIZE_ADDRESS__)
#define DGRD_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define DGRD_EMU_ASAN 1
#endif
#endif
#ifdef DGRD_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

// Under valgrind's memcheck (tools/sanitize_cuda.py --valgrind), poisoned memory is marked
// unwritten as well, so that a kernel that branches on, or indexes by, a value nothing wrote is
// reported where it does so: compute-sanitizer's initcheck, and more (shared memory, shuffles),
// for the emulation. The NaN poison alone can pass unseen through a comparison (a splat whose
// alpha test fails). Not under valgrind the requests are a few instructions that do nothing.
#if defined(__has_include) && !defined(DGRD_EMU_ASAN)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define DGRD_EMU_VALGRIND 1
#endif
#endif

// glibc's swapcontext makes a system call (the signal mask) per switch; the kernels switch at
// every shuffle, so on x86-64 a six-register switch is used instead.
#if defined(__x86_64__) && !defined(DGRD_EMU_UCONTEXT)
#define DGRD_EMU_ASM_SWITCH 1
#else
#include <ucontext.h>
#endif

#ifdef DGRD_EMU_ASM_SWITCH
// Saves the callee-saved registers and the FPU/SSE control words on the current stack, stores
// the stack pointer in *save, and resumes the stack `load` (saved the same way).
extern "C" void dgrd_emu_switch(void** save, void* load);
asm(R"(
.text
.p2align 4
.globl dgrd_emu_switch
.hidden dgrd_emu_switch
.type dgrd_emu_switch,@function
dgrd_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $16, %rsp
  fnstcw (%rsp)
  stmxcsr 8(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  fldcw (%rsp)
  ldmxcsr 8(%rsp)
  addq $16, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size dgrd_emu_switch, .-dgrd_emu_switch
.section .note.GNU-stack,"",@progbits
.text
)");
#endif

namespace dgrd {
namespace emu {

namespace {

enum class Order { Ascending, Descending, Random };
enum class State : uint8_t { Runnable, AtBarrier, AtWarp, Exited };

constexpr int kMaxThreads = 1024;
constexpr size_t kStaticSharedLimit = 48 * 1024;  // what a block may declare statically
constexpr size_t kSharedRedzone = 64;             // poisoned under ASan between variables
#ifdef DGRD_EMU_ASAN
constexpr size_t kStackBytes = size_t(1) << 20;  // ASan frames carry redzones
#else
constexpr size_t kStackBytes = size_t(256) << 10;
#endif

bool is_block_op(Op op) { return op <= Op::SyncOr; }

const char* op_name(Op op) {
  switch (op) {
    case Op::SyncThreads: return "__syncthreads";
    case Op::SyncCount: return "__syncthreads_count";
    case Op::SyncAnd: return "__syncthreads_and";
    case Op::SyncOr: return "__syncthreads_or";
    case Op::SyncWarp: return "__syncwarp";
    case Op::ShflIdx: return "__shfl_sync";
    case Op::ShflUp: return "__shfl_up_sync";
    case Op::ShflDown: return "__shfl_down_sync";
    case Op::ShflXor: return "__shfl_xor_sync";
    case Op::Any: return "__any_sync";
    case Op::All: return "__all_sync";
    case Op::Ballot: return "__ballot_sync";
  }
  return "?";
}

// [data, data + bytes) counts as unwritten for valgrind's memcheck (its bytes keep the poison).
void mark_unwritten(const void* data, size_t bytes) {
#ifdef DGRD_EMU_VALGRIND
  VALGRIND_MAKE_MEM_UNDEFINED(data, bytes);
#else
  (void)data;
  (void)bytes;
#endif
}

const char* base_name(const char* path) {
  const char* slash = std::strrchr(path, '/');
  return slash ? slash + 1 : path;
}

struct Fiber {
#ifdef DGRD_EMU_ASM_SWITCH
  void* sp = nullptr;
#else
  ucontext_t context;
#endif
  char* stack = nullptr;  // [stack, stack + kStackBytes), a guard page below
  unsigned valgrind_stack = 0;  // its id for valgrind, which must know a fiber's stack
  uint3 idx{};
  int linear = 0;
  State state = State::Exited;
  // The collective it waits in.
  Op op = Op::SyncThreads;
  unsigned mask = 0;
  uint64_t value = 0;
  int arg = 0, width = 32;
  const char* file = "";
  int line = 0;
  uint64_t result = 0;
  void* fake_stack = nullptr;  // ASan's, while switched out

  bool same_call(const Fiber& o) const {
    // Lanes may pass different source lanes or deltas, as on a GPU.
    return op == o.op && mask == o.mask && line == o.line &&
           (file == o.file || std::strcmp(file, o.file) == 0);
  }
  std::string describe() const {
    std::ostringstream s;
    if (state == State::Exited) return "exited";
    if (state == State::Runnable) return "running";
    s << op_name(op);
    if (!is_block_op(op)) {
      char hex[16];
      std::snprintf(hex, sizeof hex, "0x%08x", mask);
      s << "(mask " << hex << ")";
    }
    s << " at " << base_name(file) << ":" << line;
    return s.str();
  }
};

struct SharedVariable {
  const void* key;
  size_t offset, bytes;
};

struct Settings {
  Order order = Order::Ascending;
  uint64_t seed = 0;
  std::string text = "asc";
};

Settings parse_order(const std::string& text) {
  Settings s;
  s.text = text;
  if (text == "asc") {
    s.order = Order::Ascending;
  } else if (text == "desc") {
    s.order = Order::Descending;
  } else if (text.rfind("random:", 0) == 0 && text.size() > 7 &&
             text.find_first_not_of("0123456789", 7) == std::string::npos) {
    s.order = Order::Random;
    s.seed = std::stoull(text.substr(7));
  } else {
    throw std::invalid_argument("CUDA emulation: thread order must be 'asc', 'desc' or "
                                "'random:SEED', got '" + text + "'");
  }
  return s;
}

Settings& settings() {
  static Settings s = [] {
    const char* env = std::getenv("DGRD_EMU_ORDER");
    return env && *env ? parse_order(env) : Settings{};
  }();
  return s;
}

std::mt19937_64& order_rng() {
  static std::mt19937_64 rng(settings().seed);
  return rng;
}

// The emulated device: the fibers of the running block and the scheduler's state. One launch
// runs at a time (run_grid holds launch_mutex), so plain globals serve, without the cost of
// thread-local access at every switch.
struct Runtime {
  std::vector<Fiber> fibers = std::vector<Fiber>(kMaxThreads);
  int stacks_mapped = 0;
#ifdef DGRD_EMU_ASM_SWITCH
  void* main_sp = nullptr;
#else
  ucontext_t main_context;
#endif
  const void* main_stack_bottom = nullptr;
  size_t main_stack_size = 0;
  Fiber* current = nullptr;

  const char* kernel = "";
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  int threads = 0;
  uint64_t runnable[kMaxThreads / 64] = {};
  int runnable_count = 0;
  std::string failure;  // a misuse found while a fiber ran

  unsigned char* shared_arena = nullptr;
  size_t shared_capacity = 0, shared_used = 0, shared_declared = 0;
  std::vector<SharedVariable> shared_vars;

  ~Runtime() {
    for (int i = 0; i < stacks_mapped; ++i) {
#ifdef DGRD_EMU_VALGRIND
      VALGRIND_STACK_DEREGISTER(fibers[i].valgrind_stack);
#endif
      munmap(fibers[i].stack - page_size(), kStackBytes + page_size());
    }
    std::free(shared_arena);
  }
  static size_t page_size() { return size_t(sysconf(_SC_PAGESIZE)); }
};

Runtime rt;
std::mutex launch_mutex;

struct LaunchLog {
  bool on = false;
  std::vector<LaunchRecord> launches;
};
LaunchLog& launch_record() {
  static LaunchLog log;
  return log;
}

[[noreturn]] void fiber_main();

void ensure_stacks(int count) {
  const size_t page = Runtime::page_size();
  for (; rt.stacks_mapped < count; ++rt.stacks_mapped) {
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);  // an overflow faults instead of corrupting a neighbour
    Fiber& f = rt.fibers[rt.stacks_mapped];
    f.stack = static_cast<char*>(p) + page;
#ifdef DGRD_EMU_VALGRIND
    f.valgrind_stack = VALGRIND_STACK_REGISTER(f.stack, f.stack + kStackBytes);
#endif
  }
}

// A fresh context that starts in fiber_main on the fiber's own stack.
void reset_context(Fiber& f) {
#ifdef DGRD_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(f.stack, kStackBytes);  // redzones of an earlier thread's frames
#endif
  f.fake_stack = nullptr;
#ifdef DGRD_EMU_ASM_SWITCH
  // The frame dgrd_emu_switch pops: control words, six registers, then the "return" into
  // fiber_main, entered with the stack aligned as after a call.
  auto top = reinterpret_cast<uintptr_t>(f.stack + kStackBytes) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top - 80);
  uint16_t fpu_control = 0;
  uint32_t sse_control = 0;
  asm volatile("fnstcw %0" : "=m"(fpu_control));
  asm volatile("stmxcsr %0" : "=m"(sse_control));
  frame[0] = fpu_control;
  frame[1] = sse_control;
  for (int r = 2; r < 8; ++r) frame[r] = 0;
  frame[8] = reinterpret_cast<uint64_t>(&fiber_main);
  frame[9] = 0;
  f.sp = frame;
#else
  getcontext(&f.context);
  f.context.uc_stack.ss_sp = f.stack;
  f.context.uc_stack.ss_size = kStackBytes;
  f.context.uc_link = nullptr;
  makecontext(&f.context, reinterpret_cast<void (*)()>(&fiber_main), 0);
#endif
}

void switch_to(Fiber& f) {
  rt.current = &f;
  threadIdx = f.idx;
#ifdef DGRD_EMU_ASAN
  void* main_fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&main_fake_stack, f.stack, kStackBytes);
#endif
#ifdef DGRD_EMU_ASM_SWITCH
  dgrd_emu_switch(&rt.main_sp, f.sp);
#else
  swapcontext(&rt.main_context, &f.context);
#endif
#ifdef DGRD_EMU_ASAN
  __sanitizer_finish_switch_fiber(main_fake_stack, nullptr, nullptr);
#endif
  rt.current = nullptr;
}

// From a fiber back to the scheduler; returns when the scheduler resumes it.
void yield_to_scheduler(Fiber& f, bool for_good) {
#ifdef DGRD_EMU_ASAN
  __sanitizer_start_switch_fiber(for_good ? nullptr : &f.fake_stack, rt.main_stack_bottom,
                                 rt.main_stack_size);
#else
  (void)for_good;
#endif
#ifdef DGRD_EMU_ASM_SWITCH
  dgrd_emu_switch(&f.sp, rt.main_sp);
#else
  swapcontext(&f.context, &rt.main_context);
#endif
#ifdef DGRD_EMU_ASAN
  __sanitizer_finish_switch_fiber(f.fake_stack, &rt.main_stack_bottom, &rt.main_stack_size);
#endif
}

[[noreturn]] void fiber_main() {
  Fiber& f = *rt.current;
#ifdef DGRD_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &rt.main_stack_bottom, &rt.main_stack_size);
#endif
  try {
    rt.body(rt.ctx);
  } catch (const std::exception& e) {
    rt.failure = std::string("a thread threw: ") + e.what();
  } catch (...) {
    rt.failure = "a thread threw an exception";
  }
  f.state = State::Exited;
  yield_to_scheduler(f, true);
  std::abort();  // an exited fiber is never resumed
}

// ------------------------------------------------------------------------------ run queue
void make_runnable(Fiber& f) {
  f.state = State::Runnable;
  rt.runnable[f.linear / 64] |= uint64_t(1) << (f.linear % 64);
  ++rt.runnable_count;
}

// The next thread to run, by the configured order; -1 when none is runnable.
int pick_runnable() {
  if (rt.runnable_count == 0) return -1;
  const int words = (rt.threads + 63) / 64;
  int chosen = -1;
  switch (settings().order) {
    case Order::Ascending:
      for (int w = 0; w < words && chosen < 0; ++w)
        if (rt.runnable[w]) chosen = w * 64 + __builtin_ctzll(rt.runnable[w]);
      break;
    case Order::Descending:
      for (int w = words - 1; w >= 0 && chosen < 0; --w)
        if (rt.runnable[w]) chosen = w * 64 + 63 - __builtin_clzll(rt.runnable[w]);
      break;
    case Order::Random: {
      int k = int(order_rng()() % uint64_t(rt.runnable_count));
      for (int w = 0; w < words && chosen < 0; ++w) {
        uint64_t bits = rt.runnable[w];
        const int n = __builtin_popcountll(bits);
        if (k >= n) {
          k -= n;
          continue;
        }
        for (; k > 0; --k) bits &= bits - 1;
        chosen = w * 64 + __builtin_ctzll(bits);
      }
      break;
    }
  }
  rt.runnable[chosen / 64] &= ~(uint64_t(1) << (chosen % 64));
  --rt.runnable_count;
  return chosen;
}

// ------------------------------------------------------------------------------ errors
std::string where() {
  std::ostringstream s;
  s << "CUDA emulation: kernel '" << rt.kernel << "', block (" << blockIdx.x << ", "
    << blockIdx.y << ", " << blockIdx.z << ") of (" << gridDim.x << ", " << gridDim.y << ", "
    << gridDim.z << "), " << rt.threads << " threads per block: ";
  return s.str();
}

// Every thread's state, consecutive threads in the same state on one line.
std::string thread_states() {
  std::ostringstream s;
  int first = 0;
  std::string what = rt.fibers[0].describe();
  for (int t = 1; t <= rt.threads; ++t) {
    const std::string next = t < rt.threads ? rt.fibers[t].describe() : std::string();
    if (t < rt.threads && next == what) continue;
    s << "\n  thread" << (t - 1 > first ? "s " : " ") << first;
    if (t - 1 > first) s << "-" << t - 1;
    s << ": " << what;
    first = t;
    what = next;
  }
  return s.str();
}

[[noreturn]] void fail(const std::string& message) {
  throw std::runtime_error(where() + message + thread_states());
}

// ------------------------------------------------------------------------------ collectives
bool lane_active(int t) { return t < rt.threads && rt.fibers[t].state != State::Exited; }

// Completes the warp collective `f` waits in once every active lane of its mask waits in the
// same call; lanes of the mask that exited (or do not exist) take no part.
void try_complete_warp(Fiber& f) {
  const int base = f.linear / 32 * 32;
  unsigned present = 0;
  for (int lane = 0; lane < 32; ++lane) {
    if (!((f.mask >> lane) & 1u)) continue;
    const int t = base + lane;
    if (!lane_active(t)) continue;
    const Fiber& o = rt.fibers[t];
    if (o.state != State::AtWarp || !o.same_call(f)) return;
    present |= 1u << lane;
  }
  uint64_t vote = 0;
  bool all = true;
  for (int lane = 0; lane < 32; ++lane)
    if ((present >> lane) & 1u) {
      const bool p = rt.fibers[base + lane].value != 0;
      vote |= uint64_t(p) << lane;
      all = all && p;
    }
  for (int lane = 0; lane < 32; ++lane) {
    if (!((present >> lane) & 1u)) continue;
    Fiber& me = rt.fibers[base + lane];
    const int w = me.width, segment = lane & ~(w - 1), offset = lane & (w - 1);
    int src = lane;
    switch (me.op) {
      case Op::Any: me.result = vote != 0; break;
      case Op::All: me.result = all; break;
      case Op::Ballot: me.result = vote; break;
      case Op::SyncWarp: me.result = 0; break;
      case Op::ShflIdx: src = segment + (me.arg & (w - 1)); break;
      case Op::ShflUp: src = offset >= me.arg ? lane - me.arg : lane; break;
      case Op::ShflDown: src = offset + me.arg < w ? lane + me.arg : lane; break;
      case Op::ShflXor:
        src = lane ^ me.arg;
        if (src >= segment + w || src > 31) src = lane;  // later groups are out of reach
        break;
      default: break;
    }
    if (me.op >= Op::ShflIdx && me.op <= Op::ShflXor) {
      // A lane outside the mask or exited gives an undefined value on a GPU: poison here.
      if (src == lane || ((present >> src) & 1u)) {
        me.result = rt.fibers[base + src].value;
      } else {
        me.result = ~uint64_t(0);
        mark_unwritten(&me.result, sizeof(me.result));
      }
    }
  }
  for (int lane = 0; lane < 32; ++lane)
    if ((present >> lane) & 1u) make_runnable(rt.fibers[base + lane]);
}

// Nothing can run: every live thread waits. Either all wait at the same block barrier, which
// then completes, or the block can never go on. A barrier that threads of the block exited
// before is an error too: CUDA allows __syncthreads in conditional code only where the
// condition is the same for the whole block, and an early return is such a condition.
void complete_barrier_or_fail() {
  const Fiber* first = nullptr;
  bool exited = false;
  for (int t = 0; t < rt.threads; ++t) {
    const Fiber& f = rt.fibers[t];
    if (f.state == State::Exited) {
      exited = true;
      continue;
    }
    if (f.state == State::AtWarp)
      fail("deadlock: a warp collective waits for lanes of its mask that are elsewhere "
           "(divergent lanes, or lanes waiting at a barrier or at another collective)");
    if (!first) first = &f;
    else if (!f.same_call(*first))
      fail("mismatched barriers: the threads of the block wait at different barriers");
  }
  if (exited && first)
    fail("a barrier that some threads of the block never reach: they exited before it");
  uint64_t count = 0;
  int live = 0;
  for (int t = 0; t < rt.threads; ++t)
    if (rt.fibers[t].state == State::AtBarrier) {
      count += rt.fibers[t].value != 0;
      ++live;
    }
  uint64_t result = 0;
  switch (first->op) {
    case Op::SyncCount: result = count; break;
    case Op::SyncAnd: result = count == uint64_t(live); break;
    case Op::SyncOr: result = count != 0; break;
    default: break;
  }
  for (int t = 0; t < rt.threads; ++t) {
    Fiber& f = rt.fibers[t];
    if (f.state != State::AtBarrier) continue;
    f.result = result;
    make_runnable(f);
  }
}

void reset_shared() {
  rt.shared_vars.clear();
  rt.shared_used = rt.shared_declared = 0;
#ifdef DGRD_EMU_ASAN
  if (rt.shared_arena) ASAN_POISON_MEMORY_REGION(rt.shared_arena, rt.shared_capacity);
#endif
}

void run_block(uint3 block) {
  blockIdx = block;
  reset_shared();
  for (auto& w : rt.runnable) w = 0;
  rt.runnable_count = 0;
  for (int t = 0; t < rt.threads; ++t) {
    Fiber& f = rt.fibers[t];
    f.linear = t;
    f.idx = {unsigned(t) % blockDim.x, unsigned(t) / blockDim.x % blockDim.y,
             unsigned(t) / (blockDim.x * blockDim.y)};
    reset_context(f);
    make_runnable(f);
  }
  int live = rt.threads;
  while (live > 0) {
    const int t = pick_runnable();
    if (t < 0) {
      complete_barrier_or_fail();
      continue;
    }
    Fiber& f = rt.fibers[t];
    switch_to(f);
    if (!rt.failure.empty()) fail(rt.failure);
    if (f.state == State::Exited) {
      --live;
      // Lanes waiting for this one in a collective no longer need it.
      const int base = t / 32 * 32;
      for (int o = base; o < base + 32 && o < rt.threads; ++o)
        if (rt.fibers[o].state == State::AtWarp) try_complete_warp(rt.fibers[o]);
    } else if (f.state == State::AtWarp) {
      try_complete_warp(f);
    }
  }
}

// ------------------------------------------------------------------------------ faults
// An invalid access of a kernel becomes an error of the launch (as cudaErrorIllegalAddress),
// not a crash of the process. Not under ASan, which reports such accesses itself.
#ifndef DGRD_EMU_ASAN
thread_local sigjmp_buf* fault_jump = nullptr;
thread_local int fault_signal = 0;
thread_local void* fault_address = nullptr;
struct sigaction previous_segv, previous_bus;  // restored after the launch

void on_fault(int sig, siginfo_t* info, void*) {
  if (fault_jump) {
    fault_signal = sig;
    fault_address = info->si_addr;
    siglongjmp(*fault_jump, 1);
  }
  // Another thread's fault: hand it to the handler from before the launch, which runs when the
  // faulting instruction is retried.
  sigaction(sig, sig == SIGBUS ? &previous_bus : &previous_segv, nullptr);
}

struct FaultCapture {
  stack_t old_stack;
  FaultCapture() {
    static thread_local std::unique_ptr<char[]> alt(new char[1 << 16]);
    stack_t stack{};
    stack.ss_sp = alt.get();
    stack.ss_size = 1 << 16;
    sigaltstack(&stack, &old_stack);  // the fault may be a fiber's stack overflow
    struct sigaction action{};
    action.sa_sigaction = on_fault;
    action.sa_flags = SA_SIGINFO | SA_ONSTACK;
    sigemptyset(&action.sa_mask);
    sigaction(SIGSEGV, &action, &previous_segv);
    sigaction(SIGBUS, &action, &previous_bus);
  }
  ~FaultCapture() {
    fault_jump = nullptr;
    sigaction(SIGSEGV, &previous_segv, nullptr);
    sigaction(SIGBUS, &previous_bus, nullptr);
    sigaltstack(&old_stack, nullptr);
  }
};
#endif

// The grid's blocks one after another, in the configured order too: a GPU runs them in any
// order, at once, so a block that reads what another block of the same launch writes works in
// one order and shows in another (the suite's `desc` runs every grid backwards).
void run_blocks() {
  const uint64_t gx = gridDim.x, gy = gridDim.y, count = gx * gy * gridDim.z;
  std::vector<uint64_t> order;
  if (settings().order == Order::Random) {
    order.resize(count);
    for (uint64_t b = 0; b < count; ++b) order[b] = b;
    std::shuffle(order.begin(), order.end(), order_rng());
  }
  for (uint64_t k = 0; k < count; ++k) {
    const uint64_t b = settings().order == Order::Ascending    ? k
                       : settings().order == Order::Descending ? count - 1 - k
                                                               : order[k];
    run_block({unsigned(b % gx), unsigned(b / gx % gy), unsigned(b / (gx * gy))});
  }
}

}  // namespace

// ------------------------------------------------------------------------------ public API
uint64_t collective(Op op, unsigned mask, uint64_t value, int arg, int width, const char* file,
                    int line) {
  Fiber& f = *rt.current;
  f.op = op;
  f.mask = mask;
  f.value = value;
  f.arg = arg;
  f.width = width;
  f.file = file;
  f.line = line;
  f.state = is_block_op(op) ? State::AtBarrier : State::AtWarp;
  const int lane = f.linear % 32;
  const bool outside_mask = !((mask >> lane) & 1u);
  const bool bad_width = width < 1 || width > 32 || (width & (width - 1)) != 0;
  if (!is_block_op(op) && (outside_mask || bad_width)) {
    {  // destroyed before the fiber is left for good
      std::ostringstream bad;
      bad << op_name(op) << " at " << base_name(file) << ":" << line << ": ";
      if (outside_mask)
        bad << "lane " << lane << " of thread " << f.linear << " is not in its own mask";
      else
        bad << "width " << width << " is not a power of two up to 32";
      rt.failure = bad.str();
    }
    f.state = State::Exited;
    yield_to_scheduler(f, true);
    std::abort();
  }
  yield_to_scheduler(f, false);
  return f.result;
}

void* shared_storage(const void* key, size_t bytes, size_t align, const char* name) {
  for (const SharedVariable& v : rt.shared_vars)
    if (v.key == key) return rt.shared_arena + v.offset;
  if (!rt.shared_arena) {
    rt.shared_capacity = kStaticSharedLimit + 64 * kSharedRedzone + 4096;
    rt.shared_arena = static_cast<unsigned char*>(std::aligned_alloc(4096, rt.shared_capacity));
#ifdef DGRD_EMU_ASAN
    ASAN_POISON_MEMORY_REGION(rt.shared_arena, rt.shared_capacity);
#endif
  }
  rt.shared_declared += bytes;
  const size_t offset = (rt.shared_used + align - 1) / align * align;
  if (rt.shared_declared > kStaticSharedLimit ||
      offset + bytes + kSharedRedzone > rt.shared_capacity) {
    rt.failure = std::string("__shared__ ") + name + ": the block's shared variables take " +
                 std::to_string(rt.shared_declared) + " bytes, more than the 48 KiB allowed";
    Fiber& f = *rt.current;
    f.state = State::Exited;
    yield_to_scheduler(f, true);
    std::abort();
  }
#ifdef DGRD_EMU_ASAN
  ASAN_UNPOISON_MEMORY_REGION(rt.shared_arena + offset, bytes);
#endif
  std::memset(rt.shared_arena + offset, 0xFF, bytes);
  mark_unwritten(rt.shared_arena + offset, bytes);
  rt.shared_vars.push_back({key, offset, bytes});
  rt.shared_used = offset + bytes + kSharedRedzone;
  return rt.shared_arena + offset;
}

void run_grid(const char* kernel, dim3 grid, dim3 block, void (*body)(void*), void* ctx) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (threads == 0 || threads > uint64_t(kMaxThreads) || grid.x == 0 || grid.y == 0 ||
      grid.z == 0 || grid.y > 65535 || grid.z > 65535)
    throw std::runtime_error(std::string("CUDA emulation: kernel '") + kernel +
                             "': invalid launch configuration (grid " + std::to_string(grid.x) +
                             "x" + std::to_string(grid.y) + "x" + std::to_string(grid.z) +
                             ", block " + std::to_string(block.x) + "x" +
                             std::to_string(block.y) + "x" + std::to_string(block.z) + ")");
  if (rt.current) throw std::runtime_error("CUDA emulation: a kernel launched another kernel");
  const std::lock_guard<std::mutex> one_launch_at_a_time(launch_mutex);
  if (launch_record().on) launch_record().launches.push_back({kernel, grid.x, grid.y});
  ensure_stacks(int(threads));
  rt.kernel = kernel;
  rt.body = body;
  rt.ctx = ctx;
  rt.threads = int(threads);
  rt.failure.clear();
  // Every launch starts the random order afresh: a launch's schedule depends on the seed only,
  // not on what ran before, so a failing test replays alone and equal inputs render equally.
  order_rng().seed(settings().seed);
  gridDim = grid;
  blockDim = block;
#ifdef DGRD_EMU_ASAN
  run_blocks();
#else
  FaultCapture capture;
  sigjmp_buf jump;
  if (sigsetjmp(jump, 1)) {
    const Fiber* f = rt.current;
    rt.current = nullptr;
    std::ostringstream s;
    s << "invalid memory access (" << (fault_signal == SIGBUS ? "SIGBUS" : "SIGSEGV")
      << " at address " << fault_address << ")";
    if (f) s << " in thread (" << f->idx.x << ", " << f->idx.y << ", " << f->idx.z << ")";
    s << ", or a fiber stack overflow";
    throw std::runtime_error(where() + s.str());
  }
  fault_jump = &jump;
  run_blocks();
#endif
}

void record_launches(bool on) {
  const std::lock_guard<std::mutex> lock(launch_mutex);
  launch_record().on = on;
  launch_record().launches.clear();
}

std::vector<LaunchRecord> take_launches() {
  const std::lock_guard<std::mutex> lock(launch_mutex);
  return std::exchange(launch_record().launches, {});
}

void set_thread_order(const std::string& order) { settings() = parse_order(order); }

std::string thread_order() { return settings().text; }

int64_t first_unwritten_byte(const void* data, size_t bytes) {
#ifdef DGRD_EMU_VALGRIND
  // Nonzero: the address of the first byte memcheck counts as unwritten (also reported by
  // valgrind as an error, with the caller's stack).
  const uintptr_t at = VALGRIND_CHECK_MEM_IS_DEFINED(data, bytes);
  if (at != 0) return int64_t(at - reinterpret_cast<uintptr_t>(data));
#else
  (void)data;
  (void)bytes;
#endif
  return -1;
}

bool tells_valgrind() {
#ifdef DGRD_EMU_VALGRIND
  return true;
#else
  return false;
#endif
}

bool under_valgrind() {
#ifdef DGRD_EMU_VALGRIND
  return RUNNING_ON_VALGRIND != 0;
#else
  return false;
#endif
}

void poison(void* data, size_t bytes, PoisonKind kind) {
  switch (kind) {
    case PoisonKind::Bytes:
      std::memset(data, 0xFF, bytes);
      break;
    case PoisonKind::Int32: {
      auto* p = static_cast<int32_t*>(data);
      for (size_t i = 0; i < bytes / 4; ++i) p[i] = INT32_MIN + int32_t(i & 1);
      break;
    }
    case PoisonKind::Int64: {
      auto* p = static_cast<int64_t*>(data);
      for (size_t i = 0; i < bytes / 8; ++i) p[i] = INT64_MIN + int64_t(i & 1);
      break;
    }
  }
  mark_unwritten(data, bytes);
}

}  // namespace emu
}  // namespace dgrd
