// pool.cu: 3×3 max pooling, stride 1, 'same' padding in which padded cells never win.
//
// Provides: maxpool3x3s1_fwd (one thread per output cell), maxpool3x3s1_bwd (a gather: each input cell sums,
//           in row-major order of the outputs, the dy of the outputs it wins; no atomics; row tiles of a plane,
//           their windows' winners and the dy of those windows in shared memory, each winner found once).
// Tie rule (PyTorch's): the FIRST maximal cell of the window in row-major order wins; a NaN wins over every
//           number and a later NaN over an earlier one.
// Backward needs saved: the forward input x (winners are recomputed).
// Write rules: every output element is written once; maxpool3x3s1_bwd overwrites dx, or adds to it when
//              `accumulate` is non-zero (a tensor read by several branches). Grid-stride loops.
// CPU twin: src/cpu/pool.rs (same comparisons and summation order: bit-identical).

// Plane index of the winner of the window centred at (y, x) of an h × w plane whose rows from row0 on are at
// `rows` (row0 = 0: the whole plane).
__device__ __forceinline__ unsigned int pool_winner(const float* rows, unsigned int row0, unsigned int h,
                                                    unsigned int w, unsigned int y, unsigned int x) {
  const unsigned int y0 = y > 0 ? y - 1 : 0, y1 = y + 2 < h ? y + 2 : h;
  const unsigned int x0 = x > 0 ? x - 1 : 0, x1 = x + 2 < w ? x + 2 : w;
  unsigned int best = y0 * w + x0;
  float max = rows[best - row0 * w];
  for (unsigned int wy = y0; wy < y1; ++wy) {
    for (unsigned int wx = x0; wx < x1; ++wx) {
      const float v = rows[(wy - row0) * w + wx];
      if (v > max || v != v) {
        best = wy * w + wx;
        max = v;
      }
    }
  }
  return best;
}

extern "C" __global__ void maxpool3x3s1_fwd(float* __restrict__ y,        // [planes, h, w]
                                            const float* __restrict__ x,  // [planes, h, w]
                                            unsigned long long planes, unsigned int h, unsigned int w) {
  const unsigned long long hw = (unsigned long long)h * w, n = planes * hw;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float* plane = x + (i / hw) * hw;
    const unsigned int r = (unsigned int)(i % hw);
    y[i] = plane[pool_winner(plane, 0, h, w, r / w, r % w)];
  }
}

// With tile_h > 0: one block per (plane, tile of tile_h rows), grid-stride over them: the tile's input rows
// and two more on each side, and the dy rows of the windows centred within one row of the tile, go to shared
// memory (coalesced), then the winner of each of those windows, then each input cell of the tile gathers the
// dy of the windows it wins (outputs in row-major order, as below) from shared memory (from global memory,
// its up to 9 conditional loads would go out one after another, each a full memory latency).
// Dynamic shared memory: (tile_h + 4) · w floats of x, (tile_h + 2) · w winners, (tile_h + 2) · w floats of
// dy.
// With tile_h = 0 (rows too wide for that): one thread per input cell recomputes its neighbours' winners.
extern "C" __global__ void maxpool3x3s1_bwd(float* __restrict__ dx,        // [planes, h, w]
                                            const float* __restrict__ dy,  // [planes, h, w]
                                            const float* __restrict__ x,   // [planes, h, w] forward input
                                            unsigned long long planes, unsigned int h, unsigned int w,
                                            int accumulate, unsigned int tile_h) {
  const unsigned long long hw = (unsigned long long)h * w;
  if (tile_h > 0) {
    extern __shared__ float pool_s[];  // x rows [xa, xb); the winners and dy of the windows of rows [oa, ob)
    const unsigned int tiles = (h + tile_h - 1) / tile_h;
    float* xs = pool_s;
    unsigned int* win = reinterpret_cast<unsigned int*>(pool_s + (tile_h + 4) * w);
    float* dys = pool_s + (2 * tile_h + 6) * w;
    for (unsigned long long bi = blockIdx.x; bi < planes * tiles; bi += gridDim.x) {
      const unsigned long long base = bi / tiles * hw;
      const unsigned int y0 = (unsigned int)(bi % tiles) * tile_h, y1 = y0 + tile_h < h ? y0 + tile_h : h;
      const unsigned int xa = y0 > 2 ? y0 - 2 : 0, xb = y1 + 2 < h ? y1 + 2 : h;
      const unsigned int oa = y0 > 1 ? y0 - 1 : 0, ob = y1 + 1 < h ? y1 + 1 : h;
      for (unsigned int t = threadIdx.x; t < (xb - xa) * w; t += blockDim.x) xs[t] = x[base + xa * w + t];
      for (unsigned int t = threadIdx.x; t < (ob - oa) * w; t += blockDim.x) dys[t] = dy[base + oa * w + t];
      __syncthreads();
      for (unsigned int t = threadIdx.x; t < (ob - oa) * w; t += blockDim.x)
        win[t] = pool_winner(xs, xa, h, w, oa + t / w, t % w);
      __syncthreads();
      for (unsigned int t = threadIdx.x; t < (y1 - y0) * w; t += blockDim.x) {
        const unsigned int iy = y0 + t / w, ix = t % w, me = iy * w + ix;
        const unsigned int oy0 = iy > 0 ? iy - 1 : 0, oy1 = iy + 2 < h ? iy + 2 : h;
        const unsigned int ox0 = ix > 0 ? ix - 1 : 0, ox1 = ix + 2 < w ? ix + 2 : w;
        float g = 0.0f;
        for (unsigned int oy = oy0; oy < oy1; ++oy)
          for (unsigned int ox = ox0; ox < ox1; ++ox)
            if (win[(oy - oa) * w + ox] == me) g += dys[(oy - oa) * w + ox];
        dx[base + me] = accumulate ? dx[base + me] + g : g;
      }
      __syncthreads();  // the next tile reuses the shared rows
    }
    return;
  }
  const unsigned long long n = planes * hw;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const unsigned long long base = (i / hw) * hw;
    const unsigned int me = (unsigned int)(i % hw), iy = me / w, ix = me % w;
    const unsigned int oy0 = iy > 0 ? iy - 1 : 0, oy1 = iy + 2 < h ? iy + 2 : h;
    const unsigned int ox0 = ix > 0 ? ix - 1 : 0, ox1 = ix + 2 < w ? ix + 2 : w;
    float g = 0.0f;
    for (unsigned int oy = oy0; oy < oy1; ++oy) {
      for (unsigned int ox = ox0; ox < ox1; ++ox) {
        if (pool_winner(x + base, 0, h, w, oy, ox) == me) g += dy[base + oy * w + ox];
      }
    }
    dx[i] = accumulate ? dx[i] + g : g;
  }
}
