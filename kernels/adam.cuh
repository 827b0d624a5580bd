// adam.cuh: PyTorch's Adam update of one element, shared by adam_step (train.cu) and linear_wgrad_adam
// (linear.cu) so the fused and the unfused update are the same arithmetic, bit for bit. Explicit _rn
// intrinsics: no FMA is contracted, so the CPU twin (src/cpu/adam.rs) matches bit for bit too.
//
// Where a launch's scalars come from (the convention of every Adam kernel: adam_step in train.cu,
// linear_wgrad_adam, linear_wgrad_adam_tf32, linear_bwd_adam and linear_bwd_adam_tf32 in linear.cu, and any
// new one). Each ends its parameter list with the same three,
//     AdamScalars s_arg, const float* adam_table /* [steps, 6] */, const unsigned int* adam_step /* [1] or null */
// and obtains its scalars by ONE call, `const AdamScalars s = adam_scalars(s_arg, adam_table, adam_step);`
// (or passes `adam_scalars(...)` where it hands `s` to a shared body):
//   - adam_step null: s_arg, computed on the host for this launch (a direct call with an AdamStep);
//   - else row *adam_step of adam_table: the device step counter (train.cu) holds the steps taken, so row
//     t − 1 holds step t's scalars. The table is computed on the host in f64 exactly as AdamStep::scalars
//     (src/shape.rs) computes s_arg, rows for steps 1, 2, ... in AdamScalars' field order, 6 floats a row,
//     and uploaded once per run (graph::Params); the host checks the table covers the step before it
//     launches one. The value of s_arg is then unused. So a step captured into a CUDA graph replays with the
//     scalars of the step being run, bit for bit those of a direct launch.
#pragma once

#include "args.h"  // AdamScalars: the per-launch scalars

// The scalars of an Adam launch (see the convention above).
__device__ __forceinline__ AdamScalars adam_scalars(const AdamScalars& s_arg, const float* adam_table,
                                                    const unsigned int* adam_step) {
  return adam_step == nullptr ? s_arg : reinterpret_cast<const AdamScalars*>(adam_table)[*adam_step];
}

// m ← m + (1-β1)(g - m); v ← β2·v + ((1-β2)·g)·g; p ← p - step_size · m / (√v / bc2_sqrt + eps).
// (1-β2)·g is rounded before it is multiplied by g, as PyTorch's f32 Adam does: g·g alone overflows for
// |g| > √FLT_MAX ≈ 1.84e19, which would leave v = inf and the parameter frozen for good.
__device__ __forceinline__ void adam_update(float& p, float& m, float& v, float g, const AdamScalars& s) {
  m = __fadd_rn(m, __fmul_rn(s.one_minus_b1, __fsub_rn(g, m)));
  v = __fadd_rn(__fmul_rn(v, s.b2), __fmul_rn(__fmul_rn(s.one_minus_b2, g), g));
  const float denom = __fadd_rn(__fdiv_rn(sqrtf(v), s.bc2_sqrt), s.eps);
  p = __fsub_rn(p, __fmul_rn(s.step_size, __fdiv_rn(m, denom)));
}
