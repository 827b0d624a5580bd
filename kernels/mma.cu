// mma.cu: the tensor-core probe: one warp computes D = A · B + C for one m16n8k8 TF32 tile through the helpers
// of mma.cuh, each lane loading its fragments from row-major arrays by the PTX ISA's layout.
//
// Provides: mma_tf32_tile (one block of 32 threads). It pins down the fragment layout that the TF32 kernels
//           share: on a GPU it runs the hardware instruction, under emulation the emulator's collective, and
//           the tests hold both to the CPU twin (tests/emulation.rs, tests/gpu_kernels.rs); a planted kernel
//           with one fragment index wrong must fail the same comparison (kernels/emu/planted/planted.cu).
// Backward needs saved: nothing (not a training op).
// Write rules: every element of d written once. CPU twin: src/cpu/tf32.rs (same rounding, products summed in
//              k order onto c, as the emulator does; the hardware's order may differ within f32 rounding).

#include "mma.cuh"

extern "C" __global__ void mma_tf32_tile(float* __restrict__ d,        // [16, 8]
                                         const float* __restrict__ a,  // [16, 8]
                                         const float* __restrict__ b,  // [8, 8]: (k, n)
                                         const float* __restrict__ c) {  // [16, 8]
  const unsigned int lane = threadIdx.x & 31u, g = lane >> 2, t = lane & 3u;
  const unsigned int af[4] = {tf32_bits(a[g * 8 + t]), tf32_bits(a[(g + 8) * 8 + t]), tf32_bits(a[g * 8 + t + 4]),
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
