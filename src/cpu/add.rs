//! CPU twin of `kernels/add.cu`.

use rayon::prelude::*;

use super::CHUNK;
use crate::backend::check_same_len;
use crate::Result;

/// `y = a + b` elementwise. Shapes: `y, a, b: [n]`.
pub fn add_fwd(y: &mut [f32], a: &[f32], b: &[f32]) -> Result<()> {
    check_same_len("add_fwd", y.len(), &[("a", a.len()), ("b", b.len())])?;
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
                *y = a + b;
            }
        });
    Ok(())
}
