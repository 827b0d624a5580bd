//! Safe, bounds-checked matrix products over slices for the CPU twins, on top of the `gemm` crate.
//!
//! A matrix is `rows × cols` with element `(i, j)` at `data[i·rs + j·cs]`. Every product checks that each
//! operand's extent lies inside its slice before the unchecked call.

use crate::{Error, Result};

/// How many threads one product may use: `Serial` inside per-image rayon loops, `Parallel` for the big
/// linear-layer products. Either way each output element sums over k in one fixed order.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Threads {
    Serial,
    Parallel,
}

/// A read-only strided matrix.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

/// A writable strided matrix.
pub(crate) struct MatMut<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// A dense row-major `rows × cols` matrix at the start of `data`.
    pub fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// The transpose (a view: only the strides swap).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// A dense row-major `rows × cols` matrix at the start of `data`.
    pub fn rows(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        MatMut {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
}

/// One past the last element a `rows × cols` matrix with these strides touches (0 when empty).
fn extent(rows: usize, cols: usize, rs: usize, cs: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(rs)?
        .checked_add((cols - 1).checked_mul(cs)?)?
        .checked_add(1)
}

fn check(
    op: &'static str,
    what: &'static str,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
    len: usize,
) -> Result<()> {
    match extent(rows, cols, rs, cs) {
        Some(end) if end <= len => Ok(()),
        end => Err(Error::BufferLength {
            op,
            what,
            expected: end.unwrap_or(usize::MAX),
            len,
        }),
    }
}

fn to_isize(op: &'static str, v: usize) -> Result<isize> {
    isize::try_from(v).map_err(|_| Error::InvalidShape {
        op,
        reason: format!("stride {v} exceeds isize"),
    })
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`.
pub(crate) fn matmul(
    op: &'static str,
    dst: MatMut<'_>,
    lhs: Mat<'_>,
    rhs: Mat<'_>,
    accumulate: bool,
    threads: Threads,
) -> Result<()> {
    if lhs.rows != dst.rows || rhs.cols != dst.cols || lhs.cols != rhs.rows {
        return Err(Error::InvalidShape {
            op,
            reason: format!(
                "matrix product {}x{} · {}x{} into {}x{}",
                lhs.rows, lhs.cols, rhs.rows, rhs.cols, dst.rows, dst.cols
            ),
        });
    }
    check(
        op,
        "product output",
        dst.rows,
        dst.cols,
        dst.rs,
        dst.cs,
        dst.data.len(),
    )?;
    check(
        op,
        "product lhs",
        lhs.rows,
        lhs.cols,
        lhs.rs,
        lhs.cs,
        lhs.data.len(),
    )?;
    check(
        op,
        "product rhs",
        rhs.rows,
        rhs.cols,
        rhs.rs,
        rhs.cs,
        rhs.data.len(),
    )?;
    if dst.rows == 0 || dst.cols == 0 {
        return Ok(());
    }
    if lhs.cols == 0 {
        if !accumulate {
            for i in 0..dst.rows {
                for j in 0..dst.cols {
                    dst.data[i * dst.rs + j * dst.cs] = 0.0;
                }
            }
        }
        return Ok(());
    }
    let s = |v| to_isize(op, v);
    let (d_rs, d_cs, l_rs, l_cs, r_rs, r_cs) = (
        s(dst.rs)?,
        s(dst.cs)?,
        s(lhs.rs)?,
        s(lhs.cs)?,
        s(rhs.rs)?,
        s(rhs.cs)?,
    );
    let parallelism = match threads {
        Threads::Serial => gemm::Parallelism::None,
        Threads::Parallel => gemm::Parallelism::Rayon(rayon::current_num_threads()),
    };
    // SAFETY: the shapes agree (checked above) and every element (i, j) each operand touches lies inside
    // its slice (`check` bounds the largest offset); `dst` is borrowed mutably, so it aliases no input.
    unsafe {
        gemm::gemm(
            dst.rows,
            dst.cols,
            lhs.cols,
            dst.data.as_mut_ptr(),
            d_cs,
            d_rs,
            accumulate,
            lhs.data.as_ptr(),
            l_cs,
            l_rs,
            rhs.data.as_ptr(),
            r_cs,
            r_rs,
            1.0f32,
            1.0f32,
            false,
            false,
            false,
            parallelism,
        );
    }
    Ok(())
}
