// conv.cu: stride-1 'same' convolutions (kernel 1, 3 or 5) with bias, and the fused reduce conv.
//
// Provides: conv_fwd (one thread per output element; bias and the optional ReLU in the epilogue; writes
//           channels [c_offset, c_offset + c_out) of a c_total-channel output: concat is not a copy),
//           conv_dgrad (one thread per input element, overwriting or accumulating), conv_wgrad (one block per
//           weight element), conv_bgrad (one block per output channel): the weight and bias gradients reduce
//           in a fixed order through shared memory (no float atomics: same inputs, same bits);
//           reduce_conv_fwd: 1×1 (c_in → c_mid) + b1 → ReLU → k×k (c_mid → c_out) + b2 → ReLU in one kernel.
//           Each block holds a tile of tile_h rows of one image's reduced map, plus a halo of k/2 rows on
//           each side (recomputed by the neighbouring tile too), in dynamic shared memory, and computes a group
//           of output channels of those rows from it; the blocks of group 0 save the tile's rows for
//           backward. At MNIST size the whole 16 × 28 × 28 map (50 KB) is one tile, with no halo work; the
//           launcher opts in to more than 48 KB of shared memory.
// Backward needs saved: x and the weights for conv; for the fused conv also the reduced map `mid`
//           (post-ReLU), which its backward (a sequence of the kernels above, see src/cuda/conv.rs) reads.
// Write rules: dy of a branch is read in place from its channel slice; dx overwrites or accumulates (the
//              module input is read by four branches). Grid-stride loops over elements; one block per
//              reduced value for the gradients.
// CPU twins: src/cpu/conv.rs, src/cpu/reduce_conv.rs (other summation orders: compared within tolerances).

struct ConvDims {
  unsigned int n, c_in, c_out, h, w, k, c_total, c_offset;
};

struct ReduceDims {
  unsigned int n, c_in, c_mid, c_out, h, w, k, c_total, c_offset;
  unsigned int tile_h;  // output rows per block of reduce_conv_fwd (the whole image when it fits)
};

__device__ __forceinline__ float relu_epilogue(float pre, int relu) {
  return (!relu || !(pre <= 0.0f)) ? pre : 0.0f;
}

// The input gradient at (img, ci, iy, ix) of a stride-1 'same' conv: Σ over output channels and taps of the
// output gradient (read from its channel slice) times the weight `wt [c_out, w_cin, k, k]`.
__device__ __forceinline__ float dgrad_at(const float* __restrict__ dy, const float* __restrict__ wt, unsigned int img,
                                          unsigned int ci, unsigned int w_cin, unsigned int c_out, unsigned int h,
                                          unsigned int w, unsigned int k, unsigned int c_total, unsigned int c_offset,
                                          int iy, int ix) {
  const unsigned long long hw = (unsigned long long)h * w;
  const int p = (int)k / 2;
  float acc = 0.0f;
  for (unsigned int co = 0; co < c_out; ++co) {
    const float* g = dy + ((unsigned long long)img * c_total + c_offset + co) * hw;
    const float* kern = wt + ((unsigned long long)co * w_cin + ci) * k * k;
    for (int ky = 0; ky < (int)k; ++ky) {
      const int oy = iy + p - ky;
      if (oy < 0 || oy >= (int)h) continue;
      for (int kx = 0; kx < (int)k; ++kx) {
        const int ox = ix + p - kx;
        if (ox >= 0 && ox < (int)w) acc += g[oy * w + ox] * kern[ky * k + kx];
      }
    }
  }
  return acc;
}

// Sum of one value per thread, in a fixed tree order (blockDim.x a power of two, at most 256).
__device__ __forceinline__ float block_sum(float v, float* s) {
  s[threadIdx.x] = v;
  __syncthreads();
  for (unsigned int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (threadIdx.x < o) s[threadIdx.x] += s[threadIdx.x + o];
    __syncthreads();
  }
  const float total = s[0];
  __syncthreads();
  return total;
}

extern "C" __global__ void conv_fwd(float* __restrict__ y,        // [n, c_total, h, w]
                                    const float* __restrict__ x,  // [n, c_in, h, w]
                                    const float* __restrict__ wt, // [c_out, c_in, k, k]
                                    const float* __restrict__ b,  // [c_out]
                                    ConvDims d, int relu) {
  const unsigned long long hw = (unsigned long long)d.h * d.w, total = d.n * d.c_out * hw;
  const int p = (int)d.k / 2;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const unsigned int img = (unsigned int)(i / (d.c_out * hw)), co = (unsigned int)(i / hw % d.c_out);
    const int oy = (int)(i % hw / d.w), ox = (int)(i % d.w);
    float acc = 0.0f;
    for (unsigned int ci = 0; ci < d.c_in; ++ci) {
      const float* plane = x + ((unsigned long long)img * d.c_in + ci) * hw;
      const float* kern = wt + ((unsigned long long)co * d.c_in + ci) * d.k * d.k;
      for (int ky = 0; ky < (int)d.k; ++ky) {
        const int sy = oy + ky - p;
        if (sy < 0 || sy >= (int)d.h) continue;
        for (int kx = 0; kx < (int)d.k; ++kx) {
          const int sx = ox + kx - p;
          if (sx >= 0 && sx < (int)d.w) acc += plane[sy * d.w + sx] * kern[ky * d.k + kx];
        }
      }
    }
    y[((unsigned long long)img * d.c_total + d.c_offset + co) * hw + oy * d.w + ox] = relu_epilogue(acc + b[co], relu);
  }
}

extern "C" __global__ void conv_dgrad(float* __restrict__ dx,        // [n, c_in, h, w]
                                      const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                      const float* __restrict__ wt,  // [c_out, c_in, k, k]
                                      ConvDims d, int accumulate) {
  const unsigned long long hw = (unsigned long long)d.h * d.w, total = d.n * d.c_in * hw;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    const unsigned int img = (unsigned int)(i / (d.c_in * hw)), ci = (unsigned int)(i / hw % d.c_in);
    const int iy = (int)(i % hw / d.w), ix = (int)(i % d.w);
    const float acc = dgrad_at(dy, wt, img, ci, d.c_in, d.c_out, d.h, d.w, d.k, d.c_total, d.c_offset, iy, ix);
    dx[i] = accumulate ? dx[i] + acc : acc;
  }
}

// One block per weight element (grid.x = c_out · c_in · k · k), 256 threads.
extern "C" __global__ void conv_wgrad(float* __restrict__ dw,        // [c_out, c_in, k, k]
                                      const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                      const float* __restrict__ x,   // [n, c_in, h, w]
                                      ConvDims d) {
  __shared__ float s[256];
  const unsigned int e = blockIdx.x, kk = d.k * d.k;
  const unsigned int co = e / (d.c_in * kk), ci = e / kk % d.c_in;
  const int ky = (int)(e % kk / d.k), kx = (int)(e % d.k), p = (int)d.k / 2;
  const unsigned long long hw = (unsigned long long)d.h * d.w, count = d.n * hw;
  float acc = 0.0f;
  for (unsigned long long t = threadIdx.x; t < count; t += blockDim.x) {
    const unsigned int img = (unsigned int)(t / hw);
    const int oy = (int)(t % hw / d.w), ox = (int)(t % d.w), sy = oy + ky - p, sx = ox + kx - p;
    if (sy < 0 || sy >= (int)d.h || sx < 0 || sx >= (int)d.w) continue;
    acc += dy[((unsigned long long)img * d.c_total + d.c_offset + co) * hw + oy * d.w + ox] *
           x[((unsigned long long)img * d.c_in + ci) * hw + sy * d.w + sx];
  }
  const float total = block_sum(acc, s);
  if (threadIdx.x == 0) dw[e] = total;
}

// One block per output channel (grid.x = c_out), 256 threads.
extern "C" __global__ void conv_bgrad(float* __restrict__ db,        // [c_out]
                                      const float* __restrict__ dy,  // [n, c_total, h, w], slice read
                                      ConvDims d) {
  __shared__ float s[256];
  const unsigned int co = blockIdx.x;
  const unsigned long long hw = (unsigned long long)d.h * d.w, count = d.n * hw;
  float acc = 0.0f;
  for (unsigned long long t = threadIdx.x; t < count; t += blockDim.x) {
    acc += dy[((unsigned long long)(t / hw) * d.c_total + d.c_offset + co) * hw + t % hw];
  }
  const float total = block_sum(acc, s);
  if (threadIdx.x == 0) db[co] = total;
}

// Output channels per block of reduce_conv_fwd.
#define REDUCE_CO_GROUP 16

// Grid: n · ceil(c_out / REDUCE_CO_GROUP) · ceil(h / tile_h) blocks (image-major, then channel group,
// then row tile); dynamic shared memory: c_mid · min(h, tile_h + k - 1) · w floats.
extern "C" __global__ void reduce_conv_fwd(float* __restrict__ y,         // [n, c_total, h, w]
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
  // 1×1 reduce + bias + ReLU of rows r0..r1 into shared memory.
  for (unsigned int t = threadIdx.x; t < d.c_mid * rows * d.w; t += blockDim.x) {
    const unsigned int cm = t / (rows * d.w), row = r0 + t % (rows * d.w) / d.w, px = row * d.w + t % d.w;
    float acc = 0.0f;
    for (unsigned int ci = 0; ci < d.c_in; ++ci) acc += w1[cm * d.c_in + ci] * x[((unsigned long long)img * d.c_in + ci) * hw + px];
    const float v = relu_epilogue(acc + b1[cm], 1);
    mid_s[t] = v;
    if (group == 0 && row >= y0 && row < y1) mid[((unsigned long long)img * d.c_mid + cm) * hw + px] = v;
  }
  __syncthreads();
  // k×k conv of the reduced map for this block's output channels and rows, + bias + the module's ReLU.
  const unsigned int co0 = group * REDUCE_CO_GROUP;
  const unsigned int co_n = d.c_out - co0 < REDUCE_CO_GROUP ? d.c_out - co0 : REDUCE_CO_GROUP;
  const unsigned int out_px = (y1 - y0) * d.w;
  for (unsigned int t = threadIdx.x; t < co_n * out_px; t += blockDim.x) {
    const unsigned int co = co0 + t / out_px;
    const int oy = (int)(y0 + t % out_px / d.w), ox = (int)(t % d.w);
    float acc = 0.0f;
    for (unsigned int cm = 0; cm < d.c_mid; ++cm) {
      const float* kern = w2 + ((unsigned long long)co * d.c_mid + cm) * d.k * d.k;
      const float* plane = mid_s + cm * rows * d.w;
      for (int ky = 0; ky < (int)d.k; ++ky) {
        const int sy = oy + ky - (int)p;
        if (sy < 0 || sy >= (int)d.h) continue;
        for (int kx = 0; kx < (int)d.k; ++kx) {
          const int sx = ox + kx - (int)p;
          if (sx >= 0 && sx < (int)d.w) acc += plane[(sy - (int)r0) * (int)d.w + sx] * kern[ky * d.k + kx];
        }
      }
    }
    y[((unsigned long long)img * d.c_total + d.c_offset + co) * hw + oy * d.w + ox] = relu_epilogue(acc + b2[co], 1);
  }
}

// The fused conv's backward through its k×k conv and the reduce ReLU: dpre = (w2ᵀ ⊛ dy) where mid > 0, else
// 0 (conv_dgrad with the mask of the saved reduced map). One thread per element of [n, c_mid, h, w].
extern "C" __global__ void reduce_conv_dmid(float* __restrict__ dpre,       // [n, c_mid, h, w]
                                            const float* __restrict__ dy,   // [n, c_total, h, w], slice read
                                            const float* __restrict__ w2,   // [c_out, c_mid, k, k]
                                            const float* __restrict__ mid,  // [n, c_mid, h, w] saved
                                            ReduceDims d) {
  const unsigned long long hw = (unsigned long long)d.h * d.w, total = d.n * d.c_mid * hw;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    if (!(mid[i] > 0.0f)) {
      dpre[i] = 0.0f;
      continue;
    }
    const unsigned int img = (unsigned int)(i / (d.c_mid * hw)), cm = (unsigned int)(i / hw % d.c_mid);
    const int iy = (int)(i % hw / d.w), ix = (int)(i % d.w);
    dpre[i] = dgrad_at(dy, w2, img, cm, d.c_mid, d.c_out, d.h, d.w, d.k, d.c_total, d.c_offset, iy, ix);
  }
}
