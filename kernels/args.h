// args.h: the kernels' argument structs and the tile constants that their launch plans must agree with,
// declared once. The kernels include it (nvcc, and g++ under emulation); bindgen reads it into
// src/bindings.rs, the Rust side of the same declarations (scripts/bindings.sh regen; CI checks the committed
// copy is fresh, and build.rs refuses bindings generated from another version of this file).
// Plain C: fixed-size unsigned fields, 64-bit fields first, no padding, no pointers.
#pragma once

// The GEMMs of linear.cu: a block of GEMM_THREADS threads computes a GEMM_BM × GEMM_BN tile of C, k in steps
// of GEMM_BK through shared memory; linear_wgrad_adam uses WGRAD_ADAM_BM rows (4 a thread).
#define GEMM_BM 64
#define GEMM_BN 128
#define GEMM_BK 16
#define GEMM_THREADS 128
#define WGRAD_ADAM_BM 32

// linear_bwd_adam (linear.cu): rows of w per shared-memory chunk, and the largest batch it takes (the batch's
// x column and dx accumulators are registers).
#define BWD_ADAM_ROWS 32
#define BWD_ADAM_MAX_BATCH 64

// linear_bwd_adam_tf32 (linear.cu): BWD_TC_THREADS threads (8 warps of 16 columns) own a strip of BWD_TC_COLS
// columns and walk the rows in chunks of BWD_TC_ROWS, BWD_TC_STAGES chunks of w, m, v and dy in shared memory
// at once (cp.async), rows of w, m, v padded by BWD_TC_PAD floats (dy's rows are swizzled instead). Dynamic
// shared memory: BWD_TC_SHARED_FLOATS floats.
#define BWD_TC_COLS 128
#define BWD_TC_ROWS 32
#define BWD_TC_THREADS 256
#define BWD_TC_STAGES 2
#define BWD_TC_PAD 8
#define BWD_TC_TILE_FLOATS (BWD_TC_ROWS * (BWD_TC_COLS + BWD_TC_PAD))  // one chunk of w, m or v; g
#define BWD_TC_DY_FLOATS (BWD_ADAM_MAX_BATCH * BWD_TC_ROWS)           // one chunk of dy, [batch][row]
#define BWD_TC_STAGE_FLOATS (3 * BWD_TC_TILE_FLOATS + BWD_TC_DY_FLOATS)
#define BWD_TC_SHARED_FLOATS (BWD_TC_STAGES * BWD_TC_STAGE_FLOATS + BWD_TC_TILE_FLOATS)

// conv_wgrad (conv.cu): 256 threads, WGRAD_TILE × WGRAD_TILE outputs of [c_out, c_in·k·k] per block.
#define WGRAD_TILE 64
#define WGRAD_THREADS 256

// The tensor-core (TF32) convs (conv.cu, conv_*_tf32): implicit GEMMs in which a block of CONV_TC_THREADS
// threads (4 warps side by side along the columns) computes a CONV_TC_BM × CONV_TC_BN tile, the reduction in
// steps of CONV_TC_BK through double-buffered shared memory. Forward and dgrad: rows are channels, columns
// pixels (of all images); wgrad: rows are output channels, columns (c_in, ky, kx), the reduction over pixels.
#define CONV_TC_BM 32
#define CONV_TC_BN 128
#define CONV_TC_BK 16
#define CONV_TC_THREADS 128

// reduce_conv_fwd (conv.cu): output channels per block.
#define REDUCE_CO_GROUP 64
// reduce_conv_fwd_tf32 keeps each plane of its reduced map (rows · w floats) REDUCE_TC_PLANE(rows · w) floats
// apart: the next count ≡ 8 mod 32, so that a half-warp's float2 stores of C fragments (channels g, pixels 2t)
// hit 32 banks. src/launch.rs (ReduceDims::tc_plane) computes the same.
#define REDUCE_TC_PLANE(px) ((px) + (40u - (px) % 32u) % 32u)

/// A stride-1 'same' convolution into channels [c_offset, c_offset + c_out) of a c_total-channel output.
struct ConvDims {
  unsigned int n, c_in, c_out, h, w, k, c_total, c_offset;
};

/// The fused reduce conv: 1×1 (c_in → c_mid) → ReLU → k×k (c_mid → c_out), into a channel slice.
struct ReduceDims {
  unsigned int n, c_in, c_mid, c_out, h, w, k, c_total, c_offset;
  unsigned int tile_h;  // output rows per block of reduce_conv_fwd (fewer than 4 when wide rows do not fit)
};

/// C[i, j] = Σ_k A(i, k) · B(k, j) with strides, split-K slices.
struct GemmDims {
  unsigned long long a_rs, a_ks;  // A(i, k) = a[i * a_rs + k * a_ks]
  unsigned long long b_ks, b_cs;  // B(k, j) = b[k * b_ks + j * b_cs]
  unsigned long long c_rs;        // C(i, j) = c[i * c_rs + j]
  unsigned long long c_slice;     // split-K: slice z writes c + z * c_slice
  unsigned int m, n, k;           // C is m × n; the reduction runs over k
  unsigned int k_chunk;           // split-K: slice z covers k in [z * k_chunk, (z + 1) * k_chunk); a multiple
                                  // of GEMM_BK when there are several slices (float4 reads along k)
};

/// Adam's per-launch scalars, computed on the host in f64 and rounded (AdamStep::scalars in src/shape.rs).
struct AdamScalars {
  float one_minus_b1, b2, one_minus_b2;  // 1 - β1, β2, 1 - β2
  float step_size, bc2_sqrt, eps;        // lr / (1 - β1ᵗ), √(1 - β2ᵗ), eps
};
