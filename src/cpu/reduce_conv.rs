//! CPU twin of the fused reduce conv: `1×1 (c_in → c_mid) + b1 → ReLU → k×k (c_mid → c_out) + b2 → ReLU`,
//! written into a channel slice of the module output. Forward saves the reduced map `mid` (post-ReLU) for
//! backward.
//!
//! Written independently of [`super::conv`] (the composition test compares the two): the k×k part is an
//! implicit GEMM over a zero-padded copy of `mid`. With the padded width `wp = w + k - 1`, output pixel
//! `j = y·wp + x` of tap `(ky, kx)` reads padded pixel `j + ky·wp + kx`: a constant shift, so each tap is one
//! matrix product `W2[:, :, ky, kx] · midpad[:, shift..]` over `h·wp` columns, of which the `k - 1` extra
//! columns per row are discarded. Backward runs the same trick on a zero-padded copy of the gradient.
//!
//! In [`Precision::Tf32`] every product's operands are rounded to TF32 ([`tf32_round`]) where the
//! tensor-core kernels round them, and everything else stays f32. Forward: `x` and `w1` for the 1×1; the
//! reduced map (computed and ReLU'd in f32, saved unrounded in `mid`) is rounded where it feeds the k×k conv,
//! with `w2`. Backward: `dy` and `w2` for `dmid`; `dy` and the saved `mid` for `dw2`; the masked `dpre`
//! (computed in f32) with `x` for `dw1` and with `w1` for `dx`. The biases' gradients sum the unrounded `dy`
//! and `dpre`, and the ReLU mask reads the unrounded `mid`.

use super::matmul::{matmul, Mat, MatMut, Threads};
use super::sum_in_order;
use super::tf32::{rounded, tf32_round};
use crate::backend::reduce_conv_param_ranges;
use crate::shape::{check_len, Precision, ReduceConvShape};
use crate::Result;

use rayon::prelude::*;

/// Padded geometry of one image.
struct Pad {
    k: usize,
    h: usize,
    w: usize,
    /// Padded width and height: `w + k - 1`, `h + k - 1`.
    wp: usize,
    hp: usize,
}

impl Pad {
    fn new(s: &ReduceConvShape) -> Self {
        Pad {
            k: s.k,
            h: s.h,
            w: s.w,
            wp: s.w + s.k - 1,
            hp: s.h + s.k - 1,
        }
    }

    /// Floats per padded plane, with `k - 1` spare zeros so the last tap's garbage columns stay in bounds.
    fn plane(&self) -> usize {
        self.hp * self.wp + self.k - 1
    }

    /// Copies `src [c, h, w]` into the interior of zeroed padded planes `dst [c, plane]`, rounded to TF32
    /// when `tf32` (the copy is a product's operand).
    fn pad(&self, dst: &mut Vec<f32>, src: &[f32], tf32: bool) {
        let (p, plane) = (self.k / 2, self.plane());
        dst.clear();
        dst.resize(src.len() / (self.h * self.w) * plane, 0.0);
        for (d, s) in dst.chunks_mut(plane).zip(src.chunks(self.h * self.w)) {
            for (y, row) in s.chunks(self.w).enumerate() {
                let at = (y + p) * self.wp + p;
                d[at..at + self.w].copy_from_slice(row);
            }
        }
        if tf32 {
            dst.iter_mut().for_each(|v| *v = tf32_round(*v));
        }
    }

    /// The strided view `[c, h·wp]` of padded planes starting at `shift` pixels into each plane.
    fn shifted<'a>(&self, padded: &'a [f32], c: usize, shift: usize) -> Mat<'a> {
        Mat {
            data: &padded[shift..],
            rows: c,
            cols: self.h * self.wp,
            rs: self.plane(),
            cs: 1,
        }
    }

    /// Shift of tap `(ky, kx)` in padded pixels.
    fn tap(&self, ky: usize, kx: usize) -> usize {
        ky * self.wp + kx
    }
}

fn check(op: &'static str, s: &ReduceConvShape, x: &[f32], w1: &[f32], w2: &[f32]) -> Result<()> {
    s.validate(op)?;
    check_len(op, "x", s.reduce().x_len(op)?, x.len())?;
    check_len(op, "w1", s.reduce().w_len(op)?, w1.len())?;
    check_len(op, "w2", s.conv().w_len(op)?, w2.len())
}

/// Forward of the fused branch (in TF32: see the module docs). Shapes: `y [n, c_total, h, w]` (channels `c_offset..c_offset + c_out`
/// written), `mid [n, c_mid, h, w]` (saved reduced map, post-ReLU), `x [n, c_in, h, w]`, `params` the block
/// `[w1 [c_mid, c_in] | b1 [c_mid] | w2 [c_out, c_mid, k, k] | b2 [c_out]]`
/// ([`crate::backend::reduce_conv_param_ranges`]).
pub fn reduce_conv_fwd(
    y: &mut [f32],
    mid: &mut [f32],
    x: &[f32],
    params: &[f32],
    s: &ReduceConvShape,
) -> Result<()> {
    let [w1, b1, w2, b2] = split_params("reduce_conv_fwd", params, s)?;
    if s.precision == Precision::Tf32 {
        return fwd(y, mid, &rounded(x), &rounded(w1), b1, &rounded(w2), b2, s);
    }
    fwd(y, mid, x, w1, b1, w2, b2, s)
}

/// The forward on operands already rounded as `s.precision` asks (`x`, `w1`, `w2`); the reduced map is rounded
/// here, as it is computed.
#[allow(clippy::too_many_arguments)]
fn fwd(
    y: &mut [f32],
    mid: &mut [f32],
    x: &[f32],
    w1: &[f32],
    b1: &[f32],
    w2: &[f32],
    b2: &[f32],
    s: &ReduceConvShape,
) -> Result<()> {
    const OP: &str = "reduce_conv_fwd";
    check(OP, s, x, w1, w2)?;
    check_len(OP, "y", s.conv().y_len(OP)?, y.len())?;
    check_len(OP, "mid", s.mid_len(OP)?, mid.len())?;
    check_len(OP, "b1", s.c_mid, b1.len())?;
    check_len(OP, "b2", s.c_out, b2.len())?;
    let (hw, pad) = (s.h * s.w, Pad::new(s));
    y.par_chunks_mut(s.c_total * hw)
        .zip(mid.par_chunks_mut(s.c_mid * hw))
        .zip(x.par_chunks(s.c_in * hw))
        .try_for_each_init(
            || (Vec::new(), Vec::new()),
            |(midpad, acc), ((y_n, mid_n), x_n)| {
                // Reduce: mid = relu(w1 · x + b1).
                matmul(
                    OP,
                    MatMut::rows(mid_n, s.c_mid, hw),
                    Mat::rows(w1, s.c_mid, s.c_in),
                    Mat::rows(x_n, s.c_in, hw),
                    false,
                    Threads::Serial,
                )?;
                for (row, &b) in mid_n.chunks_mut(hw).zip(b1) {
                    for v in row {
                        let pre = *v + b;
                        *v = if pre > 0.0 || pre.is_nan() { pre } else { 0.0 };
                    }
                }
                // k×k conv as k² shifted products into acc [c_out, h·wp].
                pad.pad(midpad, mid_n, s.precision == Precision::Tf32);
                acc.clear();
                acc.resize(s.c_out * s.h * pad.wp, 0.0);
                for ky in 0..s.k {
                    for kx in 0..s.k {
                        let w_tap = Mat {
                            data: &w2[ky * s.k + kx..],
                            rows: s.c_out,
                            cols: s.c_mid,
                            rs: s.c_mid * s.k * s.k,
                            cs: s.k * s.k,
                        };
                        let first = ky == 0 && kx == 0;
                        let dst = MatMut::rows(acc, s.c_out, s.h * pad.wp);
                        matmul(
                            OP,
                            dst,
                            w_tap,
                            pad.shifted(midpad, s.c_mid, pad.tap(ky, kx)),
                            !first,
                            Threads::Serial,
                        )?;
                    }
                }
                // Epilogue: + b2, the module's ReLU, written into the channel slice.
                let out = &mut y_n[s.c_offset * hw..(s.c_offset + s.c_out) * hw];
                for ((o, a), &b) in out.chunks_mut(hw).zip(acc.chunks(s.h * pad.wp)).zip(b2) {
                    for (o_row, a_row) in o.chunks_mut(s.w).zip(a.chunks(pad.wp)) {
                        for (o, &a) in o_row.iter_mut().zip(a_row) {
                            let pre = a + b;
                            *o = if pre > 0.0 || pre.is_nan() { pre } else { 0.0 };
                        }
                    }
                }
                Ok(())
            },
        )
}

/// Gradients of the fused branch, all in one pass. `dy [n, c_total, h, w]` is the gradient of the branch
/// output before the module's ReLU (its slice is read in place), or with `y` (the branch's output, after
/// that ReLU) the gradient of `y`, counted only where `y > 0`; `mid` is the forward's saved reduced map;
/// `params` is the block `[w1 | b1 | w2 | b2]` of [`reduce_conv_fwd`]. Writes `dparams` (the same layout:
/// `[dw1 | db1 | dw2 | db2]`); adds the input gradient to `dx [n, c_in, h, w]` when `accumulate`, else
/// overwrites it. `scratch [n, c_mid, h, w]` is the kernels' working memory: the twin needs none and only
/// checks its length, so that both reject the same calls.
#[allow(clippy::too_many_arguments)] // outputs, inputs, shape: the kernel's argument list
pub fn reduce_conv_bwd(
    dx: &mut [f32],
    dparams: &mut [f32],
    scratch: &mut [f32],
    dy: &[f32],
    y: Option<&[f32]>,
    x: &[f32],
    mid: &[f32],
    params: &[f32],
    s: &ReduceConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "reduce_conv_bwd";
    let [w1, _, w2, _] = split_params(OP, params, s)?;
    let dy = &*super::relu::through_relu(OP, dy, y)?;
    check_len(OP, "dparams", params.len(), dparams.len())?;
    check_len(OP, "scratch", s.mid_len(OP)?, scratch.len())?;
    let [r1, rb1, r2, _] = reduce_conv_param_ranges(s);
    let (dw1, rest) = dparams.split_at_mut(r1.end);
    let (db1, rest) = rest.split_at_mut(rb1.len());
    let (dw2, db2) = rest.split_at_mut(r2.len());
    if s.precision == Precision::Tf32 {
        let (x, w1, w2) = (rounded(x), rounded(w1), rounded(w2));
        return bwd(dx, dw1, db1, dw2, db2, dy, &x, mid, &w1, &w2, s, accumulate);
    }
    bwd(dx, dw1, db1, dw2, db2, dy, x, mid, w1, w2, s, accumulate)
}

/// `[w1, b1, w2, b2]` of a fused reduce conv's contiguous parameter block.
fn split_params<'a>(
    op: &'static str,
    params: &'a [f32],
    s: &ReduceConvShape,
) -> Result<[&'a [f32]; 4]> {
    s.validate(op)?;
    let ranges = reduce_conv_param_ranges(s);
    check_len(op, "params", ranges[3].end, params.len())?;
    Ok(ranges.map(|r| &params[r]))
}

/// The backward on `x`, `w1`, `w2` already rounded as `s.precision` asks; `dy`, `mid` and `dpre` are rounded
/// here where they are a product's operand.
#[allow(clippy::too_many_arguments)]
fn bwd(
    dx: &mut [f32],
    dw1: &mut [f32],
    db1: &mut [f32],
    dw2: &mut [f32],
    db2: &mut [f32],
    dy: &[f32],
    x: &[f32],
    mid: &[f32],
    w1: &[f32],
    w2: &[f32],
    s: &ReduceConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "reduce_conv_bwd";
    check(OP, s, x, w1, w2)?;
    check_len(OP, "dx", x.len(), dx.len())?;
    check_len(OP, "dw1", w1.len(), dw1.len())?;
    check_len(OP, "dw2", w2.len(), dw2.len())?;
    check_len(OP, "db1", s.c_mid, db1.len())?;
    check_len(OP, "db2", s.c_out, db2.len())?;
    check_len(OP, "dy", s.conv().y_len(OP)?, dy.len())?;
    check_len(OP, "mid", s.mid_len(OP)?, mid.len())?;
    let (hw, pad, kk) = (s.h * s.w, Pad::new(s), s.k * s.k);
    let (n_w1, n_w2) = (w1.len(), w2.len());
    let tf32 = s.precision == Precision::Tf32;
    // One per-image partial holds [dw1 | db1 | dw2 | db2]; partials are summed in image order.
    let partials = dx.par_chunks_mut(s.c_in * hw).enumerate().map(|(i, dx_n)| {
        let mut partial = vec![0.0f32; n_w1 + s.c_mid + n_w2 + s.c_out];
        let (p_w1, rest) = partial.split_at_mut(n_w1);
        let (p_b1, rest) = rest.split_at_mut(s.c_mid);
        let (p_w2, p_b2) = rest.split_at_mut(n_w2);
        let x_n = &x[i * s.c_in * hw..(i + 1) * s.c_in * hw];
        let mid_n = &mid[i * s.c_mid * hw..(i + 1) * s.c_mid * hw];
        let g_n =
            &dy[(i * s.c_total + s.c_offset) * hw..(i * s.c_total + s.c_offset + s.c_out) * hw];
        let (mut gpad, mut midpad) = (Vec::new(), Vec::new());
        pad.pad(&mut gpad, g_n, tf32);
        pad.pad(&mut midpad, mid_n, tf32);
        // The gradient in the padded-width layout [c_out, h·wp]: gpad seen from its interior origin; the
        // discarded columns read padding, which is zero.
        let g_wide = pad.shifted(&gpad, s.c_out, pad.tap(s.k / 2, s.k / 2));
        for (ky, kx) in (0..s.k).flat_map(|ky| (0..s.k).map(move |kx| (ky, kx))) {
            // dw2[:, :, ky, kx] = g_wide · midpad[:, tap..]ᵀ
            let dst = MatMut {
                data: &mut p_w2[ky * s.k + kx..],
                rows: s.c_out,
                cols: s.c_mid,
                rs: s.c_mid * kk,
                cs: kk,
            };
            matmul(
                OP,
                dst,
                g_wide,
                pad.shifted(&midpad, s.c_mid, pad.tap(ky, kx)).t(),
                false,
                Threads::Serial,
            )?;
        }
        for (b, row) in p_b2.iter_mut().zip(g_n.chunks(hw)) {
            *b = row.iter().sum();
        }
        // dmid (padded-width layout) = Σ_taps w2[:, :, ky, kx]ᵀ · gpad[:, flipped tap..]
        let mut dmid_wide = vec![0.0f32; s.c_mid * s.h * pad.wp];
        for (ky, kx) in (0..s.k).flat_map(|ky| (0..s.k).map(move |kx| (ky, kx))) {
            let w_tap_t = Mat {
                data: &w2[ky * s.k + kx..],
                rows: s.c_mid,
                cols: s.c_out,
                rs: kk,
                cs: s.c_mid * kk,
            };
            let first = ky == 0 && kx == 0;
            let src = pad.shifted(&gpad, s.c_out, pad.tap(s.k - 1 - ky, s.k - 1 - kx));
            matmul(
                OP,
                MatMut::rows(&mut dmid_wide, s.c_mid, s.h * pad.wp),
                w_tap_t,
                src,
                !first,
                Threads::Serial,
            )?;
        }
        // Through the reduce ReLU: dpre = dmid where mid > 0.
        let mut dpre = vec![0.0f32; s.c_mid * hw];
        for ((d, wide), m) in dpre
            .chunks_mut(s.w)
            .zip(dmid_wide.chunks(pad.wp))
            .zip(mid_n.chunks(s.w))
        {
            for ((d, &g), &m) in d.iter_mut().zip(wide).zip(m) {
                *d = if m > 0.0 { g } else { 0.0 };
            }
        }
        for (b, row) in p_b1.iter_mut().zip(dpre.chunks(hw)) {
            *b = row.iter().sum();
        }
        if tf32 {
            dpre.iter_mut().for_each(|v| *v = tf32_round(*v)); // the operand of dw1 and dx
        }
        matmul(
            OP,
            MatMut::rows(p_w1, s.c_mid, s.c_in),
            Mat::rows(&dpre, s.c_mid, hw),
            Mat::rows(x_n, s.c_in, hw).t(),
            false,
            Threads::Serial,
        )?;

        // dx (+)= w1ᵀ · dpre
        matmul(
            OP,
            MatMut::rows(dx_n, s.c_in, hw),
            Mat::rows(w1, s.c_mid, s.c_in).t(),
            Mat::rows(&dpre, s.c_mid, hw),
            accumulate,
            Threads::Serial,
        )?;
        Ok(partial)
    });
    let partials: Vec<Vec<f32>> = partials.collect::<Result<_>>()?;
    let mut grads = vec![0.0f32; n_w1 + s.c_mid + n_w2 + s.c_out];
    sum_in_order(&mut grads, &partials);
    let (g_w1, rest) = grads.split_at(n_w1);
    let (g_b1, rest) = rest.split_at(s.c_mid);
    let (g_w2, g_b2) = rest.split_at(n_w2);
    dw1.copy_from_slice(g_w1);
    db1.copy_from_slice(g_b1);
    dw2.copy_from_slice(g_w2);
    db2.copy_from_slice(g_b2);
    Ok(())
}
