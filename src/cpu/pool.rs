//! CPU twin of `maxpool3x3s1`: 3×3 max pooling, stride 1, 'same' padding in which padded cells never win.
//!
//! Ties go to the FIRST maximal cell of the window in row-major order (PyTorch's rule); a NaN wins over
//! every number and a later NaN
//! wins over an earlier one (PyTorch's `val > max || isnan(val)`). Backward is a gather: each input cell sums the
//! gradients of the outputs whose winner it is, in row-major output order, with no atomics.

use rayon::prelude::*;

use crate::shape::{check_len, PoolShape};
use crate::Result;

/// Row-major index `(wy, wx)` within image plane of the winner of the window centred at `(y, x)`.
fn winner(plane: &[f32], h: usize, w: usize, y: usize, x: usize) -> usize {
    let mut best = usize::MAX;
    let mut max = 0.0f32;
    for wy in y.saturating_sub(1)..(y + 2).min(h) {
        for wx in x.saturating_sub(1)..(x + 2).min(w) {
            let v = plane[wy * w + wx];
            if best == usize::MAX || v > max || v.is_nan() {
                best = wy * w + wx;
                max = v;
            }
        }
    }
    best
}

/// `y = maxpool3x3s1(x)`. Shapes: `y, x: [n, c, h, w]`.
pub fn maxpool3x3s1_fwd(y: &mut [f32], x: &[f32], s: &PoolShape) -> Result<()> {
    const OP: &str = "maxpool3x3s1_fwd";
    let len = s.len(OP)?;
    check_len(OP, "y", len, y.len())?;
    check_len(OP, "x", len, x.len())?;
    let hw = s.h * s.w;
    if hw == 0 {
        return Ok(());
    }
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .for_each(|(y, x)| {
            for yy in 0..s.h {
                for xx in 0..s.w {
                    y[yy * s.w + xx] = x[winner(x, s.h, s.w, yy, xx)];
                }
            }
        });
    Ok(())
}

/// `dx (+)= maxpool3x3s1ᵀ(dy)`, with winners recomputed from `x`. Shapes: `dx, dy, x: [n, c, h, w]`. With
/// `accumulate` the result is added to `dx`, else it overwrites `dx`.
pub fn maxpool3x3s1_bwd(
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    s: &PoolShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "maxpool3x3s1_bwd";
    let len = s.len(OP)?;
    check_len(OP, "dx", len, dx.len())?;
    check_len(OP, "dy", len, dy.len())?;
    check_len(OP, "x", len, x.len())?;
    let (h, w, hw) = (s.h, s.w, s.h * s.w);
    if hw == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(hw).zip(x.par_chunks(hw)))
        .for_each(|(dx, (dy, x))| {
            for iy in 0..h {
                for ix in 0..w {
                    let me = iy * w + ix;
                    let mut g = 0.0f32;
                    // Outputs whose window holds (iy, ix), in row-major order.
                    for oy in iy.saturating_sub(1)..(iy + 2).min(h) {
                        for ox in ix.saturating_sub(1)..(ix + 2).min(w) {
                            if winner(x, h, w, oy, ox) == me {
                                g += dy[oy * w + ox];
                            }
                        }
                    }
                    dx[me] = if accumulate { dx[me] + g } else { g };
                }
            }
        });
    Ok(())
}
