//! CPU twins of every kernel: the same names, argument order and arithmetic as `kernels/*.cu`, run with
//! rayon over fixed chunks so results do not depend on scheduling. They are the specification the CUDA
//! kernels are checked against.

mod adam;
mod add;
mod conv;
mod dropout;
mod linear;
mod loss;
mod matmul;
mod pool;
mod reduce_conv;
mod relu;

pub use adam::adam_step;
pub use add::add_fwd;
pub use conv::{conv_bgrad, conv_dgrad, conv_fwd, conv_wgrad};
pub use dropout::{dropout_bwd, dropout_fwd, dropout_hash, dropout_threshold};
pub use linear::{linear_bgrad, linear_dgrad, linear_fwd, linear_wgrad};
pub use loss::softmax_xent;
pub use pool::{maxpool3x3s1_bwd, maxpool3x3s1_fwd};
pub use reduce_conv::{reduce_conv_bwd, reduce_conv_fwd};
pub use relu::{relu_bwd, relu_fwd};

use rayon::prelude::*;

use crate::backend::Backend;
use crate::Result;

/// Elements per rayon task in elementwise twins (fixed, so work splits the same way on every run).
pub(crate) const CHUNK: usize = 1 << 14;

/// `out = Σ_i partials[i]`, summed in index order for every element: the result does not depend on how
/// the partials were scheduled.
pub(crate) fn sum_in_order(out: &mut [f32], partials: &[Vec<f32>]) {
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        out.fill(0.0);
        for p in partials {
            for (o, v) in out.iter_mut().zip(&p[c * CHUNK..]) {
                *o += v;
            }
        }
    });
}

/// Computes one partial per image with `f(image, partial)` (in parallel) and sums them in image order into
/// `out`: deterministic whatever the thread count.
pub(crate) fn sum_over_images(
    out: &mut [f32],
    n: usize,
    f: impl Fn(usize, &mut [f32]) -> Result<()> + Sync,
) -> Result<()> {
    let partials: Vec<Vec<f32>> = (0..n)
        .into_par_iter()
        .map(|i| {
            let mut partial = vec![0.0f32; out.len()];
            f(i, &mut partial).map(|()| partial)
        })
        .collect::<Result<_>>()?;
    sum_in_order(out, &partials);
    Ok(())
}

/// The CPU backend: host `Vec<f32>` buffers and the twins above.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    type Buf = Vec<f32>;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn alloc_zeros(&self, len: usize) -> Result<Vec<f32>> {
        Ok(vec![0.0; len])
    }

    fn to_host(&self, buf: &Vec<f32>) -> Result<Vec<f32>> {
        Ok(buf.clone())
    }

    fn relu_fwd(&self, y: &mut Vec<f32>, x: &Vec<f32>) -> Result<()> {
        relu_fwd(y, x)
    }

    fn relu_bwd(&self, dx: &mut Vec<f32>, dy: &Vec<f32>, y: &Vec<f32>) -> Result<()> {
        relu_bwd(dx, dy, y)
    }

    fn add_fwd(&self, y: &mut Vec<f32>, a: &Vec<f32>, b: &Vec<f32>) -> Result<()> {
        add_fwd(y, a, b)
    }
}
