// cuda_emu.h: lets the kernels of kernels/*.cu compile as C++20 with g++ and run on the CPU.
//
// Threads of a block are cooperative fibers (ucontext, pooled stacks) on one OS thread; blocks run one after
// another. The runtime (emu.cpp) reports the CUDA undefined behaviour it can see: __syncthreads() not
// reached by every thread of a block, a warp intrinsic whose mask names an inactive lane, a deadlock, a
// write past the launch's dynamic shared memory, a device assert. build.rs rewrites `__shared__`
// declarations into per-block slots (filled with NaN bytes at each block, so uninitialised reads show) and
// `extern __shared__` into the exact-size dynamic buffer, and generates one C launcher per kernel.
//
// Tensor cores: kernels/mma.cuh's helpers (mma.sync m16n8k8 TF32, cvt.rna.tf32, cp.async) become warp
// collectives and checked copies here (mma_tf32_m16n8k8, tf32_rna, cp_async below).
// Racecheck (INCEPTION_CUDA_EMU_RACECHECK=1): the kernels are compiled with gcc's ThreadSanitizer
// instrumentation and emu.cpp takes its callbacks to check every shared and global access as
// compute-sanitizer racecheck does and more: two threads of a block touching the same 4 bytes between the same
// two barriers (one of them writing), two blocks of a launch doing so (blocks are unordered on a GPU), and any
// access to a cp.async destination before its owner's wait are errors naming both threads; so is a vector
// load or store not aligned to its width.
// Out of reach: other inline PTX, wmma, timing, and fences or flags between blocks (blocks never overlap).
#pragma once

// Lets shared headers (kernels/mma.cuh) tell the emulator's compile from nvcc's host pass.
#define INCEPTION_CUDA_EMU 1

#include <algorithm>
#include <cassert>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
};

namespace emu {
// A copy of `bytes` from src to dst as one access of that width (racecheck build).
void vector_copy(void* dst, const void* src, unsigned int bytes, const void* pc);
}  // namespace emu

// The vector types, aligned as CUDA aligns them. Under the racecheck build a copy of one is one access of its
// width, as on the GPU (LDS.128, STS.64, ...), made by its caller (the instruction the shared-memory traffic
// counter groups lanes by): gcc would copy member by member, which the counter would take for several
// instructions.
#if INCEPTION_CUDA_EMU_RACECHECK
#define EMU_VECTOR_COPIES(T)                                              \
  T() = default;                                                          \
  __attribute__((noinline)) T(const T& o) {                               \
    ::emu::vector_copy(this, &o, sizeof(T), __builtin_return_address(0)); \
  }                                                                       \
  __attribute__((noinline)) T& operator=(const T& o) {                    \
    ::emu::vector_copy(this, &o, sizeof(T), __builtin_return_address(0)); \
    return *this;                                                         \
  }
#define EMU_VECTOR2(T, E) \
  EMU_VECTOR_COPIES(T)    \
  constexpr T(E x_, E y_) : x(x_), y(y_) {}
#define EMU_VECTOR4(T, E) \
  EMU_VECTOR_COPIES(T)    \
  constexpr T(E x_, E y_, E z_, E w_) : x(x_), y(y_), z(z_), w(w_) {}
#else
#define EMU_VECTOR2(T, E)
#define EMU_VECTOR4(T, E)
#endif
struct alignas(8) float2 {
  float x, y;
  EMU_VECTOR2(float2, float)
};
struct alignas(16) float4 {
  float x, y, z, w;
  EMU_VECTOR4(float4, float)
};
struct alignas(8) uint2 {
  unsigned int x, y;
  EMU_VECTOR2(uint2, unsigned int)
};
struct alignas(8) int2 {
  int x, y;
  EMU_VECTOR2(int2, int)
};
struct alignas(16) int4 {
  int x, y, z, w;
  EMU_VECTOR4(int4, int)
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline uint2 make_uint2(unsigned int x, unsigned int y) { return {x, y}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace emu {

// Launch geometry as the Rust side passes it (same as the CUDA launch).
struct Launch {
  unsigned int grid[3];
  unsigned int block[3];
  unsigned int shared_bytes;
  unsigned int reverse;  // run the threads of each block in reverse order
};

// By value: a kernel's reads of its indices are register reads on a GPU, not memory traffic (a reference
// into the emulator's per-thread state would count as a scattered global load in the traffic dump).
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
void syncthreads();
// __syncwarp(mask): a warp rendezvous that also orders the shared and global memory accesses of its lanes
// (the racecheck build counts it; shuffles, votes and mma do not order memory).
void syncwarp(unsigned int mask);
// Warp rendezvous: deposits `value`, waits for every lane of `mask`, returns lane `src`'s value (for
// shuffles) or the ballot of the deposited values (for votes).
unsigned long long warp_exchange(unsigned int mask, unsigned long long value, int src, bool ballot);
// Warp gather: deposits `value`, waits for every lane of `mask`, writes every lane's deposit to out[lane]
// (0 for lanes outside the mask).
void warp_gather(unsigned int mask, unsigned long long value, unsigned long long out[32]);
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 as a warp collective over all 32 lanes, with the PTX
// ISA's fragment layout (A: a0, a2 rows g, a1, a3 rows g + 8, columns t (a0, a1) and t + 4 (a2, a3);
// B: b0 row t, b1 row t + 4, column g; C/D: c0, c1 row g, c2, c3 row g + 8, columns 2t, 2t + 1; g = lane / 4,
// t = lane % 4). The operands' low 13 bits are dropped as the hardware does; products are exact in f32 and
// summed in k order onto c.
void mma_tf32_m16n8k8(float d[4], const unsigned int a[4], const unsigned int b[2], const float c[4]);
// cvt.rna.tf32.f32: round to the nearest TF32 (10 explicit mantissa bits), ties away from zero, as the bits
// the hardware's register holds where the value only feeds an mma: half a TF32 ulp added to a finite value's
// magnitude, the low 13 bits left as they fall (ptxas masks them only where the value is stored), so a kernel
// that reads them as a float goes wrong here as it would on a GPU. The mma drops them (tf32_operand);
// ±inf and NaN come back masked, a NaN kept a NaN.
unsigned int tf32_rna(float x);
// cp.async.{ca,cg}.shared.global of `bytes` (4, 8 or 16): an error unless both addresses are aligned to it.
// The source is read now, the destination written when a wait completes the copy's group (cp_async_wait),
// so reading it earlier shows the old contents; a thread that exits with copies not waited for is an error.
void cp_async(void* dst, const void* src, unsigned int bytes);
// cp.async.commit_group: closes the group of the copies issued since the last commit.
void cp_async_commit();
// cp.async.wait_group n: completes every committed group but the newest `newest_pending` (copies issued after
// the last commit stay pending). cp.async.wait_all is a commit followed by cp_async_wait(0).
void cp_async_wait(unsigned int newest_pending);
void* shared_static(int id, std::size_t bytes);
void* shared_dynamic();
int run(const Launch& cfg, void (*body)(void*), void* ctx);
const char* last_error();

template <class T>
T& shared_slot(int id) {
  return *static_cast<T*>(shared_static(id, sizeof(T)));
}

template <class T>
T* shared_dyn() {
  return static_cast<T*>(shared_dynamic());
}

template <class F>
void call(void* f) {
  (*static_cast<F*>(f))();
}

// Runs `body` (a lambda calling the kernel) on every thread of the launch. 0 on success.
template <class F>
int launch(const Launch& cfg, F body) {
  return run(cfg, &call<F>, &body);
}

template <class T>
T shfl(unsigned int mask, T v, int src) {
  static_assert(sizeof(T) <= 8, "shuffles move at most 8 bytes");
  unsigned long long bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  bits = warp_exchange(mask, bits, src, false);
  T out;
  std::memcpy(&out, &bits, sizeof(T));
  return out;
}

inline unsigned int lane_id() {
  const uint3 t = thread_idx();
  const dim3 b = block_dim();
  return (t.x + t.y * b.x + t.z * b.x * b.y) % 32;
}

}  // namespace emu

#define threadIdx (::emu::thread_idx())
#define blockIdx (::emu::block_idx())
#define blockDim (::emu::block_dim())
#define gridDim (::emu::grid_dim())
#define warpSize 32

inline void __syncthreads() { ::emu::syncthreads(); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) { ::emu::syncwarp(mask); }
inline void __threadfence() {}
inline void __threadfence_block() {}

template <class T>
T __shfl_sync(unsigned int mask, T v, int src, int width = 32) {
  int lane = (int)::emu::lane_id();
  return ::emu::shfl(mask, v, (lane & ~(width - 1)) + (src & (width - 1)));
}
template <class T>
T __shfl_down_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
  int lane = (int)::emu::lane_id(), base = lane & ~(width - 1);
  int src = (lane - base) + (int)delta < width ? lane + (int)delta : lane;
  return ::emu::shfl(mask, v, src);
}
template <class T>
T __shfl_up_sync(unsigned int mask, T v, unsigned int delta, int width = 32) {
  int lane = (int)::emu::lane_id(), base = lane & ~(width - 1);
  int src = lane - (int)delta >= base ? lane - (int)delta : lane;
  return ::emu::shfl(mask, v, src);
}
template <class T>
T __shfl_xor_sync(unsigned int mask, T v, int lane_mask, int width = 32) {
  int lane = (int)::emu::lane_id(), base = lane & ~(width - 1);
  int src = base + (((lane - base) ^ lane_mask) & (width - 1));
  return ::emu::shfl(mask, v, src);
}
inline unsigned int __ballot_sync(unsigned int mask, int pred) {
  return (unsigned int)::emu::warp_exchange(mask, pred != 0, 0, true);
}
inline int __any_sync(unsigned int mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned int mask, int pred) { return (__ballot_sync(mask, pred) & mask) == mask; }

// One OS thread runs a whole launch, so read-modify-write is atomic between the fibers.
template <class T>
T atomicAdd(T* p, T v) {
  T old = *p;
  *p = old + v;
  return old;
}
template <class T>
T atomicSub(T* p, T v) {
  T old = *p;
  *p = old - v;
  return old;
}
template <class T>
T atomicMax(T* p, T v) {
  T old = *p;
  *p = old > v ? old : v;
  return old;
}
template <class T>
T atomicMin(T* p, T v) {
  T old = *p;
  *p = old < v ? old : v;
  return old;
}
template <class T>
T atomicExch(T* p, T v) {
  T old = *p;
  *p = v;
  return old;
}
template <class T>
T atomicCAS(T* p, T cmp, T v) {
  T old = *p;
  if (old == cmp) *p = v;
  return old;
}

template <class T>
T __ldg(const T* p) {
  return *p;
}

inline float __uint_as_float(unsigned int u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
inline unsigned int __float_as_uint(float f) {
  unsigned int u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

using std::max;
using std::min;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
// Round-to-nearest arithmetic that nvcc never contracts into an FMA; plain IEEE operations here.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __int_as_float(int v) {
  float f;
  std::memcpy(&f, &v, 4);
  return f;
}
inline int __float_as_int(float f) {
  int v;
  std::memcpy(&v, &f, 4);
  return v;
}
