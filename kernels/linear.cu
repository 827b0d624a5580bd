// linear.cu: the linear layer y = x · wᵀ + b (PyTorch's weight layout w [n_out, k_in]) as tiled GEMMs.
//
// Provides: linear_fwd (split-K: each z-slice of the grid writes the partial product of one range of k_in
//           into partials[z]; linear_fwd_reduce then sums the partials in z order and adds the bias: fc1's
//           forward has only 35,000 outputs for k_in = 200,704, so k must be split across blocks), linear_dgrad
//           (dx = dy · w), linear_wgrad (dw = dyᵀ · x; 140 M outputs from k = 50: a write-bandwidth problem),
//           linear_wgrad_adam (the same product applied by Adam to w and its moments in the epilogue: the
//           weight gradient is never stored, which saves fc1 a 562 MB write and read per step),
//           linear_bgrad (one thread per column, rows summed in order). No float atomics: same inputs, same bits.
// The GEMM: C[i, j] = Σ_k A(i, k) · B(k, j) with strides. A block of 128 threads computes a 64 × 128 tile of C,
//           8 × 8 outputs per thread in registers, k in steps of 16 through shared memory; the next step's
//           global loads are issued into registers before the current step's FMAs (one shared buffer). Every
//           thread sums its outputs over k in the same order in all four GEMM kernels, so linear_wgrad_adam
//           equals linear_wgrad followed by adam_step bit for bit. The *_tf32 kernels run the same tiles on the
//           tensor cores (gemm_block_tc: mma.sync m16n8k8, tiles filled by cp.async GEMM_STAGES − 1 k-steps ahead).
// Backward needs saved: x (for wgrad) and w (for dgrad). linear_wgrad_adam updates w in place: a step runs
//           dgrad (which reads w) before it.
// Write rules: every output element is written once. CPU twin: src/cpu/linear.rs (other summation orders:
//              compared within tolerances).

#include "adam.cuh"
#include "args.h"  // GemmDims; GEMM_BM × GEMM_BN tiles of C per block (WGRAD_ADAM_BM rows for linear_wgrad_adam),
                   // k in steps of GEMM_BK, GEMM_THREADS threads: 16 column groups × 8 row groups, 8 × 8 outputs each
#include "mma.cuh"  // the TF32 path: tf32_bits, mma_tf32_m16n8k8, cp_async16, piece20_row
#define GEMM_PAD 4        // shared row padding: keeps rows 16-byte aligned for float4 reads
#define GEMM_MIN_BLOCKS 3   // blocks per SM the register budget must allow (≤ 168 registers a thread)

typedef unsigned long long u64;

// A hint that the line holding p will be read soon: fetched into L2 (no effect on results; a no-op under
// emulation, which has no caches).
__device__ __forceinline__ void prefetch_l2(const void* p) {
#ifdef __CUDA_ARCH__
  asm volatile("prefetch.global.L2 [%0];" ::"l"(p));
#else
  (void)p;
#endif
}


// How an operand X(r, k) = p[r · rs + k · ks] is read: decided once per launch from its strides and pointer
// (uniform branches). Contiguous in k: float4s along k; contiguous in r: float4s along r; else scalars, with
// the contiguous index fastest across threads so warps read whole segments.
enum GemmRead { READ_K4 = 0, READ_R4 = 1, READ_SCALAR = 2 };

__device__ __forceinline__ int gemm_read_mode(const float* p, u64 rs, u64 ks) {
  const bool aligned = ((u64)p & 15) == 0;
  if (ks == 1 && aligned && rs % 4 == 0) return READ_K4;
  if (rs == 1 && aligned && ks % 4 == 0) return READ_R4;
  return READ_SCALAR;
}

// Reads the 16 (k) × R (r) tile of X, r in [r0, r0 + R), k in [k0, k0 + 16), into this thread's R / 8 registers
// v; zero where r >= r_end or k >= k_end. gemm_stash writes them to shared memory with the same mapping.
template <int R>
__device__ __forceinline__ void gemm_fetch(float (&v)[R / 8], int mode, const float* __restrict__ p, u64 rs,
                                           u64 ks, unsigned int r0, unsigned int r_end, u64 k0, u64 k_end) {
  if (mode == READ_K4) {
#pragma unroll
    for (int q = 0; q < R / 32; ++q) {
      const unsigned int f = threadIdx.x + q * GEMM_THREADS;  // float4 index: r = f / 4, k = 4 · (f % 4)
      const unsigned int r = f / (GEMM_BK / 4), kq = (f % (GEMM_BK / 4)) * 4;
      const u64 k = k0 + kq;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r0 + r < r_end) {
        const float* s = p + (u64)(r0 + r) * rs + k;
        if (k + 3 < k_end) {
          x = *reinterpret_cast<const float4*>(s);
        } else {
          x.x = k < k_end ? s[0] : 0.0f;
          x.y = k + 1 < k_end ? s[1] : 0.0f;
          x.z = k + 2 < k_end ? s[2] : 0.0f;
        }
      }
      v[q * 4 + 0] = x.x, v[q * 4 + 1] = x.y, v[q * 4 + 2] = x.z, v[q * 4 + 3] = x.w;
    }
  } else if (mode == READ_R4) {
#pragma unroll
    for (int q = 0; q < R / 32; ++q) {
      const unsigned int f = threadIdx.x + q * GEMM_THREADS;  // float4 index: k = f / (R / 4), r = 4 · (f % ...)
      const unsigned int kk = f / (R / 4), rq = (f % (R / 4)) * 4;
      const u64 k = k0 + kk;
      float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (k < k_end) {
        const unsigned int r = r0 + rq;
        const float* s = p + k * ks + r;
        if (r + 3 < r_end) {
          x = *reinterpret_cast<const float4*>(s);
        } else {
          x.x = r < r_end ? s[0] : 0.0f;
          x.y = r + 1 < r_end ? s[1] : 0.0f;
          x.z = r + 2 < r_end ? s[2] : 0.0f;
        }
      }
      v[q * 4 + 0] = x.x, v[q * 4 + 1] = x.y, v[q * 4 + 2] = x.z, v[q * 4 + 3] = x.w;
    }
  } else {
    const bool kfast = ks == 1;
#pragma unroll
    for (int q = 0; q < R / 8; ++q) {
      const unsigned int e = threadIdx.x + q * GEMM_THREADS;
      const unsigned int kk = kfast ? e % GEMM_BK : e / R, r = kfast ? e / GEMM_BK : e % R;
      const u64 k = k0 + kk;
      v[q] = (k < k_end && r0 + r < r_end) ? p[(u64)(r0 + r) * rs + k * ks] : 0.0f;
    }
  }
}

template <int R>
__device__ __forceinline__ void gemm_stash(float (*s)[R + GEMM_PAD], const float (&v)[R / 8], int mode, bool kfast) {
  if (mode == READ_K4) {
#pragma unroll
    for (int q = 0; q < R / 32; ++q) {
      const unsigned int f = threadIdx.x + q * GEMM_THREADS;
      const unsigned int r = f / (GEMM_BK / 4), kq = (f % (GEMM_BK / 4)) * 4;
#pragma unroll
      for (int u = 0; u < 4; ++u) s[kq + u][r] = v[q * 4 + u];
    }
  } else if (mode == READ_R4) {
#pragma unroll
    for (int q = 0; q < R / 32; ++q) {
      const unsigned int f = threadIdx.x + q * GEMM_THREADS;
      const unsigned int kk = f / (R / 4), rq = (f % (R / 4)) * 4;
      *reinterpret_cast<float4*>(&s[kk][rq]) = make_float4(v[q * 4], v[q * 4 + 1], v[q * 4 + 2], v[q * 4 + 3]);
    }
  } else {
#pragma unroll
    for (int q = 0; q < R / 8; ++q) {
      const unsigned int e = threadIdx.x + q * GEMM_THREADS;
      const unsigned int kk = kfast ? e % GEMM_BK : e / R, r = kfast ? e / GEMM_BK : e % R;
      s[kk][r] = v[q];
    }
  }
}

// Output (a, b) of thread t of the tile: row 4 · (t / 16) + a % 4 + 32 · (a / 4), column 4 · (t % 16) + b % 4 +
// 64 · (b / 4): a warp's float4 reads of shared memory and its float4 stores cover contiguous runs. A thread
// has TM = 8 rows (tiles of 64 rows) or TM = 4 (32 rows: fewer registers, more blocks per SM).
__device__ __forceinline__ unsigned int gemm_row(int a) { return (threadIdx.x / 16) * 4 + (a % 4) + (a / 4) * 32; }
__device__ __forceinline__ unsigned int gemm_col(int h) { return (threadIdx.x % 16) * 4 + h * 64; }

// The block's tile of C: grid x enumerates the tiles with row tiles fastest (blocks that run together share
// B's columns: wgrad reads x from DRAM once, not once per row tile), grid z the split-K slices.
struct GemmTile {
  unsigned int i0, j0;  // first row and column
};

template <int BM>
__device__ __forceinline__ GemmTile gemm_tile_of(const GemmDims& d) {
  const unsigned int row_tiles = (d.m + BM - 1) / BM;
  const unsigned int rt = row_tiles > 0 ? row_tiles : 1;
  return GemmTile{(blockIdx.x % rt) * BM, (blockIdx.x / rt) * GEMM_BN};
}

// The fp32 GEMM core: acc as gemm_block states it, by FMAs; A's and B's next k-step loaded into registers
// during the current step's FMAs (one shared buffer).
template <int TM>
__device__ __forceinline__ void gemm_block_fma(float (&acc)[TM][8], const float* __restrict__ a,
                                               const float* __restrict__ b, const GemmDims& d) {
  constexpr int BM = TM * 8;
  __shared__ __align__(16) float as[GEMM_BK][BM + GEMM_PAD];       // as[kk][i]
  __shared__ __align__(16) float bs[GEMM_BK][GEMM_BN + GEMM_PAD];  // bs[kk][j]
  const GemmTile tile = gemm_tile_of<BM>(d);
  const unsigned int i0 = tile.i0, j0 = tile.j0;
  const u64 k_begin = (u64)blockIdx.z * d.k_chunk;
  const u64 k_end = k_begin + d.k_chunk < d.k ? k_begin + d.k_chunk : d.k;
  const int amode = gemm_read_mode(a, d.a_rs, d.a_ks), bmode = gemm_read_mode(b, d.b_cs, d.b_ks);
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[r][c] = 0.0f;
  if (k_begin >= k_end) return;  // uniform: an empty k range
  float av[BM / 8], bv[GEMM_BN / 8];
  gemm_fetch<BM>(av, amode, a, d.a_rs, d.a_ks, i0, d.m, k_begin, k_end);  // A(i, k)
  gemm_fetch<GEMM_BN>(bv, bmode, b, d.b_cs, d.b_ks, j0, d.n, k_begin, k_end);  // B(k, j) as X(j, k)
  const unsigned int ty4 = (threadIdx.x / 16) * 4, tx4 = (threadIdx.x % 16) * 4;
  for (u64 k0 = k_begin; k0 < k_end; k0 += GEMM_BK) {
    gemm_stash<BM>(as, av, amode, d.a_ks == 1);
    gemm_stash<GEMM_BN>(bs, bv, bmode, d.b_ks == 1);
    __syncthreads();
    if (k0 + GEMM_BK < k_end) {  // the next step's loads, in flight during the FMAs below
      gemm_fetch<BM>(av, amode, a, d.a_rs, d.a_ks, i0, d.m, k0 + GEMM_BK, k_end);
      gemm_fetch<GEMM_BN>(bv, bmode, b, d.b_cs, d.b_ks, j0, d.n, k0 + GEMM_BK, k_end);
    }
#pragma unroll
    for (int kk = 0; kk < GEMM_BK; ++kk) {
      float ar[TM];
      const float4 a0 = *reinterpret_cast<const float4*>(&as[kk][ty4]);
      ar[0] = a0.x, ar[1] = a0.y, ar[2] = a0.z, ar[3] = a0.w;
      if (TM == 8) {
        const float4 a1 = *reinterpret_cast<const float4*>(&as[kk][ty4 + 32]);
        ar[TM - 4] = a1.x, ar[TM - 3] = a1.y, ar[TM - 2] = a1.z, ar[TM - 1] = a1.w;
      }
      const float4 b0 = *reinterpret_cast<const float4*>(&bs[kk][tx4]);
      const float4 b1 = *reinterpret_cast<const float4*>(&bs[kk][tx4 + 64]);
      const float br[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
      for (int r = 0; r < TM; ++r)
#pragma unroll
        for (int c = 0; c < 8; ++c) acc[r][c] += ar[r] * br[c];
    }
    __syncthreads();
  }
}

// The TF32 GEMM core: acc as gemm_block states it, on mma.sync m16n8k8 (mma.cuh), from shared-memory tiles that
// cp.async fills GEMM_STAGES − 1 k-steps ahead (the copies hold no registers, so more bytes are in flight than the
// fp32 core's register pipeline allows). Each operand X(r, k) is staged in the layout its memory order copies in
// 16-byte pieces: k fastest when X is contiguous in k (s[r][k], rows GEMM_BK + GEMM_PAD apart), r fastest when
// contiguous in r (s[k][r], rows R + TC_RPAD apart); pieces at the matrix's edges and strided or unaligned operands
// are loaded by the threads (zeros outside the matrix). Both layouts serve a warp's fragment loads and a
// quarter-warp's 16-byte stores from 32 distinct banks: k fastest, lane (g, t) reads word 20g + t and 8 threads
// store the pieces of rows r and r + 4 (piece20_row, mma.cuh); r fastest, lane (g, t) reads word 8t + g and 8
// threads store 32 consecutive words. The block's 4 warps split the tile 2 × 2 (TM 8: 32 × 64 each) or 1 × 4 (TM 4:
// 32 × 32 each); the accumulators go through shared memory (rows GEMM_BN + TC_RPAD apart: a half-warp's float2
// stores of C fragments, words 8g + 2t, fill 32 banks) into acc's layout, read back as float4s, so every epilogue
// serves both cores. Each output is the same chain of mma instructions (k in steps of 8, from zero, padded with
// zeros to a multiple of GEMM_BK) for every TM.
#define GEMM_STAGES 3
#define TC_RPAD 8  // row padding of the r-fastest stage layout and of C: rows ≡ 8 words mod 32

struct TcOperand {
  const float* p;
  u64 rs, ks;            // X(r, k) = p[r · rs + k · ks]
  unsigned int r_end;    // rows r >= r_end are zeros
  bool kfast;            // staged as s[r][k] (else s[k][r])
  bool async;            // 16-byte pieces by cp.async where whole and inside the matrix
  unsigned int srs, sks; // X(r, k) of the tile at s[r · srs + k · sks]
};

template <int R>
__device__ __forceinline__ TcOperand tc_operand(const float* p, u64 rs, u64 ks, unsigned int r_end) {
  const int mode = gemm_read_mode(p, rs, ks);
  const bool kfast = mode == READ_K4 || (mode == READ_SCALAR && ks == 1);
  return TcOperand{p, rs, ks, r_end, kfast, mode != READ_SCALAR, kfast ? GEMM_BK + GEMM_PAD : 1u,
                   kfast ? 1u : (unsigned int)(R + TC_RPAD)};
}

// The floats one stage of an R-row operand needs in either layout.
template <int R>
__host__ __device__ constexpr int tc_tile_floats() {
  return R * (GEMM_BK + GEMM_PAD) > GEMM_BK * (R + TC_RPAD) ? R * (GEMM_BK + GEMM_PAD) : GEMM_BK * (R + TC_RPAD);
}

// Stages the GEMM_BK (k) × R (r) tile of X at rows [r0, r0 + R), k in [k0, k0 + GEMM_BK), as 4-element pieces
// along the staged layout's fast dimension.
template <int R>
__device__ __forceinline__ void tc_fill(float* __restrict__ s, const TcOperand& o, unsigned int r0, u64 k0,
                                        u64 k_end) {
  for (unsigned int q = threadIdx.x; q < R * GEMM_BK / 4; q += GEMM_THREADS) {
    const unsigned int r = o.kfast ? piece20_row(q) : q % (R / 4) * 4;
    const unsigned int kk = o.kfast ? q % (GEMM_BK / 4) * 4 : q / (R / 4);
    const unsigned int at = r * o.srs + kk * o.sks;  // the piece's 4 elements are contiguous in either layout
    const unsigned int rr = r0 + r;
    const u64 k = k0 + kk;
    const float* src = o.p + (u64)rr * o.rs + k * o.ks;
    const u64 step = o.kfast ? o.ks : o.rs;  // from one element of the piece to the next
    const bool whole = o.kfast ? rr < o.r_end && k + 3 < k_end : k < k_end && rr + 3 < o.r_end;
    if (o.async && whole) {
      cp_async16(s + at, src);
    } else {
      float e[4];
      for (unsigned int u = 0; u < 4; ++u) {
        const bool in = o.kfast ? rr < o.r_end && k + u < k_end : k < k_end && rr + u < o.r_end;
        e[u] = in ? src[u * step] : 0.0f;
      }
      st_quad(s, at, e);
    }
  }
}

template <int TM>
__device__ __forceinline__ void gemm_block_tc(float (&acc)[TM][8], const float* __restrict__ a,
                                              const float* __restrict__ b, const GemmDims& d) {
  constexpr int BM = TM * 8, A_FLOATS = tc_tile_floats<BM>(), STAGE = A_FLOATS + tc_tile_floats<GEMM_BN>();
  static_assert(GEMM_STAGES * STAGE >= BM * (GEMM_BN + TC_RPAD), "the epilogue reuses the stages");
  static_assert(GEMM_BK == 16 && BM % 8 == 0, "k-fastest stages: piece20_row's rows of 16 floats, in groups of 8");
  __shared__ __align__(16) float tc_s[GEMM_STAGES * STAGE];  // GEMM_STAGES × (A tile, B tile); then C
  const GemmTile tile = gemm_tile_of<BM>(d);
  const u64 k_begin = (u64)blockIdx.z * d.k_chunk;
  const u64 k_end = k_begin + d.k_chunk < d.k ? k_begin + d.k_chunk : d.k;
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int c = 0; c < 8; ++c) acc[r][c] = 0.0f;
  if (k_begin >= k_end) return;  // uniform: an empty k range
  const TcOperand ao = tc_operand<BM>(a, d.a_rs, d.a_ks, d.m), bo = tc_operand<GEMM_BN>(b, d.b_cs, d.b_ks, d.n);
  const unsigned int ktiles = (unsigned int)((k_end - k_begin + GEMM_BK - 1) / GEMM_BK);
  constexpr int WR = BM / 32, WC = 4 / WR, NT = GEMM_BN / WC / 8;  // warps per column, per row; n8 tiles
  const unsigned int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const unsigned int wr0 = threadIdx.x / 32 / WC * 32, wc0 = threadIdx.x / 32 % WC * (GEMM_BN / WC);
  float mc[2][NT][4] = {};
#pragma unroll
  for (int st = 0; st < GEMM_STAGES - 1; ++st) {  // the first k-steps in flight
    if ((unsigned int)st < ktiles) {
      tc_fill<BM>(tc_s + st * STAGE, ao, tile.i0, k_begin + st * GEMM_BK, k_end);
      tc_fill<GEMM_BN>(tc_s + st * STAGE + A_FLOATS, bo, tile.j0, k_begin + st * GEMM_BK, k_end);
    }
    cp_async_commit();  // one group per k-step, empty or not: the wait below counts k-steps
  }
  for (unsigned int kt = 0; kt < ktiles; ++kt) {
    cp_async_wait_group<GEMM_STAGES - 2>();  // this thread's pieces of step kt have landed
    __syncthreads();  // everyone's have; and every warp is done with step kt - 1, whose stage is refilled now
    const unsigned int nk = kt + GEMM_STAGES - 1;
    if (nk < ktiles) {
      float* sn = tc_s + nk % GEMM_STAGES * STAGE;
      tc_fill<BM>(sn, ao, tile.i0, k_begin + (u64)nk * GEMM_BK, k_end);
      tc_fill<GEMM_BN>(sn + A_FLOATS, bo, tile.j0, k_begin + (u64)nk * GEMM_BK, k_end);
    }
    cp_async_commit();
    const float* as = tc_s + kt % GEMM_STAGES * STAGE;
    const float* bs = as + A_FLOATS;
#pragma unroll
    for (int k8 = 0; k8 < GEMM_BK; k8 += 8) {
      unsigned int af[2][4], bf[NT][2];
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const unsigned int r = wr0 + mt * 16 + g;
        af[mt][0] = tf32_bits(as[r * ao.srs + (k8 + t) * ao.sks]);
        af[mt][1] = tf32_bits(as[(r + 8) * ao.srs + (k8 + t) * ao.sks]);
        af[mt][2] = tf32_bits(as[r * ao.srs + (k8 + t + 4) * ao.sks]);
        af[mt][3] = tf32_bits(as[(r + 8) * ao.srs + (k8 + t + 4) * ao.sks]);
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        const unsigned int c = wc0 + nt * 8 + g;
        bf[nt][0] = tf32_bits(bs[c * bo.srs + (k8 + t) * bo.sks]);
        bf[nt][1] = tf32_bits(bs[c * bo.srs + (k8 + t + 4) * bo.sks]);
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_tf32_m16n8k8(mc[mt][nt], af[mt], bf[nt], mc[mt][nt]);
    }
  }
  cp_async_wait_group<0>();  // only empty groups remain
  __syncthreads();           // every warp is done with the stages: C reuses them
  float(*cs)[GEMM_BN + TC_RPAD] = reinterpret_cast<float(*)[GEMM_BN + TC_RPAD]>(tc_s);
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)  // c0, c1: row g; c2, c3: row g + 8; columns 2t, 2t + 1
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        st_pair(cs[wr0 + mt * 16 + g + h * 8], wc0 + nt * 8 + 2 * t, mc[mt][nt][2 * h], mc[mt][nt][2 * h + 1]);
  __syncthreads();
#pragma unroll
  for (int r = 0; r < TM; ++r)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float4 q = *reinterpret_cast<const float4*>(&cs[gemm_row(r)][gemm_col(h)]);
      acc[r][4 * h] = q.x;
      acc[r][4 * h + 1] = q.y;
      acc[r][4 * h + 2] = q.z;
      acc[r][4 * h + 3] = q.w;
    }
}

// acc[a][b] = Σ_k A(i0 + row(a), k) · B(k, j0 + col(b)) over this block's tile (TM · 8 rows) and k range
// (slice z of k), k in increasing order: the same order for every TM. fp32: FMAs (gemm_block_fma); TF32: the
// tensor cores (gemm_block_tc), operands rounded by cvt.rna.
template <int TM, bool TF32 = false>
__device__ __forceinline__ void gemm_block(float (&acc)[TM][8], const float* __restrict__ a,
                                           const float* __restrict__ b, const GemmDims& d) {
  if constexpr (TF32) {
    gemm_block_tc<TM>(acc, a, b, d);
  } else {
    gemm_block_fma<TM>(acc, a, b, d);
  }
}

// C = the block's tile of acc, float4 stores where the row stride and pointer allow.
__device__ __forceinline__ void gemm_store(float* __restrict__ c, const float (&acc)[8][8], const GemmDims& d) {
  const GemmTile tile = gemm_tile_of<GEMM_BM>(d);
  const unsigned int i0 = tile.i0, j0 = tile.j0;
  const bool vec = ((u64)c & 15) == 0 && d.c_rs % 4 == 0;
#pragma unroll
  for (int r = 0; r < 8; ++r) {
    const unsigned int i = i0 + gemm_row(r);
    if (i >= d.m) continue;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const unsigned int j = j0 + gemm_col(h);
      float* out = c + (u64)i * d.c_rs + j;
      if (vec && j + 3 < d.n) {
        *reinterpret_cast<float4*>(out) =
            make_float4(acc[r][h * 4], acc[r][h * 4 + 1], acc[r][h * 4 + 2], acc[r][h * 4 + 3]);
      } else {
        for (int u = 0; u < 4; ++u)
          if (j + u < d.n) out[u] = acc[r][h * 4 + u];
      }
    }
  }
}

// Grid (ceil(m / 64) · ceil(n_out / 128), 1, splits): partials[z] = x[:, z-th k range] · w[:, same]ᵀ. The
// kernels named *_tf32 below are the same computation on the tensor cores (gemm_block's TF32 path).
template <bool TF32>
__device__ __forceinline__ void linear_fwd_body(float* __restrict__ partials, const float* __restrict__ x,
                                                const float* __restrict__ w, const GemmDims& d) {
  float acc[8][8];
  gemm_block<8, TF32>(acc, x, w, d);
  gemm_store(partials + (u64)blockIdx.z * d.c_slice, acc, d);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS) linear_fwd(float* __restrict__ partials,  // [splits, m, n_out]
                                                                      const float* __restrict__ x,   // [m, k_in]
                                                                      const float* __restrict__ w,   // [n_out, k_in]
                                                                      GemmDims d) {
  linear_fwd_body<false>(partials, x, w, d);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS) linear_fwd_tf32(float* __restrict__ partials,  // [splits, m, n_out]
                                                                           const float* __restrict__ x,   // [m, k_in]
                                                                           const float* __restrict__ w,   // [n_out, k_in]
                                                                           GemmDims d) {
  linear_fwd_body<true>(partials, x, w, d);
}

// y[i, j] = b[j] + Σ_z partials[z, i, j], z in order. One thread per output (grid-stride).
extern "C" __global__ void linear_fwd_reduce(float* __restrict__ y,               // [m, n_out]
                                             const float* __restrict__ partials,  // [splits, m, n_out]
                                             const float* __restrict__ b,         // [n_out]
                                             unsigned int m, unsigned int n_out, unsigned int splits) {
  const u64 total = (u64)m * n_out;
  const u64 stride = (u64)gridDim.x * blockDim.x;
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    float acc = 0.0f;
    for (unsigned int z = 0; z < splits; ++z) acc += partials[z * total + i];
    y[i] = acc + b[i % n_out];
  }
}

// C = A · B over the whole k range, stored: the body of dgrad and wgrad in both precisions.
template <bool TF32>
__device__ __forceinline__ void gemm_product(float* __restrict__ c, const float* __restrict__ a,
                                             const float* __restrict__ b, const GemmDims& d) {
  float acc[8][8];
  gemm_block<8, TF32>(acc, a, b, d);
  gemm_store(c, acc, d);
}

// Grid (ceil(m / 64) · ceil(k_in / 128)): dx = dy · w.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS) linear_dgrad(float* __restrict__ dx,        // [m, k_in]
                                                                        const float* __restrict__ dy,  // [m, n_out]
                                                                        const float* __restrict__ w,   // [n_out, k_in]
                                                                        GemmDims d) {
  gemm_product<false>(dx, dy, w, d);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS) linear_dgrad_tf32(float* __restrict__ dx,        // [m, k_in]
                                                                             const float* __restrict__ dy,  // [m, n_out]
                                                                             const float* __restrict__ w,   // [n_out, k_in]
                                                                             GemmDims d) {
  gemm_product<true>(dx, dy, w, d);
}

// Grid (ceil(n_out / 64) · ceil(k_in / 128)): dw = dyᵀ · x.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS) linear_wgrad(float* __restrict__ dw,        // [n_out, k_in]
                                                                        const float* __restrict__ dy,  // [m, n_out]
                                                                        const float* __restrict__ x,   // [m, k_in]
                                                                        GemmDims d) {
  gemm_product<false>(dw, dy, x, d);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, GEMM_MIN_BLOCKS) linear_wgrad_tf32(float* __restrict__ dw,        // [n_out, k_in]
                                                                             const float* __restrict__ dy,  // [m, n_out]
                                                                             const float* __restrict__ x,   // [m, k_in]
                                                                             GemmDims d) {
  gemm_product<true>(dw, dy, x, d);
}

// Grid (ceil(n_out / 32) · ceil(k_in / 128)): g = dyᵀ · x formed in registers, then Adam's update of w, m, v with
// it (adam.cuh): the result of linear_wgrad then adam_step, without storing g. w, m, v [n_out, k_in], updated
// in place. The update is bound by memory latency: the block asks L2 for its w, m, v lines before the
// product, and 32-row tiles (4 rows a thread) leave registers for four blocks an SM (16 warps, against 12
// with 64-row tiles), each thread with half its w, m, v loads in flight.
template <bool TF32>
__device__ __forceinline__ void linear_wgrad_adam_body(float* __restrict__ w, float* __restrict__ m,
                                                       float* __restrict__ v, const float* __restrict__ dy,
                                                       const float* __restrict__ x, const GemmDims& d,
                                                       const AdamScalars& s) {
  const GemmTile tile = gemm_tile_of<WGRAD_ADAM_BM>(d);
  // Ask L2 for the tile's w, m, v (32 rows × 128 columns each: 384 lines of 128 bytes, three a thread) before
  // the product, so that they stream in while it runs: hints hold no registers, unlike loads.
  for (unsigned int l = threadIdx.x; l < 3 * 32 * 4; l += GEMM_THREADS) {
    const unsigned int i = tile.i0 + l % 128 / 4, j = tile.j0 + l % 4 * 32;
    const float* base = l < 128 ? w : l < 256 ? m : v;
    if (i < d.m && j < d.n) prefetch_l2(base + (u64)i * d.c_rs + j);
  }
  float acc[4][8];
  gemm_block<4, TF32>(acc, dy, x, d);
  const bool vec = (((u64)w | (u64)m | (u64)v) & 15) == 0 && d.c_rs % 4 == 0;
#pragma unroll
  for (int q0 = 0; q0 < 8; q0 += 4) {  // two halves: the loads of four output groups in flight together
    float4 wq[4], mq[4], vq[4];
    u64 at[4];
    bool full[4], any[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {  // output group q = q0 + e: row q / 2, columns col(q % 2) .. + 3
      const int q = q0 + e;
      const unsigned int i = tile.i0 + gemm_row(q / 2), j = tile.j0 + gemm_col(q % 2);
      at[e] = (u64)i * d.c_rs + j;
      any[e] = i < d.m && j < d.n;
      full[e] = vec && i < d.m && j + 3 < d.n;
      if (full[e]) {
        wq[e] = *reinterpret_cast<const float4*>(w + at[e]);
        mq[e] = *reinterpret_cast<const float4*>(m + at[e]);
        vq[e] = *reinterpret_cast<const float4*>(v + at[e]);
      }
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int q = q0 + e;
      const float* g = &acc[q / 2][(q % 2) * 4];
      if (full[e]) {
        adam_update(wq[e].x, mq[e].x, vq[e].x, g[0], s);
        adam_update(wq[e].y, mq[e].y, vq[e].y, g[1], s);
        adam_update(wq[e].z, mq[e].z, vq[e].z, g[2], s);
        adam_update(wq[e].w, mq[e].w, vq[e].w, g[3], s);
        *reinterpret_cast<float4*>(w + at[e]) = wq[e];
        *reinterpret_cast<float4*>(m + at[e]) = mq[e];
        *reinterpret_cast<float4*>(v + at[e]) = vq[e];
      } else if (any[e]) {  // the edge of the matrix, or unaligned views: scalars
        const unsigned int j = tile.j0 + gemm_col(q % 2);
        for (int u = 0; u < 4; ++u)
          if (j + u < d.n) adam_update(w[at[e] + u], m[at[e] + u], v[at[e] + u], g[u], s);
      }
    }
  }
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 4) linear_wgrad_adam(float* __restrict__ w,         // [n_out, k_in]
                                                                                float* __restrict__ m,         // [n_out, k_in]
                                                                                float* __restrict__ v,         // [n_out, k_in]
                                                                                const float* __restrict__ dy,  // [rows, n_out]
                                                                                const float* __restrict__ x,   // [rows, k_in]
                                                                                GemmDims d, AdamScalars s_arg,
                                                                                const float* __restrict__ adam_table,          // [steps, 6] (adam.cuh)
                                                                                const unsigned int* __restrict__ adam_step) {  // [1] or null
  linear_wgrad_adam_body<false>(w, m, v, dy, x, d, adam_scalars(s_arg, adam_table, adam_step));
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS, 4) linear_wgrad_adam_tf32(float* __restrict__ w,         // [n_out, k_in]
                                                                                float* __restrict__ m,         // [n_out, k_in]
                                                                                float* __restrict__ v,         // [n_out, k_in]
                                                                                const float* __restrict__ dy,  // [rows, n_out]
                                                                                const float* __restrict__ x,   // [rows, k_in]
                                                                                GemmDims d, AdamScalars s_arg,
                                                                                const float* __restrict__ adam_table,          // [steps, 6] (adam.cuh)
                                                                                const unsigned int* __restrict__ adam_step) {  // [1] or null
  linear_wgrad_adam_body<true>(w, m, v, dy, x, d, adam_scalars(s_arg, adam_table, adam_step));
}

// db[j] = Σ_i dy[i, j], rows in order: one thread per column.
extern "C" __global__ void linear_bgrad(float* __restrict__ db,        // [n_out]
                                        const float* __restrict__ dy,  // [m, n_out]
                                        unsigned int m, unsigned int n_out) {
  const unsigned int stride = gridDim.x * blockDim.x;
  for (unsigned int j = blockIdx.x * blockDim.x + threadIdx.x; j < n_out; j += stride) {
    float acc = 0.0f;
    for (unsigned int i = 0; i < m; ++i) acc += dy[(u64)i * n_out + j];
    db[j] = acc;
  }
}

// fc1's backward and Adam in one pass over the weight (fp32): dx = dy · w from the weight before its update,
// then w, m, v updated by Adam with g = dyᵀ · x, each element of w, m, v read once and written once (the two-
// kernel form, linear_dgrad then linear_wgrad_adam, reads w twice). Grid (ceil(k_in / GEMM_THREADS)): block j
// owns the column strip [j · 128, j · 128 + 128) of w, m, v and dx, one column a thread, and walks every row of
// w in order in chunks of BWD_ADAM_ROWS, so all n_out rows of dx are summed inside the block in row order: dx
// equals linear_dgrad's bits and w, m, v linear_wgrad_adam's (each output is the same chain of FMAs in the same
// order). Batches of at most BWD_ADAM_MAX_BATCH rows (x's column and dx's accumulators live in registers);
// the launcher uses the two-kernel form beyond that.
extern "C" __global__ void __launch_bounds__(GEMM_THREADS) linear_bwd_adam(float* __restrict__ dx,        // [rows, k_in]
                                                                         float* __restrict__ w,         // [n_out, k_in]
                                                                         float* __restrict__ m,         // [n_out, k_in]
                                                                         float* __restrict__ v,         // [n_out, k_in]
                                                                         const float* __restrict__ dy,  // [rows, n_out]
                                                                         const float* __restrict__ x,   // [rows, k_in]
                                                                         unsigned int rows, unsigned int n_out,
                                                                         unsigned int k_in, AdamScalars s_arg,
                                                                         const float* __restrict__ adam_table,          // [steps, 6] (adam.cuh)
                                                                         const unsigned int* __restrict__ adam_step) {  // [1] or null
  const AdamScalars s = adam_scalars(s_arg, adam_table, adam_step);
  constexpr int B = BWD_ADAM_MAX_BATCH;
  __shared__ float dys[BWD_ADAM_ROWS][B];  // dys[r][b] = dy[b, r0 + r]: the chunk's gradients, read by all threads
  const unsigned int col = blockIdx.x * GEMM_THREADS + threadIdx.x;
  const bool mine = col < k_in;
  float xc[B], acc[B];
#pragma unroll
  for (int b = 0; b < B; ++b) {
    xc[b] = mine && b < (int)rows ? x[(u64)b * k_in + col] : 0.0f;
    acc[b] = 0.0f;
  }
  for (unsigned int r0 = 0; r0 < n_out; r0 += BWD_ADAM_ROWS) {
    const unsigned int chunk = n_out - r0 < BWD_ADAM_ROWS ? n_out - r0 : BWD_ADAM_ROWS;
    __syncthreads();  // the previous chunk's dys is no longer read
    for (unsigned int e = threadIdx.x; e < BWD_ADAM_ROWS * B; e += GEMM_THREADS) {
      const unsigned int r = e / B, b = e % B;
      dys[r][b] = r < chunk && b < rows ? dy[(u64)b * n_out + r0 + r] : 0.0f;
    }
    __syncthreads();
    if (!mine) continue;
    for (unsigned int r = 0; r < chunk; ++r) {
      const u64 at = (u64)(r0 + r) * k_in + col;
      float wv = w[at], mv = m[at], vv = v[at];
      float g = 0.0f;
#pragma unroll
      for (int b = 0; b < B; ++b) {
        if (b < (int)rows) {
          acc[b] += dys[r][b] * wv;  // dx[b, col] over the rows of w in order, from the weight before its update
          g += dys[r][b] * xc[b];    // g[r0 + r, col] over the batch in order
        }
      }
      if (rows % GEMM_BK) g += 0.0f;  // linear_wgrad_adam's zero padding of k to GEMM_BK (the sign of a zero g)
      adam_update(wv, mv, vv, g, s);
      w[at] = wv;
      m[at] = mv;
      v[at] = vv;
    }
  }
  if (!mine) return;
#pragma unroll
  for (int b = 0; b < B; ++b)  // n_out % GEMM_BK: linear_dgrad's zero padding of k (the sign of a zero dx)
    if (b < (int)rows) dx[(u64)b * k_in + col] = n_out % GEMM_BK ? acc[b] + 0.0f : acc[b];
}

// Where dy[b, r0 + r] lies in a chunk of linear_bwd_adam_tf32's dy tile: rows of BWD_TC_ROWS (32) floats, r
// XOR-swizzled by s(b) = 8 · (b % 4) + 4 · (b / 4 % 2). Both A-fragment reads hit 32 distinct banks: lane
// (g, t) reads b = 8j + g, r = 4i + t (dx's product: s takes 8 distinct multiples of 4 over g) and b = 4j + t,
// r = 8i + g (g's product: s = 8t + const moves the 8-row groups apart); a quarter-warp's 16-byte stores fill
// one row (the swizzle permutes its 4-float pieces). No padding: rows 36 floats apart served one read or the
// other conflict-free, never both.
__device__ __forceinline__ unsigned int bwd_dy_at(unsigned int b, unsigned int r) {
  static_assert(BWD_TC_ROWS == 32, "the swizzle spans the 32 banks");
  return b * BWD_TC_ROWS + (r ^ ((b % 4) << 3 | (b / 4 % 2) << 2));
}

// One chunk of linear_bwd_adam_tf32 into shared memory: rows [r0, r0 + BWD_TC_ROWS) of the strip [c0, c0 +
// BWD_TC_COLS) of w, m and v (tiles [row][col], rows BWD_TC_COLS + BWD_TC_PAD ≡ 8 mod 32 apart: the B-fragment
// reads, lane (g, t) at word 8t + g, hit 32 banks), then dy[:, r0 .. r0 + BWD_TC_ROWS) (bwd_dy_at); zeros
// outside the matrices and past the batch. `async`: every 16-byte piece is aligned (k_in and n_out multiples of
// 4, 16-byte aligned pointers), so the pieces go by cp.async and land at the caller's wait; otherwise plain
// loads, stored as one float4 a piece.
__device__ __forceinline__ void bwd_tc_stage(float* __restrict__ st, const float* __restrict__ w,
                                             const float* __restrict__ m, const float* __restrict__ v,
                                             const float* __restrict__ dy, unsigned int r0, unsigned int c0,
                                             unsigned int rows, unsigned int n_out, unsigned int k_in, bool async) {
  constexpr unsigned int W4 = BWD_TC_COLS / 4, LD = BWD_TC_COLS + BWD_TC_PAD;
  for (unsigned int e = threadIdx.x; e < 3 * BWD_TC_ROWS * W4; e += BWD_TC_THREADS) {
    const unsigned int which = e / (BWD_TC_ROWS * W4), r = e / W4 % BWD_TC_ROWS, cq = e % W4 * 4;
    const float* src = which == 0 ? w : which == 1 ? m : v;
    const unsigned int at_s = which * BWD_TC_TILE_FLOATS + r * LD + cq;  // a multiple of 4
    const unsigned int row = r0 + r, col = c0 + cq;
    const u64 at = (u64)row * k_in + col;
    if (async && row < n_out && col < k_in) {  // k_in % 4 == 0: col < k_in means the whole float4 is inside
      cp_async16(st + at_s, src + at);
    } else {
      float e4[4];
      for (unsigned int u = 0; u < 4; ++u) e4[u] = row < n_out && col + u < k_in ? src[at + u] : 0.0f;
      st_quad(st, at_s, e4);
    }
  }
  constexpr unsigned int R4 = BWD_TC_ROWS / 4;
  for (unsigned int e = threadIdx.x; e < BWD_ADAM_MAX_BATCH * R4; e += BWD_TC_THREADS) {
    const unsigned int b = e / R4, rq = e % R4 * 4, row = r0 + rq;
    // a multiple of 4: the swizzle moves whole pieces, their 4 floats stay in order
    const unsigned int at_s = 3 * BWD_TC_TILE_FLOATS + bwd_dy_at(b, rq);
    const u64 at = (u64)b * n_out + row;
    if (async && b < rows && row < n_out) {
      cp_async16(st + at_s, dy + at);
    } else {
      float e4[4];
      for (unsigned int u = 0; u < 4; ++u) e4[u] = b < rows && row + u < n_out ? dy[at + u] : 0.0f;
      st_quad(st, at_s, e4);
    }
  }
}

// fc1's backward and Adam in one pass over the weight on the tensor cores: linear_bwd_adam's computation with
// linear_dgrad_tf32's dx and linear_wgrad_adam_tf32's w, m, v, bit for bit. Grid (ceil(k_in / BWD_TC_COLS)),
// BWD_TC_THREADS threads, BWD_TC_SHARED_FLOATS floats of dynamic shared memory. Block j owns the column strip
// [j · 128, j · 128 + 128) of w, m, v and dx and walks the rows of w in chunks of BWD_TC_ROWS, streamed into
// shared memory by cp.async one chunk ahead: the kernel is bound by moving w, m and v, and the copies keep a
// chunk (60 KB) per SM in flight without holding registers. For each chunk:
//   dx[:, strip] += dy[:, chunk] · w[chunk, strip]   (mma, from the weight before its update)
//   g = dy[:, chunk]ᵀ · x[:, strip]                   (mma, x's fragments in registers for the whole strip)
//   g through shared memory, then Adam (adam.cuh) on float4s of w, m, v: coalesced stores
// The same fragments and chains as the two-kernel form: dx's k (rows of w) runs in steps of 8 from 0 to n_out
// rounded up to GEMM_BK, as in linear_dgrad_tf32's gemm_block; g's k (the batch) likewise to rows rounded up
// to GEMM_BK, as in linear_wgrad_adam_tf32's; the padding is zeros in both. Warp q owns columns [16q, 16q +
// 16) of the strip: its dx accumulators are up to 4 m16 tiles of the batch × 2 n8 tiles. Batches of at most
// BWD_ADAM_MAX_BATCH rows (the launcher uses the two-kernel form beyond that).
extern "C" __global__ void __launch_bounds__(BWD_TC_THREADS, 1) linear_bwd_adam_tf32(float* __restrict__ dx,        // [rows, k_in]
                                                                                   float* __restrict__ w,         // [n_out, k_in]
                                                                                   float* __restrict__ m,         // [n_out, k_in]
                                                                                   float* __restrict__ v,         // [n_out, k_in]
                                                                                   const float* __restrict__ dy,  // [rows, n_out]
                                                                                   const float* __restrict__ x,   // [rows, k_in]
                                                                                   unsigned int rows, unsigned int n_out,
                                                                                   unsigned int k_in, AdamScalars s_arg,
                                                                                   const float* __restrict__ adam_table,          // [rows, 6] (adam.cuh)
                                                                                   const unsigned int* __restrict__ adam_step) {  // [1] or null
  const AdamScalars s = adam_scalars(s_arg, adam_table, adam_step);
  static_assert(BWD_TC_STAGES == 2, "the pipeline below keeps one chunk in flight");
  static_assert(BWD_TC_THREADS / 32 * 16 == BWD_TC_COLS, "8 warps of 16 columns");
  extern __shared__ __align__(16) float bwd_tc_s[];  // BWD_TC_STAGES × (w, m, v, dy chunk), then g
  constexpr unsigned int LD = BWD_TC_COLS + BWD_TC_PAD, W4 = BWD_TC_COLS / 4;
  constexpr int KB = BWD_ADAM_MAX_BATCH / 8;  // k8 steps of g at most
  float* const gs = bwd_tc_s + BWD_TC_STAGES * BWD_TC_STAGE_FLOATS;  // g of the chunk, [row][col]
  const unsigned int c0 = blockIdx.x * BWD_TC_COLS;
  const unsigned int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, wc = threadIdx.x / 32 * 16;
  const bool async = (((u64)w | (u64)m | (u64)v | (u64)dy) & 15) == 0 && k_in % 4 == 0 && n_out % 4 == 0;
  const unsigned int kb = (rows + GEMM_BK - 1) / GEMM_BK * GEMM_BK;    // g's k, padded as gemm_block pads it
  const unsigned int kr = (n_out + GEMM_BK - 1) / GEMM_BK * GEMM_BK;   // dx's k, likewise
  const unsigned int mts = kb / 16;                                     // dx's m16 tiles (the batch)
  const unsigned int chunks = (n_out + BWD_TC_ROWS - 1) / BWD_TC_ROWS;

  bwd_tc_stage(bwd_tc_s, w, m, v, dy, 0, c0, rows, n_out, k_in, async);
  cp_async_commit();
  // x[:, strip] as the B fragments of g's mma (B(k = b, n = col) = x[b, col]), zero past the batch.
  unsigned int xf[KB][2][2];
#pragma unroll
  for (int k8 = 0; k8 < KB; ++k8)
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const unsigned int col = c0 + wc + nt * 8 + g, b = k8 * 8 + t;
      xf[k8][nt][0] = tf32_bits(b < rows && col < k_in ? x[(u64)b * k_in + col] : 0.0f);
      xf[k8][nt][1] = tf32_bits(b + 4 < rows && col < k_in ? x[(u64)(b + 4) * k_in + col] : 0.0f);
    }
  float dacc[4][2][4] = {};
  for (unsigned int c = 0; c < chunks; ++c) {
    if (c + 1 < chunks) {  // the next chunk's copies, in flight while this one is computed
      bwd_tc_stage(bwd_tc_s + (c + 1) % BWD_TC_STAGES * BWD_TC_STAGE_FLOATS, w, m, v, dy, (c + 1) * BWD_TC_ROWS, c0,
                   rows, n_out, k_in, async);
      cp_async_commit();
      cp_async_wait_group<1>();  // this chunk's group has landed
    } else {
      cp_async_wait_group<0>();
    }
    __syncthreads();  // every thread's pieces of this chunk are visible
    const float* ws = bwd_tc_s + c % BWD_TC_STAGES * BWD_TC_STAGE_FLOATS;
    const float *ms = ws + BWD_TC_TILE_FLOATS, *vs = ws + 2 * BWD_TC_TILE_FLOATS, *dys = ws + 3 * BWD_TC_TILE_FLOATS;
    const unsigned int r0 = c * BWD_TC_ROWS;
#pragma unroll
    for (int k8 = 0; k8 < BWD_TC_ROWS; k8 += 8) {  // dx += dy[:, chunk] · w[chunk, strip]
      if (r0 + k8 >= kr) break;                     // uniform: past linear_dgrad's padded k
      unsigned int bf[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const unsigned int col = wc + nt * 8 + g;
        bf[nt][0] = tf32_bits(ws[(k8 + t) * LD + col]);
        bf[nt][1] = tf32_bits(ws[(k8 + t + 4) * LD + col]);
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        if (mt >= (int)mts) break;  // uniform: past the batch
        const unsigned int b = mt * 16 + g, r = k8 + t;  // A(i = b, k = row) = dy[b, r0 + row]
        const unsigned int af[4] = {tf32_bits(dys[bwd_dy_at(b, r)]), tf32_bits(dys[bwd_dy_at(b + 8, r)]),
                                    tf32_bits(dys[bwd_dy_at(b, r + 4)]), tf32_bits(dys[bwd_dy_at(b + 8, r + 4)])};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) mma_tf32_m16n8k8(dacc[mt][nt], af, bf[nt], dacc[mt][nt]);
      }
    }
    float gacc[2][2][4] = {};
#pragma unroll
    for (int k8 = 0; k8 < KB; ++k8) {  // g = dy[:, chunk]ᵀ · x[:, strip]
      if (k8 * 8 >= (int)kb) break;    // uniform: past linear_wgrad_adam's padded k
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const unsigned int b = k8 * 8 + t, r = mt * 16 + g;  // A(i = row, k = b) = dy[b, r0 + row]
        const unsigned int af[4] = {tf32_bits(dys[bwd_dy_at(b, r)]), tf32_bits(dys[bwd_dy_at(b, r + 8)]),
                                    tf32_bits(dys[bwd_dy_at(b + 4, r)]), tf32_bits(dys[bwd_dy_at(b + 4, r + 8)])};
#pragma unroll
        for (int nt = 0; nt < 2; ++nt) mma_tf32_m16n8k8(gacc[mt][nt], af, xf[k8][nt], gacc[mt][nt]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)  // the fragments (c0, c1: row g; c2, c3: row g + 8; columns 2t, 2t + 1)
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h)  // float2 stores: a half-warp's words 8g + 2t (+1) fill 32 banks
          st_pair(gs + (mt * 16 + g + h * 8) * LD, wc + nt * 8 + 2 * t, gacc[mt][nt][2 * h], gacc[mt][nt][2 * h + 1]);
    __syncthreads();
    for (unsigned int e = threadIdx.x; e < BWD_TC_ROWS * W4; e += BWD_TC_THREADS) {  // Adam on the chunk
      const unsigned int r = e / W4, cq = e % W4 * 4, row = r0 + r, col = c0 + cq;
      if (row >= n_out || col >= k_in) continue;
      const u64 at = (u64)row * k_in + col;
      const unsigned int o = r * LD + cq;
      if (async) {  // aligned and k_in % 4 == 0: whole float4s
        float4 wq = *reinterpret_cast<const float4*>(ws + o), mq = *reinterpret_cast<const float4*>(ms + o),
               vq = *reinterpret_cast<const float4*>(vs + o);
        const float4 gq = *reinterpret_cast<const float4*>(gs + o);
        adam_update(wq.x, mq.x, vq.x, gq.x, s);
        adam_update(wq.y, mq.y, vq.y, gq.y, s);
        adam_update(wq.z, mq.z, vq.z, gq.z, s);
        adam_update(wq.w, mq.w, vq.w, gq.w, s);
        *reinterpret_cast<float4*>(w + at) = wq;
        *reinterpret_cast<float4*>(m + at) = mq;
        *reinterpret_cast<float4*>(v + at) = vq;
      } else {
        for (unsigned int u = 0; u < 4 && col + u < k_in; ++u) {
          float wv = ws[o + u], mv = ms[o + u], vv = vs[o + u];
          adam_update(wv, mv, vv, gs[o + u], s);
          w[at + u] = wv;
          m[at + u] = mv;
          v[at + u] = vv;
        }
      }
    }
    // This stage and g are free: the next iteration refills the stage and rewrites g. Across threads the mid
    // barrier above already orders it (each thread refills exactly the w, m, v pieces it read in Adam: ROWS·W4 is a
    // multiple of the thread count; dy and g were last read before that barrier); this one orders a thread's own
    // shared-memory reads before its cp.async writes to the same words, which PTX does not order without a wait
    // or a barrier. The race checker passes without it; one barrier per chunk, kept.
    __syncthreads();
  }
#pragma unroll
  for (int mt = 0; mt < 4; ++mt) {
    if (mt >= (int)mts) break;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const unsigned int b = mt * 16 + g + e / 2 * 8, col = c0 + wc + nt * 8 + 2 * t + e % 2;
        if (b < rows && col < k_in) dx[(u64)b * k_in + col] = dacc[mt][nt][e];
      }
  }
}
