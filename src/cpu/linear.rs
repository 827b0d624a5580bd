//! CPU twin of the linear layer `y [m, n_out] = x [m, k_in] · wᵀ + b`, PyTorch's weight layout
//! `w [n_out, k_in]`. The products use all threads; each output element sums over k in one fixed order.

use super::matmul::{matmul, Mat, MatMut, Threads};
use crate::shape::{check_len, LinearShape};
use crate::Result;

fn check(op: &'static str, bufs: &[(&'static str, usize, usize)]) -> Result<()> {
    bufs.iter()
        .try_for_each(|&(what, expected, len)| check_len(op, what, expected, len))
}

/// `y = x · wᵀ + b`. Shapes: `y [m, n_out]`, `x [m, k_in]`, `w [n_out, k_in]`, `b [n_out]`.
pub fn linear_fwd(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], s: &LinearShape) -> Result<()> {
    const OP: &str = "linear_fwd";
    let LinearShape { m, k_in, n_out } = *s;
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
    matmul(
        OP,
        MatMut::rows(y, m, n_out),
        Mat::rows(x, m, k_in),
        Mat::rows(w, n_out, k_in).t(),
        false,
        Threads::Parallel,
    )?;
    if n_out > 0 {
        for row in y.chunks_mut(n_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
    Ok(())
}

/// `dx = dy · w`. Shapes: `dx [m, k_in]`, `dy [m, n_out]`, `w [n_out, k_in]`.
pub fn linear_dgrad(dx: &mut [f32], dy: &[f32], w: &[f32], s: &LinearShape) -> Result<()> {
    const OP: &str = "linear_dgrad";
    let LinearShape { m, k_in, n_out } = *s;
    s.validate(OP)?;
    check(
        OP,
        &[
            ("dx", m * k_in, dx.len()),
            ("dy", m * n_out, dy.len()),
            ("w", n_out * k_in, w.len()),
        ],
    )?;
    matmul(
        OP,
        MatMut::rows(dx, m, k_in),
        Mat::rows(dy, m, n_out),
        Mat::rows(w, n_out, k_in),
        false,
        Threads::Parallel,
    )
}

/// `dw = dyᵀ · x`. Shapes: `dw [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_wgrad(dw: &mut [f32], dy: &[f32], x: &[f32], s: &LinearShape) -> Result<()> {
    const OP: &str = "linear_wgrad";
    let LinearShape { m, k_in, n_out } = *s;
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
