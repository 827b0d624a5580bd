//! The backend trait: one method per kernel, implemented by the CPU twins ([`crate::cpu::CpuBackend`]) and the
//! CUDA launchers ([`crate::cuda::CudaBackend`]), so a kernel cannot be added without its twin. A backend that
//! lacks an op for now returns [`crate::Error::Unsupported`], never a stub result.
//!
//! Methods take outputs first, then inputs, as the kernels do. Every method checks that its buffers agree
//! in length and returns an error, never panics.

use crate::Result;

/// A set of kernels over one kind of buffer.
pub trait Backend {
    /// An owned f32 buffer on this backend (`Vec<f32>` on the CPU, `CudaSlice<f32>` on a GPU).
    type Buf;

    /// Short backend name for error messages ("cpu", "cuda").
    fn name(&self) -> &'static str;

    /// A zero-filled buffer of `len` elements.
    fn alloc_zeros(&self, len: usize) -> Result<Self::Buf>;

    /// Copies a buffer to host memory.
    fn to_host(&self, buf: &Self::Buf) -> Result<Vec<f32>>;

    /// `y = max(x, 0)` elementwise, NaN propagating. Shapes: `y, x: [n]`.
    fn relu_fwd(&self, y: &mut Self::Buf, x: &Self::Buf) -> Result<()>;

    /// `dx = dy` where `y > 0`, else 0 (the gradient at exactly 0 is 0). Shapes: `dx, dy, y: [n]`.
    fn relu_bwd(&self, dx: &mut Self::Buf, dy: &Self::Buf, y: &Self::Buf) -> Result<()>;

    /// `y = a + b` elementwise. Shapes: `y, a, b: [n]`.
    fn add_fwd(&self, y: &mut Self::Buf, a: &Self::Buf, b: &Self::Buf) -> Result<()>;
}

/// Checks that every buffer of an elementwise op has the output's length.
pub(crate) fn check_same_len(
    op: &'static str,
    out: usize,
    inputs: &[(&'static str, usize)],
) -> Result<()> {
    match inputs.iter().find(|(_, len)| *len != out) {
        None => Ok(()),
        Some(&(what, len)) => Err(crate::Error::ShapeMismatch {
            op,
            what,
            expected: vec![out],
            got: vec![len],
        }),
    }
}
