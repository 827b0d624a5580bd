//! Elementwise sum: `y = a + b`; backward passes `dy` to both inputs.

use crate::tape::record;
use crate::tensor::{check_shape, fill_new, Tensor};
use crate::Result;

/// `a + b` elementwise; both operands have the same shape and device. Recorded on the operands' tape.
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_shape("add_fwd", "b", a.shape(), b.shape())?;
    let n = a.elem_count();
    let storage = dispatch!("add_fwd", a.device(), |be, a = a, b = b| fill_new(be, n, |y| be.add_fwd(y, &a, &b)));
    let y = Tensor::from_storage(storage, a.shape(), a.device().clone());
    record("add", &[a, b], y, |dy| Ok(vec![dy.detach(), dy.detach()]))
}
