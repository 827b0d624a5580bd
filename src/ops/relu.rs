//! ReLU: `y = max(x, 0)`; backward `dx = dy · [y > 0]`.

use crate::tape::record;
use crate::tensor::{check_shape, fill_new, Tensor};
use crate::Result;

/// `max(x, 0)` elementwise (NaN propagates), any shape. Recorded on `x`'s tape; backward saves `y`.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    let n = x.elem_count();
    let storage =
        dispatch!("relu_fwd", x.device(), |b, x = x| fill_new(b, n, |y| b.relu_fwd(y, &x)));
    let y = Tensor::from_storage(storage, x.shape(), x.device().clone());
    let saved_y = y.detach();
    record("relu", &[x], y, move |dy| Ok(vec![relu_bwd(dy, &saved_y)?]))
}

/// Backward of [`relu`]: `dx = dy` where `y > 0`, else 0 (the gradient at exactly 0 is 0).
/// `y` is the forward output; `dy` has its shape. Not recorded on any tape.
pub fn relu_bwd(dy: &Tensor, y: &Tensor) -> Result<Tensor> {
    check_shape("relu_bwd", "dy", y.shape(), dy.shape())?;
    let n = y.elem_count();
    let storage = dispatch!("relu_bwd", y.device(), |b, dy = dy, y = y| fill_new(b, n, |dx| b.relu_bwd(dx, &dy, &y)));
    Ok(Tensor::from_storage(storage, y.shape(), y.device().clone()))
}
