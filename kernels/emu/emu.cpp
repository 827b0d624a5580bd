// emu.cpp: the runtime behind cuda_emu.h. One launch runs on the calling OS thread: blocks in sequence, the
// threads of a block as ucontext fibers driven by a round-robin scheduler (forward or reverse order). All
// state is thread_local, so concurrent launches (cargo test threads) do not interact.
#include "cuda_emu.h"

#include <dlfcn.h>
#include <pthread.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#if INCEPTION_CUDA_EMU_RACECHECK
#define EMU_RACECHECK 1
#else
#define EMU_RACECHECK 0
#endif

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

namespace emu {
namespace {

constexpr std::size_t kStack = 64 * 1024;
constexpr std::size_t kGuard = 64;  // bytes after the dynamic shared buffer, checked after each block
constexpr unsigned char kGuardByte = 0xA5;

enum class State { Ready, AtBarrier, AtWarp, Done };

struct Fiber {
  ucontext_t ctx;
  char* stack = nullptr;
  uint3 tid{};
  unsigned int linear = 0;
  State state = State::Ready;
  // Warp rendezvous of the op this fiber waits in.
  unsigned long long warp_seq = 0;  // warp ops this lane has entered
  unsigned int wait_mask = 0;
  unsigned long long slot[2] = {0, 0};  // deposited values, by warp_seq parity
  // cp.async copies issued and not yet completed: the source is read at the issue, the destination written at
  // the wait that completes the copy's group (so a read of the destination before that wait, or by another
  // thread before the barrier after it, sees the old contents).
  struct PendingCopy {
    void* dst;
    unsigned char data[16];
    unsigned int bytes;
    unsigned long long group;  // the commit group: open_group at the issue
  };
  std::vector<PendingCopy> pending;
  unsigned long long open_group = 0;  // groups committed so far (the id of the group being filled)
  unsigned int warp_syncs = 0;        // __syncwarp()s this lane has completed (racecheck: orders its warp)
};

struct Block {
  Launch cfg{};
  dim3 grid{}, block{};
  uint3 block_idx{};
  std::vector<Fiber> fibers;
  Fiber* current = nullptr;
  ucontext_t scheduler;
  void (*body)(void*) = nullptr;
  void* body_ctx = nullptr;
  std::map<int, std::vector<unsigned char>> shared;
  struct Slot {
    std::uintptr_t begin, end;
    int id;
  };
  std::vector<Slot> slots;  // where this block's `__shared__` arrays lie (racecheck tells them from global)
  unsigned char* dynamic = nullptr;
  std::string error;
  unsigned int linear_block = 0;      // blockIdx as one number (x fastest)
  std::uintptr_t main_stack[2] = {0, 0};  // the calling OS thread's stack (racecheck: not global memory)
  unsigned int interval = 0;          // __syncthreads() completed by this block (racecheck: orders the block)
};

thread_local Block* g_block = nullptr;
thread_local std::vector<char*> g_stacks;
thread_local std::string g_error;

void fail(const std::string& msg) {
  if (g_block && g_block->error.empty()) g_block->error = msg;
}

std::string where(const Fiber& f) {
  const Block& b = *g_block;
  char buf[160];
  std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", b.block_idx.x, b.block_idx.y, b.block_idx.z,
                f.tid.x, f.tid.y, f.tid.z);
  return buf;
}

// Back to the scheduler; returns when the scheduler resumes this fiber.
void yield() {
  Fiber* f = g_block->current;
  swapcontext(&f->ctx, &g_block->scheduler);
}

void entry() {
  Block& b = *g_block;
  b.body(b.body_ctx);
  if (!b.current->pending.empty())
    fail("cp.async at " + where(*b.current) + ": " + std::to_string(b.current->pending.size()) +
         " copies never waited for (the thread exited)");
  b.current->state = State::Done;
  swapcontext(&b.current->ctx, &b.scheduler);
}

char* take_stack(std::size_t i) {
  while (g_stacks.size() <= i) {
    void* p = mmap(nullptr, kStack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    g_stacks.push_back(static_cast<char*>(p));
  }
#if EMU_ASAN
  __asan_unpoison_memory_region(g_stacks[i], kStack);
#endif
  return g_stacks[i];
}

// Gives fiber `f` (thread `t` of the block) a stack and a context that starts in `entry`. Kept out of line:
// getcontext in the block loop would make the compiler assume the loop variables can be clobbered.
__attribute__((noinline)) bool init_fiber(Fiber& f, std::size_t t) {
  f.stack = take_stack(t);
  if (!f.stack) return false;
  getcontext(&f.ctx);
  f.ctx.uc_stack.ss_sp = f.stack;
  f.ctx.uc_stack.ss_size = kStack;
  f.ctx.uc_link = nullptr;
  makecontext(&f.ctx, &entry, 0);
  return true;
}

// Whether the warp op `f` waits in can complete; sets an error when a lane of its mask has exited.
bool warp_ready(const Fiber& f) {
  const Block& b = *g_block;
  unsigned int base = f.linear & ~31u;
  for (unsigned int l = 0; l < 32; ++l) {
    if (!(f.wait_mask >> l & 1u)) continue;
    unsigned int t = base + l;
    if (t >= b.fibers.size()) {
      fail("warp intrinsic at " + where(f) + ": mask names lane " + std::to_string(l) + ", beyond the block");
      return false;
    }
    const Fiber& o = b.fibers[t];
    if (o.warp_seq >= f.warp_seq) continue;  // arrived at this op (or later)
    if (o.state == State::Done) {
      fail("warp intrinsic at " + where(f) + ": mask names inactive lane " + std::to_string(l) + " (exited)");
      return false;
    }
    return false;
  }
  return true;
}

// Runs every fiber of the block to completion or reports why it cannot.
void schedule(Block& b) {
  const std::size_t n = b.fibers.size();
  for (;;) {
    bool ran = false;
    for (std::size_t k = 0; k < n && b.error.empty(); ++k) {
      Fiber& f = b.fibers[b.cfg.reverse ? n - 1 - k : k];
      if (f.state == State::AtWarp && warp_ready(f)) f.state = State::Ready;
      if (f.state != State::Ready) continue;
      b.current = &f;
      swapcontext(&b.scheduler, &f.ctx);
      ran = true;
    }
    if (!b.error.empty()) return;
    if (ran) continue;
    std::size_t done = 0, at_barrier = 0;
    for (const Fiber& f : b.fibers) {
      done += f.state == State::Done;
      at_barrier += f.state == State::AtBarrier;
    }
    if (done == n) return;
    if (at_barrier + done == n) {
      if (done > 0) {
        const Fiber* exited = nullptr;
        for (const Fiber& f : b.fibers)
          if (f.state == State::Done) {
            exited = &f;
            break;
          }
        fail("divergent __syncthreads(): " + std::to_string(at_barrier) + " threads wait at a barrier that " +
             std::to_string(done) + " threads never reach (first: " + where(*exited) + " exited)");
        return;
      }
      for (Fiber& f : b.fibers) f.state = State::Ready;  // barrier complete
      b.interval += 1;
      continue;
    }
    fail("deadlock: threads wait at a barrier and in warp intrinsics that can never complete");
    return;
  }
}

}  // namespace

#if EMU_RACECHECK
// Racecheck (INCEPTION_CUDA_EMU_RACECHECK=1 builds the kernels with -fsanitize=thread, whose callbacks at the
// end of this file land here). Every 4-byte granule a kernel touches has a cell: the last write and the two
// latest reads by distinct threads, each as (block, barrier interval, thread, the thread's __syncwarp count),
// and the owner of a cp.async still in flight to it. Two accesses conflict (one of them a write) when they
// come from two blocks of one launch (global memory: blocks are unordered), or from two threads of a block
// between the same two __syncthreads() and not ordered by a __syncwarp() of their warp. Cells live for one
// launch (kernel boundaries order everything); a shared-memory cell of an earlier block is another block's
// buffer, not a conflict. Accesses to the thread's own stack are not checked. Limits: atomics are not
// modelled (the kernels use none); a partial-mask __syncwarp() counts as a full one; with two reader slots a
// third, earlier reader can hide behind two that a __syncwarp() orders.
namespace race {

constexpr unsigned int kNone = 0xffffffffu;

struct Access {
  unsigned int block = kNone;  // linear block index; kNone: nothing recorded
  unsigned int interval = 0;
  unsigned int thread = 0;  // linear thread index in the block
  unsigned int warp_syncs = 0;
};

struct Cell {
  Access write;
  Access read[2];              // the latest reader first
  unsigned int in_flight = 0;  // 1 + the thread whose cp.async to this granule has not landed
};

constexpr std::size_t kPageBytes = 4096, kCells = kPageBytes / 4;
using Page = std::array<Cell, kCells>;

thread_local std::unordered_map<std::uintptr_t, std::unique_ptr<Page>> t_pages;
thread_local std::uintptr_t t_last_key = ~(std::uintptr_t)0;
thread_local Page* t_last = nullptr;

void reset() {
  t_pages.clear();
  t_last_key = ~(std::uintptr_t)0;
  t_last = nullptr;
}

Cell& cell(std::uintptr_t addr) {
  const std::uintptr_t key = addr / kPageBytes;
  if (key != t_last_key) {
    auto& page = t_pages[key];
    if (!page) page = std::make_unique<Page>();
    t_last_key = key;
    t_last = page.get();
  }
  return (*t_last)[addr % kPageBytes / 4];
}

// The shared array `addr` lies in (0: the dynamic buffer, 1 + id: the __shared__ array `id`) and its byte
// offset there; nothing when `addr` is not shared memory of the running block.
struct SharedAt {
  unsigned long long array, offset;
};
std::optional<SharedAt> shared_at(std::uintptr_t addr) {
  const Block& b = *g_block;
  const auto dyn = (std::uintptr_t)b.dynamic;
  if (b.dynamic && addr >= dyn && addr < dyn + b.cfg.shared_bytes) return SharedAt{0, addr - dyn};
  for (const Block::Slot& s : b.slots)
    if (addr >= s.begin && addr < s.end) return SharedAt{1 + (unsigned long long)s.id, addr - s.begin};
  return std::nullopt;
}

// Where `addr` lies, for a report.
std::string region(std::uintptr_t addr) {
  if (const auto at = shared_at(addr))
    return (at->array == 0 ? std::string("dynamic shared memory")
                           : "__shared__ array #" + std::to_string(at->array - 1)) +
           " (byte " + std::to_string(at->offset) + ")";
  char buf[48];
  std::snprintf(buf, sizeof buf, "global memory at %#llx", (unsigned long long)addr);
  return buf;
}

bool unordered(const Access& prior, const Access& now, bool shared) {
  if (prior.block == kNone) return false;
  if (prior.block != now.block) return !shared;
  if (prior.interval != now.interval || prior.thread == now.thread) return false;
  return !(prior.thread / 32 == now.thread / 32 && now.warp_syncs > prior.warp_syncs);
}

std::string who(const Access& a) {
  const Block& b = *g_block;
  const unsigned int bx = b.block.x, by = b.block.y, t = a.thread;
  char buf[96];
  if (a.block == b.linear_block) {
    std::snprintf(buf, sizeof buf, "thread (%u,%u,%u)", t % bx, t / bx % by, t / (bx * by));
  } else {
    const unsigned int gx = b.grid.x, gy = b.grid.y, k = a.block;
    std::snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", k % gx, k / gx % gy, k / (gx * gy), t % bx,
                  t / bx % by, t / (bx * by));
  }
  return buf;
}

void report(const char* hazard, std::uintptr_t addr, const Access& prior, const char* prior_did, bool write) {
  const Block& b = *g_block;
  fail(std::string("racecheck: ") + hazard + " hazard on " + region(addr) + ": " + where(*b.current) +
       (write ? " writes" : " reads") + " 4 bytes that " + who(prior) + " " + prior_did +
       (prior.block == b.linear_block ? " since the last __syncthreads()"
                                      : " in the same launch (the blocks of a launch are unordered)"));
}

void check(std::uintptr_t granule, bool write, bool shared, const Access& now) {
  Cell& c = cell(granule);
  if (c.in_flight) {
    const unsigned int owner = c.in_flight - 1;
    Access o{now.block, now.interval, owner, 0};
    fail("racecheck: " + std::string(write ? "write to" : "read of") + " a cp.async destination in flight (" +
         region(granule) + "): " + where(*g_block->current) +
         (owner == now.thread ? " before its own cp.async.wait_group"
                              : ", issued by " + who(o) + ", before that copy's wait and a __syncthreads()"));
    c.in_flight = 0;
  }
  if (unordered(c.write, now, shared))
    report(write ? "write-after-write" : "read-after-write", granule, c.write, "wrote", write);
  if (write) {
    for (const Access& r : c.read)
      if (unordered(r, now, shared)) {
        report("write-after-read", granule, r, "read", true);
        break;
      }
    c.write = now;
    return;
  }
  auto same = [&](const Access& r) { return r.block == now.block && r.thread == now.thread; };
  if (!same(c.read[0])) c.read[1] = c.read[0];  // drops the older reader (or this thread's older read)
  c.read[0] = now;
}

// Shared-memory wavefronts, counted while enabled (emu_shared_traffic). The accesses of a block are grouped into
// warp instructions: the k-th execution of one instruction (the callback's return address) by each lane of a warp
// since the lane's last barrier or warp collective (mma, shuffle, vote, __syncwarp: every lane of a warp meets the
// same sequence of them), as converged SIMT code issues them. A lane that skips an access (a predicated load) thus
// falls out of step only until the next collective or barrier: exact for the tensor-core kernels (an mma between a
// loop's iterations), approximate in loops without one. Each instruction is served in phases of 128 bytes (a whole
// warp for accesses up to 4 bytes, half-warps for 8, quarter-warps for 16); a phase takes as many wavefronts as the
// most distinct 4-byte words that fall in one of the 32 banks (the same word is broadcast). Banks are counted from
// the start of each shared array, as the GPU lays arrays out on 128-byte boundaries or finer.
namespace traffic {

struct Lane {
  const void* pc;
  unsigned int interval;          // the block's barrier interval
  unsigned long long warp_seq;    // the lane's warp collectives so far
  unsigned int k;                 // this lane's executions of pc since both last changed
  unsigned int warp;
  unsigned char lane, bytes;
  bool store;
  bool global;              // a global-memory access (counted in the dump only: 32-byte sectors)
  unsigned long long word;  // shared: 4-byte word, array id << 32 | byte offset / 4; global: the address
};

thread_local bool t_on = false;
thread_local std::vector<Lane> t_block;                                 // this block's shared accesses
struct Seen {
  unsigned int interval = ~0u;
  unsigned long long warp_seq = ~0ull;
  std::unordered_map<const void*, unsigned int> count;  // pc → executions in this epoch
};
thread_local std::vector<Seen> t_seen;  // per thread of the block
using Counts = std::array<unsigned long long, 3>;  // requests, wavefronts (or sectors), conflict-free count
thread_local Counts t_totals[2];                     // loads, stores
// Per instruction, when INCEPTION_CUDA_EMU_TRAFFIC_DUMP names a file: the same three counts, appended to the
// file as "module+offset load|store|global-load|global-store requests wavefronts|sectors ideal" lines when
// counting stops (for addr2line).
// Global accesses go to the dump only: requests, 32-byte sectors, and the sectors their distinct bytes fill.
thread_local std::map<std::pair<const void*, int>, Counts> t_by_pc;

void tally(Counts& c, unsigned long long count, unsigned long long ideal) {
  c[0] += 1;
  c[1] += count;
  c[2] += ideal;
}

// One access of the running thread: shared (`at`: its array and offset) or, without `at`, global.
void record(const void* pc, std::uintptr_t addr, std::size_t bytes, bool store, std::optional<SharedAt> at) {
  const Block& b = *g_block;
  const Fiber& f = *b.current;
  if (t_seen.size() < b.fibers.size()) t_seen.resize(b.fibers.size());
  Seen& seen = t_seen[f.linear];
  if (seen.interval != b.interval || seen.warp_seq != f.warp_seq) {
    seen.interval = b.interval;
    seen.warp_seq = f.warp_seq;
    seen.count.clear();
  }
  const unsigned int k = seen.count[pc]++;
  t_block.push_back({pc, b.interval, f.warp_seq, k, f.linear / 32, (unsigned char)(f.linear % 32),
                     (unsigned char)bytes, store, !at, at ? at->array << 32 | at->offset / 4 : addr});
}

const char* dump_path() {
  static const char* path = std::getenv("INCEPTION_CUDA_EMU_TRAFFIC_DUMP");
  return path && *path ? path : nullptr;
}

void dump() {
  if (!dump_path() || t_by_pc.empty()) return;
  if (FILE* f = std::fopen(dump_path(), "a")) {
    for (const auto& [key, c] : t_by_pc) {
      Dl_info info{};
      const bool found = dladdr(key.first, &info) && info.dli_fname;
      static const char* const kinds[4] = {"load", "store", "global-load", "global-store"};
      std::fprintf(f, "%s+%#llx %s %llu %llu %llu\n", found ? info.dli_fname : "?",
                   (unsigned long long)((const char*)key.first - (found ? (const char*)info.dli_fbase : nullptr)),
                   kinds[key.second], c[0], c[1], c[2]);
    }
    std::fclose(f);
  }
  t_by_pc.clear();
}

// Folds the block's accesses into the totals and starts the next block.
void end_block() {
  if (!t_on) return;
  const auto key = [](const Lane& a) {
    return std::tie(a.warp, a.pc, a.store, a.global, a.interval, a.warp_seq, a.k);
  };
  std::sort(t_block.begin(), t_block.end(), [&](const Lane& a, const Lane& b) {
    return std::tuple_cat(key(a), std::tie(a.lane)) < std::tuple_cat(key(b), std::tie(b.lane));
  });
  for (std::size_t i = 0; i < t_block.size();) {
    std::size_t j = i;
    unsigned int widest = 0;
    while (j < t_block.size() && key(t_block[j]) == key(t_block[i]))
      widest = std::max<unsigned int>(widest, t_block[j++].bytes);
    if (t_block[i].global) {  // 32-byte sectors touched, and the fewest the distinct bytes could fill
      std::vector<unsigned long long> sectors, bytes;
      for (std::size_t e = i; e < j; ++e)
        for (unsigned int u = 0; u < t_block[e].bytes; ++u) {
          sectors.push_back((t_block[e].word + u) / 32);
          bytes.push_back(t_block[e].word + u);
        }
      for (auto* v : {&sectors, &bytes}) {
        std::sort(v->begin(), v->end());
        v->erase(std::unique(v->begin(), v->end()), v->end());
      }
      if (dump_path())
        tally(t_by_pc[{t_block[i].pc, 2 + (int)t_block[i].store}], sectors.size(), (bytes.size() + 31) / 32);
      i = j;
      continue;
    }
    const unsigned int per_phase = widest <= 4 ? 32 : 128 / widest;
    unsigned long long wavefronts = 0, ideal = 0;
    for (unsigned int phase = 0; phase * per_phase < 32; ++phase) {
      std::vector<unsigned long long> words;
      for (std::size_t e = i; e < j; ++e)
        if (t_block[e].lane / per_phase == phase)
          for (unsigned int w = 0; w < std::max(1u, (unsigned int)t_block[e].bytes / 4); ++w)
            words.push_back(t_block[e].word + w);
      if (words.empty()) continue;
      std::sort(words.begin(), words.end());
      words.erase(std::unique(words.begin(), words.end()), words.end());
      unsigned int per_bank[32] = {};
      for (unsigned long long w : words) per_bank[w % 32] += 1;
      ideal += 1;
      wavefronts += *std::max_element(per_bank, per_bank + 32);
    }
    tally(t_totals[t_block[i].store], wavefronts, ideal);
    if (dump_path()) tally(t_by_pc[{t_block[i].pc, (int)t_block[i].store}], wavefronts, ideal);
    i = j;
  }
  t_block.clear();
  for (Seen& m : t_seen) m = Seen{};
}

}  // namespace traffic

// The access of `bytes` at `p` by the running thread, if a kernel thread is running and `p` is not on its
// stack; `pc`: the kernel instruction (counted as shared-memory traffic), or null.
void on_access(const void* p, std::size_t bytes, bool write, const void* pc) {
  Block* b = g_block;
  if (!b || !b->current || bytes == 0) return;
  const Fiber& f = *b->current;
  const auto stack = (std::uintptr_t)f.stack, here = (std::uintptr_t)__builtin_frame_address(0);
  if (here < stack || here >= stack + kStack) return;  // not on a kernel thread (the launcher, the scheduler)
  const auto addr = (std::uintptr_t)p;
  if (addr >= stack && addr < stack + kStack) return;  // the thread's own locals
  const auto at = shared_at(addr);
  const bool shared = at.has_value();
  // Ranges (__tsan_*_range: aggregate copies) are not one instruction: checked for races, not counted.
  if (pc && traffic::t_on && bytes <= 16 &&
      (shared || (traffic::dump_path() && (addr < b->main_stack[0] || addr >= b->main_stack[1]))))
    traffic::record(pc, addr, bytes, write, at);  // not the launcher's locals (the kernel's arguments)
  const Access now{b->linear_block, b->interval, f.linear, f.warp_syncs};
  for (std::uintptr_t g = addr & ~(std::uintptr_t)3; g < addr + bytes; g += 4) check(g, write, shared, now);
}

void on_cp_async_issue(void* dst, const void* src, unsigned int bytes, const void* pc) {
  on_access(src, bytes, false, pc);
  on_access(dst, bytes, true, pc);
  for (std::uintptr_t g = (std::uintptr_t)dst; g < (std::uintptr_t)dst + bytes; g += 4)
    cell(g).in_flight = g_block->current->linear + 1;
}

void on_cp_async_land(void* dst, unsigned int bytes) {
  for (std::uintptr_t g = (std::uintptr_t)dst; g < (std::uintptr_t)dst + bytes; g += 4) cell(g).in_flight = 0;
  on_access(dst, bytes, true, nullptr);  // the copy's second write: not traffic again
}

}  // namespace race
#endif  // EMU_RACECHECK

uint3 thread_idx() { return g_block->current->tid; }
uint3 block_idx() { return g_block->block_idx; }
dim3 block_dim() { return g_block->block; }
dim3 grid_dim() { return g_block->grid; }

void syncthreads() {
  g_block->current->state = State::AtBarrier;
  yield();
}

namespace {
// The calling lane deposits `value` and waits until every lane of `mask` has deposited one.
void rendezvous(unsigned int mask, unsigned long long value) {
  Fiber& f = *g_block->current;
  if (!(mask >> (f.linear & 31u) & 1u)) {
    fail("warp intrinsic at " + where(f) + ": the calling lane is not in its own mask");
    yield();
  }
  f.warp_seq += 1;
  f.slot[f.warp_seq & 1] = value;
  f.wait_mask = mask;
  f.state = State::AtWarp;
  yield();
}
}  // namespace

void syncwarp(unsigned int mask) {
  rendezvous(mask, 0);
  g_block->current->warp_syncs += 1;
}

unsigned long long warp_exchange(unsigned int mask, unsigned long long value, int src, bool ballot) {
  Block& b = *g_block;
  Fiber& f = *b.current;
  rendezvous(mask, value);
  unsigned int base = f.linear & ~31u;
  if (ballot) {
    unsigned long long votes = 0;
    for (unsigned int l = 0; l < 32; ++l)
      if (mask >> l & 1u && b.fibers[base + l].slot[f.warp_seq & 1]) votes |= 1ull << l;
    return votes;
  }
  unsigned int s = base + ((unsigned int)src & 31u);
  if (!(mask >> (s - base) & 1u)) {
    fail("shuffle at " + where(f) + ": source lane " + std::to_string(s - base) + " is not in the mask");
    yield();
  }
  return b.fibers[s].slot[f.warp_seq & 1];
}

void warp_gather(unsigned int mask, unsigned long long value, unsigned long long out[32]) {
  Block& b = *g_block;
  Fiber& f = *b.current;
  rendezvous(mask, value);
  unsigned int base = f.linear & ~31u;
  for (unsigned int l = 0; l < 32; ++l) out[l] = mask >> l & 1u ? b.fibers[base + l].slot[f.warp_seq & 1] : 0;
}

namespace {
struct MmaOperands {
  const unsigned int* a;
  const unsigned int* b;
  const float* c;
};

float tf32_operand(unsigned int bits) {
  bits &= ~0x1fffu;  // the tensor core reads 19 bits of an operand: sign, exponent, 10 mantissa bits
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}
}  // namespace

void mma_tf32_m16n8k8(float d[4], const unsigned int a[4], const unsigned int b[2], const float c[4]) {
  // Every lane deposits the address of its operands (live on its stack until the second rendezvous below),
  // then reads the whole warp's.
  MmaOperands mine{a, b, c};
  unsigned long long all[32];
  warp_gather(0xffffffffu, (unsigned long long)(std::uintptr_t)&mine, all);
  float A[16][8], B[8][8], C[16][8];
  for (unsigned int l = 0; l < 32; ++l) {
    const MmaOperands& o = *(const MmaOperands*)(std::uintptr_t)all[l];
    const unsigned int g = l >> 2, t = l & 3u;
    A[g][t] = tf32_operand(o.a[0]);
    A[g + 8][t] = tf32_operand(o.a[1]);
    A[g][t + 4] = tf32_operand(o.a[2]);
    A[g + 8][t + 4] = tf32_operand(o.a[3]);
    B[t][g] = tf32_operand(o.b[0]);
    B[t + 4][g] = tf32_operand(o.b[1]);
    C[g][2 * t] = o.c[0];
    C[g][2 * t + 1] = o.c[1];
    C[g + 8][2 * t] = o.c[2];
    C[g + 8][2 * t + 1] = o.c[3];
  }
  const unsigned int lane = g_block->current->linear & 31u;
  const unsigned int g = lane >> 2, t = lane & 3u;
  const unsigned int rows[4] = {g, g, g + 8, g + 8}, cols[4] = {2 * t, 2 * t + 1, 2 * t, 2 * t + 1};
  float out[4];
  for (int i = 0; i < 4; ++i) {
    float acc = C[rows[i]][cols[i]];
    for (int k = 0; k < 8; ++k) acc += A[rows[i]][k] * B[k][cols[i]];
    out[i] = acc;
  }
  // No lane leaves (and reuses its stack) before every lane has read the others' operands; d may alias c.
  warp_gather(0xffffffffu, 0, all);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

unsigned int tf32_rna(float x) {
  unsigned int bits;
  std::memcpy(&bits, &x, 4);
  if ((bits & 0x7f800000u) == 0x7f800000u) return (bits & ~0x1fffu) | (bits & 0x1fffu ? 0x1000u : 0u);  // inf, NaN
  return bits + 0x1000u;  // half an ulp of TF32 added to the magnitude: truncated, ties away from zero
}

void cp_async(void* dst, const void* src, unsigned int bytes) {
  if (bytes != 4 && bytes != 8 && bytes != 16) {
    fail("cp.async of " + std::to_string(bytes) + " bytes (4, 8 or 16)");
    yield();
  }
  if ((std::uintptr_t)dst % bytes || (std::uintptr_t)src % bytes) {
    fail("cp.async of " + std::to_string(bytes) + " bytes from a misaligned address");
    yield();
  }
  Fiber& f = *g_block->current;
#if EMU_RACECHECK
  race::on_cp_async_issue(dst, src, bytes, __builtin_return_address(0));
#endif
  Fiber::PendingCopy c{dst, {}, bytes, f.open_group};
  std::memcpy(c.data, src, bytes);
  f.pending.push_back(c);
}

void cp_async_commit() { g_block->current->open_group += 1; }

void cp_async_wait(unsigned int newest_pending) {
  Fiber& f = *g_block->current;
  const unsigned long long keep_from = f.open_group > newest_pending ? f.open_group - newest_pending : 0;
  std::vector<Fiber::PendingCopy> left;
  for (const Fiber::PendingCopy& c : f.pending) {
    if (c.group < keep_from) {
      std::memcpy(c.dst, c.data, c.bytes);
#if EMU_RACECHECK
      race::on_cp_async_land(c.dst, c.bytes);
#endif
    } else
      left.push_back(c);
  }
  f.pending.swap(left);
}

void* shared_static(int id, std::size_t bytes) {
  auto& v = g_block->shared[id];
  if (v.empty()) {
    v.assign(bytes, 0xFF);  // NaN as float, -1 as int: uninitialised reads show
    const auto begin = (std::uintptr_t)v.data();
    g_block->slots.push_back({begin, begin + bytes, id});
  }
  return v.data();
}

void* shared_dynamic() { return g_block->dynamic; }

int run(const Launch& cfg, void (*body)(void*), void* ctx) {
  g_error.clear();
#if EMU_RACECHECK
  race::reset();
#endif
  const std::size_t threads = (std::size_t)cfg.block[0] * cfg.block[1] * cfg.block[2];
  if (threads == 0 || threads > 1024 || cfg.grid[0] * (unsigned long long)cfg.grid[1] * cfg.grid[2] == 0 ||
      cfg.block[2] > 64 || cfg.grid[1] > 65535 || cfg.grid[2] > 65535) {
    g_error = "invalid launch configuration (grid " + std::to_string(cfg.grid[0]) + "x" + std::to_string(cfg.grid[1]) +
              "x" + std::to_string(cfg.grid[2]) + ", block " + std::to_string(cfg.block[0]) + "x" +
              std::to_string(cfg.block[1]) + "x" + std::to_string(cfg.block[2]) + ")";
    return 1;
  }
  Block b;
  b.cfg = cfg;
  b.grid = {cfg.grid[0], cfg.grid[1], cfg.grid[2]};
  b.block = {cfg.block[0], cfg.block[1], cfg.block[2]};
  b.body = body;
  b.body_ctx = ctx;
#if EMU_RACECHECK
  pthread_attr_t attr;
  if (pthread_getattr_np(pthread_self(), &attr) == 0) {
    void* base = nullptr;
    std::size_t size = 0;
    if (pthread_attr_getstack(&attr, &base, &size) == 0)
      b.main_stack[0] = (std::uintptr_t)base, b.main_stack[1] = (std::uintptr_t)base + size;
    pthread_attr_destroy(&attr);
  }
#endif
  b.fibers.resize(threads);
  Block* outer = g_block;
  g_block = &b;
  std::vector<unsigned char> dynamic(cfg.shared_bytes + (EMU_ASAN ? 0 : kGuard));
  for (unsigned int bz = 0; bz < cfg.grid[2] && b.error.empty(); ++bz)
    for (unsigned int by = 0; by < cfg.grid[1] && b.error.empty(); ++by)
      for (unsigned int bx = 0; bx < cfg.grid[0] && b.error.empty(); ++bx) {
        b.block_idx = {bx, by, bz};
        b.shared.clear();
        b.slots.clear();
        b.linear_block = bx + cfg.grid[0] * (by + cfg.grid[1] * bz);
        b.interval = 0;
        std::fill(dynamic.begin(), dynamic.end(), 0xFF);
        std::fill(dynamic.begin() + cfg.shared_bytes, dynamic.end(), kGuardByte);
        // Under ASan the buffer is exactly the launch's size, so an overflow is a heap-buffer-overflow.
        b.dynamic = cfg.shared_bytes ? dynamic.data() : nullptr;
        for (std::size_t t = 0; t < threads; ++t) {
          Fiber& f = b.fibers[t];
          f = Fiber{};
          f.linear = (unsigned int)t;
          f.tid = {(unsigned int)(t % cfg.block[0]), (unsigned int)(t / cfg.block[0] % cfg.block[1]),
                   (unsigned int)(t / ((std::size_t)cfg.block[0] * cfg.block[1]))};
          if (!init_fiber(f, t)) {
            b.error = "out of memory for fiber stacks";
            break;
          }
        }
        if (b.error.empty()) schedule(b);
#if EMU_RACECHECK
        race::traffic::end_block();
#endif
        for (std::size_t i = cfg.shared_bytes; i < dynamic.size() && b.error.empty(); ++i)
          if (dynamic[i] != kGuardByte)
            b.error = "block (" + std::to_string(bx) + "," + std::to_string(by) + "," + std::to_string(bz) +
                      ") wrote past its " + std::to_string(cfg.shared_bytes) + " bytes of dynamic shared memory";
      }
  g_error = b.error;
  g_block = outer;
  return g_error.empty() ? 0 : 1;
}

const char* last_error() { return g_error.c_str(); }

}  // namespace emu

// A device assert ends its thread and fails the launch instead of aborting the process.
extern "C" void __assert_fail(const char* expr, const char* file, unsigned int line, const char* func) noexcept {
  if (!emu::g_block) {
    std::fprintf(stderr, "%s:%u: %s: assertion `%s' failed\n", file, line, func, expr);
    std::abort();
  }
  emu::fail(std::string("device assert `") + expr + "' failed at " + file + ":" + std::to_string(line) + " in " +
            emu::where(*emu::g_block->current));
  emu::g_block->current->state = emu::State::Done;
  swapcontext(&emu::g_block->current->ctx, &emu::g_block->scheduler);
  std::abort();  // never resumed
}

extern "C" const char* emu_last_error() { return emu::last_error(); }

#if EMU_RACECHECK
// gcc's -fsanitize=thread instrumentation of the kernels calls these for every memory access (no ThreadSanitizer
// runtime is linked: these are the whole runtime). Atomics are not instrumented: the kernels use none. Nor are
// calls to memcpy/memset (the runtime's interceptors would see those): no kernel object calls them (nm -u).
extern "C" {
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}
void __tsan_vptr_update(void**, void*) {}
void __tsan_vptr_read(void**) {}
void __tsan_read_range(void* p, unsigned long n) { emu::race::on_access(p, n, false, __builtin_return_address(0)); }
void __tsan_write_range(void* p, unsigned long n) { emu::race::on_access(p, n, true, __builtin_return_address(0)); }
#define EMU_TSAN_SIZE(n)                                                                \
  void __tsan_read##n(void* p) { emu::race::on_access(p, n, false, __builtin_return_address(0)); }                  \
  void __tsan_write##n(void* p) { emu::race::on_access(p, n, true, __builtin_return_address(0)); }                  \
  void __tsan_unaligned_read##n(void* p) { emu::race::on_access(p, n, false, __builtin_return_address(0)); }        \
  void __tsan_unaligned_write##n(void* p) { emu::race::on_access(p, n, true, __builtin_return_address(0)); }        \
  void __tsan_volatile_read##n(void* p) { emu::race::on_access(p, n, false, __builtin_return_address(0)); }         \
  void __tsan_volatile_write##n(void* p) { emu::race::on_access(p, n, true, __builtin_return_address(0)); }         \
  void __tsan_unaligned_volatile_read##n(void* p) { emu::race::on_access(p, n, false, __builtin_return_address(0)); } \
  void __tsan_unaligned_volatile_write##n(void* p) { emu::race::on_access(p, n, true, __builtin_return_address(0)); }
EMU_TSAN_SIZE(1)
EMU_TSAN_SIZE(2)
EMU_TSAN_SIZE(4)
EMU_TSAN_SIZE(8)
EMU_TSAN_SIZE(16)
#undef EMU_TSAN_SIZE
}
#endif  // EMU_RACECHECK

#if EMU_RACECHECK
// A vector load or store at an address not aligned to its width faults on the GPU ("misaligned address");
// reported here (copies between registers and the stack are aligned by the types' alignas).
void emu::vector_copy(void* dst, const void* src, unsigned int bytes, const void* pc) {
  if (emu::g_block && emu::g_block->current && ((std::uintptr_t)dst | (std::uintptr_t)src) % bytes) {
    char buf[96];
    std::snprintf(buf, sizeof buf, "misaligned %u-byte vector access (from %p to %p) at ", bytes, src, dst);
    emu::fail(buf + emu::where(*emu::g_block->current));
  }
  emu::race::on_access(src, bytes, false, pc);
  emu::race::on_access(dst, bytes, true, pc);
  std::memcpy(dst, src, bytes);
}
#else
void emu::vector_copy(void* dst, const void* src, unsigned int bytes, const void*) { std::memcpy(dst, src, bytes); }
#endif

#if EMU_RACECHECK
// Shared-memory traffic (see emu::race::traffic): `on` starts counting on the calling thread (and clears the
// totals); emu_take_shared_traffic writes loads' requests, wavefronts, ideal wavefronts, then the same for
// stores, and clears them.
extern "C" void emu_shared_traffic(int on) {
  if (!on) emu::race::traffic::dump();
  emu::race::traffic::t_on = on != 0;
  for (auto& c : emu::race::traffic::t_totals) c = {};
}
extern "C" void emu_take_shared_traffic(unsigned long long out[6]) {
  auto& t = emu::race::traffic::t_totals;
  std::copy(t[0].begin(), t[0].end(), out);
  std::copy(t[1].begin(), t[1].end(), out + 3);
  for (auto& c : t) c = {};
}
#endif
