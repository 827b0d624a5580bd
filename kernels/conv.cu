// conv.cu: stride-1 'same' convolutions (kernel 1, 3 or 5) with bias, and the fused reduce conv.
//
// Provides: conv_fwd (a register tile per thread: 4 output channels × 4 pixels of a row, see conv_tile; bias
//           and the optional ReLU in the epilogue; writes channels [c_offset, c_offset + c_out) of a
//           c_total-channel output: concat is not a copy), conv_dgrad (the same tile over 4 input channels ×
//           4 pixels with the kernel flipped, overwriting or accumulating), conv_wgrad (the weight and the
//           bias gradient: an implicit GEMM, WGRAD_TILE² tiles, split over images, the bias as row sums of
//           its dy tiles): it writes per-split partial sums [dw | db] that conv_split_sum adds in split
//           order in one launch (no float atomics: same inputs, same bits);
//           reduce_conv_fwd: 1×1 (c_in → c_mid) + b1 → ReLU → k×k (c_mid → c_out) + b2 → ReLU in one kernel.
//           Each block computes a tile of tile_h (4) rows of one image's reduced map, plus a halo of k/2 rows
//           on each side (recomputed by the neighbouring tile too), into dynamic shared memory, once, and
//           from it up to 64 output channels of those rows; the blocks of group 0 save the tile's rows for
//           backward. Small row tiles give enough blocks (MNIST, batch 50: 350); the launcher opts in to
//           more than 48 KB of shared memory when a wide map needs it.
//           The TF32 forms (conv_fwd_tf32, conv_dgrad_tf32, conv_wgrad_tf32, reduce_conv_fwd_tf32,
//           reduce_conv_dmid_tf32): the same computations as implicit GEMMs on mma.sync, summed tap-major
//           (conv_tc_body); conv_taps_tf32 lays a weight out tap-major and rounded for the fused forward's k×k.
// Backward needs saved: x and the weights for conv; for the fused conv also the reduced map `mid`
//           (post-ReLU), which its backward (a sequence of the kernels above, see src/launcher/conv.rs) reads.
// The module's ReLU backward is folded into the kernels that read dy (conv_dgrad, conv_wgrad, reduce_conv_dmid
//           and their TF32 forms): given the forward output y (post-ReLU; null for none) they read dy where
//           y > 0 and 0 elsewhere (relu_bwd's rule exactly, so the results are bit-identical to relu_bwd
//           followed by the kernel), instead of a separate relu_bwd pass over the module output.
// Write rules: dy of a branch is read in place from its channel slice; dx overwrites or accumulates (the
//              module input is read by four branches). Grid-stride loops over elements; the gradient
//              partials live in the launcher's scratch memory.
// CPU twins: src/cpu/conv.rs, src/cpu/reduce_conv.rs (other summation orders: compared within tolerances).

#include "args.h"  // ConvDims, ReduceDims, WGRAD_TILE, WGRAD_THREADS, REDUCE_CO_GROUP, CONV_TC_*
#include "mma.cuh"  // the TF32 kernels: tf32_bits, mma_tf32_m16n8k8, cp_async16

__device__ __forceinline__ float relu_epilogue(float pre, int relu) {
  return (!relu || !(pre <= 0.0f)) ? pre : 0.0f;
}

// The register tile shared by conv_fwd, conv_dgrad and reduce_conv_dmid: out[o, oy, ox0 .. ox0 + 3] for 4
// consecutive outputs channels o0 .. o0 + 3, summing over input channels c, then ky, then kx in order:
// acc[j][i] += in[c, oy + ky - p, ox0 + i + kx - p] · wt[w_base + o·so + c·sc + ky·sky + kx·skx] (zero off the
// image). Per (c, ky): 4 + K - 1 input values and 4·K weights feed 16·K FMAs. dgrad is this with the
// kernel flipped (negative tap strides) and the channel roles swapped. `mask` (null, or laid out as `in`):
// an input value counts only where mask > 0, else it is 0 (relu_bwd's rule, applied as the value is read: the
// module's ReLU backward folded into the kernel that first reads the gradient). A null mask is a literal at
// every call that has none, so those kernels compile as without it.
template <int K>
__device__ __forceinline__ void conv_tile(float (&acc)[4][4], const float* __restrict__ in,
                                          const float* __restrict__ mask, unsigned int in_c,
                                          unsigned int h, unsigned int w, const float* __restrict__ wt,
                                          long long w_base, long long so, long long sc, long long sky,
                                          long long skx, unsigned int o0, unsigned int o_count, int oy, int ox0) {
  const int p = K / 2;
  const unsigned long long hw = (unsigned long long)h * w;
  for (int j = 0; j < 4; ++j)
    for (int i = 0; i < 4; ++i) acc[j][i] = 0.0f;
  for (unsigned int c = 0; c < in_c; ++c) {
    const float* plane = in + c * hw;
    for (int ky = 0; ky < K; ++ky) {
      const int sy = oy + ky - p;
      if (sy < 0 || sy >= (int)h) continue;
      const float* row = plane + (unsigned int)sy * w;
      const float* mrow = mask ? mask + c * hw + (unsigned int)sy * w : nullptr;
      float seg[4 + K - 1];
      for (int u = 0; u < 4 + K - 1; ++u) {
        const int sx = ox0 + u - p;
        seg[u] = (sx >= 0 && sx < (int)w && (!mrow || mrow[sx] > 0.0f)) ? row[sx] : 0.0f;
      }
      for (int kx = 0; kx < K; ++kx) {
        float wv[4];
        for (int j = 0; j < 4; ++j)
          wv[j] = o0 + j < o_count ? wt[w_base + (long long)(o0 + j) * so + (long long)c * sc + ky * sky + kx * skx]
                                   : 0.0f;
        for (int j = 0; j < 4; ++j)
          for (int i = 0; i < 4; ++i) acc[j][i] += seg[kx + i] * wv[j];
      }
    }
  }
}

// conv_tile for the runtime kernel size (1, 3 or 5).
__device__ __forceinline__ void conv_tile_k(float (&acc)[4][4], unsigned int k, const float* __restrict__ in,
                                            const float* __restrict__ mask, unsigned int in_c, unsigned int h, unsigned int w,
                                            const float* __restrict__ wt, long long w_base, long long so,
                                            long long sc, long long sky, long long skx, unsigned int o0,
                                            unsigned int o_count, int oy, int ox0) {
  if (k == 1)
    conv_tile<1>(acc, in, mask, in_c, h, w, wt, w_base, so, sc, sky, skx, o0, o_count, oy, ox0);
  else if (k == 3)
    conv_tile<3>(acc, in, mask, in_c, h, w, wt, w_base, so, sc, sky, skx, o0, o_count, oy, ox0);
  else
    conv_tile<5>(acc, in, mask, in_c, h, w, wt, w_base, so, sc, sky, skx, o0, o_count, oy, ox0);
}

// The work item of a tile kernel: (image, channel quad, row, pixel quad), pixel quads fastest so that a warp
// reads neighbouring pixels and shares its weights.
struct TileItem {
  unsigned int img, o0;
  int oy, ox0;
};

__device__ __forceinline__ TileItem tile_item(unsigned long long t, unsigned int o_count, unsigned int h,
                                              unsigned int w) {
  const unsigned int qpr = (w + 3) / 4, oqs = (o_count + 3) / 4;
  TileItem it;
  it.ox0 = (int)(t % qpr) * 4;
  it.oy = (int)(t / qpr % h);
  it.o0 = (unsigned int)(t / ((unsigned long long)qpr * h) % oqs) * 4;
  it.img = (unsigned int)(t / ((unsigned long long)qpr * h * oqs));
  return it;
}

// One thread per tile item (4 output channels × 4 pixels of a row), grid-stride.
extern "C" __global__ void conv_fwd(float* __restrict__ y,        // [n, c_total, h, w]
                                    const float* __restrict__ x,  // [n, c_in, h, w]
                                    const float* __restrict__ wt, // [c_out, c_in, k, k]
                                    const float* __restrict__ b,  // [c_out]
                                    ConvDims d, int relu) {
  const unsigned long long hw = (unsigned long long)d.h * d.w;
  const unsigned long long items = (unsigned long long)d.n * ((d.c_out + 3) / 4) * d.h * ((d.w + 3) / 4);
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const long long kk = (long long)d.k * d.k;
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < items; t += stride) {
    const TileItem it = tile_item(t, d.c_out, d.h, d.w);
    float acc[4][4];
    conv_tile_k(acc, d.k, x + (unsigned long long)it.img * d.c_in * hw, nullptr, d.c_in, d.h, d.w, wt, 0,
                d.c_in * kk, kk, d.k, 1, it.o0, d.c_out, it.oy, it.ox0);
    for (int j = 0; j < 4; ++j) {
      const unsigned int co = it.o0 + j;
      if (co >= d.c_out) continue;
      float* out = y + ((unsigned long long)it.img * d.c_total + d.c_offset + co) * hw + (unsigned int)it.oy * d.w;
      for (int i = 0; i < 4; ++i)
        if (it.ox0 + i < (int)d.w) out[it.ox0 + i] = relu_epilogue(acc[j][i] + b[co], relu);
    }
  }
}

// One thread per tile item of dx (4 input channels × 4 pixels), grid-stride: the forward tile over dy with
// the kernel flipped and transposed. y: null, or the forward output (after the module's ReLU): dy then counts
// only where y > 0 (relu_bwd folded in, see conv_tile).
extern "C" __global__ void conv_dgrad(float* __restrict__ dx,        // [n, c_in, h, w]
                                      const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                      const float* __restrict__ y,   // [n, c_total, h, w], slice read, or null
                                      const float* __restrict__ wt,  // [c_out, c_in, k, k]
                                      ConvDims d, int accumulate) {
  const unsigned long long hw = (unsigned long long)d.h * d.w;
  const unsigned long long items = (unsigned long long)d.n * ((d.c_in + 3) / 4) * d.h * ((d.w + 3) / 4);
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const long long kk = (long long)d.k * d.k;
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < items; t += stride) {
    const TileItem it = tile_item(t, d.c_in, d.h, d.w);
    float acc[4][4];
    const unsigned long long slice = ((unsigned long long)it.img * d.c_total + d.c_offset) * hw;
    conv_tile_k(acc, d.k, dy + slice, y ? y + slice : nullptr, d.c_out, d.h, d.w, wt, kk - 1, kk, d.c_in * kk,
                -(long long)d.k, -1, it.o0, d.c_in, it.oy, it.ox0);
    for (int j = 0; j < 4; ++j) {
      const unsigned int ci = it.o0 + j;
      if (ci >= d.c_in) continue;
      float* out = dx + ((unsigned long long)it.img * d.c_in + ci) * hw + (unsigned int)it.oy * d.w;
      for (int i = 0; i < 4; ++i)
        if (it.ox0 + i < (int)d.w) out[it.ox0 + i] = accumulate ? out[it.ox0 + i] + acc[j][i] : acc[j][i];
    }
  }
}

#define WGRAD_TK 16

// The weight and bias gradients as one implicit GEMM split over images: dw[co, col] = Σ_(img, px) dy[img, co,
// px] · x[img, ci, px shifted by the tap], col = (ci, ky, kx), and db[co] = Σ_(img, px) dy[img, co, px]. Grid
// (ceil(c_in·k·k / 64), ceil(c_out / 64), splits), WGRAD_THREADS (256) threads (the loader assumes 256), 64 × 64
// outputs per block (4 × 4 per thread); slice z covers images [z · imgs_per_split, (z + 1) · imgs_per_split)
// and writes its partial sums into partials[z] = [dw [c_out, c_in·k·k] | db [c_out]] (conv_split_sum adds the
// slices in order: no float atomics). The bias partials come from the blocks of the first column tile
// (blockIdx.x == 0): thread i < 64 adds row i of each chunk of dy in shared memory, so db[co] of slice z is
// the sum of dy[., co, .] over the slice's pixels taken one by one in order (image, row, column), in f32.
// y: null, or the forward output (after the module's ReLU): dy then counts only where y > 0, in both
// gradients (relu_bwd folded in: the same rule as the value is loaded).
extern "C" __global__ void conv_wgrad(float* __restrict__ partials,  // [splits, c_out·(c_in·k·k + 1)]
                                      const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                      const float* __restrict__ y,   // [n, c_total, h, w], slice read, or null
                                      const float* __restrict__ x,   // [n, c_in, h, w]
                                      ConvDims d, unsigned int imgs_per_split) {
  // as[t][i] = dy(co = i0 + i, position t of the chunk); bs[t][j] = x(col = j0 + j, position t), 0 off the
  // image. Rows padded to keep them 16-byte aligned for the float4 reads below.
  __shared__ __align__(16) float as[WGRAD_TK][WGRAD_TILE + 4];
  __shared__ __align__(16) float bs[WGRAD_TK][WGRAD_TILE + 4];
  const unsigned int kk2 = d.k * d.k, cols = d.c_in * kk2, hw = d.h * d.w;
  const unsigned int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const unsigned int i0 = blockIdx.y * WGRAD_TILE, j0 = blockIdx.x * WGRAD_TILE;
  const unsigned int img0 = blockIdx.z * imgs_per_split;
  const unsigned int img1 = img0 + imgs_per_split < d.n ? img0 + imgs_per_split : d.n;
  const unsigned int count = (img1 - img0) * hw;
  const int p = (int)d.k / 2;
  // The bias row this thread sums (the first two warps of the first column tile's blocks: uniform per warp).
  const bool bias_row = blockIdx.x == 0 && threadIdx.x < WGRAD_TILE;
  float bsum = 0.0f;
  // Each thread loads the same position tt of every chunk for rows r = rb + 16q (q < 4) of both operands: the
  // per-row offsets are fixed, so only the position is decoded per chunk. Lane l of warp v takes tt = l % 8 +
  // 8 · (v % 2), rb = l / 8 + 4 · (v / 2): its stores to as[tt][rb + 16q] (68-float rows: bank 4 · tt + rb + 16q)
  // hit 32 banks (tt = lane % 16 put two lanes on each bank), and each row's 8 positions are one 32-byte sector.
  const unsigned int tt = threadIdx.x % 8 + threadIdx.x / 32 % 2 * 8, rb = threadIdx.x % 32 / 8 + threadIdx.x / 64 * 4;
  unsigned long long a_off[4], x_off[4];
  int tap_y[4], tap_x[4];
  bool a_ok[4], b_ok[4];
  for (int q = 0; q < 4; ++q) {
    const unsigned int co = i0 + rb + 16 * q, col = j0 + rb + 16 * q;
    a_ok[q] = co < d.c_out;
    a_off[q] = (unsigned long long)(d.c_offset + co) * hw;
    b_ok[q] = col < cols;
    const unsigned int ci = col / kk2, tap = col % kk2;
    x_off[q] = (unsigned long long)ci * hw;
    tap_y[q] = (int)(tap / d.k) - p;
    tap_x[q] = (int)(tap % d.k) - p;
  }
  float acc[4][4] = {};
  // This thread's position t = t0 + tt as (image, row, column), advanced by WGRAD_TK per chunk without
  // divisions.
  unsigned int img = img0 + tt / hw;
  int oy = (int)(tt % hw / d.w), ox = (int)(tt % d.w);
  for (unsigned int t0 = 0; t0 < count; t0 += WGRAD_TK) {
    const unsigned int t = t0 + tt;
    float av[4] = {0.0f, 0.0f, 0.0f, 0.0f}, bv[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (t < count) {
      const unsigned int px = (unsigned int)oy * d.w + (unsigned int)ox;
      const unsigned long long dy_at = (unsigned long long)img * d.c_total * hw + px;
      const float* x_img = x + (unsigned long long)img * d.c_in * hw;
      for (int q = 0; q < 4; ++q) {
        const unsigned long long at = dy_at + a_off[q];
        if (a_ok[q] && (!y || y[at] > 0.0f)) av[q] = dy[at];
        const int sy = oy + tap_y[q], sx = ox + tap_x[q];
        if (b_ok[q] && sy >= 0 && sy < (int)d.h && sx >= 0 && sx < (int)d.w)
          bv[q] = x_img[x_off[q] + (unsigned int)sy * d.w + (unsigned int)sx];
      }
    }
    for (int q = 0; q < 4; ++q) {
      as[tt][rb + 16 * q] = av[q];
      bs[tt][rb + 16 * q] = bv[q];
    }
    for (ox += WGRAD_TK; ox >= (int)d.w; ox -= (int)d.w) {
      if (++oy == (int)d.h) oy = 0, ++img;
    }
    __syncthreads();
#pragma unroll
    for (unsigned int k2 = 0; k2 < WGRAD_TK; ++k2) {
      const float4 a = *reinterpret_cast<const float4*>(&as[k2][ty * 4]);
      const float4 b = *reinterpret_cast<const float4*>(&bs[k2][tx * 4]);
      const float a4[4] = {a.x, a.y, a.z, a.w}, b4[4] = {b.x, b.y, b.z, b.w};
      for (int qi = 0; qi < 4; ++qi)
        for (int qj = 0; qj < 4; ++qj) acc[qi][qj] += a4[qi] * b4[qj];
    }
    if (bias_row) {
#pragma unroll
      for (unsigned int k2 = 0; k2 < WGRAD_TK; ++k2) bsum += as[k2][threadIdx.x];  // positions past count are 0
    }
    __syncthreads();
  }
  float* out = partials + (unsigned long long)blockIdx.z * d.c_out * (cols + 1);
  for (int qi = 0; qi < 4; ++qi) {
    const unsigned int i = i0 + ty * 4 + qi;
    if (i >= d.c_out) continue;
    for (int qj = 0; qj < 4; ++qj) {
      const unsigned int j = j0 + tx * 4 + qj;
      if (j < cols) out[(unsigned long long)i * cols + j] = acc[qi][qj];
    }
  }
  if (bias_row && i0 + threadIdx.x < d.c_out) out[(unsigned long long)d.c_out * cols + i0 + threadIdx.x] = bsum;
}

// out[i] = Σ_z partials[z · len + i], z in order (the split sums of conv_wgrad and conv_wgrad_tf32: the weight
// and the bias gradients together, out = [dw | db]). One thread per output (grid-stride).
extern "C" __global__ void conv_split_sum(float* __restrict__ out,             // [len]
                                          const float* __restrict__ partials,  // [splits, len]
                                          unsigned long long len, unsigned int splits) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < len; i += stride) {
    float acc = 0.0f;
    for (unsigned int z = 0; z < splits; ++z) acc += partials[z * len + i];
    out[i] = acc;
  }
}

// Output channels per block of reduce_conv_fwd (a block computes its reduced map once for all of them), and
// the k×k register tile of one thread: 4 channels × 8 pixels of a row.
#define REDUCE_CO_T 4
#define REDUCE_PX_T 8

// The k×k conv of reduce_conv_fwd from the reduced map in shared memory: each thread computes 4 output
// channels × 8 pixels of one row (per tap, 4 weights feed 32 FMAs; per map row, 8 + K - 1 values feed
// 4·8·K). Items run pixel octets fastest, so a warp shares its weights (at most two channel quads per warp).
// Every output sums cm, then ky, then kx in order.
template <int K>
__device__ __forceinline__ void reduce_conv_tile(float* __restrict__ y, const float* __restrict__ mid_s,
                                                 const float* __restrict__ w2, const float* __restrict__ b2,
                                                 const ReduceDims& d, unsigned int img, unsigned int co0,
                                                 unsigned int co1, unsigned int y0, unsigned int y1,
                                                 unsigned int r0, unsigned int rows) {
  const int p = K / 2, w = (int)d.w;
  const unsigned int hw = d.h * d.w, opr = (d.w + REDUCE_PX_T - 1) / REDUCE_PX_T, octs = (y1 - y0) * opr;
  const unsigned int quads = (co1 - co0 + REDUCE_CO_T - 1) / REDUCE_CO_T;
  for (unsigned int t = threadIdx.x; t < quads * octs; t += blockDim.x) {
    const unsigned int q = t % octs, cb = co0 + t / octs * REDUCE_CO_T;
    const int oy = (int)(y0 + q / opr), ox0 = (int)(q % opr) * REDUCE_PX_T;
    const unsigned int n_co = co1 - cb < REDUCE_CO_T ? co1 - cb : REDUCE_CO_T;  // channels of this quad
    const float* wrow[REDUCE_CO_T];  // each channel's weights [c_mid, K, K] (a valid row past n_co)
    for (unsigned int j = 0; j < REDUCE_CO_T; ++j)
      wrow[j] = w2 + (unsigned long long)(j < n_co ? cb + j : cb) * d.c_mid * (K * K);
    float acc[REDUCE_CO_T][REDUCE_PX_T] = {};  // [channel j][pixel i]
    for (unsigned int cm = 0; cm < d.c_mid; ++cm) {
      const float* plane = mid_s + cm * rows * d.w;
      for (int ky = 0; ky < K; ++ky) {
        const int sy = oy + ky - p;
        if (sy < 0 || sy >= (int)d.h) continue;
        const float* row = plane + (sy - (int)r0) * w;
        float seg[REDUCE_PX_T + K - 1];
        for (int u = 0; u < REDUCE_PX_T + K - 1; ++u) {
          const int sx = ox0 + u - p;
          seg[u] = (sx >= 0 && sx < w) ? row[sx] : 0.0f;
        }
        const unsigned int tap0 = cm * (K * K) + ky * K;
        for (int kx = 0; kx < K; ++kx) {
          float wv[REDUCE_CO_T];
          for (int j = 0; j < REDUCE_CO_T; ++j) wv[j] = __ldg(wrow[j] + tap0 + kx);
          for (int j = 0; j < REDUCE_CO_T; ++j)
            for (int i = 0; i < REDUCE_PX_T; ++i) acc[j][i] += seg[kx + i] * wv[j];
        }
      }
    }
    for (unsigned int j = 0; j < n_co; ++j) {
      const float bias = b2[cb + j];
      float* out = y + ((unsigned long long)img * d.c_total + d.c_offset + cb + j) * hw + (unsigned int)oy * d.w;
      for (int i = 0; i < REDUCE_PX_T; ++i)
        if (ox0 + i < w) out[ox0 + i] = relu_epilogue(acc[j][i] + bias, 1);
    }
  }
}

// Grid: n · ceil(c_out / REDUCE_CO_GROUP) · ceil(h / tile_h) blocks (image-major, then channel group, then row
// tile); dynamic shared memory: c_mid · min(h, tile_h + k - 1) · w floats. k is 3 or 5.
extern "C" __global__ void __launch_bounds__(256, 2) reduce_conv_fwd(float* __restrict__ y,         // [n, c_total, h, w]
                                           float* __restrict__ mid,       // [n, c_mid, h, w] saved
                                           const float* __restrict__ x,   // [n, c_in, h, w]
                                           const float* __restrict__ w1,  // [c_mid, c_in]
                                           const float* __restrict__ b1,  // [c_mid]
                                           const float* __restrict__ w2,  // [c_out, c_mid, k, k]
                                           const float* __restrict__ b2,  // [c_out]
                                           ReduceDims d) {
  extern __shared__ float mid_s[];  // [c_mid, rows, w]: rows r0..r1 of the reduced map
  const unsigned int groups = (d.c_out + REDUCE_CO_GROUP - 1) / REDUCE_CO_GROUP;
  const unsigned int tiles = (d.h + d.tile_h - 1) / d.tile_h;
  const unsigned int img = blockIdx.x / (groups * tiles), group = blockIdx.x / tiles % groups, tile = blockIdx.x % tiles;
  const unsigned int hw = d.h * d.w, p = d.k / 2;
  const unsigned int y0 = tile * d.tile_h, y1 = y0 + d.tile_h < d.h ? y0 + d.tile_h : d.h;
  const unsigned int r0 = y0 > p ? y0 - p : 0, r1 = y1 + p < d.h ? y1 + p : d.h, rows = r1 - r0;
  // 1×1 reduce + bias + ReLU of rows r0..r1 into shared memory, once for all the block's output channels:
  // conv_tile<1> items of 4 reduce channels × 4 pixels (ci summed in order).
  const unsigned int qpr = (d.w + 3) / 4, mid_items = (d.c_mid + 3) / 4 * rows * qpr;
  const float* x_img = x + (unsigned long long)img * d.c_in * hw;
  for (unsigned int t = threadIdx.x; t < mid_items; t += blockDim.x) {
    const int row = (int)(r0 + t % (rows * qpr) / qpr), ox0 = (int)(t % qpr) * 4;
    const unsigned int cm0 = t / (rows * qpr) * 4;
    float acc[4][4];
    conv_tile<1>(acc, x_img, nullptr, d.c_in, d.h, d.w, w1, 0, d.c_in, 1, 0, 0, cm0, d.c_mid, row, ox0);
    for (unsigned int j = 0; j < 4 && cm0 + j < d.c_mid; ++j) {
      const float bias = b1[cm0 + j];
      for (int i = 0; i < 4 && ox0 + i < (int)d.w; ++i) {
        const float v = relu_epilogue(acc[j][i] + bias, 1);
        const unsigned int px = (unsigned int)row * d.w + (unsigned int)(ox0 + i);
        mid_s[(cm0 + j) * rows * d.w + px - r0 * d.w] = v;
        if (group == 0 && (unsigned int)row >= y0 && (unsigned int)row < y1)
          mid[((unsigned long long)img * d.c_mid + cm0 + j) * hw + px] = v;
      }
    }
  }
  __syncthreads();
  // k×k conv of the reduced map for this block's output channels and rows, + bias + the module's ReLU.
  const unsigned int co0 = group * REDUCE_CO_GROUP;
  const unsigned int co1 = co0 + REDUCE_CO_GROUP < d.c_out ? co0 + REDUCE_CO_GROUP : d.c_out;
  if (d.k == 3)
    reduce_conv_tile<3>(y, mid_s, w2, b2, d, img, co0, co1, y0, y1, r0, rows);
  else
    reduce_conv_tile<5>(y, mid_s, w2, b2, d, img, co0, co1, y0, y1, r0, rows);
}

// The fused conv's backward through its k×k conv and the reduce ReLU: dpre = (w2ᵀ ⊛ dy) where mid > 0, else
// 0 (conv_dgrad's tile with the mask of the saved reduced map). One thread per tile item of [n, c_mid, h, w].
// y: null, or the fused conv's output (after its ReLU): dy then counts only where y > 0 (as conv_dgrad's).
extern "C" __global__ void reduce_conv_dmid(float* __restrict__ dpre,       // [n, c_mid, h, w]
                                            const float* __restrict__ dy,   // [n, c_total, h, w], slice read
                                            const float* __restrict__ y,    // [n, c_total, h, w], slice read, or null
                                            const float* __restrict__ w2,   // [c_out, c_mid, k, k]
                                            const float* __restrict__ mid,  // [n, c_mid, h, w] saved
                                            ReduceDims d) {
  const unsigned long long hw = (unsigned long long)d.h * d.w;
  const unsigned long long items = (unsigned long long)d.n * ((d.c_mid + 3) / 4) * d.h * ((d.w + 3) / 4);
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  const long long kk = (long long)d.k * d.k;
  for (unsigned long long t = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; t < items; t += stride) {
    const TileItem it = tile_item(t, d.c_mid, d.h, d.w);
    float acc[4][4];
    const unsigned long long slice = ((unsigned long long)it.img * d.c_total + d.c_offset) * hw;
    conv_tile_k(acc, d.k, dy + slice, y ? y + slice : nullptr, d.c_out, d.h, d.w, w2, kk - 1, kk, d.c_mid * kk,
                -(long long)d.k, -1, it.o0, d.c_mid, it.oy, it.ox0);
    for (int j = 0; j < 4; ++j) {
      const unsigned int cm = it.o0 + j;
      if (cm >= d.c_mid) continue;
      const unsigned long long base = ((unsigned long long)it.img * d.c_mid + cm) * hw + (unsigned int)it.oy * d.w;
      for (int i = 0; i < 4; ++i)
        if (it.ox0 + i < (int)d.w) dpre[base + it.ox0 + i] = mid[base + it.ox0 + i] > 0.0f ? acc[j][i] : 0.0f;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The tensor-core (TF32) convs: conv_fwd_tf32, conv_dgrad_tf32, conv_wgrad_tf32 compute what conv_fwd,
// conv_dgrad, conv_wgrad compute (same arguments, same launch semantics) as implicit GEMMs on mma.sync m16n8k8
// (mma.cuh): every operand element goes through tf32_bits (cvt.rna) as it is read from shared memory into a
// fragment, and the products accumulate in f32. Bias, ReLU, the accumulate of dgrad, the bias gradient of wgrad
// (a sum of unrounded dy) and its split sum (conv_split_sum) stay f32.
//
// A block of CONV_TC_THREADS (128) threads computes a CONV_TC_BM × CONV_TC_BN (32 × 128) tile; warp w owns
// columns [32w, 32w + 32) of it, all 32 rows (2 × 4 tiles of 16 × 8, 32 accumulators a thread). The
// reduction runs in steps of CONV_TC_BK (16) through two shared-memory buffers: step s + 1's operands are
// loaded (cp.async straight into shared memory, or into registers) while step s's are multiplied, then one
// barrier per step. Every output sums its products in reduction order, k in steps of 8 (one mma each).
//
// Shared layouts: a warp's fragment reads and its stores hit 32 different banks (as the emulator's traffic count
// checks: tests/shared_traffic.rs, scripts/shared-traffic.py).
//   [rows][CONV_TC_BK + 4]   (A of every pass, B of wgrad): row stride 20 words, lane (g, t) reads word
//                            20g + t (+ const): distinct mod 32; rows of 80 bytes keep cp.async's 16-byte
//                            alignment. Rows r and r + 1 share 4 banks, r and r + 4 none: a quarter-warp stores
//                            the 16-byte pieces of rows r and r + 4 (piece20_row, mma.cuh), and wgrad's half-warps
//                            store rows 12 or 20 apart (b_skew).
//   [CONV_TC_BK][CONV_TC_BN + 8] (B of fwd and dgrad): row stride 136 ≡ 8 mod 32, lane (g, t) reads 8t + g; a
//                            warp's stores fill 32 consecutive words of one row.
#define TC_APAD 4
#define TC_BPAD 8
#define TC_AROW (CONV_TC_BK + TC_APAD)
#define TC_BROW (CONV_TC_BN + TC_BPAD)
static_assert(CONV_TC_BN == CONV_TC_THREADS, "a block gathers one B pixel per thread");
static_assert(2 * CONV_TC_BK >= CONV_TC_BM, "the C tile (CONV_TC_BM rows of TC_BROW) is staged in bs");

// One CONV_TC_BK step of the block's tile: acc (this warp's 2 × 4 tiles of 16 × 8) += A · B with A as[m][k]
// (32 × 16) and B bs[k][n] (16 × 128, B_NK false) or bs[n][k] (128 × 16, B_NK true). Fragments by the PTX
// layout (mma.cuh): a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4]; b0 = B[t][g],
// b1 = B[t + 4][g].
template <bool B_NK>
__device__ __forceinline__ void tc_step(float (&acc)[2][4][4], const float (*__restrict__ as)[TC_AROW],
                                        const float* __restrict__ bs) {
  const unsigned int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4, n0 = threadIdx.x / 32 * 32;
#pragma unroll
  for (int k8 = 0; k8 < CONV_TC_BK; k8 += 8) {
    unsigned int af[2][4], bf[4][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      const unsigned int r = mt * 16 + g;
      af[mt][0] = tf32_bits(as[r][k8 + t]);
      af[mt][1] = tf32_bits(as[r + 8][k8 + t]);
      af[mt][2] = tf32_bits(as[r][k8 + t + 4]);
      af[mt][3] = tf32_bits(as[r + 8][k8 + t + 4]);
    }
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) {
      const unsigned int c = n0 + nt * 8 + g;
      if (B_NK) {
        bf[nt][0] = tf32_bits(bs[c * TC_AROW + k8 + t]);
        bf[nt][1] = tf32_bits(bs[c * TC_AROW + k8 + t + 4]);
      } else {
        bf[nt][0] = tf32_bits(bs[(k8 + t) * TC_BROW + c]);
        bf[nt][1] = tf32_bits(bs[(k8 + t + 4) * TC_BROW + c]);
      }
    }
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) mma_tf32_m16n8k8(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
  }
}

// Where accumulator e of tile (mt, nt) of this thread lands in the block's tile: row mt·16 + g + 8·(e / 2),
// column 32·warp + nt·8 + 2t + e % 2 (the C fragment layout).
__device__ __forceinline__ unsigned int tc_row(int mt, int e) { return mt * 16 + threadIdx.x % 32 / 4 + e / 2 * 8; }
__device__ __forceinline__ unsigned int tc_col(int nt, int e) {
  return threadIdx.x / 32 * 32 + nt * 8 + threadIdx.x % 4 * 2 + e % 2;
}

// A position k = tap · in_c + c in the tap-major reduction of the TF32 convs (tap = ky · K + kx), advanced
// without divisions.
struct TapPos {
  unsigned int tap, c;
};
__device__ __forceinline__ void tap_advance(TapPos& p, unsigned int n, unsigned int in_c) {
  for (p.c += n; p.c >= in_c; p.c -= in_c) ++p.tap;
}

// The forward and the input gradient as one implicit GEMM: out(m, p) = Σ_k A(m, k) · X(k, p) over
// k = tap · in_c + c (tap-major; c < in_c, tap = ky · K + kx), with X(k, p) = src[img(p), c, oy(p) + ky - K/2,
// ox(p) + kx - K/2] (zero off the image): the im2col of src, gathered on the fly (never stored).
//   forward: m = output channel, src = x (c_in channels), A(co, k) = wt[co, c, tap];
//   dgrad:   m = input channel, src = dy's slice (c_out channels, c = co), A(ci, k) = wt[co, ci, flipped tap]
//            (conv_dgrad's flipped, transposed kernel); with MASK (reduce_conv_dmid_tf32, the fused conv's k×k
//            with c_in = c_mid) the result goes through the reduce ReLU: kept where aux (the saved mid) > 0.
// aux: the bias of the forward, the saved reduced map of MASK, unused by plain dgrad. ymask (dgrad only; null,
// or the forward output laid out as dy): a gathered dy value counts only where ymask > 0, else it is 0
// (relu_bwd folded in, as conv_tile does).
// Grid (ceil(n·h·w / 128), ceil(rows / 32)): block (x, y) computes channels [32y, 32y + 32) of pixels
// [128x, 128x + 128) counted over all images. Thread i gathers pixel 128x + i of every B step (its image
// position decoded once; with B_ASYNC it copies 4-pixel groups instead, see b_async) and 4 consecutive k of
// row piece20_row(i) of every A step.
// Why tap-major: with in_c a multiple of CONV_TC_BK (every conv of the net but the first layer's) a step's 16
// rows are 16 channels at one tap, so the thread checks the image border and forms the address once per step
// and its 16 loads lie one plane apart; in the channel-major order each load had its own tap, border check
// and 64-bit address (≈ 30 SASS instructions a load, ≈ 55 a tensor-core instruction). The order of the sums
// is the twin's up to TF32 summation order (within the tolerances of the tests either way).
// The loads: A of a 1×1 forward is cp.async16 straight into shared memory when the weight rows allow it
// (c_in a multiple of 4 and the view 16-byte aligned: then a 4-float group never straddles a row or the
// end of the row), and so is B of a 1×1 without a mask (rows of pixels, see b_async); A of the k×k forward
// reads the weight K² floats apart, dgrad's reads the kernel flipped and transposed, and the im2col of B is a
// gather of single floats with zero fill at the border and shifts by kx that break 16-byte alignment: they
// go through registers, loaded before the current step's mma and stored to shared memory after them.
template <int K, bool DGRAD, bool MASK, bool ONE_TAP, bool B_ASYNC = false>
__device__ __forceinline__ void conv_tc_body(float* __restrict__ out, const float* __restrict__ src,
                                             const float* __restrict__ ymask, const float* __restrict__ wt,
                                             const float* __restrict__ aux,
                                             const ConvDims& d, int flag, float (*as)[CONV_TC_BM][TC_AROW],
                                             float (*bs)[CONV_TC_BK][TC_BROW]) {
  constexpr int KK = K * K, P = K / 2;
  const unsigned int hw = d.h * d.w;
  const unsigned int rows = DGRAD ? d.c_in : d.c_out, in_c = DGRAD ? d.c_out : d.c_in;
  const unsigned int ktot = in_c * KK, steps = (ktot + CONV_TC_BK - 1) / CONV_TC_BK;
  const unsigned long long pixels = (unsigned long long)d.n * hw;
  const unsigned long long p0 = (unsigned long long)blockIdx.x * CONV_TC_BN;
  const unsigned int m0 = blockIdx.y * CONV_TC_BM;
  // This thread's B pixel.
  const unsigned long long pb = p0 + threadIdx.x;
  const bool p_ok = pb < pixels;
  const unsigned int b_img = p_ok ? (unsigned int)(pb / hw) : 0, b_pix = p_ok ? (unsigned int)(pb % hw) : 0;
  const int oy = (int)(b_pix / d.w), ox = (int)(b_pix % d.w);
  const unsigned long long src_off =
      DGRAD ? ((unsigned long long)b_img * d.c_total + d.c_offset) * hw : (unsigned long long)b_img * d.c_in * hw;
  const float* src_img = src + src_off;
  const float* mask_img = ymask ? ymask + src_off : nullptr;
  TapPos bp = {0, 0};  // the next B row this thread gathers: rows are gathered in order
  // This thread's A row and k group, and the k group's position (advanced by CONV_TC_BK a step).
  const unsigned int ar = piece20_row(threadIdx.x), akq = threadIdx.x % 4 * 4, am = m0 + ar;
  const bool a_async = !DGRAD && K == 1 && ktot % 4 == 0 && ((unsigned long long)wt & 15) == 0;
  TapPos ap = {0, 0};
  tap_advance(ap, akq, in_c);
  // A 1×1 without a mask reads B as rows of pixels: by cp.async, 16 bytes at a time, when h·w is a multiple
  // of 4 and src 16-byte aligned (a 4-pixel group then never straddles an image, and n·h·w pixels are whole
  // groups). Thread i copies pixels 4(i % 32) .. + 3 of rows i / 32 + 4j (j < 4) of each step: a warp a row of
  // 128 pixels, one 512-byte request; fixed pixels, so their image is decoded once.
  static_assert(CONV_TC_THREADS == 128 && CONV_TC_BN == 128 && CONV_TC_BK == 16, "the cp.async B mapping");
  static_assert(!B_ASYNC || (K == 1 && ONE_TAP), "B by cp.async: 1×1, whole k steps (conv_tc checks the rest)");
  constexpr bool b_async = B_ASYNC;
  const unsigned long long pg = p0 + threadIdx.x % 32 * 4;
  const bool g_ok = pg < pixels;
  const float* g_src = src + (!g_ok ? 0
                              : DGRAD ? (pg / hw * d.c_total + d.c_offset) * hw + pg % hw
                                      : pg / hw * d.c_in * hw + pg % hw);
  float bv[CONV_TC_BK], av[4];
  auto load = [&](unsigned int s, int buf) {
    const unsigned int k0 = s * CONV_TC_BK;
    if (b_async) {  // k = c (tap 0)
#pragma unroll
      for (int j = 0; j < CONV_TC_BK / 4; ++j) {
        const unsigned int r = threadIdx.x / 32 + 4 * j;
        float* dst = &bs[buf][r][threadIdx.x % 32 * 4];
        if (g_ok)
          cp_async16(dst, g_src + (unsigned long long)(bp.c + r) * hw);
        else
          *reinterpret_cast<float4*>(dst) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
      tap_advance(bp, CONV_TC_BK, in_c);
    } else if (ONE_TAP) {  // in_c % CONV_TC_BK == 0: channels bp.c .. bp.c + 15 at tap bp.tap (< KK: k0 < ktot)
      const int sy = oy + (int)(bp.tap / K) - P, sx = ox + (int)(bp.tap % K) - P;
      const bool ok = p_ok && sy >= 0 && sy < (int)d.h && sx >= 0 && sx < (int)d.w;
      const unsigned int at = ok ? bp.c * hw + (unsigned int)sy * d.w + sx : 0;
      // Predicated loads without branches between them, so that all 16 (32 with the mask) are in flight at
      // once: the mask is loaded beside the value, not before it.
      // The pointers step by a plane (one wide multiply-add each), not recomputed from 64-bit offsets.
      const float* sp = src_img + at;
      if (mask_img) {  // uniform
        const float* mp = mask_img + at;
#pragma unroll
        for (int q = 0; q < CONV_TC_BK; ++q, sp += hw, mp += hw) {
          const float v = ok ? *sp : 0.0f, m = ok ? *mp : 0.0f;
          bv[q] = m > 0.0f ? v : 0.0f;
        }
      } else {
#pragma unroll
        for (int q = 0; q < CONV_TC_BK; ++q, sp += hw) bv[q] = ok ? *sp : 0.0f;
      }
      tap_advance(bp, CONV_TC_BK, in_c);
    } else {
#pragma unroll
      for (int q = 0; q < CONV_TC_BK; ++q) {
        float v = 0.0f;
        if (p_ok && bp.tap < KK) {
          const int sy = oy + (int)(bp.tap / K) - P, sx = ox + (int)(bp.tap % K) - P;
          const unsigned int at = bp.c * hw + (unsigned int)sy * d.w + sx;
          if (sy >= 0 && sy < (int)d.h && sx >= 0 && sx < (int)d.w && (!mask_img || mask_img[at] > 0.0f)) v = src_img[at];
        }
        bv[q] = v;
        tap_advance(bp, 1, in_c);
      }
    }
    if (a_async) {  // 1×1: k = c
      const unsigned int ak = k0 + akq;
      if (am < rows && ak < ktot)
        cp_async16(&as[buf][ar][akq], wt + (unsigned long long)am * ktot + ak);
      else
        *reinterpret_cast<float4*>(&as[buf][ar][akq]) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    } else if (ONE_TAP) {  // the 4 k share a tap: channels ap.c .. ap.c + 3
      const bool ok = am < rows;
      const unsigned long long at = !ok ? 0
                                    : DGRAD ? ((unsigned long long)ap.c * d.c_in + am) * KK + (KK - 1 - ap.tap)
                                            : ((unsigned long long)am * in_c + ap.c) * KK + ap.tap;
      const unsigned long long du = DGRAD ? (unsigned long long)d.c_in * KK : KK;
#pragma unroll
      for (int u = 0; u < 4; ++u) av[u] = ok ? wt[at + u * du] : 0.0f;
    } else {
      TapPos p = ap;
#pragma unroll
      for (int u = 0; u < 4; ++u) {
        float v = 0.0f;
        if (am < rows && p.tap < KK)
          v = DGRAD ? wt[((unsigned long long)p.c * d.c_in + am) * KK + (KK - 1 - p.tap)]
                    : wt[((unsigned long long)am * in_c + p.c) * KK + p.tap];
        av[u] = v;
        tap_advance(p, 1, in_c);
      }
    }
    tap_advance(ap, CONV_TC_BK, in_c);
  };
  auto stash = [&](int buf) {
    if (!b_async)
#pragma unroll
      for (int q = 0; q < CONV_TC_BK; ++q) bs[buf][q][threadIdx.x] = bv[q];
    if (!a_async) *reinterpret_cast<float4*>(&as[buf][ar][akq]) = make_float4(av[0], av[1], av[2], av[3]);
  };
  float acc[2][4][4] = {};
  load(0, 0);
  stash(0);
  cp_async_wait_all();
  __syncthreads();
  for (unsigned int s = 0; s < steps; ++s) {
    const int cur = s & 1, nxt = cur ^ 1;
    const bool more = s + 1 < steps;  // uniform
    if (more) load(s + 1, nxt);       // in flight during the mma below
    tc_step<false>(acc, as[cur], &bs[cur][0][0]);
    if (more) stash(nxt);
    cp_async_wait_all();
    __syncthreads();
  }
  // Epilogue: the forward adds the bias and applies the optional ReLU into its channel slice; dgrad
  // overwrites or accumulates. The tile goes out through shared memory (bs's space, free after the loop's last
  // barrier): thread i then writes pixel 128x + i (its B pixel) of each of the tile's channels, so a warp's
  // request is 32 consecutive pixels of one plane, not 8 planes × 4 pixel pairs (2–4× the sectors).
  // Staged by float2 (pixels 2t, 2t + 1): a half-warp's words 8g + 2t fill the 32 banks (TC_BROW ≡ 8 mod 32).
  float* cs = &bs[0][0][0];  // [CONV_TC_BM][TC_BROW]
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int eh = 0; eh < 2; ++eh)
        st_pair(cs + tc_row(mt, eh * 2) * TC_BROW, tc_col(nt, 0), acc[mt][nt][eh * 2], acc[mt][nt][eh * 2 + 1]);
  __syncthreads();
  if (!p_ok) return;
  for (unsigned int r = 0; r < CONV_TC_BM && m0 + r < rows; ++r) {
    const unsigned int m = m0 + r;
    const float v = cs[r * TC_BROW + threadIdx.x];
    if (DGRAD) {
      const unsigned long long at = ((unsigned long long)b_img * d.c_in + m) * hw + b_pix;
      if (MASK)
        out[at] = aux[at] > 0.0f ? v : 0.0f;
      else
        out[at] = flag ? out[at] + v : v;
    } else {
      out[((unsigned long long)b_img * d.c_total + d.c_offset + m) * hw + b_pix] = relu_epilogue(v + aux[m], flag);
    }
  }
}

template <bool DGRAD, bool MASK>
__device__ __forceinline__ void conv_tc(float* __restrict__ out, const float* __restrict__ src,
                                        const float* __restrict__ ymask, const float* __restrict__ wt,
                                        const float* __restrict__ aux, const ConvDims& d, int flag) {
  __shared__ __align__(16) float as[2][CONV_TC_BM][TC_AROW];
  __shared__ __align__(16) float bs[2][CONV_TC_BK][TC_BROW];
  // One tap a k step when the channels of the reduction fill whole steps (see conv_tc_body); a 1×1 without a
  // mask whose 4-pixel groups are 16-byte aligned copies B by cp.async.
  if ((DGRAD ? d.c_out : d.c_in) % CONV_TC_BK == 0) {
    const bool b_async = !ymask && d.h * d.w % 4 == 0 && ((unsigned long long)src & 15) == 0;
    if (d.k == 1 && b_async)
      conv_tc_body<1, DGRAD, MASK, true, true>(out, src, ymask, wt, aux, d, flag, as, bs);
    else if (d.k == 1)
      conv_tc_body<1, DGRAD, MASK, true>(out, src, ymask, wt, aux, d, flag, as, bs);
    else if (d.k == 3)
      conv_tc_body<3, DGRAD, MASK, true>(out, src, ymask, wt, aux, d, flag, as, bs);
    else
      conv_tc_body<5, DGRAD, MASK, true>(out, src, ymask, wt, aux, d, flag, as, bs);
  } else {
    if (d.k == 1)
      conv_tc_body<1, DGRAD, MASK, false>(out, src, ymask, wt, aux, d, flag, as, bs);
    else if (d.k == 3)
      conv_tc_body<3, DGRAD, MASK, false>(out, src, ymask, wt, aux, d, flag, as, bs);
    else
      conv_tc_body<5, DGRAD, MASK, false>(out, src, ymask, wt, aux, d, flag, as, bs);
  }
}

// conv_fwd on the tensor cores (TF32). Grid (ceil(n·h·w / CONV_TC_BN), ceil(c_out / CONV_TC_BM)).
extern "C" __global__ void __launch_bounds__(CONV_TC_THREADS) conv_fwd_tf32(float* __restrict__ y,        // [n, c_total, h, w]
                                                                          const float* __restrict__ x,  // [n, c_in, h, w]
                                                                          const float* __restrict__ wt, // [c_out, c_in, k, k]
                                                                          const float* __restrict__ b,  // [c_out]
                                                                          ConvDims d, int relu) {
  conv_tc<false, false>(y, x, nullptr, wt, b, d, relu);
}

// conv_dgrad on the tensor cores (TF32). Grid (ceil(n·h·w / CONV_TC_BN), ceil(c_in / CONV_TC_BM)).
extern "C" __global__ void __launch_bounds__(CONV_TC_THREADS) conv_dgrad_tf32(float* __restrict__ dx,        // [n, c_in, h, w]
                                                                            const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                                                            const float* __restrict__ y,   // [n, c_total, h, w], slice read, or null
                                                                            const float* __restrict__ wt,  // [c_out, c_in, k, k]
                                                                            ConvDims d, int accumulate) {
  conv_tc<true, false>(dx, dy, y, wt, nullptr, d, accumulate);
}

// The weight gradient as an implicit GEMM: dw(co, col) = Σ_p dy[img(p), c_offset + co, pix(p)] · X(col, p),
// col = (ci, ky, kx), X the im2col of x, p over the pixels of the images [z · imgs_per_split, ...) of split z.
// Grid (ceil(c_in·K² / 128), ceil(c_out / 32), splits); block (x, y, z) writes its tile of partials[z] =
// [dw | db] (conv_wgrad's layout). ONE_TAP (c_in a multiple of 16): the GEMM's columns run tap-major,
// n = tap · c_in + ci, so that a thread's 16 columns are 16 channels at one tap (one border check and one
// address a step, as in conv_tc_body); the epilogue writes column n to dw's col = ci · K² + tap. Each dw value
// is the same sum over the same pixels in the same order either way: the same bits. The bias gradient stays f32 (dy unrounded): in the blocks of the first
// column tile (blockIdx.x == 0) lane r of warp 0 adds row r of each step's dy tile from shared memory, so db of
// slice z sums the slice's pixels one by one in order, as conv_wgrad's does.
// Thread i loads 4 consecutive pixels of dy row piece20_row(i) per step by cp.async16 when h·w is a multiple of 4,
// dy is 16-byte aligned and there is no mask (a group then never straddles an image, and the split's pixel count
// is a multiple of 4); else pixel i % 16 of 4 rows, as scalars through registers. It also gathers pixel i % 16
// of 16 consecutive columns 16·(i / 16) + q (x is shifted by the tap and zero off the image: single floats,
// through registers), except with B_ASYNC (a 1×1: x's rows of pixels by cp.async, see below).
template <int K, bool ONE_TAP, bool B_ASYNC = false>
__device__ __forceinline__ void conv_wgrad_tc_body(float* __restrict__ partials, const float* __restrict__ dy,
                                                   const float* __restrict__ y, const float* __restrict__ x,
                                                   const ConvDims& d,
                                                   unsigned int imgs_per_split, float (*as)[CONV_TC_BM][TC_AROW],
                                                   float (*bs)[CONV_TC_BN][TC_AROW]) {
  constexpr int KK = K * K, P = K / 2;
  const unsigned int hw = d.h * d.w, cols = d.c_in * KK;
  const unsigned int m0 = blockIdx.y * CONV_TC_BM, j0 = blockIdx.x * CONV_TC_BN;
  const unsigned int img0 = blockIdx.z * imgs_per_split;
  const unsigned int img1 = img0 + imgs_per_split < d.n ? img0 + imgs_per_split : d.n;
  const unsigned int count = (img1 - img0) * hw, steps = (count + CONV_TC_BK - 1) / CONV_TC_BK;
  // A by cp.async: row ar (output channel am), pixels akq .. akq + 3 of each step.
  const unsigned int ar = piece20_row(threadIdx.x), akq = threadIdx.x % 4 * 4, am = m0 + ar;
  // With a mask (y) every dy value is checked as it is loaded: through registers, never cp.async.
  const bool a_async = !y && hw % 4 == 0 && ((unsigned long long)dy & 15) == 0;
  const float* dy_row = dy + (unsigned long long)(d.c_offset + am) * hw;  // image 0's plane of channel am
  // A through registers: pixel ak of each step in rows ar0 + 8u (u < 4). A half-warp reads 16 consecutive
  // pixels of one row (a warp's request: 2 runs of 64 bytes, not 8 rows × 4 pixels 4 apart); the two halves of
  // a warp take rows r and r + 4, whose 16-word runs of shared memory fill the 32 banks.
  const unsigned int ak = threadIdx.x % CONV_TC_BK, ar0 = threadIdx.x / 32 + threadIdx.x / 16 % 2 * 4;
  static_assert(CONV_TC_BK == 16 && CONV_TC_BM == 32 && CONV_TC_THREADS == 128, "the register A mapping");
  const unsigned long long plane0 = (unsigned long long)(d.c_offset + m0 + ar0) * hw;  // of row ar0, image 0
  // B: pixel bk of each step, columns bn0 .. bn0 + 15 (their (ci, ky, kx) decoded once).
  const unsigned int bk = threadIdx.x % CONV_TC_BK, bn0 = threadIdx.x / CONV_TC_BK * 16, col0 = j0 + bn0;
  const int b_skew = threadIdx.x / 16 % 2 * 4;
  const unsigned int ci0 = ONE_TAP ? col0 % d.c_in : col0 / KK, tap0 = ONE_TAP ? col0 / d.c_in : col0 % KK;
  const int ky0 = (int)(tap0 / K), kx0 = (int)(tap0 % K);
  // This thread's B pixel as (image, row, column), advanced by CONV_TC_BK per step without divisions.
  unsigned int b_img = img0 + bk / hw;
  int b_oy = (int)(bk % hw / d.w), b_ox = (int)(bk % d.w);
  // B_ASYNC (a 1×1 with c_in a multiple of 16, h·w a multiple of 4, x 16-byte aligned): B by cp.async, a
  // 4-pixel group (never straddling an image) of rows piece20_row(i) + 32j (j < 4) of each step, so that a
  // quarter-warp's 16-byte stores hit rows r and r + 4 of the 20-float rows: all 32 banks. The thread's group
  // is pixels gq .. gq + 3 of every step; its image and pixel advance by 16 a step without divisions.
  static_assert(!B_ASYNC || (K == 1 && ONE_TAP), "B by cp.async: 1×1, whole column groups");
  const unsigned int g_row = piece20_row(threadIdx.x), gq = threadIdx.x % 4 * 4;
  unsigned int g_img = img0 + gq / hw, g_pix = gq % hw;
  float bv[16], av[4];
  auto load = [&](unsigned int s, int buf) {
    const unsigned int t0 = s * CONV_TC_BK;
    if (B_ASYNC) {
#pragma unroll
      for (int j = 0; j < CONV_TC_BN / 32; ++j) {
        const unsigned int row = g_row + 32 * j, ci = j0 + row;
        float* dst = &bs[buf][row][gq];
        if (t0 + gq < count && ci < cols)
          cp_async16(dst, x + ((unsigned long long)g_img * d.c_in + ci) * hw + g_pix);
        else
          *reinterpret_cast<float4*>(dst) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
      for (g_pix += CONV_TC_BK; g_pix >= hw; g_pix -= hw) ++g_img;
    } else if (ONE_TAP) {  // channels ci0 .. ci0 + 15 at tap (ky0, kx0); col0 < cols covers all 16 (cols % 16 == 0)
      const int sy = b_oy + ky0 - P, sx = b_ox + kx0 - P;
      const bool ok = t0 + bk < count && col0 < cols && sy >= 0 && sy < (int)d.h && sx >= 0 && sx < (int)d.w;
      const float* xp = x + (ok ? ((unsigned long long)b_img * d.c_in + ci0) * hw + (unsigned int)sy * d.w + sx : 0);
#pragma unroll
      for (int q = 0; q < 16; ++q, xp += hw) bv[q] = ok ? *xp : 0.0f;  // predicated, all in flight
    } else if (t0 + bk < count) {
      const float* x_img = x + (unsigned long long)b_img * d.c_in * hw;
      unsigned int ci = ci0;
      int ky = ky0, kx = kx0;
#pragma unroll
      for (int q = 0; q < 16; ++q) {
        float v = 0.0f;
        const int sy = b_oy + ky - P, sx = b_ox + kx - P;
        if (ci < d.c_in && sy >= 0 && sy < (int)d.h && sx >= 0 && sx < (int)d.w)
          v = x_img[ci * hw + (unsigned int)sy * d.w + sx];
        bv[q] = v;
        if (++kx == K) {
          kx = 0;
          if (++ky == K) ky = 0, ++ci;
        }
      }
    } else {
#pragma unroll
      for (int q = 0; q < 16; ++q) bv[q] = 0.0f;
    }
    for (b_ox += CONV_TC_BK; b_ox >= (int)d.w; b_ox -= (int)d.w) {
      if (++b_oy == (int)d.h) b_oy = 0, ++b_img;
    }
    const unsigned int t = t0 + akq;
    if (a_async) {
      if (am < d.c_out && t < count) {
        const unsigned int img = img0 + t / hw;
        cp_async16(&as[buf][ar][akq], dy_row + (unsigned long long)img * d.c_total * hw + t % hw);
      } else {
        *reinterpret_cast<float4*>(&as[buf][ar][akq]) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      }
    } else {
      const unsigned int tu = t0 + ak;
      const unsigned long long at = plane0 + (unsigned long long)(img0 + tu / hw) * d.c_total * hw + tu % hw;
#pragma unroll
      for (int u = 0; u < 4; ++u) {  // the mask loaded beside the value (no branch between the loads)
        const unsigned long long au = at + (unsigned long long)(8 * u) * hw;
        const bool ok = m0 + ar0 + 8 * u < d.c_out && tu < count;
        const float v = ok ? dy[au] : 0.0f, m = !ok ? 0.0f : y ? y[au] : 1.0f;
        av[u] = m > 0.0f ? v : 0.0f;
      }
    }
  };
  auto stash = [&](int buf) {
#pragma unroll
    for (int q = 0; q < 16 && !B_ASYNC; ++q) {
      // The upper half-warp stores its rows in the order q ^ 4 (b_skew): the two halves' rows are then 12 or 20
      // apart, 16 words mod 32, and fill the 32 banks (in order they would be 16 apart, on the same banks).
      bs[buf][bn0 + (q ^ b_skew)][bk] = b_skew ? bv[q ^ 4] : bv[q];
    }
    if (!a_async)
#pragma unroll
      for (int u = 0; u < 4; ++u) as[buf][ar0 + 8 * u][ak] = av[u];
  };
  float acc[2][4][4] = {};
  const bool bias_row = blockIdx.x == 0 && threadIdx.x < CONV_TC_BM;  // warp 0 of the first column tile
  float bsum = 0.0f;
  if (steps > 0) {  // uniform
    load(0, 0);
    stash(0);
    cp_async_wait_all();
    __syncthreads();
  }
  for (unsigned int s = 0; s < steps; ++s) {
    const int cur = s & 1, nxt = cur ^ 1;
    const bool more = s + 1 < steps;  // uniform
    if (more) load(s + 1, nxt);
    tc_step<true>(acc, as[cur], &bs[cur][0][0]);
    if (bias_row) {
#pragma unroll
      for (int kq = 0; kq < CONV_TC_BK; kq += 4) {  // float4s of the row, k in order: a quarter-warp's 8 rows
        const float4 a4 = *reinterpret_cast<const float4*>(&as[cur][threadIdx.x][kq]);  // fill the 32 banks
        bsum += a4.x;  // positions past count are 0
        bsum += a4.y;
        bsum += a4.z;
        bsum += a4.w;
      }
    }
    if (more) stash(nxt);
    cp_async_wait_all();
    __syncthreads();
  }
  float* out = partials + (unsigned long long)blockIdx.z * d.c_out * (cols + 1);
  if (bias_row && m0 + threadIdx.x < d.c_out) out[(unsigned long long)d.c_out * cols + m0 + threadIdx.x] = bsum;
  // The tile goes out through shared memory as conv_tc_body's does (bs's space; the last barrier of the loop
  // freed it): thread i writes GEMM column j0 + i of each row, a warp's request 32 consecutive floats in the
  // natural column order (k = 1, or c_in not a multiple of 16); in the tap-major order dw's columns of
  // neighbouring threads lie K² apart (dw is small: c_out · c_in · K² floats a split).
  static_assert(2 * CONV_TC_BN * TC_AROW >= CONV_TC_BM * TC_BROW, "the C tile is staged in bs");
  float* cs = &bs[0][0][0];  // [CONV_TC_BM][TC_BROW]
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int eh = 0; eh < 2; ++eh)
        st_pair(cs + tc_row(mt, eh * 2) * TC_BROW, tc_col(nt, 0), acc[mt][nt][eh * 2], acc[mt][nt][eh * 2 + 1]);
  __syncthreads();
  const unsigned int n = j0 + threadIdx.x;
  if (n >= cols) return;
  const unsigned int col = ONE_TAP ? n % d.c_in * KK + n / d.c_in : n;  // dw's column of GEMM column n
  for (unsigned int r = 0; r < CONV_TC_BM && m0 + r < d.c_out; ++r)
    out[(unsigned long long)(m0 + r) * cols + col] = cs[r * TC_BROW + threadIdx.x];
}

// conv_wgrad on the tensor cores (TF32): split partials [dw | db] as conv_wgrad's, summed by conv_split_sum.
extern "C" __global__ void __launch_bounds__(CONV_TC_THREADS, 4) conv_wgrad_tf32(float* __restrict__ partials,  // [splits, c_out·(c_in·k·k + 1)]
                                                                            const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                                                            const float* __restrict__ y,   // [n, c_total, h, w], slice read, or null
                                                                            const float* __restrict__ x,   // [n, c_in, h, w]
                                                                            ConvDims d, unsigned int imgs_per_split) {
  __shared__ __align__(16) float as[2][CONV_TC_BM][TC_AROW];
  __shared__ __align__(16) float bs[2][CONV_TC_BN][TC_AROW];
  if (d.c_in % CONV_TC_BK == 0) {
    if (d.k == 1 && d.h * d.w % 4 == 0 && ((unsigned long long)x & 15) == 0)
      conv_wgrad_tc_body<1, true, true>(partials, dy, y, x, d, imgs_per_split, as, bs);
    else if (d.k == 1)
      conv_wgrad_tc_body<1, true>(partials, dy, y, x, d, imgs_per_split, as, bs);
    else if (d.k == 3)
      conv_wgrad_tc_body<3, true>(partials, dy, y, x, d, imgs_per_split, as, bs);
    else
      conv_wgrad_tc_body<5, true>(partials, dy, y, x, d, imgs_per_split, as, bs);
  } else {
    if (d.k == 1)
      conv_wgrad_tc_body<1, false>(partials, dy, y, x, d, imgs_per_split, as, bs);
    else if (d.k == 3)
      conv_wgrad_tc_body<3, false>(partials, dy, y, x, d, imgs_per_split, as, bs);
    else
      conv_wgrad_tc_body<5, false>(partials, dy, y, x, d, imgs_per_split, as, bs);
  }
}

// reduce_conv_dmid on the tensor cores (TF32): conv_dgrad_tf32's GEMM over the fused conv's k×k (c_mid input
// channels), kept where the saved reduced map is > 0. Grid (ceil(n·h·w / CONV_TC_BN), ceil(c_mid /
// CONV_TC_BM)).
extern "C" __global__ void __launch_bounds__(CONV_TC_THREADS) reduce_conv_dmid_tf32(float* __restrict__ dpre,       // [n, c_mid, h, w]
                                                                                  const float* __restrict__ dy,   // [n, c_total, h, w], slice read
                                                                                  const float* __restrict__ y,    // [n, c_total, h, w], slice read, or null
                                                                                  const float* __restrict__ w2,   // [c_out, c_mid, k, k]
                                                                                  const float* __restrict__ mid,  // [n, c_mid, h, w] saved
                                                                                  ReduceDims rd) {
  const ConvDims d = {rd.n, rd.c_mid, rd.c_out, rd.h, rd.w, rd.k, rd.c_total, rd.c_offset};
  conv_tc<true, true>(dpre, dy, y, w2, mid, d, 0);
}

// conv_taps_tf32: a conv weight in the tap-major order of the TF32 convs' reduction, rounded to TF32 (cvt.rna):
// wt[co, tap, c] = tf32(w[co, c, tap]). reduce_conv_fwd_tf32's k×k weights, made by its launcher before each
// forward (w changes every step): the fragments of a k step are then 4 consecutive floats of a row, as in the
// channel-major order, and need no rounding. Grid-stride over the c_out · k² · c_in outputs.
extern "C" __global__ void conv_taps_tf32(float* __restrict__ wt,       // [c_out, k·k, c_in]
                                          const float* __restrict__ w,  // [c_out, c_in, k, k]
                                          unsigned int c_out, unsigned int c_in, unsigned int kk) {
  const unsigned long long len = (unsigned long long)c_out * kk * c_in;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long e = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; e < len; e += stride) {
    const unsigned long long co = e / ((unsigned long long)kk * c_in);
    const unsigned int tap = (unsigned int)(e / c_in % kk), c = (unsigned int)(e % c_in);
    wt[e] = tf32_round(w[(co * c_in + c) * kk + tap]);
  }
}

// The k loop of a stage-1 slab (reduce_map_tc): acc += w1 rows wr · x at xp, k steps of 8 over c_in. WHOLE: every
// row, pixel and k counts (no checks); else mok, qok and c_in say which do.
template <int MT, bool WHOLE>
__device__ __forceinline__ void reduce_map_steps(float (&acc)[MT][8 / MT][4], const float* __restrict__ xp,
                                                 const float* const (&wr)[MT][2], const bool (&mok)[MT][2],
                                                 const bool (&qok)[8 / MT], unsigned int c_in, unsigned int hw) {
  constexpr int NT = 8 / MT;
  const unsigned int t = threadIdx.x % 4;
  for (unsigned int k8 = 0; k8 < c_in; k8 += 8, xp += 8ull * hw) {
    const bool ka = WHOLE || k8 + t < c_in, kb = WHOLE || k8 + t + 4 < c_in;
    unsigned int af[MT][4], bf[NT][2];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      af[mt][0] = tf32_bits((WHOLE || mok[mt][0]) && ka ? __ldg(wr[mt][0] + k8) : 0.0f);
      af[mt][1] = tf32_bits((WHOLE || mok[mt][1]) && ka ? __ldg(wr[mt][1] + k8) : 0.0f);
      af[mt][2] = tf32_bits((WHOLE || mok[mt][0]) && kb ? __ldg(wr[mt][0] + k8 + 4) : 0.0f);
      af[mt][3] = tf32_bits((WHOLE || mok[mt][1]) && kb ? __ldg(wr[mt][1] + k8 + 4) : 0.0f);
    }
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      bf[nt][0] = tf32_bits((WHOLE || qok[nt]) && ka ? xp[nt * 8] : 0.0f);
      bf[nt][1] = tf32_bits((WHOLE || qok[nt]) && kb ? xp[4ull * hw + nt * 8] : 0.0f);
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) mma_tf32_m16n8k8(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
  }
}

// Stage 1 of reduce_conv_fwd_tf32: the reduced map of rows r0 .. r0 + rows of image img, relu(b1 + w1 · x), into
// shared memory (plane cm at mid_s + cm · mplane, rounded to TF32: the k×k conv's operand) and, by the blocks of
// channel group 0, the rows y0 .. y1 of the saved copy `mid` (f32). M = c_mid, N = rows·w, K = c_in. Each warp
// takes slabs of 16·MT channels × 64/MT pixels (MT × 8/MT tiles of 16 × 8) in turn: MT = 1 for c_mid <= 16,
// where 32-channel slabs would be half zeros. A lane's pixels and weight rows are checked once a slab; its x
// fragments are channel t (and t + 4) of pixels q0 + g + 8nt, at one pointer stepped by 8 planes a k step.
template <int MT>
__device__ __forceinline__ void reduce_map_tc(float* __restrict__ mid_s, float* __restrict__ mid,
                                              const float* __restrict__ x, const float* __restrict__ w1,
                                              const float* __restrict__ b1, const ReduceDims& d,
                                              unsigned int img, unsigned int group, unsigned int y0,
                                              unsigned int y1, unsigned int r0, unsigned int rows,
                                              unsigned int mplane) {
  constexpr int NT = 8 / MT, SM = 16 * MT, SN = 8 * NT;  // tiles per slab; slab rows and columns
  const unsigned int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const unsigned int nwarps = blockDim.x / 32, hw = d.h * d.w;
  const unsigned int mpix = rows * d.w, m_slabs = (d.c_mid + SM - 1) / SM, n_slabs = (mpix + SN - 1) / SN;
  const float* x_img = x + (unsigned long long)img * d.c_in * hw + r0 * d.w;
  for (unsigned int slab = warp; slab < m_slabs * n_slabs; slab += nwarps) {
    const unsigned int cm0 = slab / n_slabs * SM, q0 = slab % n_slabs * SN;
    bool qok[NT];
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) qok[nt] = q0 + nt * 8 + g < mpix;
    bool mok[MT][2];
    const float* wr[MT][2];  // weight rows cm0 + 16mt + g + 8h from column t (row 0 when past c_mid)
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const unsigned int m = cm0 + mt * 16 + g + h * 8;
        mok[mt][h] = m < d.c_mid;
        wr[mt][h] = w1 + (unsigned long long)(mok[mt][h] ? m : 0) * d.c_in + t;
      }
    const float* xp = x_img + (unsigned long long)t * hw + q0 + g;  // channel k8 + t, pixel q0 + g
    float acc[MT][NT][4] = {};
    // Whole slabs over whole k steps (the net's shapes but the last pixel slab) need no per-load checks: more
    // than the 7 predicate registers a thread has would otherwise be live through the loop.
    if (cm0 + SM <= d.c_mid && q0 + SN <= mpix && d.c_in % 8 == 0)
      reduce_map_steps<MT, true>(acc, xp, wr, mok, qok, d.c_in, hw);
    else
      reduce_map_steps<MT, false>(acc, xp, wr, mok, qok, d.c_in, hw);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
      for (int nt = 0; nt < NT; ++nt)
#pragma unroll
        for (int h = 0; h < 2; ++h) {  // c[2h], c[2h + 1]: channel cm, pixels q and q + 1
          const unsigned int cm = cm0 + mt * 16 + g + h * 8, q = q0 + nt * 8 + 2 * t;
          if (cm >= d.c_mid || q >= mpix) continue;
          float v[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) v[e] = relu_epilogue(acc[mt][nt][2 * h + e] + b1[cm], 1);
          // One 8-byte store (q even, mplane even): a half-warp's words 8g + 2t (+1) fill 32 banks. A pixel
          // q + 1 = mpix lands in the plane's padding (mplane > mpix when mpix is odd), never read. The map on
          // chip is the k×k conv's B operand, rounded here once (tf32_round; the k×k stage passes its bits to
          // the mma as they are); the saved copy below stays f32.
          st_pair(mid_s + cm * mplane, q, tf32_round(v[0]), tf32_round(v[1]));
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const unsigned int qe = q + e, row = r0 + qe / d.w;
            if (qe < mpix && group == 0 && row >= y0 && row < y1)
              mid[((unsigned long long)img * d.c_mid + cm) * hw + r0 * d.w + qe] = v[e];
          }
        }
  }
}

// The k×k stage of reduce_conv_fwd_tf32, both orders: a lane's B column (pixel q0 + 8nt + g of the tile's
// opix pixels, rows from y0) of each n tile of a 32 × 32 slab, in image coordinates; a pixel past the tile
// gets a row that reads only zeros.
template <int K>
__device__ __forceinline__ void slab_pixels(int (&oy)[4], int (&ox)[4], unsigned int q0, unsigned int opix,
                                            unsigned int y0, unsigned int w) {
  const unsigned int g = threadIdx.x % 32 / 4;
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    const unsigned int q = q0 + nt * 8 + g;
    oy[nt] = q < opix ? (int)(y0 + q / w) : -(K + 1);
    ox[nt] = (int)(q % w);
  }
}

// ... and its epilogue: channels m0 + (the C fragments' rows) below co1, pixels q0 + (their columns) below
// opix, + b2 and the ReLU, into the channel slice of image img.
__device__ __forceinline__ void slab_store(float* __restrict__ y, const float (&acc)[2][4][4],
                                           const float* __restrict__ b2, const ReduceDims& d, unsigned int img,
                                           unsigned int m0, unsigned int q0, unsigned int co1, unsigned int opix,
                                           unsigned int y0) {
  const unsigned int g = threadIdx.x % 32 / 4, t = threadIdx.x % 4, hw = d.h * d.w;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const unsigned int co = m0 + mt * 16 + g + e / 2 * 8, q = q0 + nt * 8 + 2 * t + e % 2;
        if (co >= co1 || q >= opix) continue;
        y[((unsigned long long)img * d.c_total + d.c_offset + co) * hw + y0 * d.w + q] =
            relu_epilogue(acc[mt][nt][e] + b2[co], 1);
      }
}

// The k×k stage of reduce_conv_fwd_tf32 with the reduction tap-major, k = tap · c_mid + cm (c_mid a multiple
// of 8, so that a k step of 8 is 8 channels at one tap): each warp takes 32 × 32 slabs of the output (2 × 4
// tiles of 16 × 8) in turn. Per slab and tap, a lane's B column (pixel of n tile nt) is one shifted pixel of the
// map, checked against the image and addressed once; its fragments are then channels t and t + 4 of that
// pixel, words 8t + g + const of shared memory (planes mplane ≡ 8 mod 32 apart): conflict-free. A's fragments
// are 4 consecutive floats of rows of w2t (conv_taps_tf32: tap-major, already rounded), through L1 like the
// channel-major weight rows. The map on chip is already rounded too (stage 1), so no operand is converted here.
template <int K>
__device__ __forceinline__ void reduce_conv_tc_taps(float* __restrict__ y, const float* __restrict__ w2t,
                                                    const float* __restrict__ b2, const ReduceDims& d,
                                                    const float* __restrict__ mid_s, unsigned int mplane,
                                                    unsigned int img, unsigned int co0, unsigned int co1,
                                                    unsigned int y0, unsigned int y1, unsigned int r0) {
  constexpr int KK = K * K, P = K / 2;
  const unsigned int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const unsigned int nwarps = blockDim.x / 32;
  const unsigned int opix = (y1 - y0) * d.w, n_slabs2 = (opix + 31) / 32, o_slabs = (co1 - co0 + 31) / 32;
  const unsigned int ktot = d.c_mid * KK;
  for (unsigned int slab = warp; slab < o_slabs * n_slabs2; slab += nwarps) {
    const unsigned int m0 = co0 + slab / n_slabs2 * 32, q0 = slab % n_slabs2 * 32;
    int oy[4], ox[4];  // this lane's B column (pixel) of each n tile, in image coordinates
    slab_pixels<K>(oy, ox, q0, opix, y0, d.w);
    // This lane's A rows m0 + 16mt + g + 8h (h = 0, 1), from column t: zeros past the group's channels.
    const float* wr[2][2];
    bool wok[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const unsigned int m = m0 + mt * 16 + g + h * 8;
        wok[mt][h] = m < co1;
        wr[mt][h] = w2t + (unsigned long long)(wok[mt][h] ? m : co0) * ktot + t;
      }
    float acc[2][4][4] = {};
    for (int tap = 0; tap < KK; ++tap) {
      const int dy = tap / K - P, dx = tap % K - P;
      unsigned int boff[4];  // channel t of this lane's shifted pixel in the map
      bool bin[4];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int sy = oy[nt] + dy, sx = ox[nt] + dx;
        bin[nt] = sy >= 0 && sy < (int)d.h && sx >= 0 && sx < (int)d.w;
        boff[nt] = bin[nt] ? t * mplane + (unsigned int)(sy - (int)r0) * d.w + sx : 0;
      }
      const unsigned int ktap = tap * d.c_mid;
      for (unsigned int c8 = 0; c8 < d.c_mid; c8 += 8) {
        unsigned int af[2][4], bf[4][2];
        const unsigned int k = ktap + c8;
        // Unpredicated loads from addresses that are always valid (a row or pixel that does not count reads
        // row co0 or offset 0), then a select: no per-load predicate for the compiler to rematerialise
        // addresses around.
#pragma unroll
        for (int mt = 0; mt < 2; ++mt) {
          const float a0 = __ldg(wr[mt][0] + k), a1 = __ldg(wr[mt][1] + k), a2 = __ldg(wr[mt][0] + k + 4),
                      a3 = __ldg(wr[mt][1] + k + 4);
          af[mt][0] = wok[mt][0] ? __float_as_uint(a0) : 0u;
          af[mt][1] = wok[mt][1] ? __float_as_uint(a1) : 0u;
          af[mt][2] = wok[mt][0] ? __float_as_uint(a2) : 0u;
          af[mt][3] = wok[mt][1] ? __float_as_uint(a3) : 0u;
        }
        const float* ms = mid_s + c8 * mplane;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          const float b0 = ms[boff[nt]], b1 = ms[boff[nt] + 4 * mplane];
          bf[nt][0] = bin[nt] ? __float_as_uint(b0) : 0u;
          bf[nt][1] = bin[nt] ? __float_as_uint(b1) : 0u;
        }
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) mma_tf32_m16n8k8(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
      }
    }
    slab_store(y, acc, b2, d, img, m0, q0, co1, opix, y0);
  }
}

// The fused reduce conv forward on the tensor cores (TF32): reduce_conv_fwd's blocks, tiles and shared
// reduced map (one block per image, group of REDUCE_CO_GROUP output channels and tile of tile_h rows; the
// tile's rows of the reduced map with their halo in dynamic shared memory, computed once, never leaving the
// chip except for group 0's copy saved for backward), with both convs as GEMMs on mma.sync:
//   1. mid[cm, q] = relu(b1[cm] + Σ_ci w1[cm, ci] · x[img, ci, r0·w + q]) for the rows·w pixels q of the tile
//      and its halo: M = c_mid, N = rows·w, K = c_in;
//   2. y[co, q] = relu(b2[co] + Σ_(cm, ky, kx) w2[co, cm, ky, kx] · mid[cm, oy(q) + ky - K/2, ox(q) + kx - K/2])
//      for the tile's own pixels, mid read from shared memory (zero off the image): M = the group's channels,
//      N = (y1 - y0)·w, K = c_mid·K².
// Each warp takes 32 × 32 slabs of the output (2 × 4 tiles of 16 × 8) in turn, columns first. The fragments
// are read straight from memory, without a shared-memory staging of the operands: the weights from global
// memory (a few KB, read by every block: L1 and L2 hold them), x from global memory (8 consecutive pixels of
// 4 channels per fragment load), and mid from shared memory. The reduced map is stored in f32 in the saved copy
// and rounded to TF32 (cvt.rna) in shared memory, where it is the k×k conv's operand.
// The reduced map's planes lie REDUCE_TC_PLANE(rows · w) floats apart (≡ 8 mod 32), so that a half-warp's
// float2 stores of C fragments into it (words 8g + 2t) fill the 32 banks.
// The k×k stage: with w2t (c_mid a multiple of 8; the launcher makes it by conv_taps_tf32) it runs tap-major
// (reduce_conv_tc_taps: one border check and address per pixel and tap, conflict-free loads, no conversions).
// Without (other c_mid), channel-major, as below: B loads read 4 neighbouring taps of one channel (t) at 8
// consecutive pixels (g), whose offsets such as 0, 1, 2, w put up to 2–3 distinct words in one bank (≈ 1.45×
// the conflict-free wavefronts by the emulator's count), and each operand is checked, addressed and converted
// on its own. (Tap-major from w2 itself would scatter the weight loads: 32 lines a request instead of 8.)
template <int K>
__device__ __forceinline__ void reduce_conv_tc_body(float* __restrict__ y, float* __restrict__ mid,
                                                    const float* __restrict__ x, const float* __restrict__ w1,
                                                    const float* __restrict__ b1, const float* __restrict__ w2,
                                                    const float* __restrict__ w2t, const float* __restrict__ b2,
                                                    const ReduceDims& d, float* __restrict__ mid_s) {
  constexpr int KK = K * K, P = K / 2;
  const unsigned int groups = (d.c_out + REDUCE_CO_GROUP - 1) / REDUCE_CO_GROUP;
  const unsigned int tiles = (d.h + d.tile_h - 1) / d.tile_h;
  const unsigned int img = blockIdx.x / (groups * tiles), group = blockIdx.x / tiles % groups, tile = blockIdx.x % tiles;
  const unsigned int y0 = tile * d.tile_h, y1 = y0 + d.tile_h < d.h ? y0 + d.tile_h : d.h;
  const unsigned int r0 = y0 > (unsigned int)P ? y0 - P : 0, r1 = y1 + P < d.h ? y1 + P : d.h, rows = r1 - r0;
  const unsigned int warp = threadIdx.x / 32, g = threadIdx.x % 32 / 4, t = threadIdx.x % 4;
  const unsigned int nwarps = blockDim.x / 32;
  // 1. The reduced map of rows r0 .. r1: plane cm at mid_s + cm · mplane.
  const unsigned int mplane = REDUCE_TC_PLANE(rows * d.w);
  if (d.c_mid <= 16)  // uniform: slabs of 16 channels × 64 pixels (32 × 32 would be half zeros)
    reduce_map_tc<1>(mid_s, mid, x, w1, b1, d, img, group, y0, y1, r0, rows, mplane);
  else
    reduce_map_tc<2>(mid_s, mid, x, w1, b1, d, img, group, y0, y1, r0, rows, mplane);
  __syncthreads();
  // 2. The k×k conv of the tile's rows for this block's output channels.
  const unsigned int co0 = group * REDUCE_CO_GROUP;
  const unsigned int co1 = co0 + REDUCE_CO_GROUP < d.c_out ? co0 + REDUCE_CO_GROUP : d.c_out;
  const unsigned int opix = (y1 - y0) * d.w, n_slabs2 = (opix + 31) / 32;
  const unsigned int ktot = d.c_mid * KK;
  const unsigned int o_slabs = (co1 - co0 + 31) / 32;
  if (w2t) {  // uniform: c_mid % 8 == 0, the weight tap-major and rounded (conv_taps_tf32)
    reduce_conv_tc_taps<K>(y, w2t, b2, d, mid_s, mplane, img, co0, co1, y0, y1, r0);
    return;
  }
  for (unsigned int slab = warp; slab < o_slabs * n_slabs2; slab += nwarps) {
    const unsigned int m0 = co0 + slab / n_slabs2 * 32, q0 = slab % n_slabs2 * 32;
    int oy[4], ox[4];  // this lane's B column (pixel) of each n tile, in image coordinates
    slab_pixels<K>(oy, ox, q0, opix, y0, d.w);
    float acc[2][4][4] = {};
    for (unsigned int k8 = 0; k8 < ktot; k8 += 8) {
      unsigned int af[2][4], bf[4][2];
      const unsigned int ka = k8 + t, kb = k8 + t + 4;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        const unsigned int m = m0 + mt * 16 + g;
        const float* wa = w2 + (unsigned long long)m * ktot;
        const float* wb = w2 + (unsigned long long)(m + 8) * ktot;
        af[mt][0] = tf32_bits(m < co1 && ka < ktot ? __ldg(wa + ka) : 0.0f);
        af[mt][1] = tf32_bits(m + 8 < co1 && ka < ktot ? __ldg(wb + ka) : 0.0f);
        af[mt][2] = tf32_bits(m < co1 && kb < ktot ? __ldg(wa + kb) : 0.0f);
        af[mt][3] = tf32_bits(m + 8 < co1 && kb < ktot ? __ldg(wb + kb) : 0.0f);
      }
      // The B rows ka and kb as (reduce channel, tap offset).
      const unsigned int cma = ka / KK, cmb = kb / KK;
      const int dya = (int)(ka % KK / K) - P, dxa = (int)(ka % K) - P;
      const int dyb = (int)(kb % KK / K) - P, dxb = (int)(kb % K) - P;
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const int sya = oy[nt] + dya, sxa = ox[nt] + dxa, syb = oy[nt] + dyb, sxb = ox[nt] + dxb;
        const bool in_a = ka < ktot && sya >= 0 && sya < (int)d.h && sxa >= 0 && sxa < (int)d.w;
        const bool in_b = kb < ktot && syb >= 0 && syb < (int)d.h && sxb >= 0 && sxb < (int)d.w;
        // The map on chip holds TF32 values (tf32_round at its store): their bits are the operand.
        bf[nt][0] = in_a ? __float_as_uint(mid_s[cma * mplane + (unsigned int)(sya - (int)r0) * d.w + sxa]) : 0u;
        bf[nt][1] = in_b ? __float_as_uint(mid_s[cmb * mplane + (unsigned int)(syb - (int)r0) * d.w + sxb]) : 0u;
      }
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) mma_tf32_m16n8k8(acc[mt][nt], af[mt], bf[nt], acc[mt][nt]);
    }
    slab_store(y, acc, b2, d, img, m0, q0, co1, opix, y0);
  }
}

// Grid as reduce_conv_fwd's; dynamic shared memory c_mid · REDUCE_TC_PLANE(min(h, tile_h + k − 1) · w) floats;
// CONV_TC_THREADS (128) threads. k is 3 or 5. The launch bound's 4 blocks an SM lets ptxas use up to 128
// registers: by its own choice it stopped at 96 for sm_90 and spilled two values at the slab loop's head.
extern "C" __global__ void __launch_bounds__(CONV_TC_THREADS, 4) reduce_conv_fwd_tf32(float* __restrict__ y,         // [n, c_total, h, w]
                                                                                 float* __restrict__ mid,       // [n, c_mid, h, w] saved
                                                                                 const float* __restrict__ x,   // [n, c_in, h, w]
                                                                                 const float* __restrict__ w1,  // [c_mid, c_in]
                                                                                 const float* __restrict__ b1,  // [c_mid]
                                                                                 const float* __restrict__ w2,  // [c_out, c_mid, k, k]
                                                                                 const float* __restrict__ w2t, // [c_out, k·k, c_mid] (conv_taps_tf32), or null
                                                                                 const float* __restrict__ b2,  // [c_out]
                                                                                 ReduceDims d) {
  extern __shared__ float mid_s[];  // c_mid planes REDUCE_TC_PLANE(rows · w) floats apart: rows r0..r1 of the map
  if (d.k == 3)
    reduce_conv_tc_body<3>(y, mid, x, w1, b1, w2, w2t, b2, d, mid_s);
  else
    reduce_conv_tc_body<5>(y, mid, x, w1, b1, w2, w2t, b2, d, mid_s);
}
