//! CPU twins of every kernel: the same names, argument order and arithmetic as `kernels/*.cu`, run with
//! rayon over fixed chunks so results do not depend on scheduling. They are the specification the CUDA
//! kernels are checked against.

mod add;
mod relu;

pub use add::add_fwd;
pub use relu::{relu_bwd, relu_fwd};

use crate::backend::Backend;
use crate::Result;

/// Elements per rayon task in elementwise twins (fixed, so work splits the same way on every run).
pub(crate) const CHUNK: usize = 1 << 14;

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
