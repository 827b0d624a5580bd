//! 3×3 stride-1 max pooling ('same', padding never wins; ties to the first cell in row-major order).

use crate::shape::PoolShape;
use crate::tape::record;
use crate::tensor::{check_shape, fill_new, Tensor};
use crate::{Error, Result};

/// `maxpool3x3s1(x)` over `x [n, c, h, w]`; backward routes each output gradient to its window's winner.
pub fn maxpool3x3s1(x: &Tensor) -> Result<Tensor> {
    const OP: &str = "maxpool3x3s1_fwd";
    let [n, c, h, w] = <[usize; 4]>::try_from(x.shape()).map_err(|_| Error::InvalidShape {
        op: OP,
        reason: format!("x has shape {:?}, expected [n, c, h, w]", x.shape()),
    })?;
    let s = PoolShape { n, c, h, w };
    let len = x.elem_count();
    let storage =
        dispatch!(OP, x.device(), |b, x = x| fill_new(b, len, |y| b.maxpool3x3s1_fwd(y, &x, &s)));
    let y = Tensor::from_storage(storage, x.shape(), x.device().clone());
    let x_saved = x.detach();
    record("maxpool3x3s1", &[x], y, move |dy| {
        Ok(vec![maxpool3x3s1_bwd(dy, &x_saved, &s)?])
    })
}

fn maxpool3x3s1_bwd(dy: &Tensor, x: &Tensor, s: &PoolShape) -> Result<Tensor> {
    const OP: &str = "maxpool3x3s1_bwd";
    check_shape(OP, "dy", x.shape(), dy.shape())?;
    let len = x.elem_count();
    let storage = dispatch!(OP, x.device(), |b, dy = dy, x = x| {
        fill_new(b, len, |dx| b.maxpool3x3s1_bwd(dx, &dy, &x, s, false))
    });
    Ok(Tensor::from_storage(storage, x.shape(), x.device().clone()))
}
