// pool.cu: 3×3 max pooling, stride 1, 'same' padding in which padded cells never win.
//
// Provides: maxpool3x3s1_fwd (one thread per output cell), maxpool3x3s1_bwd (a gather: one thread per input
//           cell sums, in row-major order of the outputs, the dy of the outputs it wins; no atomics).
// Tie rule (PyTorch's): the FIRST maximal cell of the window in row-major order wins; a NaN wins over every
//           number and a later NaN over an earlier one.
// Backward needs saved: the forward input x (winners are recomputed).
// Write rules: every output element is written once; maxpool3x3s1_bwd overwrites dx, or adds to it when
//              `accumulate` is non-zero (a tensor read by several branches). Grid-stride loops.
// CPU twin: src/cpu/pool.rs (same comparisons and summation order: bit-identical).

// Plane index of the winner of the window centred at (y, x) of an h × w plane.
__device__ __forceinline__ unsigned int pool_winner(const float* plane, unsigned int h, unsigned int w,
                                                    unsigned int y, unsigned int x) {
  const unsigned int y0 = y > 0 ? y - 1 : 0, y1 = y + 2 < h ? y + 2 : h;
  const unsigned int x0 = x > 0 ? x - 1 : 0, x1 = x + 2 < w ? x + 2 : w;
  unsigned int best = y0 * w + x0;
  float max = plane[best];
  for (unsigned int wy = y0; wy < y1; ++wy) {
    for (unsigned int wx = x0; wx < x1; ++wx) {
      const float v = plane[wy * w + wx];
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
    y[i] = plane[pool_winner(plane, h, w, r / w, r % w)];
  }
}

extern "C" __global__ void maxpool3x3s1_bwd(float* __restrict__ dx,        // [planes, h, w]
                                            const float* __restrict__ dy,  // [planes, h, w]
                                            const float* __restrict__ x,   // [planes, h, w] forward input
                                            unsigned long long planes, unsigned int h, unsigned int w,
                                            int accumulate) {
  const unsigned long long hw = (unsigned long long)h * w, n = planes * hw;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const unsigned long long base = (i / hw) * hw;
    const unsigned int me = (unsigned int)(i % hw), iy = me / w, ix = me % w;
    const unsigned int oy0 = iy > 0 ? iy - 1 : 0, oy1 = iy + 2 < h ? iy + 2 : h;
    const unsigned int ox0 = ix > 0 ? ix - 1 : 0, ox1 = ix + 2 < w ? ix + 2 : w;
    float g = 0.0f;
    for (unsigned int oy = oy0; oy < oy1; ++oy) {
      for (unsigned int ox = ox0; ox < ox1; ++ox) {
        if (pool_winner(x + base, h, w, oy, ox) == me) g += dy[base + oy * w + ox];
      }
    }
    dx[i] = accumulate ? dx[i] + g : g;
  }
}
