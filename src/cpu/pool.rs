//! CPU twin of `maxpool3x3s1`: 3×3 max pooling, stride 1, 'same' padding in which padded cells never win.
//!
//! Ties go to the FIRST maximal cell of the window in row-major order (PyTorch's rule); a NaN wins over
//! every number and a later NaN
//! wins over an earlier one (PyTorch's `val > max || isnan(val)`). Backward is a gather: each input cell sums the
//! gradients of the outputs whose winner it is, in row-major output order, with no atomics.

use rayon::prelude::*;

use crate::shape::{check_len, PoolShape};
use crate::Result;

/// Scratch of [`winners`], each `[h·w]` for one plane: the winner of each cell's row of three (value, plane
/// index), then of its window.
#[derive(Default)]
struct Winners {
    row_val: Vec<f32>,
    row_idx: Vec<u32>,
    val: Vec<f32>,
    idx: Vec<u32>,
}

/// `cand` replaces the best so far: it is greater, or NaN (so a later NaN replaces an earlier one).
#[inline(always)]
fn better(cand: f32, best: f32) -> bool {
    cand > best || cand.is_nan()
}

/// One step of the running winner: `(v, i)` replaces `(bv, bi)` if [`better`]. Branch-free (selects), so
/// the loops below vectorise.
#[inline(always)]
fn pick((bv, bi): (f32, u32), (v, i): (f32, u32)) -> (f32, u32) {
    let take = better(v, bv);
    (if take { v } else { bv }, if take { i } else { bi })
}

/// For every output cell of one `h × w` plane (`h, w ≥ 1`), its window's winner: the first maximal cell in
/// row-major order (a NaN wins, the last NaN over an earlier one), its value and its plane index, left in
/// `s.val` and `s.idx`.
///
/// Separable: the winner of each cell's row of three, then the winner among the three rows' winners in row
/// order. "A later cell replaces the best so far iff it is greater or NaN" picks the maximum of one total
/// order (NaNs above numbers, later NaNs above earlier ones; numbers by value, earlier first on ties), so the
/// winner of the rows' winners is the winner of the window. Each pass runs over whole rows of shifted slices
/// with selects, compiled for the widest vectors the CPU has (pulp's runtime dispatch; same bits at every
/// width: only comparisons and copies).
fn winners(s: &mut Winners, plane: &[f32], h: usize, w: usize) {
    let hw = h * w;
    for v in [&mut s.row_val, &mut s.val] {
        v.clear();
        v.resize(hw, 0.0);
    }
    for v in [&mut s.row_idx, &mut s.idx] {
        v.clear();
        v.resize(hw, 0);
    }
    pulp::Arch::new().dispatch(|| {
        for (y, ((src, rv), ri)) in plane
            .chunks(w)
            .zip(s.row_val.chunks_mut(w))
            .zip(s.row_idx.chunks_mut(w))
            .enumerate()
        {
            let base = (y * w) as u32;
            // Edges: the window's row is clipped to the plane.
            let last = w - 1;
            let mut first = (src[0], base);
            if w > 1 {
                first = pick(first, (src[1], base + 1));
            }
            (rv[0], ri[0]) = first;
            if w > 1 {
                (rv[last], ri[last]) = pick(
                    (src[last - 1], base + last as u32 - 1),
                    (src[last], base + last as u32),
                );
            }
            if w > 2 {
                let inner = src[..w - 2]
                    .iter()
                    .zip(&src[1..w - 1])
                    .zip(&src[2..])
                    .zip(rv[1..last].iter_mut().zip(&mut ri[1..last]));
                for (x, (((&l, &c), &r), (ov, oi))) in inner.enumerate() {
                    let i = base + x as u32;
                    (*ov, *oi) = pick(pick((l, i), (c, i + 1)), (r, i + 2));
                }
            }
        }
        for y in 0..h {
            let (y0, y1) = (y.saturating_sub(1), (y + 2).min(h));
            let out = y * w..(y + 1) * w;
            s.val[out.clone()].copy_from_slice(&s.row_val[y0 * w..(y0 + 1) * w]);
            s.idx[out.clone()].copy_from_slice(&s.row_idx[y0 * w..(y0 + 1) * w]);
            for wy in y0 + 1..y1 {
                let cand = wy * w..(wy + 1) * w;
                let best = s.val[out.clone()].iter_mut().zip(&mut s.idx[out.clone()]);
                for ((bv, bi), (&v, &i)) in
                    best.zip(s.row_val[cand.clone()].iter().zip(&s.row_idx[cand]))
                {
                    (*bv, *bi) = pick((*bv, *bi), (v, i));
                }
            }
        }
    });
}

/// `y = maxpool3x3s1(x)`. Shapes: `y, x: [n, c, h, w]`.
pub fn maxpool3x3s1_fwd(y: &mut [f32], x: &[f32], s: &PoolShape) -> Result<()> {
    const OP: &str = "maxpool3x3s1_fwd";
    let len = s.len(OP)?;
    check_len(OP, "y", len, y.len())?;
    check_len(OP, "x", len, x.len())?;
    let hw = s.plane(OP)?; // winners indexes a plane with u32
    if hw == 0 {
        return Ok(());
    }
    y.par_chunks_mut(hw)
        .zip(x.par_chunks(hw))
        .for_each_init(Winners::default, |win, (y, x)| {
            winners(win, x, s.h, s.w);
            y.copy_from_slice(&win.val);
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
    let hw = s.plane(OP)?; // winners indexes a plane with u32
    if hw == 0 {
        return Ok(());
    }
    dx.par_chunks_mut(hw)
        .zip(dy.par_chunks(hw).zip(x.par_chunks(hw)))
        .for_each_init(
            || (Winners::default(), Vec::new()),
            |(win, g), (dx, (dy, x))| {
                winners(win, x, s.h, s.w);
                // Scattering in row-major output order adds each cell's terms in the gather's order.
                g.clear();
                g.resize(hw, 0.0f32);
                for (&i, &d) in win.idx.iter().zip(dy) {
                    g[i as usize] += d;
                }
                for (dx, &g) in dx.iter_mut().zip(g.iter()) {
                    *dx = if accumulate { *dx + g } else { g };
                }
            },
        );
    Ok(())
}
