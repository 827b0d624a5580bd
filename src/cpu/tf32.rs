//! TF32 on the CPU: the rounding the tensor-core kernels apply to their products' operands
//! (`cvt.rna.tf32.f32`, in `kernels/mma.cuh`) and the twin of the `mma_tf32_tile` probe.

use crate::shape::check_len;
use crate::Result;

/// `x` rounded to TF32 (10 explicit mantissa bits) as `cvt.rna.tf32.f32` rounds: to nearest, ties away from
/// zero, by adding half a TF32 ulp to the magnitude and dropping the low 13 bits. NaN and ±inf pass through
/// (a NaN stays a NaN); a value that rounds past the largest finite f32 becomes ±inf.
pub fn tf32_round(x: f32) -> f32 {
    let bits = x.to_bits();
    if x.is_nan() {
        return x;
    }
    if x.is_infinite() {
        return x;
    }
    f32::from_bits(bits.wrapping_add(0x1000) & !0x1fff)
}

/// A copy of `v` rounded to TF32 ([`tf32_round`]): the operands of a TF32 product.
pub(crate) fn rounded(v: &[f32]) -> Vec<f32> {
    use rayon::prelude::*;
    v.par_iter().map(|&x| tf32_round(x)).collect()
}

/// Twin of `mma_tf32_tile`: `d = a · b + c` for one 16 × 8 × 8 tile, operands rounded to TF32 (products exact
/// in f32), each output's products added onto `c` in k order. Shapes: `d, c: [16, 8]`, `a: [16, 8]`,
/// `b: [8, 8]` (k, n), all row-major.
pub fn mma_tf32_tile(d: &mut [f32], a: &[f32], b: &[f32], c: &[f32]) -> Result<()> {
    const OP: &str = "mma_tf32_tile";
    check_len(OP, "d", 128, d.len())?;
    check_len(OP, "a", 128, a.len())?;
    check_len(OP, "b", 64, b.len())?;
    check_len(OP, "c", 128, c.len())?;
    for i in 0..16 {
        for j in 0..8 {
            let mut acc = c[i * 8 + j];
            for k in 0..8 {
                acc += tf32_round(a[i * 8 + k]) * tf32_round(b[k * 8 + j]);
            }
            d[i * 8 + j] = acc;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::tf32_round;

    #[test]
    fn tf32_rounds_to_nearest_with_ties_away_from_zero() {
        let ulp = 2f32.powi(-10); // TF32's ulp at 1.0
        assert_eq!(tf32_round(1.0), 1.0);
        assert_eq!(tf32_round(1.0 + ulp), 1.0 + ulp);
        // below half an ulp: down; exactly half: away from zero; above: up
        assert_eq!(tf32_round(1.0 + ulp * 0.25), 1.0);
        assert_eq!(tf32_round(1.0 + ulp * 0.5), 1.0 + ulp);
        assert_eq!(tf32_round(-(1.0 + ulp * 0.5)), -(1.0 + ulp));
        assert_eq!(tf32_round(1.0 + ulp * 0.75), 1.0 + ulp);
        assert_eq!(tf32_round(f32::MAX), f32::INFINITY);
        assert_eq!(tf32_round(f32::NEG_INFINITY), f32::NEG_INFINITY);
        assert!(tf32_round(f32::NAN).is_nan());
        assert_eq!(tf32_round(0.0).to_bits(), 0);
        assert_eq!(tf32_round(-0.0).to_bits(), (-0.0f32).to_bits());
        // subnormals round on the same bit grid
        let tiny = f32::from_bits(0x0000_1000);
        assert_eq!(tf32_round(tiny).to_bits(), 0x0000_2000);
    }
}
