//! CPU twin of `adam_step`: one Adam update over flat parameter, gradient and moment buffers (PyTorch's
//! formulation: `m ← m + (1-β1)(g - m)`, `v ← β2·v + ((1-β2)·g)·g`, `p ← p - lr/(1-β1ᵗ) · m / (√v/√(1-β2ᵗ) + eps)`).

use rayon::prelude::*;

use super::CHUNK;
use crate::backend::check_same_len;
use crate::shape::AdamSource;
use crate::Result;

/// Updates `p`, `m` and `v` in place from `g` with the scalars of `step` (an `&AdamStep`, or an Adam table's
/// row). Shapes: `p, m, v, g: [n]`.
pub fn adam_step<'s>(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    step: impl Into<AdamSource<'s>>,
) -> Result<()> {
    const OP: &str = "adam_step";
    check_same_len(
        OP,
        p.len(),
        &[("m", m.len()), ("v", v.len()), ("g", g.len())],
    )?;
    let s = step.into().scalars(OP)?;
    p.par_chunks_mut(CHUNK)
        .zip(m.par_chunks_mut(CHUNK))
        .zip(v.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)))
        .for_each(|((p, m), (v, g))| adam_slices(p, m, v, g, &s));
    Ok(())
}

/// [`adam_update`] over equal-length slices, compiled for the widest vector instructions the CPU has (pulp's
/// runtime dispatch: AVX2 where present, SSE2 otherwise). The update has no fused operations and IEEE division
/// and square root are correctly rounded at every width, so every path gives the same bits.
pub(crate) fn adam_slices(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: &[f32; 6]) {
    pulp::Arch::new().dispatch(|| {
        for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
            adam_update(p, m, v, g, s);
        }
    });
}

/// [`adam_step`] with the scalars of row `counter[0]` of Adam table `table [rows, 6]`
/// ([`crate::shape::AdamStep::table`]; `counter [1]` holds the steps taken): the twin of the kernel reading them on the
/// device. A counter past the table is an error. Shapes: `p, m, v, g: [n]`.
pub fn adam_step_at(
    p: &mut [f32],
    m: &mut [f32],
    v: &mut [f32],
    g: &[f32],
    table: &[f32],
    counter: &[u32],
) -> Result<()> {
    adam_step(p, m, v, g, AdamSource::row_at("adam_step", table, counter)?)
}

/// One element's update with the scalars of [`crate::shape::AdamStep::scalars`] (`[1 - β1, β2, 1 - β2, step size,
/// √(1 - β2ᵗ), eps]`): the arithmetic of `kernels/adam.cuh`, operation for operation.
#[inline(always)] // inlined into adam_slices' vectorised loop
pub(crate) fn adam_update(p: &mut f32, m: &mut f32, v: &mut f32, g: f32, s: &[f32; 6]) {
    let [one_minus_b1, b2, one_minus_b2, step_size, bc2_sqrt, eps] = *s;
    *m += one_minus_b1 * (g - *m);
    *v = *v * b2 + (one_minus_b2 * g) * g;
    let denom = v.sqrt() / bc2_sqrt + eps;
    *p -= step_size * (*m / denom);
}
