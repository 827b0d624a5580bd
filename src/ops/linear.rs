//! The linear layer `y = x · wᵀ + b` with PyTorch's weight layout `w [out, in]`.

use crate::shape::LinearShape;
use crate::tape::record;
use crate::tensor::{check_shape, Tensor};
use crate::{Error, Result};

/// `y [m, out] = x [m, in] · wᵀ + b`, `w [out, in]`, `b [out]`. Backward gives `dx`, `dw`, `db`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    const OP: &str = "linear_fwd";
    let ([m, k_in], [n_out, _]) = (dims2(OP, "x", x)?, dims2(OP, "w", w)?);
    check_shape(OP, "w", &[n_out, k_in], w.shape())?;
    check_shape(OP, "b", &[n_out], b.shape())?;
    let s = LinearShape::new(m, k_in, n_out);
    s.validate(OP)?;
    let storage = dispatch!(OP, x.device(), |be, x = x, w = w, b = b| {
        crate::tensor::fill_new(be, m * n_out, |y| be.linear_fwd(y, &x, &w, &b, &s))
    });
    let y = Tensor::from_storage(storage, &[m, n_out], x.device().clone());
    let (x_saved, w_saved) = (x.detach(), w.detach());
    record("linear", &[x, w, b], y, move |dy| {
        let storages = dispatch_many!("linear_bwd", x_saved.device(), |be, dy = dy, x = x_saved, w = w_saved| {
            let (mut dx, mut block) = (be.alloc_zeros(m * k_in)?, be.alloc_zeros(n_out * k_in + n_out)?);
            let (rw, rb) = (0..n_out * k_in, n_out * k_in..n_out * k_in + n_out);
            crate::graph::defs::linear_bwd(be, Some(&mut be.view_mut(&mut dx, 0..m * k_in)?), &mut block, Some(rw.clone()), rb.clone(), &dy, &x, &w, &s)?;
            let (mut dw, mut db) = (be.alloc_zeros(rw.len())?, be.alloc_zeros(n_out)?);
            be.copy(&mut be.view_mut(&mut dw, 0..rw.len())?, &be.view(&block, rw)?)?;
            be.copy(&mut be.view_mut(&mut db, 0..n_out)?, &be.view(&block, rb)?)?;
            Ok::<_, Error>(vec![dx, dw, db])
        });
        let shapes: [&[usize]; 3] = [&[m, k_in], &[n_out, k_in], &[n_out]];
        Ok(storages
            .into_iter()
            .zip(shapes)
            .map(|(st, sh)| Tensor::from_storage(st, sh, x_saved.device().clone()))
            .collect())
    })
}

fn dims2(op: &'static str, what: &'static str, t: &Tensor) -> Result<[usize; 2]> {
    <[usize; 2]>::try_from(t.shape()).map_err(|_| Error::InvalidShape {
        op,
        reason: format!("{what} has shape {:?}, expected 2 dimensions", t.shape()),
    })
}
