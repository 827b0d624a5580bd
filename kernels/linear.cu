// linear.cu: the linear layer y = x · wᵀ + b (PyTorch's weight layout w [n_out, k_in]) as tiled GEMMs.
//
// Provides: linear_fwd (split-K: each z-slice of the grid writes the partial product of one range of k_in
//           into partials[z]; linear_fwd_reduce then sums the partials in z order and adds the bias: fc1's
//           forward has only 35,000 outputs for k_in = 200,704, so k must be split across blocks), linear_dgrad
//           (dx = dy · w), linear_wgrad (dw = dyᵀ · x; 140 M outputs from k = 50: a write-bandwidth problem),
//           linear_bgrad (one thread per column, rows summed in order). No float atomics: same inputs, same bits.
// The GEMM: C[i, j] = Σ_k A(i, k) · B(k, j) with strides, 64 × 64 output tiles per 256-thread block (4 × 4 per
//           thread), k in steps of 16 through shared memory.
// Backward needs saved: x (for wgrad) and w (for dgrad).
// Write rules: every output element is written once. CPU twin: src/cpu/linear.rs (other summation orders:
//              compared within tolerances).

#define GEMM_TILE 64
#define GEMM_TK 16

struct GemmDims {                  // no padding: the 64-bit fields first
  unsigned long long a_rs, a_ks;    // A(i, k) = a[i * a_rs + k * a_ks]
  unsigned long long b_ks, b_cs;    // B(k, j) = b[k * b_ks + j * b_cs]
  unsigned long long c_rs;          // C(i, j) = c[i * c_rs + j]
  unsigned long long c_slice;       // split-K: slice z writes c + z * c_slice
  unsigned int m, n, k;             // C is m × n; the reduction runs over k
  unsigned int k_chunk;             // split-K: slice z covers k in [z * k_chunk, (z + 1) * k_chunk)
};

__device__ __forceinline__ void gemm_tile(float* __restrict__ c, const float* __restrict__ a,
                                          const float* __restrict__ b, const GemmDims& d) {
  __shared__ float as[GEMM_TK][GEMM_TILE + 1];  // as[kk][i] (padded: the k-fastest stores hit distinct banks)
  __shared__ float bs[GEMM_TK][GEMM_TILE + 1];  // bs[kk][j]
  const unsigned int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const unsigned int i0 = blockIdx.y * GEMM_TILE, j0 = blockIdx.x * GEMM_TILE;
  const unsigned long long k_begin = (unsigned long long)blockIdx.z * d.k_chunk;
  const unsigned long long k_end = k_begin + d.k_chunk < d.k ? k_begin + d.k_chunk : d.k;
  // Coalescing: an operand contiguous in k is read with k fastest across threads, otherwise with its
  // row/column index fastest (uniform branches: the strides are launch constants).
  const bool a_kfast = d.a_ks == 1, b_kfast = d.b_ks == 1;
  float acc[4][4] = {};
  for (unsigned long long k0 = k_begin; k0 < k_end; k0 += GEMM_TK) {
    // 256 threads load 16 × 64 elements of each operand (4 each); out-of-range elements are 0.
    for (unsigned int e = threadIdx.x; e < GEMM_TK * GEMM_TILE; e += blockDim.x) {
      unsigned int kk = e / GEMM_TILE, r = e % GEMM_TILE;
      if (a_kfast) kk = e % GEMM_TK, r = e / GEMM_TK;
      unsigned long long k = k0 + kk;
      as[kk][r] = (k < k_end && i0 + r < d.m) ? a[(i0 + r) * d.a_rs + k * d.a_ks] : 0.0f;
      kk = b_kfast ? e % GEMM_TK : e / GEMM_TILE;
      r = b_kfast ? e / GEMM_TK : e % GEMM_TILE;
      k = k0 + kk;
      bs[kk][r] = (k < k_end && j0 + r < d.n) ? b[k * d.b_ks + (j0 + r) * d.b_cs] : 0.0f;
    }
    __syncthreads();
    for (unsigned int kk = 0; kk < GEMM_TK; ++kk) {
      float av[4], bv[4];
      for (int q = 0; q < 4; ++q) {
        av[q] = as[kk][ty * 4 + q];
        bv[q] = bs[kk][tx * 4 + q];
      }
      for (int qi = 0; qi < 4; ++qi)
        for (int qj = 0; qj < 4; ++qj) acc[qi][qj] += av[qi] * bv[qj];
    }
    __syncthreads();
  }
  float* out = c + (unsigned long long)blockIdx.z * d.c_slice;
  for (int qi = 0; qi < 4; ++qi) {
    const unsigned int i = i0 + ty * 4 + qi;
    if (i >= d.m) continue;
    for (int qj = 0; qj < 4; ++qj) {
      const unsigned int j = j0 + tx * 4 + qj;
      if (j < d.n) out[i * d.c_rs + j] = acc[qi][qj];
    }
  }
}

// Grid (ceil(n_out / 64), ceil(m / 64), splits): partials[z] = x[:, z-th k range] · w[:, same]ᵀ.
extern "C" __global__ void linear_fwd(float* __restrict__ partials,   // [splits, m, n_out]
                                      const float* __restrict__ x,    // [m, k_in]
                                      const float* __restrict__ w,    // [n_out, k_in]
                                      GemmDims d) {
  gemm_tile(partials, x, w, d);
}

// y[i, j] = b[j] + Σ_z partials[z, i, j], z in order. One thread per output (grid-stride).
extern "C" __global__ void linear_fwd_reduce(float* __restrict__ y,               // [m, n_out]
                                             const float* __restrict__ partials,  // [splits, m, n_out]
                                             const float* __restrict__ b,         // [n_out]
                                             unsigned int m, unsigned int n_out, unsigned int splits) {
  const unsigned long long total = (unsigned long long)m * n_out;
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += stride) {
    float acc = 0.0f;
    for (unsigned int z = 0; z < splits; ++z) acc += partials[z * total + i];
    y[i] = acc + b[i % n_out];
  }
}

// Grid (ceil(k_in / 64), ceil(m / 64)): dx = dy · w.
extern "C" __global__ void linear_dgrad(float* __restrict__ dx,        // [m, k_in]
                                        const float* __restrict__ dy,  // [m, n_out]
                                        const float* __restrict__ w,   // [n_out, k_in]
                                        GemmDims d) {
  gemm_tile(dx, dy, w, d);
}

// Grid (ceil(k_in / 64), ceil(n_out / 64)): dw = dyᵀ · x.
extern "C" __global__ void linear_wgrad(float* __restrict__ dw,        // [n_out, k_in]
                                        const float* __restrict__ dy,  // [m, n_out]
                                        const float* __restrict__ x,   // [m, k_in]
                                        GemmDims d) {
  gemm_tile(dw, dy, x, d);
}

// db[j] = Σ_i dy[i, j], rows in order: one thread per column.
extern "C" __global__ void linear_bgrad(float* __restrict__ db,        // [n_out]
                                        const float* __restrict__ dy,  // [m, n_out]
                                        unsigned int m, unsigned int n_out) {
  const unsigned int stride = gridDim.x * blockDim.x;
  for (unsigned int j = blockIdx.x * blockDim.x + threadIdx.x; j < n_out; j += stride) {
    float acc = 0.0f;
    for (unsigned int i = 0; i < m; ++i) acc += dy[(unsigned long long)i * n_out + j];
    db[j] = acc;
  }
}
