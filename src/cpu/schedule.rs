//! CPU twins of the schedule around a training step (`kernels/train.cu`): `batch_gather` (a batch out of a
//! data set resident in the backend's memory, at the write-up's offset of the device step counter) and
//! `step_end` (the step's loss into the loss ring, then the counter advanced).

use crate::shape::check_len;
use crate::{Error, Result};

/// The first image of the batch of a step that `steps_taken` steps precede: the write-up's offset
/// `(steps_taken · batch) mod max(count − batch, 1)`, as [`crate::data::Dataset::batch`] computes it.
pub fn gather_offset(steps_taken: u64, batch: usize, count: usize) -> usize {
    let span = (count.saturating_sub(batch)).max(1) as u64;
    (steps_taken.wrapping_mul(batch as u64) % span) as usize
}

/// Checks a gather's buffers and returns `(batch, px)`: `labels [batch]`, `images [batch, px]`,
/// `data [count, px]` with `count = all_labels.len() >= batch >= 1`.
pub(crate) fn gather_shape(
    op: &'static str,
    images: usize,
    labels: usize,
    data: usize,
    all_labels: usize,
) -> Result<(usize, usize)> {
    let batch = labels;
    if batch == 0 || batch > all_labels || images % batch != 0 {
        return Err(Error::InvalidShape {
            op,
            reason: format!(
                "a batch of {batch} labels and {images} pixels from a data set of {all_labels} images \
                 (1 <= batch <= images, whole images)"
            ),
        });
    }
    let px = images / batch;
    let want = all_labels.checked_mul(px).ok_or(Error::ShapeOverflow {
        op,
        shape: vec![all_labels, px],
    })?;
    check_len(op, "data", want, data)?;
    Ok((batch, px))
}

/// `images [batch, px]` and `labels [batch]` copied from images `start..start + batch` of `data [count, px]`
/// and `all_labels [count]` (`batch` is `labels.len()`). An out-of-range `start` is an error.
pub fn batch_gather(
    images: &mut [f32],
    labels: &mut [u32],
    data: &[f32],
    all_labels: &[u32],
    start: usize,
) -> Result<()> {
    const OP: &str = "batch_gather";
    let (batch, px) = gather_shape(OP, images.len(), labels.len(), data.len(), all_labels.len())?;
    if start > all_labels.len() - batch {
        return Err(Error::OutOfRange {
            op: OP,
            what: "start".into(),
            value: start.to_string(),
            allowed: "start + batch <= images in the data set",
        });
    }
    images.copy_from_slice(&data[start * px..(start + batch) * px]);
    labels.copy_from_slice(&all_labels[start..start + batch]);
    Ok(())
}

/// [`batch_gather`] of the training step that the device step counter `counter [1]` (the steps taken) is
/// running: from [`gather_offset`]`(counter[0], batch, count)`, the host's `Dataset::batch` of that step.
pub fn batch_gather_at(
    images: &mut [f32],
    labels: &mut [u32],
    data: &[f32],
    all_labels: &[u32],
    counter: &[u32],
) -> Result<()> {
    let taken = super::dropout::step_of("batch_gather", counter)? - 1;
    let start = gather_offset(taken, labels.len(), all_labels.len());
    batch_gather(images, labels, data, all_labels, start)
}

/// The end of a training step: `losses[counter[0] % ring] = loss[0]`, then `counter[0] += 1` (wrapping, as
/// the kernel's `unsigned int`; the host refuses a step past it). Shapes: `losses [ring]`, `counter, loss
/// [1]`.
pub fn step_end(losses: &mut [f32], counter: &mut [u32], loss: &[f32]) -> Result<()> {
    const OP: &str = "step_end";
    check_len(OP, "counter", 1, counter.len())?;
    check_len(OP, "loss", 1, loss.len())?;
    if losses.is_empty() {
        return Err(Error::InvalidShape {
            op: OP,
            reason: "an empty loss ring".into(),
        });
    }
    let ring = losses.len();
    losses[counter[0] as usize % ring] = loss[0];
    counter[0] = counter[0].wrapping_add(1);
    Ok(())
}
