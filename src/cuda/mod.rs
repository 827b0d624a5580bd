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

mod graph;

pub use crate::launcher::{
    adam_step, adam_step_at, add_fwd, batch_gather, batch_gather_at, conv_dgrad, conv_fwd,
    conv_wgrad, count_correct, dropout_bwd, dropout_bwd_at, dropout_fwd, dropout_fwd_at,
    linear_bgrad, linear_bwd_adam, linear_bwd_adam_at, linear_dgrad, linear_fwd, linear_wgrad,
    linear_wgrad_adam, linear_wgrad_adam_at, maxpool3x3s1_bwd, maxpool3x3s1_fwd, mma_tf32_tile,
    reduce_conv_bwd, reduce_conv_fwd, relu_bwd, relu_fwd, softmax_xent, step_end,
};
pub use graph::{CapturedGraph, GraphNode};

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{
    CudaContext, CudaEvent, CudaFunction, CudaModule, CudaSlice, CudaStream, CudaView, CudaViewMut,
    DeviceRepr, DriverError, LaunchArgs, LaunchConfig, PinnedHostSlice, PushKernelArg,
};
use cudarc::nvrtc::Ptx;

use crate::backend::{check_range, Backend, Download, PendingDownload, StepGraph};
use crate::bindings::{AdamScalars, ConvDims, GemmDims, ReduceDims};
use crate::error::CudaUnavailable;
use crate::launch::LaunchDims;
use crate::launcher::{Driver, Kernel, Value};
use crate::shape::check_len;
use crate::{Error, Result};

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/ptx_modules.rs"));
}

/// Where the embedded PTX came from: `"nvcc <version>"`, or the committed copy when nvcc was absent.
pub const PTX_ORIGIN: &str = embedded::PTX_ORIGIN;

/// Every kernel function, loaded once per device, indexed by `Kernel as usize` (the order of [`Kernel::ALL`]).
fn load_kernels(ctx: &Arc<CudaContext>) -> Result<[CudaFunction; Kernel::COUNT], CudaUnavailable> {
    let mut modules: Vec<(&'static str, Arc<CudaModule>)> = Vec::new();
    let mut functions = Vec::with_capacity(Kernel::ALL.len());
    for k in Kernel::ALL {
        let module = match modules.iter().find(|(m, _)| *m == k.module()) {
            Some((_, module)) => module.clone(),
            None => {
                let module = load_module(ctx, k.module())?;
                modules.push((k.module(), module.clone()));
                module
            }
        };
        functions.push(load_function(&module, k.module(), k.name())?);
    }
    // One function per kernel, pushed above for each of Kernel::ALL.
    functions
        .try_into()
        .map_err(|_| CudaUnavailable::ModuleMissing {
            module: "kernel table",
        })
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
    /// Indexed by `Kernel as usize`.
    kernels: [CudaFunction; Kernel::COUNT],
    name: String,
    /// Working memory of kernels that need some (the linear forward's split-K partials), kept and grown,
    /// never shrunk: after the first step nothing is allocated. Used only on `stream`, in issue order.
    scratch: Mutex<Option<CudaSlice<f32>>>,
    /// Bumped whenever `scratch` is reallocated: a captured graph holds the old buffer's address.
    scratch_generation: Arc<AtomicU64>,
    /// Set while [`Backend::capture_graph`] records: the working memory must not grow then (an allocation
    /// would be recorded into the graph, its address valid only inside it).
    capturing: AtomicBool,
    /// Pinned host buffers of finished [`Backend::download_async`] copies, reused by later ones of the same
    /// length (a checkpoint's three 562 MB copies would otherwise pin memory anew every time).
    pinned: PinnedPool,
    /// The dynamic shared memory a block may opt in to on this device (227 KiB on H100/H200, 163 KiB on
    /// A100, 99 KiB on consumer Ampere and Ada).
    max_shared_optin: usize,
    /// Per kernel, the dynamic shared memory it has been opted in to (bytes): the attribute is set once per
    /// kernel and size, not at every launch of a step.
    shared_opted_in: Mutex<[u32; Kernel::COUNT]>,
}

/// Pinned host buffers kept for reuse.
type PinnedPool = Arc<Mutex<Vec<PinnedHostSlice<f32>>>>;

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cuda:{} ({})", self.ctx.ordinal(), self.name)
    }
}

/// The oldest GPUs the kernels run on: compute capability 8.0 (Ampere), the PTX's target.
pub const MIN_COMPUTE_CAPABILITY: (i32, i32) = (8, 0);

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
        // The PTX targets compute_80 (cp.async, TF32 mma.sync): an older GPU would reject it with a message about
        // the driver; say what is wrong instead.
        let (major, minor) = ctx
            .compute_capability()
            .map_err(driver("reading the compute capability"))?;
        if major < MIN_COMPUTE_CAPABILITY.0 {
            return Err(CudaUnavailable::ComputeCapability {
                ordinal,
                name,
                major,
                minor,
            });
        }
        let kernels = load_kernels(&ctx)?;
        let max_shared_optin = ctx
            .attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_err(driver("reading the shared memory limit"))?;
        Ok(Self {
            max_shared_optin: usize::try_from(max_shared_optin).unwrap_or(0),
            shared_opted_in: Mutex::new([48 * 1024; Kernel::COUNT]),
            ctx,
            stream,
            kernels,
            name,
            scratch: Mutex::new(None),
            scratch_generation: Arc::new(AtomicU64::new(0)),
            capturing: AtomicBool::new(false),
            pinned: Arc::new(Mutex::new(Vec::new())),
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

    crate::backend::for_each_kernel!(forward_to_launchers);

    fn capture_graph(
        &self,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<Option<Box<dyn StepGraph>>> {
        const OP: &str = "capture_graph";
        let generation = self.scratch_generation.load(Ordering::Acquire);
        self.capturing.store(true, Ordering::Release);
        let captured = self.capture(f);
        self.capturing.store(false, Ordering::Release);
        let ((), graph) = captured?;
        let nodes = graph.nodes()?;
        if let Some(n) = nodes.iter().find(|n| {
            !matches!(
                n,
                GraphNode::Kernel | GraphNode::Memset | GraphNode::MemcpyDeviceToDevice
            )
        }) {
            return Err(Error::Internal {
                op: OP,
                reason: format!(
                    "the recorded work holds a {n:?} node: a training step must neither allocate nor copy                      from or to the host"
                ),
            });
        }
        Ok(Some(Box::new(CudaStepGraph {
            graph,
            generation,
            scratch_generation: self.scratch_generation.clone(),
        })))
    }

    fn download_async(&self, buf: &CudaSlice<f32>) -> Result<Download> {
        const OP: &str = "download_async";
        self.check_buf(OP, "buffer", buf)?;
        let reused = {
            let mut pool = self.pinned.lock().unwrap_or_else(PoisonError::into_inner);
            let at = pool.iter().position(|p| p.len() == buf.len());
            at.map(|i| pool.swap_remove(i))
        };
        let mut pinned = match reused {
            Some(p) => p,
            // Plain page-locked memory (flags 0), not cudarc's default write-combined kind, which the host
            // reads uncached: the checkpoint writer reads every value.
            // SAFETY: the memory is uninitialised; the copy below fills all of it, and it is read only after
            // waiting for that copy (PinnedHostSlice::as_slice waits for the event the copy records).
            None => unsafe { self.ctx.alloc_pinned_with_flags::<f32>(buf.len(), 0) }
                .map_err(driver_error(OP))?,
        };
        self.stream
            .memcpy_dtoh(buf, &mut pinned)
            .map_err(driver_error(OP))?;
        // The copy's own completion event: waiting on it does not depend on cudarc's per-buffer event
        // tracking, which a capture switches off context-wide while it records.
        let done = self
            .stream
            .record_event(Some(
                cudarc::driver::sys::CUevent_flags::CU_EVENT_DISABLE_TIMING,
            ))
            .map_err(driver_error(OP))?;
        Ok(Download::pending(Box::new(PinnedDownload {
            pinned: Some(pinned),
            done,
            pool: self.pinned.clone(),
        })))
    }
}

/// A copy into pinned memory in flight; waiting returns the buffer to its device's pool.
struct PinnedDownload {
    pinned: Option<PinnedHostSlice<f32>>,
    /// Recorded on the stream right after the copy.
    done: CudaEvent,
    pool: PinnedPool,
}

impl PendingDownload for PinnedDownload {
    fn wait(mut self: Box<Self>) -> Result<Vec<f32>> {
        let Some(pinned) = self.pinned.take() else {
            return Ok(Vec::new());
        };
        self.done
            .synchronize()
            .map_err(driver_error("download_async"))?;
        let values = pinned
            .as_slice()
            .map_err(driver_error("download_async"))?
            .to_vec();
        self.pool
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(pinned);
        Ok(values)
    }
}

/// A step captured by [`Backend::capture_graph`] on a CUDA device.
struct CudaStepGraph {
    graph: CapturedGraph,
    /// The working memory's generation it was recorded with.
    generation: u64,
    scratch_generation: Arc<AtomicU64>,
}

impl StepGraph for CudaStepGraph {
    fn is_current(&self) -> bool {
        self.scratch_generation.load(Ordering::Acquire) == self.generation
    }

    fn replay(&self) -> Result<()> {
        self.graph.replay()
    }
}

// SAFETY: #[repr(C)] structs generated by bindgen from kernels/args.h, the header the kernels are compiled
// with, so their layout is the kernels' (bindgen's layout assertions hold it): plain integer or float fields,
// no padding, no pointers.
unsafe impl DeviceRepr for ConvDims {}
// SAFETY: as above.
unsafe impl DeviceRepr for ReduceDims {}
// SAFETY: as above.
unsafe impl DeviceRepr for GemmDims {}
// SAFETY: as above.
unsafe impl DeviceRepr for AdamScalars {}

impl Driver for CudaBackend {
    fn max_dynamic_shared(&self) -> usize {
        self.max_shared_optin
    }

    type Args<'a> = LaunchArgs<'a>;

    fn args(&self, kernel: Kernel) -> LaunchArgs<'_> {
        // `kernel as usize < Kernel::COUNT`: the enum's discriminants are the indices of Kernel::ALL.
        self.stream.launch_builder(&self.kernels[kernel as usize])
    }

    fn push_out<'a>(args: &mut LaunchArgs<'a>, v: &'a mut CudaViewMut<'_, f32>) {
        args.arg(v);
    }

    fn push_in<'a>(args: &mut LaunchArgs<'a>, v: &'a CudaView<'_, f32>) {
        args.arg(v);
    }

    fn push_labels<'a>(args: &mut LaunchArgs<'a>, v: &'a CudaSlice<u32>) {
        args.arg(v);
    }

    fn push_labels_out<'a>(args: &mut LaunchArgs<'a>, v: &'a mut CudaSlice<u32>) {
        args.arg(v);
    }

    fn push_null(args: &mut LaunchArgs<'_>, _kind: crate::launcher::ParamKind) {
        // A device pointer is a 64-bit address: 0 is the null the kernel tests for.
        static NULL: u64 = 0;
        args.arg(&NULL);
    }

    fn push_value<'a>(args: &mut LaunchArgs<'a>, v: Value<'a>) {
        match v {
            Value::U32(x) => args.arg(x),
            Value::I32(x) => args.arg(x),
            Value::U64(x) => args.arg(x),
            Value::F32(x) => args.arg(x),
            Value::ConvDims(x) => args.arg(x),
            Value::ReduceDims(x) => args.arg(x),
            Value::GemmDims(x) => args.arg(x),
            Value::AdamScalars(x) => args.arg(x),
        };
    }

    fn launch(
        &self,
        op: &'static str,
        kernel: Kernel,
        dims: LaunchDims,
        mut args: LaunchArgs<'_>,
    ) -> Result<()> {
        if dims.shared_bytes > 48 * 1024 {
            // More than the default 48 KiB of dynamic shared memory needs the kernel's opt-in: once per kernel
            // and larger size (the attribute is the kernel's ceiling, kept until raised), under the lock so
            // that concurrent launches never lower it.
            let mut opted_in = self
                .shared_opted_in
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let ceiling = &mut opted_in[kernel as usize];
            if dims.shared_bytes > *ceiling {
                // cuFuncSetAttribute does not make the context current (the launch below does): bind it, for a
                // thread whose first driver call this is.
                self.ctx.bind_to_thread().map_err(driver_error(op))?;
                self.kernels[kernel as usize]
                    .set_attribute(
                        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        dims.shared_bytes as i32, // <= max_shared_optin: launches size their tiles to it
                    )
                    .map_err(driver_error(op))?;
                *ceiling = dims.shared_bytes;
            }
        }
        let cfg = LaunchConfig {
            grid_dim: (dims.grid, dims.grid_y, dims.grid_z),
            block_dim: (dims.block, 1, 1),
            shared_mem_bytes: dims.shared_bytes,
        };
        // SAFETY: `Launch::run` checked the pushed arguments against the kernel's parameter list in its .cu
        // file (kinds and count); the launchers checked every buffer's length against the sizes passed, and
        // the kernels index below those sizes; outputs are pushed from mutable borrows, so they alias no input;
        // the dynamic shared memory is what the launch plan sized for the kernel (opted in above). Views of
        // another device's memory fail the launch with a driver error; they cannot touch host memory.
        unsafe { args.launch(cfg) }.map_err(driver_error(op))?;
        Ok(())
    }

    fn zero(&self, op: &'static str, v: &mut CudaViewMut<'_, f32>) -> Result<()> {
        self.stream.memset_zeros(v).map_err(driver_error(op))
    }

    fn with_scratch<T>(
        &self,
        op: &'static str,
        len: usize,
        f: impl FnOnce(&mut CudaViewMut<'_, f32>) -> Result<T>,
    ) -> Result<T> {
        let mut guard = self.scratch.lock().unwrap_or_else(PoisonError::into_inner);
        if guard.as_ref().is_none_or(|s| s.len() < len) {
            if self.capturing.load(Ordering::Acquire) {
                return Err(Error::Internal {
                    op,
                    reason: format!(
                        "{len} floats of working memory needed while a graph is recorded (run the step once \
                         uncaptured first, so that it is allocated)"
                    ),
                });
            }
            // SAFETY: uninitialised f32 device memory; every kernel using scratch writes before it reads.
            *guard =
                Some(unsafe { self.stream.alloc::<f32>(len.max(1)) }.map_err(driver_error(op))?);
            self.scratch_generation.fetch_add(1, Ordering::AcqRel);
        }
        let buf = guard.as_mut().ok_or(Error::Internal {
            op,
            reason: "scratch missing after allocation".into(),
        })?;
        f(&mut buf.slice_mut(0..len))
    }

    fn len_of(v: &CudaView<'_, f32>) -> usize {
        v.len()
    }

    fn len_of_mut(v: &CudaViewMut<'_, f32>) -> usize {
        v.len()
    }

    fn len_of_labels(v: &CudaSlice<u32>) -> usize {
        v.len()
    }

    fn labels_on_host(_v: &CudaSlice<u32>) -> Option<&[u32]> {
        None
    }

    fn sub<'a>(v: &'a CudaView<'_, f32>, r: Range<usize>) -> Result<CudaView<'a, f32>> {
        check_range("view", &r, v.len())?;
        Ok(v.slice(r))
    }

    fn sub_mut<'a>(
        v: &'a mut CudaViewMut<'_, f32>,
        r: Range<usize>,
    ) -> Result<CudaViewMut<'a, f32>> {
        check_range("view_mut", &r, v.len())?;
        Ok(v.slice_mut(r))
    }

    fn reader<'a>(v: &'a CudaViewMut<'_, f32>) -> CudaView<'a, f32> {
        v.as_view()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The kernel table (generated from the `.cu` sources) names exactly the `.entry` points of the PTX.
    #[test]
    fn kernel_table_matches_embedded_ptx() {
        let mut modules: Vec<&str> = embedded::MODULES.iter().map(|(m, _)| *m).collect();
        let mut table: Vec<&str> = Kernel::ALL.iter().map(|k| k.module()).collect();
        table.dedup();
        modules.sort_unstable();
        table.sort_unstable();
        assert_eq!(modules, table, "kernels/*.cu and the kernel table disagree");
        for (module, ptx) in embedded::MODULES {
            let mut entries: Vec<&str> = ptx
                .lines()
                .filter_map(|l| l.trim().strip_prefix(".visible .entry "))
                .map(|l| l.split('(').next().unwrap_or(l).trim())
                .collect();
            let mut kernels: Vec<&str> = Kernel::ALL
                .iter()
                .filter(|k| k.module() == *module)
                .map(|k| k.name())
                .collect();
            entries.sort_unstable();
            kernels.sort_unstable();
            assert_eq!(entries, kernels, "kernels of kernels/{module}.cu");
        }
    }

    /// The tensor-core kernels' shared-memory stores are as wide as the source writes them: no two 4-byte
    /// `st.shared` to the same address register at offsets 8k and 8k + 4 in a row, the form NVVM gave a
    /// `float2`/`float4` store it split (two or four store instructions on the GPU, where the emulator's traffic
    /// count, which sees the source's vector type, counts one).
    #[test]
    fn tensor_core_kernels_store_shared_memory_in_the_widths_written() {
        /// `(address register, byte offset)` of a 4-byte `st.shared`.
        fn scalar_store(line: &str) -> Option<(&str, u64)> {
            let rest = line.trim().strip_prefix("st.shared.")?;
            let (ty, rest) = rest.split_once(char::is_whitespace)?;
            if !["f32", "u32", "b32"].contains(&ty) {
                return None;
            }
            let addr = rest.trim().strip_prefix('[')?.split(']').next()?;
            Some(match addr.split_once('+') {
                Some((reg, off)) => (reg, off.parse().ok()?),
                None => (addr, 0),
            })
        }
        let mut split = Vec::new();
        for (module, ptx) in embedded::MODULES {
            for body in ptx.split(".visible .entry ").skip(1) {
                let name = body.split('(').next().unwrap_or(body);
                if !name.ends_with("_tf32") {
                    continue;
                }
                let stores: Vec<Option<(&str, u64)>> = body.lines().map(scalar_store).collect();
                for (i, pair) in stores.windows(2).enumerate() {
                    if let [Some((r0, o0)), Some((r1, o1))] = pair {
                        if r0 == r1 && o0 % 8 == 0 && *o1 == o0 + 4 {
                            split.push(format!("{module}: {name}, line {} of its body", i + 1));
                        }
                    }
                }
            }
        }
        assert!(split.is_empty(), "split vector stores: {split:#?}");
    }

    #[test]
    fn ptx_targets_compute_80_with_isa_9_0() {
        for (module, ptx) in embedded::MODULES {
            assert!(
                ptx.contains("\n.version 9.0\n"),
                "{module}: PTX ISA is not 9.0 (nvcc 13.0)"
            );
            let (major, minor) = MIN_COMPUTE_CAPABILITY;
            assert!(
                ptx.contains(&format!("\n.target sm_{major}{minor}\n")),
                "{module}: PTX does not target MIN_COMPUTE_CAPABILITY"
            );
        }
        // The refusal of an older GPU names the same minimum.
        let e = CudaUnavailable::ComputeCapability {
            ordinal: 0,
            name: "Tesla T4".into(),
            major: 7,
            minor: 5,
        };
        let (major, minor) = MIN_COMPUTE_CAPABILITY;
        assert!(
            e.to_string().contains(&format!("need {major}.{minor} ")),
            "{e}"
        );
    }
}
