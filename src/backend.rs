//! The backend trait: one method per kernel, implemented by the CPU twins ([`crate::cpu::CpuBackend`]) and the
//! CUDA launchers ([`crate::cuda::CudaBackend`]), so a kernel cannot be added without its twin. A backend that
//! lacks an op for now returns [`crate::Error::Unsupported`], never a stub result.
//!
//! Kernels read and write views (`&[f32]` / `&mut [f32]` on the CPU, `CudaView` / `CudaViewMut` on a GPU),
//! so they work on ranges of larger buffers: a parameter inside the flat parameter buffer, a branch inside a
//! module output. Methods take outputs first, then inputs, then the shape, as the kernels do, and check
//! every length against the shape: errors, never panics.

use std::ops::Range;

use crate::shape::{AdamStep, ConvShape, LinearShape, PoolShape, ReduceConvShape};
use crate::{Error, Result};

/// A set of kernels over one kind of buffer.
pub trait Backend {
    /// An owned f32 buffer (`Vec<f32>` on the CPU, `CudaSlice<f32>` on a GPU).
    type Buf;
    /// An owned buffer of class labels (`u32`).
    type Labels;
    /// A read-only range of a buffer.
    type View<'a>
    where
        Self: 'a;
    /// A writable range of a buffer.
    type ViewMut<'a>
    where
        Self: 'a;

    /// Short backend name for error messages ("cpu", "cuda").
    fn name(&self) -> &'static str;
    /// A zero-filled buffer of `len` elements.
    fn alloc_zeros(&self, len: usize) -> Result<Self::Buf>;
    /// A buffer holding a copy of `data`.
    fn upload(&self, data: &[f32]) -> Result<Self::Buf>;
    /// A label buffer holding a copy of `labels`.
    fn upload_labels(&self, labels: &[u32]) -> Result<Self::Labels>;
    /// Copies device data: `dst = src` (same length).
    fn copy(&self, dst: &mut Self::ViewMut<'_>, src: &Self::View<'_>) -> Result<()>;
    /// Copies `src` into `dst` (same length).
    fn write(&self, dst: &mut Self::ViewMut<'_>, src: &[f32]) -> Result<()>;
    /// Copies `src` into the label buffer `dst` (same length).
    fn write_labels(&self, dst: &mut Self::Labels, src: &[u32]) -> Result<()>;
    /// Copies a buffer to host memory (waiting for the device).
    fn to_host(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    /// Copies a view to host memory (waiting for the device).
    fn read(&self, src: &Self::View<'_>) -> Result<Vec<f32>>;
    /// Elements in a buffer.
    fn len(&self, buf: &Self::Buf) -> usize;
    /// The elements `range` of `buf`, read-only (an error when out of bounds).
    fn view<'a>(&'a self, buf: &'a Self::Buf, range: Range<usize>) -> Result<Self::View<'a>>;
    /// The elements `range` of `buf`, writable (an error when out of bounds).
    fn view_mut<'a>(
        &'a self,
        buf: &'a mut Self::Buf,
        range: Range<usize>,
    ) -> Result<Self::ViewMut<'a>>;

    /// `y = max(x, 0)` elementwise, NaN propagating. Shapes: `y, x: [n]`.
    fn relu_fwd(&self, y: &mut Self::ViewMut<'_>, x: &Self::View<'_>) -> Result<()>;
    /// `dx = dy` where `y > 0`, else 0 (the gradient at exactly 0 is 0). Shapes: `dx, dy, y: [n]`.
    fn relu_bwd(
        &self,
        dx: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        y: &Self::View<'_>,
    ) -> Result<()>;
    /// `y = a + b` elementwise. Shapes: `y, a, b: [n]`.
    fn add_fwd(
        &self,
        y: &mut Self::ViewMut<'_>,
        a: &Self::View<'_>,
        b: &Self::View<'_>,
    ) -> Result<()>;

    /// Convolution into a channel slice, optional ReLU epilogue (see [`crate::cpu::conv_fwd`]).
    fn conv_fwd(
        &self,
        y: &mut Self::ViewMut<'_>,
        x: &Self::View<'_>,
        w: &Self::View<'_>,
        b: &Self::View<'_>,
        s: &ConvShape,
        relu: bool,
    ) -> Result<()>;
    /// Input gradient of a conv, overwriting or accumulating (see [`crate::cpu::conv_dgrad`]).
    fn conv_dgrad(
        &self,
        dx: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        w: &Self::View<'_>,
        s: &ConvShape,
        accumulate: bool,
    ) -> Result<()>;
    /// Weight gradient of a conv (see [`crate::cpu::conv_wgrad`]).
    fn conv_wgrad(
        &self,
        dw: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        x: &Self::View<'_>,
        s: &ConvShape,
    ) -> Result<()>;
    /// Bias gradient of a conv (see [`crate::cpu::conv_bgrad`]).
    fn conv_bgrad(
        &self,
        db: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        s: &ConvShape,
    ) -> Result<()>;

    /// The fused reduce conv forward; `mid` receives the reduced map (see [`crate::cpu::reduce_conv_fwd`]).
    /// `params` is `[w1 | b1 | w2 | b2]`, contiguous as in the flat parameter buffer.
    fn reduce_conv_fwd(
        &self,
        y: &mut Self::ViewMut<'_>,
        mid: &mut Self::ViewMut<'_>,
        x: &Self::View<'_>,
        params: &Self::View<'_>,
        s: &ReduceConvShape,
    ) -> Result<()>;
    /// The fused reduce conv backward (see [`crate::cpu::reduce_conv_bwd`]); `dparams` receives
    /// `[dw1 | db1 | dw2 | db2]`, `params` is `[w1 | b1 | w2 | b2]`; `scratch [n, c_mid, h, w]` is working
    /// memory (a backend that needs none ignores it), so the pass allocates nothing.
    #[allow(clippy::too_many_arguments)]
    fn reduce_conv_bwd(
        &self,
        dx: &mut Self::ViewMut<'_>,
        dparams: &mut Self::ViewMut<'_>,
        scratch: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        x: &Self::View<'_>,
        mid: &Self::View<'_>,
        params: &Self::View<'_>,
        s: &ReduceConvShape,
        accumulate: bool,
    ) -> Result<()>;

    /// 3×3 stride-1 max pooling (see [`crate::cpu::maxpool3x3s1_fwd`]).
    fn maxpool3x3s1_fwd(
        &self,
        y: &mut Self::ViewMut<'_>,
        x: &Self::View<'_>,
        s: &PoolShape,
    ) -> Result<()>;
    /// Its gather backward, overwriting or accumulating (see [`crate::cpu::maxpool3x3s1_bwd`]).
    fn maxpool3x3s1_bwd(
        &self,
        dx: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        x: &Self::View<'_>,
        s: &PoolShape,
        accumulate: bool,
    ) -> Result<()>;

    /// `y = x · wᵀ + b` (see [`crate::cpu::linear_fwd`]).
    fn linear_fwd(
        &self,
        y: &mut Self::ViewMut<'_>,
        x: &Self::View<'_>,
        w: &Self::View<'_>,
        b: &Self::View<'_>,
        s: &LinearShape,
    ) -> Result<()>;
    /// `dx = dy · w`.
    fn linear_dgrad(
        &self,
        dx: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        w: &Self::View<'_>,
        s: &LinearShape,
    ) -> Result<()>;
    /// `dw = dyᵀ · x`.
    fn linear_wgrad(
        &self,
        dw: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        x: &Self::View<'_>,
        s: &LinearShape,
    ) -> Result<()>;
    /// Adam applied to `w` (with its moments `adam_m`, `adam_v`, in that order) with the gradient `dyᵀ · x`,
    /// which is never stored: equal to `linear_wgrad` then `adam_step` over `w` (see
    /// [`crate::cpu::linear_wgrad_adam`]). Shapes: `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`,
    /// `x [m, k_in]`.
    fn linear_wgrad_adam(
        &self,
        w_m_v: [&mut Self::ViewMut<'_>; 3],
        dy: &Self::View<'_>,
        x: &Self::View<'_>,
        s: &LinearShape,
        step: &AdamStep,
    ) -> Result<()>;
    /// `db = Σ_rows dy`.
    fn linear_bgrad(
        &self,
        db: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        s: &LinearShape,
    ) -> Result<()>;

    /// Mean softmax cross-entropy and its gradient (see [`crate::cpu::softmax_xent`]); the loss stays on
    /// the device in `loss [1]`.
    fn softmax_xent(
        &self,
        loss: &mut Self::ViewMut<'_>,
        dlogits: &mut Self::ViewMut<'_>,
        logits: &Self::View<'_>,
        labels: &Self::Labels,
        classes: usize,
    ) -> Result<()>;
    /// Inverted dropout with the hash mask of `(seed, step)` (see [`crate::cpu::dropout_fwd`]).
    fn dropout_fwd(
        &self,
        y: &mut Self::ViewMut<'_>,
        x: &Self::View<'_>,
        p: f32,
        seed: u64,
        step: u64,
    ) -> Result<()>;
    /// Its backward: the same mask and scale applied to `dy`.
    fn dropout_bwd(
        &self,
        dx: &mut Self::ViewMut<'_>,
        dy: &Self::View<'_>,
        p: f32,
        seed: u64,
        step: u64,
    ) -> Result<()>;
    /// One Adam update over flat buffers (see [`crate::cpu::adam_step`]).
    fn adam_step(
        &self,
        p: &mut Self::ViewMut<'_>,
        m: &mut Self::ViewMut<'_>,
        v: &mut Self::ViewMut<'_>,
        g: &Self::View<'_>,
        step: &AdamStep,
    ) -> Result<()>;
}

/// Something that provides a shared backend: a backend value (`CpuBackend`, `EmuBackend`) or an `Arc` of one
/// (`CudaDevice::backend_arc()`), for holders such as `nn::InceptionMnist`.
pub trait BackendHandle {
    /// The backend.
    type Backend: Backend;
    /// The backend, shared.
    fn into_backend(self) -> std::sync::Arc<Self::Backend>;
}

impl<B: Backend> BackendHandle for std::sync::Arc<B> {
    type Backend = B;
    fn into_backend(self) -> std::sync::Arc<B> {
        self
    }
}

/// Checks that every buffer of an elementwise op has the output's length.
pub(crate) fn check_same_len(
    op: &'static str,
    out: usize,
    inputs: &[(&'static str, usize)],
) -> Result<()> {
    match inputs.iter().find(|(_, len)| *len != out) {
        None => Ok(()),
        Some(&(what, len)) => Err(Error::ShapeMismatch {
            op,
            what,
            expected: vec![out],
            got: vec![len],
        }),
    }
}

/// Checks that `range` lies inside a buffer of `len` elements.
pub(crate) fn check_range(op: &'static str, range: &Range<usize>, len: usize) -> Result<()> {
    if range.start <= range.end && range.end <= len {
        Ok(())
    } else {
        Err(Error::InvalidShape {
            op,
            reason: format!("range {range:?} outside a buffer of {len} elements"),
        })
    }
}

/// The element ranges of `[w1 | b1 | w2 | b2]` inside a fused reduce conv's parameter block.
pub fn reduce_conv_param_ranges(s: &ReduceConvShape) -> [Range<usize>; 4] {
    let w1 = s.c_mid * s.c_in;
    let w2 = s.c_out * s.c_mid * s.k * s.k;
    let ends = [
        w1,
        w1 + s.c_mid,
        w1 + s.c_mid + w2,
        w1 + s.c_mid + w2 + s.c_out,
    ];
    [
        0..ends[0],
        ends[0]..ends[1],
        ends[1]..ends[2],
        ends[2]..ends[3],
    ]
}
