//! The training ops: mean softmax cross-entropy and inverted dropout.

use crate::tape::record;
use crate::tensor::{fill_new, Tensor};
use crate::{Error, Result};

/// Mean softmax cross-entropy of `logits [m, classes]` against `labels` (`m` of them): a `[1]` tensor.
/// The gradient is computed with the loss (one op) and scaled by the incoming gradient in backward, which
/// reads that one value back from the device.
pub fn softmax_xent(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    const OP: &str = "softmax_xent";
    let [m, classes] = <[usize; 2]>::try_from(logits.shape()).map_err(|_| Error::InvalidShape {
        op: OP,
        reason: format!(
            "logits have shape {:?}, expected [m, classes]",
            logits.shape()
        ),
    })?;
    crate::shape::check_len(OP, "labels", m, labels.len())?;
    let storages = dispatch_many!(OP, logits.device(), |b, logits = logits| {
        let (mut loss, mut d) = (b.alloc_zeros(1)?, b.alloc_zeros(m * classes)?);
        let labels = b.upload_labels(labels)?;
        b.softmax_xent(&mut b.view_mut(&mut loss, 0..1)?, &mut b.view_mut(&mut d, 0..m * classes)?, &logits, &labels, classes)?;
        Ok::<_, Error>(vec![loss, d])
    });
    let dev = logits.device().clone();
    let mut it = storages.into_iter();
    let (Some(loss), Some(dlogits)) = (it.next(), it.next()) else {
        return Err(Error::Internal {
            op: OP,
            reason: "missing outputs".into(),
        });
    };
    let loss = Tensor::from_storage(loss, &[1], dev.clone());
    let dlogits = Tensor::from_storage(dlogits, &[m, classes], dev.clone());
    record(OP, &[logits], loss, move |dy| {
        let scale = dy.to_vec()?.first().copied().unwrap_or(1.0);
        let host: Vec<f32> = dlogits.to_vec()?.iter().map(|g| g * scale).collect();
        Ok(vec![Tensor::from_vec(host, &[m, classes], &dev)?])
    })
}

/// Inverted dropout: each element kept with probability `1 - p` (by the hash of `(seed, step, index)`)
/// and scaled by `1 / (1 - p)`; backward applies the same mask.
pub fn dropout(x: &Tensor, p: f32, seed: u64, step: u64) -> Result<Tensor> {
    let n = x.elem_count();
    let storage = dispatch!("dropout_fwd", x.device(), |b, x = x| fill_new(b, n, |y| b.dropout_fwd(y, &x, p, seed, step)));
    let y = Tensor::from_storage(storage, x.shape(), x.device().clone());
    record("dropout", &[x], y, move |dy| {
        let storage = dispatch!("dropout_bwd", dy.device(), |b, dy = dy| fill_new(b, n, |dx| b.dropout_bwd(dx, &dy, p, seed, step)));
        Ok(vec![Tensor::from_storage(
            storage,
            dy.shape(),
            dy.device().clone(),
        )])
    })
}
