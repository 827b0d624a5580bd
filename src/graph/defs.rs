//! The backward passes made of several kernels, written once and shared by the planned graph
//! ([`super::Plan`]) and the eager tape ([`crate::ops`]). A single-kernel backward (ReLU, max pool,
//! dropout, the fused reduce conv after its output ReLU) is the backend's kernel itself.
//!
//! Parameter gradients are ranges of one buffer (the flat gradient buffer of a plan, a block of the tape's),
//! written one after the other.

use std::ops::Range;

use crate::backend::Backend;
use crate::shape::{ConvShape, LinearShape};
use crate::Result;

/// Backward of a conv from `dy` (read in the output's channel slice): the gradient after its ReLU epilogue,
/// if any, or with `y` (the output after that ReLU) the gradient of `y`, read where `y > 0` (the ReLU's
/// backward folded into the kernels): `dx` (overwritten, or accumulated when its flag is set; skipped when `None`), then `dw` and `db`
/// into their ranges of `grads` by one `conv_wgrad` (the ranges must be adjacent, `db` right after `dw`, as a
/// conv's weight and bias lie in a flat buffer; an error otherwise).
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv_bwd<B: Backend>(
    b: &B,
    dx: Option<(&mut B::ViewMut<'_>, bool)>,
    grads: &mut B::Buf,
    [dw, db]: [Range<usize>; 2],
    dy: &B::View<'_>,
    y: Option<&B::View<'_>>,
    x: &B::View<'_>,
    w: &B::View<'_>,
    s: &ConvShape,
) -> Result<()> {
    if let Some((dx, accumulate)) = dx {
        b.conv_dgrad(dx, dy, y, w, s, accumulate)?;
    }
    if dw.end != db.start {
        return Err(crate::Error::InvalidShape {
            op: "conv_bwd",
            reason: format!("bias gradient {db:?} does not follow the weight gradient {dw:?}"),
        });
    }
    b.conv_wgrad(&mut b.view_mut(grads, dw.start..db.end)?, dy, y, x, s)
}

/// Backward of a linear layer from `dy [m, n_out]`: `dw = dyᵀ · x` into its range of `grads` (skipped when
/// `None`: a training step forms it inside `linear_wgrad_adam`), `db = Σ_rows dy`, and `dx = dy · w`
/// (skipped when `None`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn linear_bwd<B: Backend>(
    b: &B,
    dx: Option<&mut B::ViewMut<'_>>,
    grads: &mut B::Buf,
    dw: Option<Range<usize>>,
    db: Range<usize>,
    dy: &B::View<'_>,
    x: &B::View<'_>,
    w: &B::View<'_>,
    s: &LinearShape,
) -> Result<()> {
    if let Some(dw) = dw {
        b.linear_wgrad(&mut b.view_mut(grads, dw)?, dy, x, s)?;
    }
    b.linear_bgrad(&mut b.view_mut(grads, db)?, dy, s)?;
    if let Some(dx) = dx {
        b.linear_dgrad(dx, dy, w, s)?;
    }
    Ok(())
}
