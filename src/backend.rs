//! The backend trait: buffers, and one method per kernel, implemented by the CPU twins
//! ([`crate::cpu::CpuBackend`]) and by the launchers of [`crate::launcher`] on a driver (the CUDA backend, the
//! emulator), so a kernel cannot be added without its twin.
//!
//! Kernels read and write views (`&[f32]` / `&mut [f32]` on the CPU, `CudaView` / `CudaViewMut` on a GPU),
//! so they work on ranges of larger buffers: a parameter inside the flat parameter buffer, a branch inside a
//! module output. Methods take outputs first, then inputs, then the shape, as the kernels do, and check
//! every length against the shape: errors, never panics.
//!
//! The kernel methods are declared once, in `for_each_kernel!`'s list, from which the trait's methods and
//! every backend's forwarding to its twin or launcher are generated: a kernel's argument list is written in
//! the list, the CPU twin, the launcher and the tensor op, nowhere else.

use std::ops::Range;

use crate::shape::ReduceConvShape;
use crate::{Error, Result};

/// The kernel methods of [`Backend`], each declared once: its docs, name and parameters. A parameter is
/// `out name` (a writable view), `inp name` (a view), `opt name` (an optional view: a null pointer for the
/// kernel when `None`), `outs3 name` (three writable views), `labels name` (a label buffer: class labels, or
/// the device step counter), `labels_out name` (a writable one) or
/// `val name: Type`. `for_each_kernel!(m)` hands the whole list to the macro `m`:
/// [`declare_kernels`] writes the trait's methods, `forward_to_twins` the CPU backend's (each calls
/// `crate::cpu::<name>`), `forward_to_launchers` a driver's (each calls `crate::launcher::<name>`).
macro_rules! for_each_kernel {
    ($m:ident) => {
        $crate::backend::$m! {
            /// `y = max(x, 0)` elementwise, NaN propagating. Shapes: `y, x: [n]`.
            fn relu_fwd(out y, inp x);
            /// `dx = dy` where `y > 0`, else 0 (the gradient at exactly 0 is 0). Shapes: `dx, dy, y: [n]`.
            fn relu_bwd(out dx, inp dy, inp y);
            /// `y = a + b` elementwise. Shapes: `y, a, b: [n]`.
            fn add_fwd(out y, inp a, inp b);
            /// Convolution into a channel slice, optional ReLU epilogue (see [`crate::cpu::conv_fwd`]).
            fn conv_fwd(out y, inp x, inp w, inp b, val s: &$crate::shape::ConvShape, val relu: bool);
            /// Input gradient of a conv, overwriting or accumulating; with `y` (the conv's output after a ReLU)
            /// `dy` counts only where `y > 0`, the ReLU's backward folded in (see [`crate::cpu::conv_dgrad`]).
            fn conv_dgrad(out dx, inp dy, opt y, inp w, val s: &$crate::shape::ConvShape, val accumulate: bool);
            /// Weight and bias gradients of a conv into `dwdb = [dw | db]`, `dy` masked by `y` as in
            /// `conv_dgrad` (see [`crate::cpu::conv_wgrad`]).
            fn conv_wgrad(out dwdb, inp dy, opt y, inp x, val s: &$crate::shape::ConvShape);
            /// The fused reduce conv forward; `mid` receives the reduced map (see
            /// [`crate::cpu::reduce_conv_fwd`]). `params` is `[w1 | b1 | w2 | b2]`, contiguous as in the flat
            /// parameter buffer.
            fn reduce_conv_fwd(out y, out mid, inp x, inp params, val s: &$crate::shape::ReduceConvShape);
            /// The fused reduce conv backward (see [`crate::cpu::reduce_conv_bwd`]); `dparams` receives
            /// `[dw1 | db1 | dw2 | db2]`, `params` is `[w1 | b1 | w2 | b2]`; `scratch [n, c_mid, h, w]` is
            /// working memory (a backend that needs none only checks its length), so the pass allocates
            /// nothing. With `y` (its output, after its ReLU) `dy` is the gradient of `y` and counts only where
            /// `y > 0`; without, `dy` is the gradient before that ReLU.
            fn reduce_conv_bwd(
                out dx, out dparams, out scratch, inp dy, opt y, inp x, inp mid, inp params,
                val s: &$crate::shape::ReduceConvShape, val accumulate: bool
            );
            /// 3×3 stride-1 max pooling (see [`crate::cpu::maxpool3x3s1_fwd`]).
            fn maxpool3x3s1_fwd(out y, inp x, val s: &$crate::shape::PoolShape);
            /// Its gather backward, overwriting or accumulating (see [`crate::cpu::maxpool3x3s1_bwd`]).
            fn maxpool3x3s1_bwd(out dx, inp dy, inp x, val s: &$crate::shape::PoolShape, val accumulate: bool);
            /// `y = x · wᵀ + b` (see [`crate::cpu::linear_fwd`]).
            fn linear_fwd(out y, inp x, inp w, inp b, val s: &$crate::shape::LinearShape);
            /// `dx = dy · w`.
            fn linear_dgrad(out dx, inp dy, inp w, val s: &$crate::shape::LinearShape);
            /// `dw = dyᵀ · x`.
            fn linear_wgrad(out dw, inp dy, inp x, val s: &$crate::shape::LinearShape);
            /// Adam applied to `w` (with its moments `adam_m`, `adam_v`, in that order) with the gradient
            /// `dyᵀ · x`, which is never stored: equal to `linear_wgrad` then `adam_step` over `w` (see
            /// [`crate::cpu::linear_wgrad_adam`]). Shapes: `w, adam_m, adam_v [n_out, k_in]`,
            /// `dy [m, n_out]`, `x [m, k_in]`.
            fn linear_wgrad_adam(outs3 w_m_v, inp dy, inp x, val s: &$crate::shape::LinearShape, val step: &$crate::shape::AdamStep);
            /// A linear layer's input gradient and its weight's Adam update in one pass over the weight:
            /// `dx = dy · w` from the weight before its update, then `w, adam_m, adam_v` as
            /// `linear_wgrad_adam` leaves them (see [`crate::cpu::linear_bwd_adam`]). Shapes: `dx [m, k_in]`,
            /// `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
            fn linear_bwd_adam(
                out dx, outs3 w_m_v, inp dy, inp x, val s: &$crate::shape::LinearShape,
                val step: &$crate::shape::AdamStep
            );
            /// `db = Σ_rows dy`.
            fn linear_bgrad(out db, inp dy, val s: &$crate::shape::LinearShape);
            /// Mean softmax cross-entropy and its gradient (see [`crate::cpu::softmax_xent`]); the loss
            /// stays on the device in `loss [1]`.
            fn softmax_xent(out loss, out dlogits, inp logits, labels labels, val classes: usize);
            /// `count[0]` (+)= the number of rows of `logits [m, classes]` whose first largest logit is at
            /// their label (`labels [m]`), `count[1]` (+)= the rows holding a NaN (see
            /// [`crate::cpu::count_correct`]). The counts stay on the device: an evaluation reads them once.
            fn count_correct(out count, inp logits, labels labels, val classes: usize, val accumulate: bool);
            /// Inverted dropout with the hash mask of `(seed, step)` (see [`crate::cpu::dropout_fwd`]).
            fn dropout_fwd(out y, inp x, val p: f32, val seed: u64, val step: u64);
            /// Its backward: the same mask and scale applied to `dy`.
            fn dropout_bwd(out dx, inp dy, val p: f32, val seed: u64, val step: u64);
            /// One Adam update over flat buffers (see [`crate::cpu::adam_step`]).
            fn adam_step(out p, out m, out v, inp g, val step: &$crate::shape::AdamStep);
            /// [`Backend::adam_step`] with the scalars of the step being run read on the device: row
            /// `counter[0]` of the Adam table `table [rows, 6]` (rows of [`crate::shape::AdamStep::scalars`]
            /// for steps 1, 2, ...; `counter [1]` holds the steps taken), so a captured step replays right.
            /// The caller keeps `counter[0] < rows` (the CPU twin and the emulator check it).
            fn adam_step_at(out p, out m, out v, inp g, inp table, labels counter);
            /// [`Backend::linear_wgrad_adam`] with the scalars read on the device as [`Backend::adam_step_at`].
            fn linear_wgrad_adam_at(
                outs3 w_m_v, inp dy, inp x, val s: &$crate::shape::LinearShape, inp table, labels counter
            );
            /// [`Backend::linear_bwd_adam`] with the scalars read on the device as [`Backend::adam_step_at`].
            fn linear_bwd_adam_at(
                out dx, outs3 w_m_v, inp dy, inp x, val s: &$crate::shape::LinearShape, inp table,
                labels counter
            );
            /// [`Backend::dropout_fwd`] at the step being run, `counter[0] + 1` (`counter [1]`: steps taken).
            fn dropout_fwd_at(out y, inp x, val p: f32, val seed: u64, labels counter);
            /// [`Backend::dropout_bwd`] at the step being run, `counter[0] + 1`.
            fn dropout_bwd_at(out dx, inp dy, val p: f32, val seed: u64, labels counter);
            /// A batch out of a data set resident on the device (see [`crate::cpu::batch_gather`]):
            /// `images [batch, px]` and `labels [batch]` copied from images `start..start + batch` of
            /// `data [count, px]` and `all_labels [count]`.
            fn batch_gather(out images, labels_out labels, inp data, labels all_labels, val start: usize);
            /// [`Backend::batch_gather`] of the training step being run: from the write-up's offset
            /// `(counter[0] · batch) mod max(count − batch, 1)` of the device step counter `counter [1]` (the
            /// host's [`crate::data::Dataset::batch`] of that step).
            fn batch_gather_at(out images, labels_out labels, inp data, labels all_labels, labels counter);
            /// The end of a training step on the device: `losses[counter[0] % losses.len()] = loss[0]`, then
            /// `counter[0] += 1` (see [`crate::cpu::step_end`]). Shapes: `losses [ring]`, `counter, loss [1]`.
            fn step_end(out losses, labels_out counter, inp loss);
            /// `d = a · b + c` for one 16 × 8 × 8 tile on the tensor cores, operands rounded to TF32: the
            /// probe of the fragment layout the TF32 kernels share (see [`crate::cpu::mma_tf32_tile`]).
            /// Shapes: `d, a, c: [16, 8]`, `b: [8, 8]` (k, n), row-major.
            fn mma_tf32_tile(out d, inp a, inp b, inp c);
        }
    };
}
pub(crate) use for_each_kernel;

/// The Rust type of a kernel parameter of [`for_each_kernel`]'s list, inside the trait or an impl.
macro_rules! kernel_param {
    (out) => { &mut Self::ViewMut<'_> };
    (inp) => { &Self::View<'_> };
    (opt) => { Option<&Self::View<'_>> };
    (outs3) => { [&mut Self::ViewMut<'_>; 3] };
    (labels) => { &Self::Labels };
    (labels_out) => { &mut Self::Labels };
    (val $t:ty) => { $t };
}
pub(crate) use kernel_param;

/// [`Backend`]'s kernel methods, from [`for_each_kernel`]'s list.
macro_rules! declare_kernels {
    ($($(#[$doc:meta])* fn $name:ident($($kind:ident $arg:ident $(: $t:ty)?),* $(,)?);)*) => {
        $(
            $(#[$doc])*
            #[allow(clippy::too_many_arguments)]
            fn $name(&self, $($arg: $crate::backend::kernel_param!($kind $($t)?)),*) -> $crate::Result<()>;
        )*
    };
}
pub(crate) use declare_kernels;

/// A CPU backend's kernel methods: each calls the twin `crate::cpu::<name>` with the views as slices.
macro_rules! forward_to_twins {
    ($($(#[$doc:meta])* fn $name:ident($($kind:ident $arg:ident $(: $t:ty)?),* $(,)?);)*) => {
        $(
            #[allow(clippy::too_many_arguments)]
            fn $name(&self, $($arg: $crate::backend::kernel_param!($kind $($t)?)),*) -> $crate::Result<()> {
                $crate::cpu::$name($($crate::backend::twin_arg!($kind $arg)),*)
            }
        )*
    };
}
pub(crate) use forward_to_twins;

/// One argument of a twin call: host views become plain slices.
macro_rules! twin_arg {
    (out $a:ident) => {
        &mut **$a
    };
    (inp $a:ident) => {
        *$a
    };
    (opt $a:ident) => {
        $a.map(|v| *v)
    };
    (outs3 $a:ident) => {
        $a.map(|v| &mut **v)
    };
    (labels $a:ident) => {
        $a
    };
    (labels_out $a:ident) => {
        $a
    };
    (val $a:ident) => {
        $a
    };
}
pub(crate) use twin_arg;

/// A driver's kernel methods: each calls the launcher `crate::launcher::<name>` on the driver. (The CPU-only
/// build has no driver.)
#[cfg(any(feature = "cuda", feature = "emulation", test))]
macro_rules! forward_to_launchers {
    ($($(#[$doc:meta])* fn $name:ident($($kind:ident $arg:ident $(: $t:ty)?),* $(,)?);)*) => {
        $(
            #[allow(clippy::too_many_arguments)]
            fn $name(&self, $($arg: $crate::backend::kernel_param!($kind $($t)?)),*) -> $crate::Result<()> {
                $crate::launcher::$name(self, $($arg),*)
            }
        )*
    };
}
#[cfg(any(feature = "cuda", feature = "emulation", test))]
pub(crate) use forward_to_launchers;

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

    /// Whether a training plan folds a ReLU's backward into the kernels that first read its gradient
    /// ([`crate::graph::TrainOptions::separate_relu_bwd`]): a pass over memory fewer on a GPU. The CPU twins
    /// apply such a mask as a `relu_bwd` copy per reading kernel (several per ReLU), so the CPU backend keeps
    /// the one separate pass (`false`); both forms give the same bits.
    const FOLDS_RELU_BWD: bool = true;

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

    for_each_kernel!(declare_kernels);

    /// Records the launches `f` issues on this backend as a replayable graph (a CUDA graph), without
    /// running them: the caller replays it ([`StepGraph::replay`]) to run them, once now and again for every
    /// later step whose launches are the same. `None` when this backend does not record (the CPU twins and
    /// the emulator run launches as they are issued; `f` is then not called) or could not record this work
    /// as a replayable graph (then nothing of `f` ran either, and the caller issues the work itself).
    fn capture_graph(
        &self,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<Box<dyn StepGraph>>> {
        let _ = f;
        Ok(None)
    }

    /// Copies `buf` to host memory in stream order without waiting: the copy sees every launch issued before
    /// it and none issued after, and [`Download::wait`] (on any thread) waits for it alone. A host-resident
    /// backend copies at once; the CUDA backend copies into pinned memory asynchronously.
    fn download_async(&self, buf: &Self::Buf) -> Result<Download> {
        Ok(Download::ready(self.to_host(buf)?))
    }
}

/// A device-to-host copy issued by [`Backend::download_async`]: sendable to another thread, which waits for
/// it there.
pub struct Download(DownloadState);

enum DownloadState {
    Ready(Vec<f32>),
    Pending(Box<dyn PendingDownload>),
}

/// A copy still in flight ([`Download::pending`]).
pub trait PendingDownload: Send {
    /// Waits for the copy and hands the values over.
    fn wait(self: Box<Self>) -> Result<Vec<f32>>;
}

impl Download {
    /// A copy already made.
    pub fn ready(values: Vec<f32>) -> Self {
        Download(DownloadState::Ready(values))
    }

    /// A copy in flight.
    pub fn pending(copy: Box<dyn PendingDownload>) -> Self {
        Download(DownloadState::Pending(copy))
    }

    /// The values, once the copy has finished (waiting for it here).
    pub fn wait(self) -> Result<Vec<f32>> {
        match self.0 {
            DownloadState::Ready(v) => Ok(v),
            DownloadState::Pending(p) => p.wait(),
        }
    }
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            DownloadState::Ready(_) => "Download(ready)",
            DownloadState::Pending(_) => "Download(pending)",
        })
    }
}

/// Launches recorded by [`Backend::capture_graph`], replayable on the backend's stream.
pub trait StepGraph {
    /// Whether the recorded addresses are all still the ones to use (a backend's working memory may have
    /// been reallocated since the capture: then the graph must be captured again).
    fn is_current(&self) -> bool;
    /// Runs the recorded launches again, asynchronously, in stream order.
    fn replay(&self) -> Result<()>;
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
