//! CPU twin of the plain convolutions: stride 1, 'same' zero padding, kernel 1, 3 or 5, with bias.
//!
//! Forward writes channels `[c_offset, c_offset + c_out)` of a `[n, c_total, h, w]` output, optionally with
//! the module's ReLU in the epilogue. Backward reads the branch's slice of the gradient in place; `dy` is the
//! gradient of the conv's output *before* that ReLU, or, given the output `y` after it, the gradient of `y`,
//! passed through the ReLU as it is read (`relu_bwd`'s rule: the kernels fold the module's ReLU backward into
//! the first kernels that read its gradient).
//! Per image: im2col, then one matrix product (`W [c_out, c_in·k²] · col [c_in·k², h·w]`). Weight and bias
//! gradients sum per-image partials in image order, so results do not depend on the thread count.
//!
//! In [`Precision::Tf32`] the products' operands are rounded to TF32 ([`tf32_round`](super::tf32_round)) as
//! the tensor-core kernels round them (`cvt.rna` on every fragment element), then the fp32 twin runs on the
//! rounded copies: forward rounds `x` and `w`, dgrad `dy` and `w`, wgrad `dy` and `x`; the bias, the ReLU and
//! the bias gradient (a plain sum) stay f32.

use std::ops::Range;

use rayon::prelude::*;

use super::matmul::{matmul, Mat, MatMut, Threads};
use super::relu::through_relu;
use super::sum_over_images;
use super::tf32::rounded;
use crate::shape::{check_len, ConvShape, Precision};
use crate::Result;

/// `y[:, off..off+c_out] = relu?(w ⊛ x + b)`. Shapes: `y [n, c_total, h, w]`, `x [n, c_in, h, w]`,
/// `w [c_out, c_in, k, k]`, `b [c_out]`. Channels of `y` outside the slice are left untouched.
pub fn conv_fwd(
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    s: &ConvShape,
    relu: bool,
) -> Result<()> {
    const OP: &str = "conv_fwd";
    check_conv(OP, s, x, w)?;
    check_len(OP, "y", s.y_len(OP)?, y.len())?;
    check_len(OP, "b", s.c_out, b.len())?;
    if s.precision == Precision::Tf32 {
        let fp32 = s.with_precision(Precision::Fp32);
        return conv_fwd(y, &rounded(x), &rounded(w), b, &fp32, relu);
    }
    let (hw, ckk) = (s.h * s.w, s.c_in * s.k * s.k);
    y.par_chunks_mut(s.c_total * hw)
        .zip(x.par_chunks(s.c_in * hw))
        .try_for_each_init(Vec::new, |col, (y_n, x_n)| {
            let out = &mut y_n[s.c_offset * hw..(s.c_offset + s.c_out) * hw];
            let col: &[f32] = if s.k == 1 { x_n } else { im2col(col, x_n, s) };
            matmul(
                OP,
                MatMut::rows(out, s.c_out, hw),
                Mat::rows(w, s.c_out, ckk),
                Mat::rows(col, ckk, hw),
                false,
                Threads::Serial,
            )?;
            bias_epilogue(out, b, hw, relu);
            Ok(())
        })
}

/// `dx (+)= conv_fwdᵀ(dy)`: the input gradient. Shapes: `dx [n, c_in, h, w]`, `dy [n, c_total, h, w]` (its
/// slice is read), `w [c_out, c_in, k, k]`. With `accumulate` the result is added to `dx` (a tensor read by
/// several branches), else it overwrites `dx`. With `y [n, c_total, h, w]` (the conv's output after a ReLU)
/// `dy` is the gradient of `y` and counts only where `y > 0` (`relu_bwd` folded in); without, `dy` is the
/// gradient of the conv's output itself.
pub fn conv_dgrad(
    dx: &mut [f32],
    dy: &[f32],
    y: Option<&[f32]>,
    w: &[f32],
    s: &ConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "conv_dgrad";
    check_conv(OP, s, dx, w)?;
    check_len(OP, "dy", s.y_len(OP)?, dy.len())?;
    let dy = &*through_relu(OP, dy, y)?;
    if s.precision == Precision::Tf32 {
        let fp32 = s.with_precision(Precision::Fp32);
        return conv_dgrad(dx, &rounded(dy), None, &rounded(w), &fp32, accumulate);
    }
    let (hw, ckk) = (s.h * s.w, s.c_in * s.k * s.k);
    let wt = Mat::rows(w, s.c_out, ckk).t(); // [c_in·k², c_out]
    dx.par_chunks_mut(s.c_in * hw)
        .zip(dy.par_chunks(s.c_total * hw))
        .try_for_each_init(
            || (Vec::new(), Vec::new()),
            |(dcol, scratch), (dx_n, dy_n)| {
                let g = Mat::rows(
                    &dy_n[s.c_offset * hw..(s.c_offset + s.c_out) * hw],
                    s.c_out,
                    hw,
                );
                if s.k == 1 {
                    return matmul(
                        OP,
                        MatMut::rows(dx_n, s.c_in, hw),
                        wt,
                        g,
                        accumulate,
                        Threads::Serial,
                    );
                }
                dcol.resize(ckk * hw, 0.0);
                matmul(
                    OP,
                    MatMut::rows(dcol, ckk, hw),
                    wt,
                    g,
                    false,
                    Threads::Serial,
                )?;
                scratch.clear();
                scratch.resize(s.c_in * hw, 0.0);
                col2im(scratch, dcol, s);
                if accumulate {
                    dx_n.iter_mut()
                        .zip(scratch.iter())
                        .for_each(|(d, v)| *d += v);
                } else {
                    dx_n.copy_from_slice(scratch);
                }
                Ok(())
            },
        )
}

/// The weight and bias gradients: `dw = Σ_images dy_slice · im2col(x)ᵀ`, `db[c] = Σ_{images, pixels}
/// dy[:, c_offset + c]`, into `dwdb = [dw | db]`. Shapes: `dwdb [c_out·c_in·k·k + c_out]`,
/// `dy [n, c_total, h, w]` (slice read), `x [n, c_in, h, w]`; `dy` masked by `y` as in [`conv_dgrad`].
/// Overwrites `dwdb`. The bias gradient is a sum, not a product: f32 (of the unrounded `dy`) in every
/// precision.
pub fn conv_wgrad(
    dwdb: &mut [f32],
    dy: &[f32],
    y: Option<&[f32]>,
    x: &[f32],
    s: &ConvShape,
) -> Result<()> {
    const OP: &str = "conv_wgrad";
    s.validate(OP)?;
    check_len(OP, "dwdb", s.w_len(OP)? + s.c_out, dwdb.len())?;
    let dy = &*through_relu(OP, dy, y)?;
    let (dw, db) = dwdb.split_at_mut(s.w_len(OP)?);
    wgrad(dw, dy, x, s)?;
    bgrad(db, dy, s)
}

/// The weight gradient of [`conv_wgrad`].
fn wgrad(dw: &mut [f32], dy: &[f32], x: &[f32], s: &ConvShape) -> Result<()> {
    const OP: &str = "conv_wgrad";
    check_conv(OP, s, x, dw)?;
    check_len(OP, "dy", s.y_len(OP)?, dy.len())?;
    if s.precision == Precision::Tf32 {
        let fp32 = s.with_precision(Precision::Fp32);
        return wgrad(dw, &rounded(dy), &rounded(x), &fp32);
    }
    let (hw, ckk) = (s.h * s.w, s.c_in * s.k * s.k);
    sum_over_images(dw, s.n, |i, partial| {
        let x_n = &x[i * s.c_in * hw..(i + 1) * s.c_in * hw];
        let g = &dy[(i * s.c_total + s.c_offset) * hw..(i * s.c_total + s.c_offset + s.c_out) * hw];
        let mut col = Vec::new();
        let col: &[f32] = if s.k == 1 {
            x_n
        } else {
            im2col(&mut col, x_n, s)
        };
        matmul(
            OP,
            MatMut::rows(partial, s.c_out, ckk),
            Mat::rows(g, s.c_out, hw),
            Mat::rows(col, ckk, hw).t(),
            false,
            Threads::Serial,
        )
    })
}

/// The bias gradient of [`conv_wgrad`]: per image, each channel's pixels summed in order; the images summed
/// in order.
fn bgrad(db: &mut [f32], dy: &[f32], s: &ConvShape) -> Result<()> {
    const OP: &str = "conv_wgrad";
    check_len(OP, "dy", s.y_len(OP)?, dy.len())?;
    let hw = s.h * s.w;
    sum_over_images(db, s.n, |i, partial| {
        let g = &dy[(i * s.c_total + s.c_offset) * hw..(i * s.c_total + s.c_offset + s.c_out) * hw];
        for (p, row) in partial.iter_mut().zip(g.chunks(hw)) {
            *p = row.iter().sum();
        }
        Ok(())
    })
}

fn check_conv(op: &'static str, s: &ConvShape, x: &[f32], w: &[f32]) -> Result<()> {
    s.validate(op)?;
    check_len(op, "x", s.x_len(op)?, x.len())?;
    check_len(op, "w", s.w_len(op)?, w.len())
}

/// Adds the bias to each channel row and applies the optional ReLU (NaN propagates, as `relu_fwd`).
pub(crate) fn bias_epilogue(out: &mut [f32], b: &[f32], hw: usize, relu: bool) {
    for (row, &bias) in out.chunks_mut(hw).zip(b) {
        for v in row {
            let pre = *v + bias;
            *v = if !relu || pre > 0.0 || pre.is_nan() {
                pre
            } else {
                0.0
            };
        }
    }
}

/// `col [c_in·k·k, h·w]`: row `(ci·k + ky)·k + kx` holds `x[ci]` shifted by `(ky - k/2, kx - k/2)`, zero outside.
fn im2col<'a>(col: &'a mut Vec<f32>, x_n: &[f32], s: &ConvShape) -> &'a [f32] {
    let (h, w, k) = (s.h, s.w, s.k);
    col.clear();
    col.resize(s.c_in * k * k * h * w, 0.0); // the padding's zeros
    let mut rows = col.chunks_mut(h * w);
    for plane in x_n.chunks(h * w) {
        for ky in 0..k {
            for kx in 0..k {
                let Some(row) = rows.next() else { return col };
                for (yy, sy, xs, sxs) in tap_segments(s, ky, kx) {
                    row[yy * w + xs.start..yy * w + xs.end]
                        .copy_from_slice(&plane[sy * w + sxs.start..sy * w + sxs.end]);
                }
            }
        }
    }
    col
}

/// For tap `(ky, kx)` of a 'same'-padded k×k conv: each output row `yy` whose source row `sy` lies inside the
/// image, with the output columns `xs` whose source columns `sxs` (the same run shifted by `kx − k/2`) do. Rows
/// and columns outside are the padding's zeros. Whole runs, so the copies and sums below are slice operations.
fn tap_segments(
    s: &ConvShape,
    ky: usize,
    kx: usize,
) -> impl Iterator<Item = (usize, usize, Range<usize>, Range<usize>)> {
    let (h, w, p) = (s.h, s.w, s.k / 2);
    // sx = xx + kx − p ∈ [0, w)  ⇔  xx ∈ [p − kx, w + p − kx) ∩ [0, w)
    let x0 = p.saturating_sub(kx);
    let x1 = (w + p).saturating_sub(kx).min(w);
    let run = (x0 < x1).then(|| (x0..x1, x0 + kx - p..x1 + kx - p));
    (0..h).filter_map(move |yy| {
        let sy = (yy + ky).checked_sub(p).filter(|&sy| sy < h)?;
        let (xs, sxs) = run.clone()?;
        Some((yy, sy, xs, sxs))
    })
}

/// The adjoint of `im2col`: adds each `dcol` row back at its shift into `dx_n [c_in, h, w]` (per element, the
/// taps' terms in tap order, as a loop over the elements would add them).
fn col2im(dx_n: &mut [f32], dcol: &[f32], s: &ConvShape) {
    let (h, w, k) = (s.h, s.w, s.k);
    let mut rows = dcol.chunks(h * w);
    for plane in dx_n.chunks_mut(h * w) {
        for ky in 0..k {
            for kx in 0..k {
                let Some(row) = rows.next() else { return };
                for (yy, sy, xs, sxs) in tap_segments(s, ky, kx) {
                    let dst = &mut plane[sy * w + sxs.start..sy * w + sxs.end];
                    let src = &row[yy * w + xs.start..yy * w + xs.end];
                    dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v);
                }
            }
        }
    }
}
