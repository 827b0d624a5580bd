//! One launcher per kernel, written once and generic over the [`Driver`] that runs it: the CUDA driver
//! ([`crate::cuda::CudaBackend`]) or the emulator ([`crate::emu::EmuBackend`], feature `emulation`). A
//! launcher checks every buffer's length against the shape, plans the launch ([`crate::launch`]) and hands
//! the driver the kernel's arguments in the order of its `.cu` parameter list; the driver checks that list
//! against [`Kernel::params`] (read from the `.cu` source at build time) before it launches, so an argument
//! list that drifts from the kernel is an error on every driver, never a misread argument.
//!
//! The launchers are the crate's GPU primitives: `inception_cuda::cuda::conv_fwd(gpu, ...)` is
//! [`conv_fwd`] with the CUDA driver, callable on your own cudarc buffers.

/// `launch!(driver, op, kernel, dims; out y, inp x, val &n, ...)`: a [`Launch`] of the kernel with
/// these arguments in order (`out`: a writable view, `inp`: a view, `labels`: the labels, `val`: a value),
/// checked against the kernel's parameters and run. Evaluates to the launch's `Result<()>`.
macro_rules! launch {
    ($d:expr, $op:expr, $kernel:expr, $dims:expr; $($kind:ident $arg:expr),* $(,)?) => {
        $crate::launcher::Launch::new($d, $op, $kernel, $dims)$(.$kind($arg))*.run()
    };
}

mod conv;
mod linear;
mod mma;
mod train;

pub use conv::{conv_dgrad, conv_fwd, conv_wgrad, reduce_conv_bwd, reduce_conv_fwd};
pub use linear::{
    linear_bgrad, linear_bwd_adam, linear_bwd_adam_at, linear_dgrad, linear_fwd, linear_wgrad,
    linear_wgrad_adam, linear_wgrad_adam_at,
};
pub use mma::mma_tf32_tile;
pub use train::{
    adam_step, adam_step_at, add_fwd, batch_gather, batch_gather_at, count_correct, dropout_bwd,
    dropout_bwd_at, dropout_fwd, dropout_fwd_at, maxpool3x3s1_bwd, maxpool3x3s1_fwd, relu_bwd,
    relu_fwd, softmax_xent, step_end,
};

use std::ops::Range;

use crate::backend::Backend;
use crate::bindings::{AdamScalars, ConvDims, GemmDims, ReduceDims};
use crate::launch::LaunchDims;
use crate::{Error, Result};

include!(concat!(env!("OUT_DIR"), "/kernel_table.rs"));

/// The kind of one kernel parameter, from its C type in the `.cu` source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// `float*`: an output view.
    Out,
    /// `const float*`: an input view.
    In,
    /// `const unsigned int*`: class labels, or the device step counter (a backend's `u32` buffer).
    Labels,
    /// `unsigned int*`: a writable `u32` buffer (a gathered batch's labels, the device step counter).
    LabelsOut,
    /// `unsigned int`.
    U32,
    /// `int`.
    I32,
    /// `unsigned long long`.
    U64,
    /// `float`.
    F32,
    /// `ConvDims` (kernels/args.h).
    ConvDims,
    /// `ReduceDims` (kernels/args.h).
    ReduceDims,
    /// `GemmDims` (kernels/args.h).
    GemmDims,
    /// `AdamScalars` (kernels/args.h).
    AdamScalars,
}

/// A by-value kernel argument: a scalar or one of the argument structs of `kernels/args.h`.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    /// `unsigned int`.
    U32(&'a u32),
    /// `int`.
    I32(&'a i32),
    /// `unsigned long long`.
    U64(&'a u64),
    /// `float`.
    F32(&'a f32),
    /// `ConvDims`.
    ConvDims(&'a ConvDims),
    /// `ReduceDims`.
    ReduceDims(&'a ReduceDims),
    /// `GemmDims`.
    GemmDims(&'a GemmDims),
    /// `AdamScalars`.
    AdamScalars(&'a AdamScalars),
}

impl Value<'_> {
    /// The parameter kind this value fills.
    pub fn kind(&self) -> ParamKind {
        match self {
            Value::U32(_) => ParamKind::U32,
            Value::I32(_) => ParamKind::I32,
            Value::U64(_) => ParamKind::U64,
            Value::F32(_) => ParamKind::F32,
            Value::ConvDims(_) => ParamKind::ConvDims,
            Value::ReduceDims(_) => ParamKind::ReduceDims,
            Value::GemmDims(_) => ParamKind::GemmDims,
            Value::AdamScalars(_) => ParamKind::AdamScalars,
        }
    }
}

macro_rules! value_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl<'a> From<&'a $t> for Value<'a> {
            fn from(v: &'a $t) -> Self {
                Value::$v(v)
            }
        })*
    };
}
value_from!(u32 => U32, i32 => I32, u64 => U64, f32 => F32, ConvDims => ConvDims,
    ReduceDims => ReduceDims, GemmDims => GemmDims, AdamScalars => AdamScalars);

/// What runs kernels: a [`Backend`] whose kernels are launched, not computed on the host. The CUDA backend
/// and the emulator implement it; each is the one place of its `unsafe` launch code. Every launcher of this
/// module is written once against it.
pub trait Driver: Backend {
    /// The argument list of a launch being built (cudarc's `LaunchArgs`, the emulator's kernelParams).
    type Args<'a>;

    /// An empty argument list for `kernel`.
    fn args(&self, kernel: Kernel) -> Self::Args<'_>;
    /// Appends an output buffer (`float*`).
    fn push_out<'a>(args: &mut Self::Args<'a>, v: &'a mut Self::ViewMut<'_>);
    /// Appends an input buffer (`const float*`).
    fn push_in<'a>(args: &mut Self::Args<'a>, v: &'a Self::View<'_>);
    /// Appends a label buffer (`const unsigned int*`).
    fn push_labels<'a>(args: &mut Self::Args<'a>, v: &'a Self::Labels);
    /// Appends a writable label buffer (`unsigned int*`).
    fn push_labels_out<'a>(args: &mut Self::Args<'a>, v: &'a mut Self::Labels);
    /// Appends a null pointer for a pointer parameter of kind `kind` (an optional buffer the kernel does not
    /// read when it is null, such as the device step counter of a direct launch).
    fn push_null(args: &mut Self::Args<'_>, kind: ParamKind);
    /// Appends a value.
    fn push_value<'a>(args: &mut Self::Args<'a>, v: Value<'a>);
    /// Launches `kernel` with `dims` and the arguments pushed (already checked against its parameters).
    fn launch(
        &self,
        op: &'static str,
        kernel: Kernel,
        dims: LaunchDims,
        args: Self::Args<'_>,
    ) -> Result<()>;

    /// The dynamic shared memory (bytes) one block may use on this driver's device after opting in: a
    /// launcher whose fastest kernel needs more takes another form. The emulator and the test recorder have
    /// no such limit and answer [`crate::launch::MAX_DYNAMIC_SHARED`], the smallest data-centre GPU's (A100).
    fn max_dynamic_shared(&self) -> usize {
        crate::launch::MAX_DYNAMIC_SHARED
    }
    /// Fills `v` with zeros, in stream order.
    fn zero(&self, op: &'static str, v: &mut Self::ViewMut<'_>) -> Result<()>;
    /// Runs `f` with `len` floats of working memory (contents undefined: the kernels write before they read).
    fn with_scratch<T>(
        &self,
        op: &'static str,
        len: usize,
        f: impl FnOnce(&mut Self::ViewMut<'_>) -> Result<T>,
    ) -> Result<T>;
    /// Elements of a view.
    fn len_of(v: &Self::View<'_>) -> usize;
    /// Labels in a label buffer.
    fn len_of_labels(v: &Self::Labels) -> usize;
    /// The labels, when the driver keeps them in host memory (the emulator), so a launcher can check them
    /// there; `None` on a GPU, where the caller checks them before uploading.
    fn labels_on_host(v: &Self::Labels) -> Option<&[u32]>;
    /// Elements of a writable view.
    fn len_of_mut(v: &Self::ViewMut<'_>) -> usize;
    /// The elements `r` of a view (an error when out of bounds).
    fn sub<'a>(v: &'a Self::View<'_>, r: Range<usize>) -> Result<Self::View<'a>>;
    /// The elements `r` of a writable view (an error when out of bounds).
    fn sub_mut<'a>(v: &'a mut Self::ViewMut<'_>, r: Range<usize>) -> Result<Self::ViewMut<'a>>;
    /// A writable view, read-only.
    fn reader<'a>(v: &'a Self::ViewMut<'_>) -> Self::View<'a>;
}

/// Most parameters a kernel of this crate has.
const MAX_PARAMS: usize = 16;

/// One launch being built: the driver's argument list plus the kinds pushed, checked against the kernel's
/// `.cu` parameter list before it runs.
pub struct Launch<'a, D: Driver + ?Sized + 'a> {
    driver: &'a D,
    op: &'static str,
    kernel: Kernel,
    dims: LaunchDims,
    args: D::Args<'a>,
    kinds: [ParamKind; MAX_PARAMS],
    pushed: usize,
}

impl<'a, D: Driver + ?Sized> Launch<'a, D> {
    /// A launch of `kernel` with `dims`, for errors reported under `op`.
    pub fn new(driver: &'a D, op: &'static str, kernel: Kernel, dims: LaunchDims) -> Self {
        Launch {
            driver,
            op,
            kernel,
            dims,
            args: driver.args(kernel),
            kinds: [ParamKind::Out; MAX_PARAMS],
            pushed: 0,
        }
    }

    fn kind(mut self, k: ParamKind) -> Self {
        if let Some(slot) = self.kinds.get_mut(self.pushed) {
            *slot = k;
        }
        self.pushed += 1;
        self
    }

    /// An output buffer.
    pub fn out(mut self, v: &'a mut D::ViewMut<'_>) -> Self {
        D::push_out(&mut self.args, v);
        self.kind(ParamKind::Out)
    }

    /// An input buffer.
    pub fn inp(mut self, v: &'a D::View<'_>) -> Self {
        D::push_in(&mut self.args, v);
        self.kind(ParamKind::In)
    }

    /// An optional input buffer: null when `None`.
    pub fn inp_opt(mut self, v: Option<&'a D::View<'_>>) -> Self {
        match v {
            Some(v) => D::push_in(&mut self.args, v),
            None => D::push_null(&mut self.args, ParamKind::In),
        }
        self.kind(ParamKind::In)
    }

    /// A label buffer.
    pub fn labels(mut self, v: &'a D::Labels) -> Self {
        D::push_labels(&mut self.args, v);
        self.kind(ParamKind::Labels)
    }

    /// A writable label buffer.
    pub fn labels_out(mut self, v: &'a mut D::Labels) -> Self {
        D::push_labels_out(&mut self.args, v);
        self.kind(ParamKind::LabelsOut)
    }

    /// A null pointer for a pointer parameter of kind `kind` (`In`, `Out`, `Labels` or `LabelsOut`).
    pub fn null(mut self, kind: ParamKind) -> Self {
        D::push_null(&mut self.args, kind);
        self.kind(kind)
    }

    /// A value (scalar or argument struct).
    pub fn val(mut self, v: impl Into<Value<'a>>) -> Self {
        let v = v.into();
        let k = v.kind();
        D::push_value(&mut self.args, v);
        self.kind(k)
    }

    /// Checks the arguments against the kernel's parameters, then launches.
    pub fn run(self) -> Result<()> {
        let expected = self.kernel.params();
        let pushed = &self.kinds[..self.pushed.min(MAX_PARAMS)];
        if self.pushed > MAX_PARAMS
            || pushed.len() != expected.len()
            || pushed.iter().zip(expected).any(|(k, (_, e))| k != e)
        {
            return Err(Error::Internal {
                op: self.op,
                reason: format!(
                    "arguments {pushed:?} do not match the parameters of {} in kernels/{}.cu: {expected:?}",
                    self.kernel.name(),
                    self.kernel.module()
                ),
            });
        }
        self.driver
            .launch(self.op, self.kernel, self.dims, self.args)
    }
}

#[cfg(test)]
mod record;
