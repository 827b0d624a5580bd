// add.cu: elementwise sum of two flat f32 buffers.
//
// Provides: add_fwd (y = a + b). Its backward is the identity on both inputs, so it needs no kernel.
// Backward needs saved: nothing.
// Write rules: every output element is written exactly once; y must not alias a or b (__restrict__). The tape
//              uses it to accumulate the gradient of a tensor read by several ops. Grid-stride loop: any grid
//              size covers any n.
// CPU twin: src/cpu/add.rs (one IEEE addition per element: bit-identical).

extern "C" __global__ void add_fwd(float* __restrict__ y,        // [n]
                                   const float* __restrict__ a,  // [n]
                                   const float* __restrict__ b,  // [n]
                                   unsigned long long n) {
  const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
  for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
    y[i] = a[i] + b[i];
  }
}
