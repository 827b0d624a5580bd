//! # inception-cuda
//!
//! Hand-written CUDA kernels for GoogLeNet's Inception module, with safe Rust bindings, a CPU twin of every
//! kernel behind the same API, and hand-derived backward passes.
//!
//! Layers (see `DESIGN.md` of the project):
//! - `kernels/*.cu`: raw `__global__` functions, compiled to PTX by `build.rs` and embedded;
//! - [`cpu`]: the CPU twin of every kernel; [`launcher`]: one launcher per kernel, generic over the
//!   [`launcher::Driver`] that runs it: [`cuda`] (feature `cuda`, on by default) on a GPU, `emu` (feature
//!   `emulation`) on the CPU. Twins and launchers have the same names and argument order, and all backends
//!   implement [`Backend`]; the kernels' argument structs come from `kernels/args.h` ([`bindings`]);
//! - [`Tensor`], [`Device`] and [`ops`]: shape-checked ops that dispatch to a backend and record themselves
//!   on a [`Tape`];
//! - [`Tape`]: reverse-mode differentiation with hand-written backward passes.
//!
//! ```
//! use inception_cuda::{ops, Device, Tape, Tensor};
//!
//! # fn main() -> inception_cuda::Result<()> {
//! let (device, _why_not_cuda) = Device::cuda_if_available(0);
//! let tape = Tape::new();
//! let x = tape.watch(&Tensor::from_vec(vec![-1.0, 0.0, 2.0], &[3], &device)?);
//! let y = ops::relu(&x)?;
//! let grads = tape.backward(&y, &Tensor::from_vec(vec![1.0, 1.0, 1.0], &[3], &device)?)?;
//! assert_eq!(y.to_vec()?, [0.0, 0.0, 2.0]);
//! assert_eq!(grads.get(&x).map(|g| g.to_vec()).transpose()?, Some(vec![0.0, 0.0, 1.0]));
//! # Ok(())
//! # }
//! ```

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

/// Runs `$body` on the backend of `$device`, with each `$buf` bound to a view of the buffer of tensor `$t`
/// (all on `$device`, else `DeviceMismatch` naming `$op` and the operand). `$body` yields
/// `Result<Backend::Buf>`; the macro yields the matching `Storage` (or returns the error).
macro_rules! dispatch {
    ($op:expr, $device:expr, |$b:ident $(, $buf:ident = $t:ident)*| $body:expr) => {{
        #[allow(unused_imports)]
        use $crate::backend::Backend as _;
        let device: &$crate::Device = $device;
        match device {
            $crate::Device::Cpu => {
                let $b = &$crate::cpu::CpuBackend;
                $(let $buf = $b.view($t.cpu_buf($op, stringify!($buf))?, 0..$t.elem_count())?;)*
                $crate::tensor::Storage::Cpu($body?)
            }
            #[cfg(feature = "cuda")]
            $crate::Device::Cuda(dev) => {
                let $b = dev.backend();
                $(let $buf = $b.view($t.cuda_buf($op, stringify!($buf), device)?, 0..$t.elem_count())?;)*
                $crate::tensor::Storage::Cuda($body?)
            }
            #[cfg(not(feature = "cuda"))]
            #[allow(unreachable_code)]
            $crate::Device::Cuda(dev) => match dev.never() {},
        }
    }};
}

/// As `dispatch!`, for a body yielding `Result<Vec<Backend::Buf>>`: the macro yields `Vec<Storage>`.
macro_rules! dispatch_many {
    ($op:expr, $device:expr, |$b:ident $(, $buf:ident = $t:ident)*| $body:expr) => {{
        #[allow(unused_imports)]
        use $crate::backend::Backend as _;
        let device: &$crate::Device = $device;
        match device {
            $crate::Device::Cpu => {
                let $b = &$crate::cpu::CpuBackend;
                $(let $buf = $b.view($t.cpu_buf($op, stringify!($buf))?, 0..$t.elem_count())?;)*
                let bufs: Vec<_> = $body?;
                bufs.into_iter().map($crate::tensor::Storage::Cpu).collect::<Vec<_>>()
            }
            #[cfg(feature = "cuda")]
            $crate::Device::Cuda(dev) => {
                let $b = dev.backend();
                $(let $buf = $b.view($t.cuda_buf($op, stringify!($buf), device)?, 0..$t.elem_count())?;)*
                let bufs: Vec<_> = $body?;
                bufs.into_iter().map($crate::tensor::Storage::Cuda).collect::<Vec<_>>()
            }
            #[cfg(not(feature = "cuda"))]
            #[allow(unreachable_code)]
            $crate::Device::Cuda(dev) => match dev.never() {},
        }
    }};
}

pub mod backend;
pub mod bindings;
pub mod checkpoint;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
mod device;
#[cfg(feature = "emulation")]
pub mod emu;
mod error;
pub mod graph;
pub mod launch;
pub mod launcher;
pub mod nn;
pub mod ops;
pub mod shape;
pub mod tape;
mod tensor;

pub use backend::{Backend, BackendHandle, Download, PendingDownload, StepGraph};
pub use device::{CudaDevice, Device};
pub use error::{CudaUnavailable, Error, Result};
pub use tape::{Gradients, Tape};
pub use tensor::{Tensor, TensorId};

/// The README's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
