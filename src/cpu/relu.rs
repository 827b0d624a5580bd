//! CPU twin of `kernels/relu.cu`.

use rayon::prelude::*;

use super::CHUNK;
use crate::backend::check_same_len;
use crate::Result;

/// `y = max(x, 0)` elementwise; NaN propagates (the kernel writes it `!(v <= 0)`). Shapes: `y, x: [n]`.
pub fn relu_fwd(y: &mut [f32], x: &[f32]) -> Result<()> {
    check_same_len("relu_fwd", y.len(), &[("x", x.len())])?;
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (y, &v) in y.iter_mut().zip(x) {
                *y = if v > 0.0 || v.is_nan() { v } else { 0.0 };
            }
        });
    Ok(())
}

/// `dx = dy` where `y > 0`, else 0; `y` is the forward output. Shapes: `dx, dy, y: [n]`.
pub fn relu_bwd(dx: &mut [f32], dy: &[f32], y: &[f32]) -> Result<()> {
    check_same_len("relu_bwd", dx.len(), &[("dy", dy.len()), ("y", y.len())])?;
    dx.par_chunks_mut(CHUNK)
        .zip(dy.par_chunks(CHUNK).zip(y.par_chunks(CHUNK)))
        .for_each(|(dx, (dy, y))| {
            for ((dx, &g), &v) in dx.iter_mut().zip(dy).zip(y) {
                *dx = if v > 0.0 { g } else { 0.0 };
            }
        });
    Ok(())
}

/// `dy` through the ReLU whose output is `y` (relu_bwd into a new buffer), or `dy` itself when `y` is `None`:
/// the twins' form of a ReLU backward folded into the kernel that reads the gradient (the kernels apply the
/// same rule as they load `dy`, so both give the bits of `relu_bwd` followed by the kernel).
pub(crate) fn through_relu<'a>(
    op: &'static str,
    dy: &'a [f32],
    y: Option<&[f32]>,
) -> Result<std::borrow::Cow<'a, [f32]>> {
    let Some(y) = y else {
        return Ok(std::borrow::Cow::Borrowed(dy));
    };
    check_same_len(op, dy.len(), &[("y", y.len())])?;
    let mut g = vec![0.0; dy.len()];
    relu_bwd(&mut g, dy, y)?;
    Ok(std::borrow::Cow::Owned(g))
}
