// relu.cu: ReLU forward and backward over a flat f32 buffer.
//
// Provides: relu_fwd (y = max(x, 0), NaN propagates), relu_bwd (dx = dy where y > 0, else 0; the gradient
//           at exactly 0 is 0).
// Backward needs saved: the forward output y (y > 0 exactly where x > 0).
// Write rules: every output element is written exactly once; outputs must not alias inputs (__restrict__).
//              Grid-stride loops: any grid size covers any n.
// CPU twin: src/cpu/relu.rs (same expressions, so results are bit-identical).

extern "C" __global__ void relu_fwd(float* __restrict__ y,        // [n]
                                    const float* __restrict__ x,  // [n]
                                    unsigned long long n) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    const float v = x[i];
    // `!(v <= 0)` rather than `v > 0`: NaN fails both comparisons and must propagate, as in PyTorch.
    y[i] = !(v <= 0.0f) ? v : 0.0f;
  }
}

extern "C" __global__ void relu_bwd(float* __restrict__ dx,        // [n]
                                    const float* __restrict__ dy,  // [n]
                                    const float* __restrict__ y,   // [n] forward output
                                    unsigned long long n) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    dx[i] = y[i] > 0.0f ? dy[i] : 0.0f;
  }
}
