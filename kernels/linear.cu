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

// Loads the 16 (k) × 64 (r) tile of operand X(r, k) = p[r · rs + k · ks], r in [r0, r0 + 64), k in [k0, k0 + 16),
// into s[kk][r], zero where r >= r_end or k >= k_end. 256 threads. An operand contiguous in k (ks = 1) is read
// with k fastest across threads, one contiguous in r with r fastest, so warps read whole segments; with the
// other stride a multiple of 4 and p 16-byte aligned, as one float4 per thread (uniform branches: strides and
// pointers are launch constants).
__device__ __forceinline__ void gemm_load(float (*s)[GEMM_TILE + 1], const float* __restrict__ p,
                                          unsigned long long rs, unsigned long long ks, unsigned int r0,
                                          unsigned int r_end, unsigned long long k0, unsigned long long k_end) {
  const bool kfast = ks == 1, rfast = !kfast && rs == 1;
  const bool aligned = ((unsigned long long)p & 15) == 0;
  if (kfast && aligned && rs % 4 == 0) {
    const unsigned int r = threadIdx.x / 4, kq = (threadIdx.x % 4) * 4;
    const unsigned long long k = k0 + kq;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (r0 + r < r_end) {
      const float* q = p + (unsigned long long)(r0 + r) * rs + k;
      if (k + 3 < k_end) {
        const float4 f = *reinterpret_cast<const float4*>(q);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
      } else {
        for (int u = 0; u < 4; ++u)
          if (k + u < k_end) v[u] = q[u];
      }
    }
    for (int u = 0; u < 4; ++u) s[kq + u][r] = v[u];
  } else if (rfast && aligned && ks % 4 == 0) {
    const unsigned int kk = threadIdx.x / 16, rq = (threadIdx.x % 16) * 4;
    const unsigned long long k = k0 + kk;
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (k < k_end) {
      const float* q = p + k * ks + r0 + rq;
      if (r0 + rq + 3 < r_end) {
        const float4 f = *reinterpret_cast<const float4*>(q);
        v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
      } else {
        for (int u = 0; u < 4; ++u)
          if (r0 + rq + u < r_end) v[u] = q[u];
      }
    }
    for (int u = 0; u < 4; ++u) s[kk][rq + u] = v[u];
  } else {
    for (unsigned int e = threadIdx.x; e < GEMM_TK * GEMM_TILE; e += blockDim.x) {
      const unsigned int kk = kfast ? e % GEMM_TK : e / GEMM_TILE, r = kfast ? e / GEMM_TK : e % GEMM_TILE;
      const unsigned long long k = k0 + kk;
      s[kk][r] = (k < k_end && r0 + r < r_end) ? p[(unsigned long long)(r0 + r) * rs + k * ks] : 0.0f;
    }
  }
}

__device__ __forceinline__ void gemm_tile(float* __restrict__ c, const float* __restrict__ a,
                                          const float* __restrict__ b, const GemmDims& d) {
  __shared__ float as[GEMM_TK][GEMM_TILE + 1];  // as[kk][i] (padded against bank conflicts of the k-fast stores)
  __shared__ float bs[GEMM_TK][GEMM_TILE + 1];  // bs[kk][j]
  const unsigned int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const unsigned int i0 = blockIdx.y * GEMM_TILE, j0 = blockIdx.x * GEMM_TILE;
  const unsigned long long k_begin = (unsigned long long)blockIdx.z * d.k_chunk;
  const unsigned long long k_end = k_begin + d.k_chunk < d.k ? k_begin + d.k_chunk : d.k;
  float acc[4][4] = {};
  for (unsigned long long k0 = k_begin; k0 < k_end; k0 += GEMM_TK) {
    gemm_load(as, a, d.a_rs, d.a_ks, i0, d.m, k0, k_end);  // A(i, k)
    gemm_load(bs, b, d.b_cs, d.b_ks, j0, d.n, k0, k_end);  // B(k, j) as X(j, k)
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
  const unsigned int jq = j0 + tx * 4;
  const bool vec_out = ((unsigned long long)out & 15) == 0 && d.c_rs % 4 == 0 && jq + 3 < d.n;
  for (int qi = 0; qi < 4; ++qi) {
    const unsigned int i = i0 + ty * 4 + qi;
    if (i >= d.m) continue;
    float* row = out + (unsigned long long)i * d.c_rs;
    if (vec_out) {
      *reinterpret_cast<float4*>(row + jq) = make_float4(acc[qi][0], acc[qi][1], acc[qi][2], acc[qi][3]);
    } else {
      for (int qj = 0; qj < 4; ++qj)
        if (jq + qj < d.n) row[jq + qj] = acc[qi][qj];
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
