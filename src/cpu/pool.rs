//! CPU twin of `maxpool3x3s1`: 3×3 max pooling, stride 1, 'same' padding in which padded cells never win.
//!
//! Ties go to the FIRST maximal cell of the window in row-major order (PyTorch's rule); a NaN wins over
//! every number and a later NaN
//! wins over an earlier one (PyTorch's `val > max || isnan(val)`). Backward is a gather: each input cell sums the
//! gradients of the outputs whose winner it is, in row-major output order, with no atomics.

use rayon::prelude::*;

use crate::shape::{check_len, PoolShape};
use crate::Result;

/// For every output cell of one `h × w` plane, the plane index of its window's winner (first maximal cell in
/// row-major order; a NaN wins, the last NaN over an earlier one), in the second half of `win` (the first is
/// scratch).
///
/// Separable: the winner of each cell's row of three, then the winner among the three rows' winners. The rule
/// "a later cell replaces the best so far iff it is greater or NaN" picks the maximum of one total order (NaNs
/// above numbers, later NaNs above earlier ones; numbers by value, earlier first on ties), so the winner of
/// the winners of the rows is the winner of the window.
fn winners<'a>(win: &'a mut Vec<u32>, plane: &[f32], h: usize, w: usize) -> &'a [u32] {
    let hw = h * w;
    win.clear();
    win.resize(2 * hw, 0);
    let (rows, out) = win.split_at_mut(hw);
    let better = |cand: usize, best: usize| plane[cand] > plane[best] || plane[cand].is_nan();
    for y in 0..h {
        for x in 0..w {
            let (x0, x1) = (x.saturating_sub(1), (x + 2).min(w));
            let mut best = y * w + x0;
            for c in y * w + x0 + 1..y * w + x1 {
                if better(c, best) {
                    best = c;
                }
            }
            rows[y * w + x] = best as u32;
        }
    }
    for y in 0..h {
        let (y0, y1) = (y.saturating_sub(1), (y + 2).min(h));
        for x in 0..w {
            let mut best = rows[y0 * w + x] as usize;
            for wy in y0 + 1..y1 {
                let cand = rows[wy * w + x] as usize;
                if better(cand, best) {
                    best = cand;
                }
            }
            out[y * w + x] = best as u32;
        }
    }
    &win[hw..]
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
        .for_each_init(Vec::new, |win, (y, x)| {
            let win = winners(win, x, s.h, s.w);
            for (y, &i) in y.iter_mut().zip(win.iter()) {
                *y = x[i as usize];
            }
        });
    Ok(())
}

/// `dx (+)= maxpool3x3s1ᵀ(dy)`, with winners recomputed from `x`. Shapes: `dx, dy, x: [n, c, h, w]`. With
/// `accumulate` the result is added to `dx`, else it overwrites `dx`.
///
/// Each input cell's gradient is the sum, in row-major order of the outputs, of the `dy` of the outputs it
/// wins (what a gather kernel computes), then added to `dx` once.
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
    let hw = s.h * s.w;
    if hw == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(hw).zip(x.par_chunks(hw)))
        .for_each_init(
            || (Vec::new(), Vec::new()),
            |(win, g), (dx, (dy, x))| {
                let win = winners(win, x, s.h, s.w);
                // Scattering in row-major output order adds each cell's terms in the gather's order.
                g.clear();
                g.resize(hw, 0.0f32);
                for (&i, &d) in win.iter().zip(dy) {
                    g[i as usize] += d;
                }
                for (dx, &g) in dx.iter_mut().zip(g.iter()) {
                    *dx = if accumulate { *dx + g } else { g };
                }
            },
        );
    Ok(())
}
