//! CPU twin of the linear layer `y [m, n_out] = x [m, k_in] · wᵀ + b`, PyTorch's weight layout
//! `w [n_out, k_in]`.
//!
//! Shaped for fc1 at batch 50 (m = 50, k_in = 200,704, n_out = 700), where one product over all threads
//! leaves most of the machine idle: the forward splits k_in into a fixed number of chunks whose partial
//! products are summed in chunk order (the split-K with a fixed-order reduction the GPU kernel uses too),
//! and dgrad splits its wide output into column blocks. Neither split depends on the thread count, so the
//! bits do not either.

use rayon::prelude::*;

use super::adam::adam_slices;
use super::adam_step;
use super::matmul::{matmul, Mat, MatMut, Threads};
use super::sum_in_order;
use super::tf32::{rounded, tf32_round};
use crate::shape::{check_len, AdamSource, LinearShape, Precision};
use crate::Result;

/// Chunks of k_in in the forward's split-K (fixed: the result must not depend on the thread count).
const SPLIT_K: usize = 16;
/// No split below this many k per chunk.
const MIN_K_CHUNK: usize = 4096;
/// Columns of dx per dgrad task.
const DGRAD_COLS: usize = 4096;

fn check(op: &'static str, bufs: &[(&'static str, usize, usize)]) -> Result<()> {
    bufs.iter()
        .try_for_each(|&(what, expected, len)| check_len(op, what, expected, len))
}

/// `y = x · wᵀ + b`. Shapes: `y [m, n_out]`, `x [m, k_in]`, `w [n_out, k_in]`, `b [n_out]`.
pub fn linear_fwd(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], s: &LinearShape) -> Result<()> {
    if s.precision == Precision::Tf32 {
        // The products' operands rounded as the tensor-core kernels round them, then the fp32 twin.
        let fp32 = s.with_precision(Precision::Fp32);
        return linear_fwd(y, &rounded(x), &rounded(w), b, &fp32);
    }
    const OP: &str = "linear_fwd";
    let LinearShape { m, k_in, n_out, .. } = *s;
    s.validate(OP)?;
    check(
        OP,
        &[
            ("y", m * n_out, y.len()),
            ("x", m * k_in, x.len()),
            ("w", n_out * k_in, w.len()),
            ("b", n_out, b.len()),
        ],
    )?;
    let chunk = k_in.div_ceil(SPLIT_K).max(MIN_K_CHUNK);
    if k_in <= chunk {
        let (lhs, rhs) = (Mat::rows(x, m, k_in), Mat::rows(w, n_out, k_in).t());
        matmul(
            OP,
            MatMut::rows(y, m, n_out),
            lhs,
            rhs,
            false,
            Threads::Parallel,
        )?;
    } else {
        let partials: Vec<Vec<f32>> = (0..k_in.div_ceil(chunk))
            .into_par_iter()
            .map(|c| {
                let ks = c * chunk..((c + 1) * chunk).min(k_in);
                let mut part = vec![0.0f32; m * n_out];
                // x[:, ks] · w[:, ks]ᵀ: the same strides as the whole, starting at column ks.start.
                let lhs = Mat {
                    data: &x[ks.start..],
                    rows: m,
                    cols: ks.len(),
                    rs: k_in,
                    cs: 1,
                };
                let rhs = Mat {
                    data: &w[ks.start..],
                    rows: ks.len(),
                    cols: n_out,
                    rs: 1,
                    cs: k_in,
                };
                // Column-major partials: gemm runs this orientation of the small-m product ~1.5× faster.
                let dst = MatMut {
                    data: &mut part,
                    rows: m,
                    cols: n_out,
                    rs: 1,
                    cs: m,
                };
                matmul(OP, dst, lhs, rhs, false, Threads::Serial).map(|()| part)
            })
            .collect::<Result<_>>()?;
        let mut yt = vec![0.0f32; m * n_out]; // [n_out, m]
        sum_in_order(&mut yt, &partials);
        for (j, col) in yt.chunks(m).enumerate() {
            for (i, &v) in col.iter().enumerate() {
                y[i * n_out + j] = v;
            }
        }
    }
    if n_out > 0 {
        for row in y.chunks_mut(n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    Ok(())
}

/// `dx = dy · w`. Shapes: `dx [m, k_in]`, `dy [m, n_out]`, `w [n_out, k_in]`.
pub fn linear_dgrad(dx: &mut [f32], dy: &[f32], w: &[f32], s: &LinearShape) -> Result<()> {
    if s.precision == Precision::Tf32 {
        let fp32 = s.with_precision(Precision::Fp32);
        return linear_dgrad(dx, &rounded(dy), &rounded(w), &fp32);
    }
    const OP: &str = "linear_dgrad";
    let LinearShape { m, k_in, n_out, .. } = *s;
    s.validate(OP)?;
    check(
        OP,
        &[
            ("dx", m * k_in, dx.len()),
            ("dy", m * n_out, dy.len()),
            ("w", n_out * k_in, w.len()),
        ],
    )?;
    if m == 0 || k_in == 0 {
        return Ok(());
    }
    // Column blocks of dx, each dy · w[:, block] computed whole by one task.
    let blocks: Vec<(usize, Vec<f32>)> = (0..k_in.div_ceil(DGRAD_COLS))
        .into_par_iter()
        .map(|c| {
            let cols = c * DGRAD_COLS..((c + 1) * DGRAD_COLS).min(k_in);
            let mut part = vec![0.0f32; m * cols.len()];
            let rhs = Mat {
                data: &w[cols.start..],
                rows: n_out,
                cols: cols.len(),
                rs: k_in,
                cs: 1,
            };
            let dst = MatMut::rows(&mut part, m, cols.len());
            matmul(
                OP,
                dst,
                Mat::rows(dy, m, n_out),
                rhs,
                false,
                Threads::Serial,
            )
            .map(|()| (cols.start, part))
        })
        .collect::<Result<_>>()?;
    for (start, part) in blocks {
        let width = part.len() / m;
        for (row, src) in dx.chunks_mut(k_in).zip(part.chunks(width)) {
            row[start..start + width].copy_from_slice(src);
        }
    }
    Ok(())
}

/// `dw = dyᵀ · x`. Shapes: `dw [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_wgrad(dw: &mut [f32], dy: &[f32], x: &[f32], s: &LinearShape) -> Result<()> {
    if s.precision == Precision::Tf32 {
        let fp32 = s.with_precision(Precision::Fp32);
        return linear_wgrad(dw, &rounded(dy), &rounded(x), &fp32);
    }
    const OP: &str = "linear_wgrad";
    let LinearShape { m, k_in, n_out, .. } = *s;
    s.validate(OP)?;
    check(
        OP,
        &[
            ("dw", n_out * k_in, dw.len()),
            ("dy", m * n_out, dy.len()),
            ("x", m * k_in, x.len()),
        ],
    )?;
    matmul(
        OP,
        MatMut::rows(dw, n_out, k_in),
        Mat::rows(dy, m, n_out).t(),
        Mat::rows(x, m, k_in),
        false,
        Threads::Parallel,
    )
}

/// Rows of `w` per task of [`linear_wgrad_adam`]: the gradient of one block lives only in that task's buffer.
const WGRAD_ADAM_ROWS: usize = 8;

/// Adam applied to `w` with the gradient `dyᵀ · x`, which is never stored whole: blocks of rows of `w` get
/// their gradient (as [`linear_wgrad`] computes it) and their update in turn. The result of `linear_wgrad`
/// then [`crate::cpu::adam_step`] over `w`, up to the gradient's summation order. Shapes:
/// `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_wgrad_adam<'s>(
    [w, adam_m, adam_v]: [&mut [f32]; 3],
    dy: &[f32],
    x: &[f32],
    s: &LinearShape,
    step: impl Into<AdamSource<'s>>,
) -> Result<()> {
    let step: AdamSource<'s> = step.into();
    if s.precision == Precision::Tf32 {
        let fp32 = s.with_precision(Precision::Fp32);
        return linear_wgrad_adam([w, adam_m, adam_v], &rounded(dy), &rounded(x), &fp32, step);
    }
    const OP: &str = "linear_wgrad_adam";
    let LinearShape { m, k_in, n_out, .. } = *s;
    s.validate(OP)?;
    check(
        OP,
        &[
            ("w", n_out * k_in, w.len()),
            ("adam_m", n_out * k_in, adam_m.len()),
            ("adam_v", n_out * k_in, adam_v.len()),
            ("dy", m * n_out, dy.len()),
            ("x", m * k_in, x.len()),
        ],
    )?;
    let scalars = AdamSource::Row(step.scalars(OP)?); // hyperparameter errors before any work
    if k_in == 0 {
        return Ok(());
    }
    let block = WGRAD_ADAM_ROWS * k_in;
    w.par_chunks_mut(block)
        .zip(adam_m.par_chunks_mut(block))
        .zip(adam_v.par_chunks_mut(block))
        .enumerate()
        .try_for_each(|(bi, ((w, am), av))| {
            let rows = w.len() / k_in;
            let mut g = vec![0.0f32; w.len()];
            // dy[:, rows of this block]ᵀ · x
            let lhs = Mat {
                data: dy.get(bi * WGRAD_ADAM_ROWS..).unwrap_or(&[]), // empty when m = 0
                rows,
                cols: m,
                rs: 1,
                cs: n_out,
            };
            matmul(
                OP,
                MatMut::rows(&mut g, rows, k_in),
                lhs,
                Mat::rows(x, m, k_in),
                false,
                Threads::Serial,
            )?;
            adam_step(w, am, av, &g, scalars)
        })
}

/// `db = Σ_rows dy`, rows in order. Shapes: `db [n_out]`, `dy [m, n_out]`.
pub fn linear_bgrad(db: &mut [f32], dy: &[f32], s: &LinearShape) -> Result<()> {
    const OP: &str = "linear_bgrad";
    let LinearShape { m, n_out, .. } = *s;
    s.validate(OP)?;
    check(OP, &[("db", n_out, db.len()), ("dy", m * n_out, dy.len())])?;
    db.fill(0.0);
    if n_out > 0 {
        for row in dy.chunks(n_out) {
            db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
        }
    }
    Ok(())
}

/// Columns of w per task of [`linear_bwd_adam`]: a strip of fc1's weight (700 rows) and its moments stays
/// in the last-level cache between the strip's dgrad and its update.
const BWD_ADAM_COLS: usize = 1024;

/// Rows of the weight gradient [`linear_bwd_adam`] forms and applies at a time (64 × 1024 floats: 256 KB).
const BWD_ADAM_G_ROWS: usize = 64;

/// fc1's backward and Adam in one pass over column strips of the weight: `dx = dy · w` from the weight before
/// its update, then `w`, `adam_m`, `adam_v` updated by Adam with `g = dyᵀ · x`, strip by strip (each strip's
/// w, m and v are read once from memory). `dx` equals [`linear_dgrad`]'s and `w, adam_m, adam_v`
/// [`linear_wgrad_adam`]'s (the same products, the same update). Shapes: `dx [m, k_in]`,
/// `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_bwd_adam<'s>(
    dx: &mut [f32],
    [w, adam_m, adam_v]: [&mut [f32]; 3],
    dy: &[f32],
    x: &[f32],
    s: &LinearShape,
    step: impl Into<AdamSource<'s>>,
) -> Result<()> {
    let step: AdamSource<'s> = step.into();
    const OP: &str = "linear_bwd_adam";
    // TF32: the products' operands rounded as the tensor-core kernel rounds them (dy and x here, each strip of
    // w before its update below); Adam updates the unrounded weight.
    let tf32 = s.precision == Precision::Tf32;
    let rounded_inputs = tf32.then(|| (rounded(dy), rounded(x)));
    let (dy, x) = rounded_inputs
        .as_ref()
        .map_or((dy, x), |(dy, x)| (&dy[..], &x[..]));
    let LinearShape { m, k_in, n_out, .. } = *s;
    s.validate(OP)?;
    check(
        OP,
        &[
            ("dx", m * k_in, dx.len()),
            ("w", n_out * k_in, w.len()),
            ("adam_m", n_out * k_in, adam_m.len()),
            ("adam_v", n_out * k_in, adam_v.len()),
            ("dy", m * n_out, dy.len()),
            ("x", m * k_in, x.len()),
        ],
    )?;
    let scalars = step.scalars(OP)?;
    if k_in == 0 {
        return Ok(());
    }
    // Each task owns a column strip of w, m, v: the rows' segments in that strip, borrowed disjointly.
    let strips = k_in.div_ceil(BWD_ADAM_COLS);
    let mut segs: Vec<[Vec<&mut [f32]>; 3]> = (0..strips)
        .map(|_| {
            [
                Vec::with_capacity(n_out),
                Vec::with_capacity(n_out),
                Vec::with_capacity(n_out),
            ]
        })
        .collect();
    for (k, buf) in [w, adam_m, adam_v].into_iter().enumerate() {
        for row in buf.chunks_mut(k_in) {
            for (c, seg) in row.chunks_mut(BWD_ADAM_COLS).enumerate() {
                segs[c][k].push(seg);
            }
        }
    }
    let parts: Vec<Vec<f32>> = segs
        .into_par_iter()
        .enumerate()
        .map(|(c, [mut ws, mut ms, mut vs])| {
            let start = c * BWD_ADAM_COLS;
            let width = ws.first().map_or(0, |r| r.len());
            // The strip of w before its update, contiguous and in TF32 rounded: dx's product reads it, then Adam
            // overwrites w.
            let mut w_old = Vec::with_capacity(n_out * width);
            for r in &ws {
                if tf32 {
                    w_old.extend(r.iter().map(|&v| tf32_round(v)));
                } else {
                    w_old.extend_from_slice(r);
                }
            }
            let mut part = vec![0.0f32; m * width];
            if m > 0 {
                let dst = MatMut::rows(&mut part, m, width);
                let rhs = Mat::rows(&w_old, n_out, width);
                matmul(
                    OP,
                    dst,
                    Mat::rows(dy, m, n_out),
                    rhs,
                    false,
                    Threads::Serial,
                )?;
            }
            // g = dyᵀ · x[:, strip] and its update, BWD_ADAM_G_ROWS rows at a time: the block of g stays in cache
            // between the product and Adam, and one small buffer serves the whole strip.
            let rhs = Mat {
                data: &x[start..],
                rows: m,
                cols: width,
                rs: k_in,
                cs: 1,
            };
            let mut g = vec![0.0f32; BWD_ADAM_G_ROWS.min(n_out) * width];
            for r0 in (0..n_out).step_by(BWD_ADAM_G_ROWS) {
                let rows = BWD_ADAM_G_ROWS.min(n_out - r0);
                let g = &mut g[..rows * width];
                let lhs = Mat {
                    data: &dy[r0..],
                    rows,
                    cols: m,
                    rs: 1,
                    cs: n_out,
                };
                matmul(
                    OP,
                    MatMut::rows(g, rows, width),
                    lhs,
                    rhs,
                    false,
                    Threads::Serial,
                )?;
                let block = r0..r0 + rows;
                for (((w, am), av), g) in ws[block.clone()]
                    .iter_mut()
                    .zip(&mut ms[block.clone()])
                    .zip(&mut vs[block])
                    .zip(g.chunks(width.max(1)))
                {
                    adam_slices(w, am, av, g, &scalars);
                }
            }
            Ok(part)
        })
        .collect::<Result<_>>()?;
    for (c, part) in parts.iter().enumerate() {
        let (start, width) = (c * BWD_ADAM_COLS, part.len() / m.max(1));
        for (row, src) in dx.chunks_mut(k_in).zip(part.chunks(width.max(1))) {
            row[start..start + width].copy_from_slice(src);
        }
    }
    Ok(())
}

/// [`linear_wgrad_adam`] with the scalars of row `counter[0]` of Adam table `table` (see
/// [`crate::cpu::adam_step_at`]).
pub fn linear_wgrad_adam_at(
    w_m_v: [&mut [f32]; 3],
    dy: &[f32],
    x: &[f32],
    s: &LinearShape,
    table: &[f32],
    counter: &[u32],
) -> Result<()> {
    let row = AdamSource::row_at("linear_wgrad_adam", table, counter)?;
    linear_wgrad_adam(w_m_v, dy, x, s, row)
}

/// [`linear_bwd_adam`] with the scalars of row `counter[0]` of Adam table `table` (see
/// [`crate::cpu::adam_step_at`]).
pub fn linear_bwd_adam_at(
    dx: &mut [f32],
    w_m_v: [&mut [f32]; 3],
    dy: &[f32],
    x: &[f32],
    s: &LinearShape,
    table: &[f32],
    counter: &[u32],
) -> Result<()> {
    let row = AdamSource::row_at("linear_bwd_adam", table, counter)?;
    linear_bwd_adam(dx, w_m_v, dy, x, s, row)
}
