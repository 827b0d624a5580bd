// mma.cuh: the tensor-core helpers the kernels share (TF32 path), in one place so that the emulator can stand
// in for each (kernels/emu/cuda_emu.h): on the GPU they are the PTX instructions, under emulation a warp
// collective with the PTX ISA's fragment layout, the same TF32 rounding, and checked copies.
//
// Fragments of mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (PTX ISA, "Matrix Fragments for
// mma.m16n8k8"), g = lane / 4, t = lane % 4:
//   A (16 × 8, row-major): a0 = A[g][t], a1 = A[g + 8][t], a2 = A[g][t + 4], a3 = A[g + 8][t + 4]
//   B (8 × 8, k × n):      b0 = B[t][g], b1 = B[t + 4][g]
//   C, D (16 × 8):         c0 = C[g][2t], c1 = C[g][2t + 1], c2 = C[g + 8][2t], c3 = C[g + 8][2t + 1]
// Rounding: the operands go through cvt.rna.tf32.f32 (round to nearest, ties away from zero; CPU twin:
// src/cpu/tf32.rs), never the hardware's truncation of raw f32 bits; products are exact in f32 and the
// accumulation is f32.
#pragma once

// The TF32 operand of x: cvt.rna.tf32.f32, as the .b32 register an mma takes. Only its upper 19 bits (sign,
// exponent, 10 mantissa bits) are defined: the PTX ISA leaves the tf32 register layout to the implementation,
// and ptxas drops the masking of the low 13 bits where the value only feeds an mma, which ignores them (sm_90:
// FSETP + IADD 0x1000, no LOP3). Never read it as a float: tf32_round is that.
__device__ __forceinline__ unsigned int tf32_bits(float x) {
#ifdef __CUDA_ARCH__
  unsigned int r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#elif defined(INCEPTION_CUDA_EMU)
  return ::emu::tf32_rna(x);
#else
  return 0u;  // nvcc's host pass: never run
#endif
}

// The low 13 bits of an f32, which a TF32 value has zero.
#define TF32_LOW_BITS 0x1fffu

// x rounded to TF32 (cvt.rna) as a float whose low 13 bits are zero: an operand rounded once where it is
// stored (and read back into an mma by __float_as_uint, no second cvt), not at each load. The mask is explicit
// (tf32_bits' low bits are undefined); ptxas merges it with its own where it masks anyway.
__device__ __forceinline__ float tf32_round(float x) { return __uint_as_float(tf32_bits(x) & ~TF32_LOW_BITS); }

// Stores (x, y) at row[col], row[col + 1] as one 8-byte shared-memory store (col even, row 8-byte aligned).
// Indexing the float2 array from the row's start keeps NVVM from splitting the store in two 4-byte ones, as
// it did for some `*reinterpret_cast<float2*>(&row[col])` (the emulator counts a float2 as one access).
__device__ __forceinline__ void st_pair(float* row, unsigned int col, float x, float y) {
  reinterpret_cast<float2*>(row)[col / 2] = make_float2(x, y);
}

// Stores e[0..4) at base[at .. at + 4) as one 16-byte shared-memory store, as a cp.async16 of the same piece
// would land (at a multiple of 4, base 16-byte aligned); indexed from base for the reason st_pair is.
__device__ __forceinline__ void st_quad(float* base, unsigned int at, const float (&e)[4]) {
  reinterpret_cast<float4*>(base)[at / 4] = make_float4(e[0], e[1], e[2], e[3]);
}

// Tiles of 16-float rows padded to 20 floats (A, or a B stored n-major) serve a warp's fragment loads from 32
// banks (lane (g, t) reads word 20g + t + const), but rows r and r + 1 share 4 banks, so a quarter-warp's 16-byte
// stores of two whole rows would conflict; rows r and r + 4 share none. piece20_row(q): the row of the q-th
// 16-byte piece when 8 consecutive pieces (a quarter-warp's) cover rows 8i + j and 8i + j + 4 (j < 4): every
// row of the tile once for q < 4 · rows (rows a multiple of 8); the piece's column is 4 · (q % 4).
__device__ __forceinline__ unsigned int piece20_row(unsigned int q) {
  const unsigned int j = q / 8;
  return j / 4 * 8 + j % 4 + q % 8 / 4 * 4;
}

// d = a · b + c for one 16 × 8 × 8 tile, the whole warp together (every lane must call it).
__device__ __forceinline__ void mma_tf32_m16n8k8(float d[4], const unsigned int a[4], const unsigned int b[2],
                                                 const float c[4]) {
#ifdef __CUDA_ARCH__
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#elif defined(INCEPTION_CUDA_EMU)
  ::emu::mma_tf32_m16n8k8(d, a, b, c);
#endif
}

// cp.async of 16 bytes from global to shared memory (both 16-byte aligned), completed by a wait
// (cp_async_wait_group, cp_async_wait_all); other threads see it after the __syncthreads that follows the wait.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
#ifdef __CUDA_ARCH__
  const unsigned int s = (unsigned int)__cvta_generic_to_shared(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(gmem) : "memory");
#elif defined(INCEPTION_CUDA_EMU)
  ::emu::cp_async(smem, gmem, 16);
#endif
}

// Closes the group of the cp.asyncs this thread issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.commit_group;" ::: "memory");
#elif defined(INCEPTION_CUDA_EMU)
  ::emu::cp_async_commit();
#endif
}

// Waits until at most N of this thread's committed groups (the newest) are still in flight.
template <int N>
__device__ __forceinline__ void cp_async_wait_group() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");  // "memory": no shared read moves above it
#elif defined(INCEPTION_CUDA_EMU)
  ::emu::cp_async_wait(N);
#endif
}

// Waits for every cp.async this thread issued (committed or not).
__device__ __forceinline__ void cp_async_wait_all() {
#ifdef __CUDA_ARCH__
  asm volatile("cp.async.wait_all;" ::: "memory");
#elif defined(INCEPTION_CUDA_EMU)
  ::emu::cp_async_commit();
  ::emu::cp_async_wait(0);
#endif
}
