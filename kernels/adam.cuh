// adam.cuh: PyTorch's Adam update of one element, shared by adam_step (train.cu) and linear_wgrad_adam
// (linear.cu) so the fused and the unfused update are the same arithmetic, bit for bit. Explicit _rn
// intrinsics: no FMA is contracted, so the CPU twin (src/cpu/adam.rs) matches bit for bit too.
#pragma once

#include "args.h"  // AdamScalars: the per-launch scalars

// m ← m + (1-β1)(g - m); v ← β2·v + ((1-β2)·g)·g; p ← p - step_size · m / (√v / bc2_sqrt + eps).
// (1-β2)·g is rounded before it is multiplied by g, as PyTorch's f32 Adam does: g·g alone overflows for
// |g| > √FLT_MAX ≈ 1.84e19, which would leave v = inf and the parameter frozen for good.
__device__ __forceinline__ void adam_update(float& p, float& m, float& v, float g, const AdamScalars& s) {
  m = __fadd_rn(m, __fmul_rn(s.one_minus_b1, __fsub_rn(g, m)));
  v = __fadd_rn(__fmul_rn(v, s.b2), __fmul_rn(__fmul_rn(s.one_minus_b2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(sqrtf(v), s.bc2_sqrt), s.eps);
  p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(m, denom)));
}
