// planted.cu: kernels with deliberate bugs (and one correct twin), compiled only under emulation, so the
// tests can show that the emulator catches each kind of bug it claims to. Never compiled to PTX.

#include "mma.cuh"

// BUG: threads >= 16 never reach the barrier (a divergent __syncthreads()).
extern "C" __global__ void planted_divergent_barrier(float* y, unsigned long long n) {
  if (threadIdx.x < 16) __syncthreads();
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = 1.0f;
}

// One block of blockDim.x <= 256 threads sums x[0..blockDim.x) into y[0] through shared memory.
// BUG: no __syncthreads() between the writes and thread 0's reads.
extern "C" __global__ void planted_missing_barrier_sum(float* y, const float* x) {
  __shared__ float s[256];
  s[threadIdx.x] = x[threadIdx.x];
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (unsigned int i = 0; i < blockDim.x; ++i) t += s[i];
    y[0] = t;
  }
}

// The correct version: y[0] = the same sum (shared memory, barrier); y[1 + w] = warp w's sum (shuffles).
extern "C" __global__ void block_sum(float* y, const float* x) {
  __shared__ float s[256];
  s[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  if (threadIdx.x == 0) {
    float t = 0.0f;
    for (unsigned int i = 0; i < blockDim.x; ++i) t += s[i];
    y[0] = t;
  }
  float v = x[threadIdx.x];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) y[1 + threadIdx.x / 32] = v;
}

// BUG: no grid-stride loop, so a grid capped below n / blockDim misses the last elements.
extern "C" __global__ void planted_relu_no_grid_stride(float* y, const float* x, unsigned long long n) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) y[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

// BUG: `<=` writes one element past the end.
extern "C" __global__ void planted_oob_write(float* y, unsigned long long n) {
  unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) y[i] = 1.0f;
}

// BUG: the upper half-warp exits, then the lower half shuffles with a full mask.
extern "C" __global__ void planted_shfl_inactive_lane(float* y) {
  if (threadIdx.x % 32 >= 16) return;
  y[threadIdx.x] = __shfl_sync(0xffffffffu, (float)threadIdx.x, 0);
}

// BUG when launched with fewer than blockDim.x * 4 bytes of dynamic shared memory.
extern "C" __global__ void planted_dynamic_shared_overflow(float* y) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x] = (float)threadIdx.x;
  __syncthreads();
  y[threadIdx.x] = dyn[threadIdx.x];
}

// BUG: mma_tf32_tile (kernels/mma.cu) with the rows of a1 and a2 swapped: A[g][t + 4] where the layout puts
// A[g + 8][t], and the other way round.
extern "C" __global__ void planted_mma_wrong_fragment(float* d, const float* a, const float* b, const float* c) {
  const unsigned int lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
  const unsigned int af[4] = {tf32_bits(a[g * 8 + t]), tf32_bits(a[g * 8 + t + 4]), tf32_bits(a[(g + 8) * 8 + t]),
                              tf32_bits(a[(g + 8) * 8 + t + 4])};
  const unsigned int bf[2] = {tf32_bits(b[t * 8 + g]), tf32_bits(b[(t + 4) * 8 + g])};
  const float cf[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float df[4];
  mma_tf32_m16n8k8(df, af, bf, cf);
  d[g * 8 + 2 * t] = df[0];
  d[g * 8 + 2 * t + 1] = df[1];
  d[(g + 8) * 8 + 2 * t] = df[2];
  d[(g + 8) * 8 + 2 * t + 1] = df[3];
}

// cp.async staging of x (one float4 a thread) through shared memory, each thread then reading its neighbour's
// float4 (y[4 · tid + u] = x[4 · ((tid + 1) % threads) + u]). mode 0 is correct: issue, commit, wait, barrier,
// read. The bugs: 1 reads before its wait (after the barrier: the copies are still in flight), 2 waits but skips the barrier (the
// neighbour's copy may not have landed), 3 copies from an address 4 bytes past a 16-byte boundary, 4 exits
// without waiting.
extern "C" __global__ void planted_cp_async_stage(float* y, const float* x, unsigned int mode) {
  __shared__ __align__(16) float stage[256 * 4];
  const unsigned int t = threadIdx.x, n = blockDim.x, from = (t + 1) % n;
  cp_async16(&stage[4 * t], x + 4 * t + (mode == 3 ? 1 : 0));
  cp_async_commit();
  if (mode == 4) return;
  if (mode != 1) cp_async_wait_group<0>();
  if (mode != 2) __syncthreads();
  for (int u = 0; u < 4; ++u) y[4 * t + u] = stage[4 * from + u];
  if (mode == 1) cp_async_wait_group<0>();
}

// The racecheck build's planted races (kernels/emu/emu.cpp, INCEPTION_CUDA_EMU_RACECHECK=1): bugs that no
// thread order of the plain emulator shows, since its blocks never overlap and its copies land at the wait.

// y[4 · t + u] = Σ_k x[k][4 · ((t + 1) % n) + u] for `tiles` tiles of n float4s (n = blockDim.x threads),
// double-buffered through shared memory with cp.async: tile k + 1's copy is issued before tile k is read.
// BUG when `bug` is 1: no __syncthreads() before a stage is refilled, while the other threads may still read
// it (tile k - 1's reads and tile k + 1's copies share a barrier interval): on a GPU the copy can land under
// a neighbour's read.
extern "C" __global__ void planted_cp_async_pipeline(float* y, const float* x, unsigned int tiles, unsigned int bug) {
  __shared__ __align__(16) float stage[2][256 * 4];
  const unsigned int t = threadIdx.x, n = blockDim.x, from = (t + 1) % n;
  cp_async16(&stage[0][4 * t], x + 4 * t);
  cp_async_commit();
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (unsigned int k = 0; k < tiles; ++k) {
    if (k + 1 < tiles) {
      if (!bug) __syncthreads();  // every thread is done reading stage (k + 1) % 2 (tile k - 1)
      cp_async16(&stage[(k + 1) % 2][4 * t], x + 4 * ((k + 1) * n + t));
    }
    cp_async_commit();
    cp_async_wait_group<1>();  // tile k has landed (tile k + 1 may be in flight)
    __syncthreads();           // every thread's piece of tile k has
    for (int u = 0; u < 4; ++u) acc[u] += stage[k % 2][4 * from + u];
  }
  cp_async_wait_group<0>();
  for (int u = 0; u < 4; ++u) y[4 * t + u] = acc[u];
}

// BUG: every block writes y[threadIdx.x]: the blocks of a launch are unordered, so which one wins is not
// defined (the plain emulator runs the last block last and always gets the same answer).
extern "C" __global__ void planted_blocks_share_output(float* y) { y[threadIdx.x] = (float)blockIdx.x; }

// One warp: y[lane] = lane + 1 mod 32 through shared memory. BUG when `synced` is 0: no __syncwarp() between
// the lanes' writes and their reads of a neighbour's (since Volta the lanes of a warp are not in lock step).
extern "C" __global__ void planted_warp_exchange(float* y, unsigned int synced) {
  __shared__ float s[32];
  const unsigned int lane = threadIdx.x % 32;
  s[lane] = (float)lane;
  if (synced) __syncwarp();
  y[lane] = s[(lane + 1) % 32];
}

// Shared-memory bank patterns for the racecheck build's traffic counter (not a bug): one warp loads
// `width` floats (1, 2 or 4: a float, float2 or float4 load) from s[lane * stride] and stores their sum to y[lane].
extern "C" __global__ void bank_pattern(float* y, unsigned int stride, unsigned int width) {
  __shared__ __align__(16) float s[32 * 32 * 4];
  for (unsigned int i = threadIdx.x; i < 32 * 32 * 4; i += 32) s[i] = (float)i;
  __syncthreads();
  const unsigned int at = threadIdx.x * stride;
  float sum;
  if (width == 4) {
    const float4 v = *reinterpret_cast<const float4*>(&s[at]);
    sum = v.x + v.y + v.z + v.w;
  } else if (width == 2) {
    const float2 v = *reinterpret_cast<const float2*>(&s[at]);
    sum = v.x + v.y;
  } else {
    sum = s[at];
  }
  y[threadIdx.x] = sum;
}

// BUG when `offset` is not a multiple of 4: every thread loads the float4 at x + offset (a GPU faults with a
// misaligned address). Launched by the racecheck build only, whose vector copies check their alignment.
extern "C" __global__ void planted_misaligned_float4(float* y, const float* x, unsigned int offset) {
  const float4 v = *reinterpret_cast<const float4*>(x + offset);
  y[threadIdx.x] = v.x + v.y + v.z + v.w;
}
