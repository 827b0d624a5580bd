//! The CUDA backend: one safe launcher per kernel over cudarc buffers, and the device handle that owns the
//! context, the stream and the kernels (loaded once per device from the PTX embedded at build time).
//!
//! All `unsafe` of the GPU path lives in this module, each block with a `// SAFETY:` line.
//!
//! The launchers are the primitive API: call them on your own cudarc buffers (views of them) with a shape
//! descriptor; they check every length, launch on the device's stream and return without waiting.
//!
//! ```no_run
//! use inception_cuda::{cuda, shape::ConvShape, Device};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dev = Device::cuda(0)?;
//! let Device::Cuda(d) = &dev else { unreachable!() };
//! let gpu = d.backend();
//! // A 3×3 conv of a batch of 2 images with 4 channels into channels 8..16 of a 32-channel output.
//! let s = ConvShape::new(2, 4, 8, 28, 28, 3).into_slice(32, 8);
//! let x = gpu.stream().clone_htod(&vec![0.5f32; 2 * 4 * 28 * 28])?;
//! let w = gpu.stream().clone_htod(&vec![0.01f32; 8 * 4 * 3 * 3])?;
//! let b = gpu.stream().alloc_zeros::<f32>(8)?;
//! let mut y = gpu.stream().alloc_zeros::<f32>(2 * 32 * 28 * 28)?;
//! cuda::conv_fwd(gpu, &mut y.as_view_mut(), &x.as_view(), &w.as_view(), &b.as_view(), &s, true)?;
//! gpu.synchronize()?;
//! # Ok(())
//! # }
//! ```
//! `examples/primitives.rs` builds a whole Inception module, forward and backward, this way.

mod add;
mod conv;
mod graph;
mod linear;
mod relu;
mod train;

pub use add::add_fwd;
pub use conv::{conv_bgrad, conv_dgrad, conv_fwd, conv_wgrad, reduce_conv_bwd, reduce_conv_fwd};
pub use graph::{CapturedGraph, GraphNode};
pub use linear::{linear_bgrad, linear_dgrad, linear_fwd, linear_wgrad, linear_wgrad_adam};
pub use relu::{relu_bwd, relu_fwd};
pub use train::{
    adam_step, dropout_bwd, dropout_fwd, maxpool3x3s1_bwd, maxpool3x3s1_fwd, softmax_xent,
};

use std::ops::Range;
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    DriverError, LaunchConfig,
};
use cudarc::nvrtc::Ptx;

use crate::backend::{check_range, Backend};
use crate::error::CudaUnavailable;
use crate::launch::LaunchDims;
use crate::shape::{check_len, AdamStep, ConvShape, LinearShape, PoolShape, ReduceConvShape};
use crate::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/ptx_modules.rs"));
}

/// Where the embedded PTX came from: `"nvcc <version>"`, or the committed copy when nvcc was absent.
pub const PTX_ORIGIN: &str = embedded::PTX_ORIGIN;

/// Declares every kernel module and its functions; `Kernels` gets one field per function.
macro_rules! kernel_table {
    ($($module:literal => [$($kernel:ident),+ $(,)?]),+ $(,)?) => {
        /// Every kernel function of the crate, loaded once per device.
        pub(crate) struct Kernels {
            $($(pub(crate) $kernel: CudaFunction,)+)+
        }

        /// (module, kernels) of every `kernels/*.cu`, as the loader expects them.
        #[cfg(test)]
        pub(crate) const KERNEL_TABLE: &[(&str, &[&str])] = &[$(($module, &[$(stringify!($kernel)),+])),+];

        impl Kernels {
            fn load(ctx: &Arc<CudaContext>) -> Result<Self, CudaUnavailable> {
                $(
                    let module = load_module(ctx, $module)?;
                    $(let $kernel = load_function(&module, $module, stringify!($kernel))?;)+
                )+
                Ok(Self { $($($kernel,)+)+ })
            }
        }
    };
}

kernel_table! {
    "add" => [add_fwd],
    "conv" => [conv_fwd, conv_dgrad, conv_wgrad, conv_bgrad, conv_split_sum, reduce_conv_fwd, reduce_conv_dmid],
    "linear" => [linear_fwd, linear_fwd_reduce, linear_dgrad, linear_wgrad, linear_wgrad_adam, linear_bgrad],
    "pool" => [maxpool3x3s1_fwd, maxpool3x3s1_bwd],
    "relu" => [relu_fwd, relu_bwd],
    "train" => [softmax_xent, dropout_fwd, dropout_bwd, adam_step],
}

fn load_module(
    ctx: &Arc<CudaContext>,
    module: &'static str,
) -> Result<Arc<CudaModule>, CudaUnavailable> {
    let (_, ptx) = embedded::MODULES
        .iter()
        .find(|(name, _)| *name == module)
        .ok_or(CudaUnavailable::ModuleMissing { module })?;
    ctx.load_module(Ptx::from_src(*ptx))
        .map_err(|source| CudaUnavailable::PtxRejected {
            module,
            origin: PTX_ORIGIN,
            source,
        })
}

fn load_function(
    module: &Arc<CudaModule>,
    name: &'static str,
    kernel: &'static str,
) -> Result<CudaFunction, CudaUnavailable> {
    module
        .load_function(kernel)
        .map_err(|source| CudaUnavailable::KernelMissing {
            module: name,
            kernel,
            source,
        })
}

/// One CUDA device: its context, the stream every op of this crate runs on, and the loaded kernels.
///
/// Obtained through [`crate::Device::cuda`]; opened once per ordinal and shared afterwards.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    kernels: Kernels,
    name: String,
    /// Working memory of kernels that need some (the linear forward's split-K partials), kept and grown,
    /// never shrunk: after the first step nothing is allocated. Used only on `stream`, in issue order.
    scratch: Mutex<Option<CudaSlice<f32>>>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{} ({})", self.ctx.ordinal(), self.name)
    }
}

/// Devices opened so far, by ordinal: kernels are loaded once per device.
static OPEN: Mutex<Vec<(usize, Arc<CudaBackend>)>> = Mutex::new(Vec::new());

impl CudaBackend {
    /// Opens device `ordinal` (or returns the handle opened before). Never panics: a missing driver, a
    /// missing device or PTX the driver rejects come back as [`CudaUnavailable`].
    pub(crate) fn open(ordinal: usize) -> Result<Arc<Self>, CudaUnavailable> {
        let mut open = OPEN.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, dev)) = open.iter().find(|(o, _)| *o == ordinal) {
            return Ok(dev.clone());
        }
        let dev = Arc::new(Self::load(ordinal)?);
        open.push((ordinal, dev.clone()));
        Ok(dev)
    }

    fn load(ordinal: usize) -> Result<Self, CudaUnavailable> {
        let driver = |during| {
            move |source| CudaUnavailable::Driver {
                ordinal,
                during,
                source,
            }
        };
        // cudarc panics on the first driver call when libcuda cannot be loaded, so probe for it first.
        // SAFETY: only attempts to dlopen libcuda by its usual names; no other precondition.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaUnavailable::NoDriver);
        }
        let count = CudaContext::device_count().map_err(driver("cuInit / cuDeviceGetCount"))?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            return Err(CudaUnavailable::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating the context"))?;
        // A stream of our own: the legacy default stream cannot be captured into a CUDA graph.
        let stream = ctx.new_stream().map_err(driver("creating a stream"))?;
        let name = ctx.name().map_err(driver("reading the device name"))?;
        let kernels = Kernels::load(&ctx)?;
        Ok(Self {
            ctx,
            stream,
            kernels,
            name,
            scratch: Mutex::new(None),
        })
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ctx.ordinal()
    }

    /// The device name reported by the driver (for example "NVIDIA H200").
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The cudarc context.
    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The stream every op of this crate on this device is issued to.
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Blocks until every op issued to [`Self::stream`] has finished.
    pub fn synchronize(&self) -> Result<()> {
        self.stream
            .synchronize()
            .map_err(driver_error("synchronize"))
    }

    /// Runs `f` with at least `len` floats of this device's scratch memory.
    pub(crate) fn with_scratch<T>(
        &self,
        len: usize,
        f: impl FnOnce(&mut CudaViewMut<'_, f32>) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.as_ref().is_none_or(|s| s.len() < len) {
            // SAFETY: uninitialised f32 device memory; every kernel using scratch writes before it reads.
            *guard = Some(
                unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(driver_error("scratch"))?,
            );
        }
        let buf = guard.as_mut().ok_or(Error::Backward {
            reason: "scratch missing".into(),
        })?;
        f(&mut buf.slice_mut(0..len))
    }

    pub(crate) fn kernels(&self) -> &Kernels {
        &self.kernels
    }

    /// Checks that `buf` was allocated in this device's context.
    pub(crate) fn check_buf(
        &self,
        op: &'static str,
        what: &'static str,
        buf: &CudaSlice<f32>,
    ) -> Result<()> {
        if buf.context().as_ref() == self.ctx.as_ref() {
            Ok(())
        } else {
            Err(Error::DeviceMismatch {
                op,
                what,
                expected: format!("{self:?}"),
                got: format!("cuda:{}", buf.context().ordinal()),
            })
        }
    }
}

/// Maps a driver error of `op` into [`Error::Cuda`].
pub(crate) fn driver_error(op: &'static str) -> impl FnOnce(DriverError) -> Error {
    move |source| Error::Cuda { op, source }
}

/// cudarc's launch configuration for the shared geometry.
pub(crate) fn launch_config(dims: LaunchDims) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (dims.grid, dims.grid_y, dims.grid_z),
        block_dim: (dims.block, 1, 1),
        shared_mem_bytes: dims.shared_bytes,
    }
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;
    type Labels = CudaSlice<u32>;
    type View<'a> = CudaView<'a, f32>;
    type ViewMut<'a> = CudaViewMut<'a, f32>;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn alloc_zeros(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream.alloc_zeros(len).map_err(driver_error("alloc"))
    }

    fn upload(&self, data: &[f32]) -> Result<CudaSlice<f32>> {
        self.stream.clone_htod(data).map_err(driver_error("upload"))
    }

    fn upload_labels(&self, labels: &[u32]) -> Result<CudaSlice<u32>> {
        self.stream
            .clone_htod(labels)
            .map_err(driver_error("upload_labels"))
    }

    fn copy(&self, dst: &mut CudaViewMut<'_, f32>, src: &CudaView<'_, f32>) -> Result<()> {
        check_len("copy", "dst", src.len(), dst.len())?;
        self.stream
            .memcpy_dtod(src, dst)
            .map_err(driver_error("copy"))
    }

    fn write(&self, dst: &mut CudaViewMut<'_, f32>, src: &[f32]) -> Result<()> {
        check_len("write", "dst", src.len(), dst.len())?;
        self.stream
            .memcpy_htod(src, dst)
            .map_err(driver_error("write"))
    }

    fn write_labels(&self, dst: &mut CudaSlice<u32>, src: &[u32]) -> Result<()> {
        check_len("write_labels", "dst", src.len(), dst.len())?;
        self.stream
            .memcpy_htod(src, dst)
            .map_err(driver_error("write_labels"))
    }

    fn to_host(&self, buf: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.check_buf("to_host", "buffer", buf)?;
        let host = self
            .stream
            .clone_dtoh(buf)
            .map_err(driver_error("download"))?;
        self.synchronize()?;
        Ok(host)
    }

    fn read(&self, src: &CudaView<'_, f32>) -> Result<Vec<f32>> {
        let host = self
            .stream
            .clone_dtoh(src)
            .map_err(driver_error("download"))?;
        self.synchronize()?;
        Ok(host)
    }

    fn len(&self, buf: &CudaSlice<f32>) -> usize {
        buf.len()
    }

    fn view<'a>(
        &'a self,
        buf: &'a CudaSlice<f32>,
        range: Range<usize>,
    ) -> Result<CudaView<'a, f32>> {
        self.check_buf("view", "buffer", buf)?;
        check_range("view", &range, buf.len())?;
        Ok(buf.slice(range))
    }

    fn view_mut<'a>(
        &'a self,
        buf: &'a mut CudaSlice<f32>,
        range: Range<usize>,
    ) -> Result<CudaViewMut<'a, f32>> {
        self.check_buf("view_mut", "buffer", buf)?;
        check_range("view_mut", &range, buf.len())?;
        Ok(buf.slice_mut(range))
    }

    fn relu_fwd(&self, y: &mut CudaViewMut<'_, f32>, x: &CudaView<'_, f32>) -> Result<()> {
        relu_fwd(self, y, x)
    }

    fn relu_bwd(
        &self,
        dx: &mut CudaViewMut<'_, f32>,
        dy: &CudaView<'_, f32>,
        y: &CudaView<'_, f32>,
    ) -> Result<()> {
        relu_bwd(self, dx, dy, y)
    }

    fn add_fwd(
        &self,
        y: &mut CudaViewMut<'_, f32>,
        a: &CudaView<'_, f32>,
        b: &CudaView<'_, f32>,
    ) -> Result<()> {
        add_fwd(self, y, a, b)
    }

    fn conv_fwd(
        &self,
        y: &mut V<'_>,
        x: &R<'_>,
        w: &R<'_>,
        b: &R<'_>,
        s: &ConvShape,
        relu: bool,
    ) -> Result<()> {
        conv_fwd(self, y, x, w, b, s, relu)
    }

    fn conv_dgrad(
        &self,
        dx: &mut V<'_>,
        dy: &R<'_>,
        w: &R<'_>,
        s: &ConvShape,
        accumulate: bool,
    ) -> Result<()> {
        conv_dgrad(self, dx, dy, w, s, accumulate)
    }

    fn conv_wgrad(&self, dw: &mut V<'_>, dy: &R<'_>, x: &R<'_>, s: &ConvShape) -> Result<()> {
        conv_wgrad(self, dw, dy, x, s)
    }

    fn conv_bgrad(&self, db: &mut V<'_>, dy: &R<'_>, s: &ConvShape) -> Result<()> {
        conv_bgrad(self, db, dy, s)
    }

    fn reduce_conv_fwd(
        &self,
        y: &mut V<'_>,
        mid: &mut V<'_>,
        x: &R<'_>,
        params: &R<'_>,
        s: &ReduceConvShape,
    ) -> Result<()> {
        reduce_conv_fwd(self, y, mid, x, params, s)
    }

    fn reduce_conv_bwd(
        &self,
        dx: &mut V<'_>,
        dparams: &mut V<'_>,
        scratch: &mut V<'_>,
        dy: &R<'_>,
        x: &R<'_>,
        mid: &R<'_>,
        params: &R<'_>,
        s: &ReduceConvShape,
        accumulate: bool,
    ) -> Result<()> {
        reduce_conv_bwd(
            self, dx, dparams, scratch, dy, x, mid, params, s, accumulate,
        )
    }

    fn maxpool3x3s1_fwd(&self, y: &mut V<'_>, x: &R<'_>, s: &PoolShape) -> Result<()> {
        maxpool3x3s1_fwd(self, y, x, s)
    }

    fn maxpool3x3s1_bwd(
        &self,
        dx: &mut V<'_>,
        dy: &R<'_>,
        x: &R<'_>,
        s: &PoolShape,
        accumulate: bool,
    ) -> Result<()> {
        maxpool3x3s1_bwd(self, dx, dy, x, s, accumulate)
    }

    fn linear_fwd(
        &self,
        y: &mut V<'_>,
        x: &R<'_>,
        w: &R<'_>,
        b: &R<'_>,
        s: &LinearShape,
    ) -> Result<()> {
        linear_fwd(self, y, x, w, b, s)
    }

    fn linear_dgrad(&self, dx: &mut V<'_>, dy: &R<'_>, w: &R<'_>, s: &LinearShape) -> Result<()> {
        linear_dgrad(self, dx, dy, w, s)
    }

    fn linear_wgrad(&self, dw: &mut V<'_>, dy: &R<'_>, x: &R<'_>, s: &LinearShape) -> Result<()> {
        linear_wgrad(self, dw, dy, x, s)
    }

    fn linear_wgrad_adam(
        &self,
        wmv: [&mut V<'_>; 3],
        dy: &R<'_>,
        x: &R<'_>,
        s: &LinearShape,
        step: &AdamStep,
    ) -> Result<()> {
        linear_wgrad_adam(self, wmv, dy, x, s, step)
    }

    fn linear_bgrad(&self, db: &mut V<'_>, dy: &R<'_>, s: &LinearShape) -> Result<()> {
        linear_bgrad(self, db, dy, s)
    }

    fn softmax_xent(
        &self,
        loss: &mut V<'_>,
        dlogits: &mut V<'_>,
        logits: &R<'_>,
        labels: &CudaSlice<u32>,
        classes: usize,
    ) -> Result<()> {
        softmax_xent(self, loss, dlogits, logits, labels, classes)
    }

    fn dropout_fwd(&self, y: &mut V<'_>, x: &R<'_>, p: f32, seed: u64, step: u64) -> Result<()> {
        dropout_fwd(self, y, x, p, seed, step)
    }

    fn dropout_bwd(&self, dx: &mut V<'_>, dy: &R<'_>, p: f32, seed: u64, step: u64) -> Result<()> {
        dropout_bwd(self, dx, dy, p, seed, step)
    }

    fn adam_step(
        &self,
        p: &mut V<'_>,
        m: &mut V<'_>,
        v: &mut V<'_>,
        g: &R<'_>,
        step: &AdamStep,
    ) -> Result<()> {
        adam_step(self, p, m, v, g, step)
    }
}

/// Short names for the view types in the backend's signatures.
type V<'a> = CudaViewMut<'a, f32>;
type R<'a> = CudaView<'a, f32>;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every embedded module is in the kernel table, and every `.entry` of its PTX is a table kernel.
    #[test]
    fn kernel_table_matches_embedded_ptx() {
        let mut modules: Vec<&str> = embedded::MODULES.iter().map(|(m, _)| *m).collect();
        let mut table: Vec<&str> = KERNEL_TABLE.iter().map(|(m, _)| *m).collect();
        modules.sort_unstable();
        table.sort_unstable();
        assert_eq!(modules, table, "kernels/*.cu and kernel_table! disagree");
        for (module, ptx) in embedded::MODULES {
            let mut entries: Vec<&str> = ptx
                .lines()
                .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
                .map(|l| l.split('(').next().unwrap_or(l).trim())
                .collect();
            let (_, kernels) = KERNEL_TABLE
                .iter()
                .find(|(m, _)| m == module)
                .expect("checked above");
            let mut kernels = kernels.to_vec();
            entries.sort_unstable();
            kernels.sort_unstable();
            assert_eq!(entries, kernels, "kernels of kernels/{module}.cu");
        }
    }

    /// Every kernel has an emulated launcher, so CI runs it.
    #[cfg(feature = "emulation")]
    #[test]
    fn every_kernel_is_emulated() {
        let mut kernels: Vec<&str> = KERNEL_TABLE
            .iter()
            .flat_map(|(_, k)| k.iter().copied())
            .collect();
        kernels.sort_unstable();
        assert_eq!(
            kernels,
            crate::emu::EMULATED_KERNELS,
            "kernels without an emulated launcher"
        );
    }

    #[test]
    fn ptx_targets_compute_80_with_isa_9_0() {
        for (module, ptx) in embedded::MODULES {
            assert!(
                ptx.contains("\n.version 9.0\n"),
                "{module}: PTX ISA is not 9.0 (nvcc 13.0)"
            );
            assert!(
                ptx.contains("\n.target sm_80\n"),
                "{module}: PTX does not target compute_80"
            );
        }
    }
}
