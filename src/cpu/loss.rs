//! CPU twin of `softmax_xent`: mean softmax cross-entropy over a batch and its gradient, in one op.

use crate::shape::check_len;
use crate::{Error, Result};

/// `loss[0] = mean_i(logsumexp(logits_i) - logits_i[label_i])` and `dlogits = (softmax(logits) - onehot) / m`,
/// max-subtracted. Shapes: `loss [1]`, `dlogits, logits: [m, classes]`, `labels [m]` with `m = labels.len()`.
/// A label `>= classes` is an error; NaN logits give a NaN loss (for the caller to detect).
pub fn softmax_xent(
    loss: &mut [f32],
    dlogits: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    classes: usize,
) -> Result<()> {
    const OP: &str = "softmax_xent";
    let m = labels.len();
    let len = m.checked_mul(classes).ok_or(Error::ShapeOverflow {
        op: OP,
        shape: vec![m, classes],
    })?;
    check_len(OP, "loss", 1, loss.len())?;
    check_len(OP, "dlogits", len, dlogits.len())?;
    check_len(OP, "logits", len, logits.len())?;
    if let Some((i, &l)) = labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        return Err(Error::OutOfRange {
            op: OP,
            what: format!("labels[{i}]"),
            value: l.to_string(),
            allowed: "label < number of classes",
        });
    }
    if m == 0 || classes == 0 {
        loss[0] = 0.0;
        return Ok(());
    }
    let inv_m = 1.0 / m as f32;
    let mut total = 0.0f32;
    for ((row, d), &label) in logits
        .chunks(classes)
        .zip(dlogits.chunks_mut(classes))
        .zip(labels)
    {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let max = if row.iter().any(|v| v.is_nan()) {
            f32::NAN
        } else {
            max
        };
        let mut sum = 0.0f32;
        for (d, &l) in d.iter_mut().zip(row) {
            *d = (l - max).exp();
            sum += *d;
        }
        total += sum.ln() - (row[label as usize] - max);
        for (c, d) in d.iter_mut().enumerate() {
            let onehot = if c == label as usize { 1.0 } else { 0.0 };
            *d = (*d / sum - onehot) * inv_m;
        }
    }
    loss[0] = total * inv_m;
    Ok(())
}

/// Every label must name a class: an error naming the first that does not.
pub fn check_labels(op: &'static str, labels: &[u32], classes: usize) -> Result<()> {
    match labels
        .iter()
        .enumerate()
        .find(|(_, &l)| l as usize >= classes)
    {
        None => Ok(()),
        Some((i, &l)) => Err(Error::OutOfRange {
            op,
            what: format!("labels[{i}]"),
            value: l.to_string(),
            allowed: "label < number of classes",
        }),
    }
}

/// Twin of `count_correct`: `count[0]` (+)= the number of rows of `logits [m, classes]` whose first largest
/// logit is at `labels [m]`, `count[1]` (+)= the number of rows holding a NaN (never correct); the counts are
/// added to when `accumulate`, else overwritten.
pub fn count_correct(
    count: &mut [f32],
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "count_correct";
    let m = labels.len();
    check_len(OP, "count", 2, count.len())?;
    if classes == 0 && m > 0 {
        return Err(Error::InvalidShape {
            op: OP,
            reason: format!("{m} rows of 0 classes"),
        });
    }
    check_len(OP, "logits", m.saturating_mul(classes), logits.len())?;
    crate::shape::check_count_rows(OP, m)?;
    let (mut hits, mut nans) = (0usize, 0usize);
    for (row, &label) in logits.chunks(classes.max(1)).zip(labels) {
        let best = row
            .iter()
            .enumerate()
            .fold(0, |best, (c, &v)| if v > row[best] { c } else { best });
        if row.iter().any(|v| v.is_nan()) {
            nans += 1;
        } else if best == label as usize {
            hits += 1;
        }
    }
    let (h0, n0) = if accumulate {
        (count[0], count[1])
    } else {
        (0.0, 0.0)
    };
    count[0] = h0 + hits as f32;
    count[1] = n0 + nans as f32;
    Ok(())
}
