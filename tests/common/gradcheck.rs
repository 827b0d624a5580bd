//! Finite-difference gradient checks of the CPU twins (DESIGN.md, oracle 1).
//!
//! The twins are f32, so the checks run in f32 with central differences of step `h` and a loss
//! `L = Σ out · R` accumulated in f64 with a random `R` (a permuted gradient cannot pass). For ops that are
//! linear in the checked input, the difference quotient is exact up to the f32 rounding of the outputs
//! (≈ 1e-7·|L| / h), far inside the stated tolerances. Where the op has a kink (ReLU, pool winner), the
//! loss function also returns the kink pattern (ReLU masks, winners) and coordinates whose perturbation
//! changes it are skipped; at most a tenth may be.

/// `loss(x)` returns `(L, kink pattern)`.
pub fn gradcheck<F>(what: &str, x: &[f32], analytic: &[f32], h: f32, atol: f64, rtol: f64, loss: F)
where
    F: Fn(&[f32]) -> (f64, Vec<u8>),
{
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let (_, base) = loss(x);
    let (mut skipped, mut bad, mut worst) = (0usize, Vec::new(), 0.0f64);
    for i in 0..x.len() {
        let (mut plus, mut minus) = (x.to_vec(), x.to_vec());
        plus[i] += h;
        minus[i] -= h;
        let ((lp, kp), (lm, km)) = (loss(&plus), loss(&minus));
        if kp != base || km != base {
            skipped += 1;
            continue;
        }
        let fd = (lp - lm) / (2.0 * h as f64);
        let err = (fd - analytic[i] as f64).abs();
        worst = worst.max(err);
        if err > atol + rtol * fd.abs() || err.is_nan() {
            bad.push(format!("[{i}] analytic {:e} fd {fd:e}", analytic[i]));
        }
    }
    assert!(
        skipped * 10 <= x.len(),
        "{what}: {skipped} of {} coordinates cross a kink: pick inputs further from kinks",
        x.len()
    );
    assert!(
        bad.is_empty(),
        "{what}: {} of {} coordinates off (atol {atol:e}, rtol {rtol:e}, max err {worst:e}): {}",
        bad.len(),
        x.len(),
        bad.iter().take(6).cloned().collect::<Vec<_>>().join(", ")
    );
}

/// `Σ out[i] · r[i]` in f64.
pub fn dot(out: &[f32], r: &[f32]) -> f64 {
    assert_eq!(out.len(), r.len());
    out.iter().zip(r).map(|(&a, &b)| a as f64 * b as f64).sum()
}

/// The ReLU pattern of a buffer: 1 where positive.
pub fn mask(v: &[f32]) -> Vec<u8> {
    v.iter().map(|&v| u8::from(v > 0.0)).collect()
}
