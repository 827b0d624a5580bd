//! The emulation backend (feature `emulation`): the CUDA kernels of `kernels/*.cu`, compiled as C++20 against
//! `kernels/emu/cuda_emu.h`, run on the CPU with the launch geometry of [`crate::launch`], the same the CUDA
//! backend uses. Threads of a block run as fibers in a chosen order, blocks in sequence; the emulator turns
//! the CUDA undefined behaviour it can see (divergent barriers, inactive lanes in warp intrinsics, writes
//! past dynamic shared memory, device asserts) into errors. It is for tests, not speed.
//!
//! All `unsafe` of this backend is the FFI into the emulated launchers, each with a `// SAFETY:` line.

use std::ffi::{c_char, CStr};

use crate::backend::{check_same_len, Backend};
use crate::launch::{self, LaunchDims};
use crate::shape::{AdamStep, ConvShape, LinearShape, PoolShape, ReduceConvShape};
use crate::{Error, Result};

mod conv;
mod linear;
pub mod planted;

/// Whether the emulated kernels were built with AddressSanitizer (`INCEPTION_CUDA_EMU_ASAN=1`).
pub fn asan_build() -> bool {
    cfg!(emu_asan)
}

/// A launch as the emulator takes it (`emu::Launch` in `cuda_emu.h`).
#[repr(C)]
pub(crate) struct Launch {
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    reverse: u32,
}

extern "C" {
    fn emu_last_error() -> *const c_char;
    fn emu_launch_relu_fwd(cfg: *const Launch, y: *mut f32, x: *const f32, n: u64) -> i32;
    fn emu_launch_relu_bwd(
        cfg: *const Launch,
        dx: *mut f32,
        dy: *const f32,
        y: *const f32,
        n: u64,
    ) -> i32;
    fn emu_launch_add_fwd(
        cfg: *const Launch,
        y: *mut f32,
        a: *const f32,
        b: *const f32,
        n: u64,
    ) -> i32;
    fn emu_launch_maxpool3x3s1_fwd(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        planes: u64,
        h: u32,
        w: u32,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch_maxpool3x3s1_bwd(
        cfg: *const Launch,
        dx: *mut f32,
        dy: *const f32,
        x: *const f32,
        planes: u64,
        h: u32,
        w: u32,
        accumulate: i32,
        tile_h: u32,
    ) -> i32;
    fn emu_launch_softmax_xent(
        cfg: *const Launch,
        loss: *mut f32,
        dlogits: *mut f32,
        logits: *const f32,
        labels: *const u32,
        m: u32,
        classes: u32,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch_dropout_fwd(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        n: u64,
        seed: u64,
        step: u64,
        threshold: u32,
        scale: f32,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch_dropout_bwd(
        cfg: *const Launch,
        dx: *mut f32,
        dy: *const f32,
        n: u64,
        seed: u64,
        step: u64,
        threshold: u32,
        scale: f32,
    ) -> i32;
    fn emu_launch_adam_step(
        cfg: *const Launch,
        p: *mut f32,
        m: *mut f32,
        v: *mut f32,
        g: *const f32,
        n: u64,
        s: crate::launch::AdamScalars,
    ) -> i32;
}

/// Every kernel of `kernels/*.cu` that has an emulated launcher here (all of them: a test holds this list
/// equal to the CUDA backend's kernel table).
pub const EMULATED_KERNELS: &[&str] = &[
    "adam_step",
    "add_fwd",
    "conv_bgrad",
    "conv_dgrad",
    "conv_fwd",
    "conv_split_sum",
    "conv_wgrad",
    "dropout_bwd",
    "dropout_fwd",
    "linear_bgrad",
    "linear_dgrad",
    "linear_fwd",
    "linear_fwd_reduce",
    "linear_wgrad",
    "linear_wgrad_adam",
    "maxpool3x3s1_bwd",
    "maxpool3x3s1_fwd",
    "reduce_conv_dmid",
    "reduce_conv_fwd",
    "relu_bwd",
    "relu_fwd",
    "softmax_xent",
];

/// The order in which the emulator runs the threads of a block: each exposes different missing-barrier
/// bugs, so tests run both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadOrder {
    /// Thread 0 first.
    Forward,
    /// The last thread first.
    Reverse,
}

/// The emulation backend: host buffers, kernels run by the emulator.
#[derive(Clone, Copy, Debug)]
pub struct EmuBackend {
    /// Thread order within each block.
    pub order: ThreadOrder,
}

/// Runs one emulated launch; a non-zero status becomes [`Error::Emulation`] with the emulator's message.
pub(crate) fn run(
    op: &'static str,
    dims: LaunchDims,
    order: ThreadOrder,
    launch: impl FnOnce(*const Launch) -> i32,
) -> Result<()> {
    let cfg = Launch {
        grid: [dims.grid, dims.grid_y, dims.grid_z],
        block: [dims.block, 1, 1],
        shared_bytes: dims.shared_bytes,
        reverse: u32::from(order == ThreadOrder::Reverse),
    };
    if launch(&cfg) == 0 {
        return Ok(());
    }
    // SAFETY: emu_last_error returns a pointer to the calling thread's NUL-terminated message, valid until
    // that thread's next launch; it is copied out at once.
    let message = unsafe { CStr::from_ptr(emu_last_error()) }
        .to_string_lossy()
        .into_owned();
    Err(Error::Emulation { op, message })
}

impl crate::backend::BackendHandle for EmuBackend {
    type Backend = EmuBackend;
    fn into_backend(self) -> std::sync::Arc<EmuBackend> {
        std::sync::Arc::new(self)
    }
}

impl Backend for EmuBackend {
    crate::cpu::host_buffers!();

    fn name(&self) -> &'static str {
        "emulation"
    }

    fn relu_fwd(&self, y: &mut &mut [f32], x: &&[f32]) -> Result<()> {
        const OP: &str = "relu_fwd";
        check_same_len(OP, y.len(), &[("x", x.len())])?;
        let Some(dims) = launch::elementwise(y.len()) else {
            return Ok(());
        };
        let n = y.len() as u64;
        // SAFETY: the launcher matches relu_fwd(float*, const float*, unsigned long long); y and x hold n
        // floats (checked above) and the grid-stride kernel touches indices < n only.
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_relu_fwd(cfg, y.as_mut_ptr(), x.as_ptr(), n)
        })
    }

    fn relu_bwd(&self, dx: &mut &mut [f32], dy: &&[f32], y: &&[f32]) -> Result<()> {
        const OP: &str = "relu_bwd";
        check_same_len(OP, dx.len(), &[("dy", dy.len()), ("y", y.len())])?;
        let Some(dims) = launch::elementwise(dx.len()) else {
            return Ok(());
        };
        let n = dx.len() as u64;
        // SAFETY: the launcher matches relu_bwd's parameters; dx, dy and y hold n floats (checked above) and
        // the kernel touches indices < n only.
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_relu_bwd(cfg, dx.as_mut_ptr(), dy.as_ptr(), y.as_ptr(), n)
        })
    }

    fn add_fwd(&self, y: &mut &mut [f32], a: &&[f32], b: &&[f32]) -> Result<()> {
        const OP: &str = "add_fwd";
        check_same_len(OP, y.len(), &[("a", a.len()), ("b", b.len())])?;
        let Some(dims) = launch::elementwise(y.len()) else {
            return Ok(());
        };
        let n = y.len() as u64;
        // SAFETY: the launcher matches add_fwd's parameters; y, a and b hold n floats (checked above) and
        // the kernel touches indices < n only.
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_add_fwd(cfg, y.as_mut_ptr(), a.as_ptr(), b.as_ptr(), n)
        })
    }

    fn conv_fwd(
        &self,
        y: &mut &mut [f32],
        x: &&[f32],
        w: &&[f32],
        b: &&[f32],
        s: &ConvShape,
        relu: bool,
    ) -> Result<()> {
        conv::conv_fwd(self.order, y, x, w, b, s, relu)
    }

    fn conv_dgrad(
        &self,
        dx: &mut &mut [f32],
        dy: &&[f32],
        w: &&[f32],
        s: &ConvShape,
        accumulate: bool,
    ) -> Result<()> {
        conv::conv_dgrad(self.order, dx, dy, w, s, accumulate)
    }

    fn conv_wgrad(
        &self,
        dw: &mut &mut [f32],
        dy: &&[f32],
        x: &&[f32],
        s: &ConvShape,
    ) -> Result<()> {
        conv::conv_wgrad(self.order, dw, dy, x, s)
    }

    fn conv_bgrad(&self, db: &mut &mut [f32], dy: &&[f32], s: &ConvShape) -> Result<()> {
        conv::conv_bgrad(self.order, db, dy, s)
    }

    fn reduce_conv_fwd(
        &self,
        y: &mut &mut [f32],
        mid: &mut &mut [f32],
        x: &&[f32],
        params: &&[f32],
        s: &ReduceConvShape,
    ) -> Result<()> {
        conv::reduce_conv_fwd(self.order, y, mid, x, params, s)
    }

    fn reduce_conv_bwd(
        &self,
        dx: &mut &mut [f32],
        dparams: &mut &mut [f32],
        scratch: &mut &mut [f32],
        dy: &&[f32],
        x: &&[f32],
        mid: &&[f32],
        params: &&[f32],
        s: &ReduceConvShape,
        accumulate: bool,
    ) -> Result<()> {
        conv::reduce_conv_bwd(
            self.order, dx, dparams, scratch, dy, x, mid, params, s, accumulate,
        )
    }

    fn maxpool3x3s1_fwd(&self, y: &mut &mut [f32], x: &&[f32], s: &PoolShape) -> Result<()> {
        const OP: &str = "maxpool3x3s1_fwd";
        let Some(p) = launch::pool_plan(OP, s, &[("y", y.len()), ("x", x.len())])? else {
            return Ok(());
        };
        // SAFETY: the launcher matches maxpool3x3s1_fwd's parameters; y and x hold planes·h·w floats
        // (checked by pool_plan) and the kernel indexes below that.
        run(OP, p.dims, self.order, |cfg| unsafe {
            emu_launch_maxpool3x3s1_fwd(cfg, y.as_mut_ptr(), x.as_ptr(), p.planes, p.h, p.w)
        })
    }

    fn maxpool3x3s1_bwd(
        &self,
        dx: &mut &mut [f32],
        dy: &&[f32],
        x: &&[f32],
        s: &PoolShape,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "maxpool3x3s1_bwd";
        let Some(p) =
            launch::pool_plan(OP, s, &[("dx", dx.len()), ("dy", dy.len()), ("x", x.len())])?
        else {
            return Ok(());
        };
        let acc = i32::from(accumulate);
        // SAFETY: the launcher matches maxpool3x3s1_bwd's parameters; dx, dy and x hold planes·h·w floats
        // (checked by pool_plan) and the kernel indexes below that.
        run(OP, p.bwd_dims, self.order, |cfg| unsafe {
            emu_launch_maxpool3x3s1_bwd(
                cfg,
                dx.as_mut_ptr(),
                dy.as_ptr(),
                x.as_ptr(),
                p.planes,
                p.h,
                p.w,
                acc,
                p.bwd_tile_h,
            )
        })
    }

    fn linear_fwd(
        &self,
        y: &mut &mut [f32],
        x: &&[f32],
        w: &&[f32],
        b: &&[f32],
        s: &LinearShape,
    ) -> Result<()> {
        linear::linear_fwd(self.order, y, x, w, b, s)
    }

    fn linear_dgrad(
        &self,
        dx: &mut &mut [f32],
        dy: &&[f32],
        w: &&[f32],
        s: &LinearShape,
    ) -> Result<()> {
        linear::linear_dgrad(self.order, dx, dy, w, s)
    }

    fn linear_wgrad(
        &self,
        dw: &mut &mut [f32],
        dy: &&[f32],
        x: &&[f32],
        s: &LinearShape,
    ) -> Result<()> {
        linear::linear_wgrad(self.order, dw, dy, x, s)
    }

    fn linear_wgrad_adam(
        &self,
        [w, m, v]: [&mut &mut [f32]; 3],
        dy: &&[f32],
        x: &&[f32],
        s: &LinearShape,
        step: &AdamStep,
    ) -> Result<()> {
        linear::linear_wgrad_adam(self.order, [w, m, v], dy, x, s, step)
    }

    fn linear_bgrad(&self, db: &mut &mut [f32], dy: &&[f32], s: &LinearShape) -> Result<()> {
        linear::linear_bgrad(self.order, db, dy, s)
    }

    fn softmax_xent(
        &self,
        loss: &mut &mut [f32],
        dlogits: &mut &mut [f32],
        logits: &&[f32],
        labels: &Vec<u32>,
        classes: usize,
    ) -> Result<()> {
        const OP: &str = "softmax_xent";
        let m = labels.len();
        let Some(dims) =
            launch::softmax_plan(OP, m, classes, loss.len(), dlogits.len(), logits.len())?
        else {
            loss.fill(0.0);
            return Ok(());
        };
        // The labels are on the host here, so a bad one is the twin's error rather than the kernel's NaN.
        crate::cpu::check_labels(OP, labels, classes)?;
        // SAFETY: the launcher matches softmax_xent's parameters; loss holds 1 float, dlogits and logits
        // m·classes, labels m (checked above); the dynamic shared memory holds the m row losses.
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_softmax_xent(
                cfg,
                loss.as_mut_ptr(),
                dlogits.as_mut_ptr(),
                logits.as_ptr(),
                labels.as_ptr(),
                m as u32,
                classes as u32,
            )
        })
    }

    fn dropout_fwd(
        &self,
        y: &mut &mut [f32],
        x: &&[f32],
        p: f32,
        seed: u64,
        step: u64,
    ) -> Result<()> {
        const OP: &str = "dropout_fwd";
        check_same_len(OP, y.len(), &[("x", x.len())])?;
        let (threshold, scale) = crate::cpu::dropout_threshold(p)?;
        let Some(dims) = launch::elementwise(y.len()) else {
            return Ok(());
        };
        let n = y.len() as u64;
        // SAFETY: the launcher matches dropout_fwd's parameters; y and x hold n floats (checked above).
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_dropout_fwd(
                cfg,
                y.as_mut_ptr(),
                x.as_ptr(),
                n,
                seed,
                step,
                threshold,
                scale,
            )
        })
    }

    fn dropout_bwd(
        &self,
        dx: &mut &mut [f32],
        dy: &&[f32],
        p: f32,
        seed: u64,
        step: u64,
    ) -> Result<()> {
        const OP: &str = "dropout_bwd";
        check_same_len(OP, dx.len(), &[("dy", dy.len())])?;
        let (threshold, scale) = crate::cpu::dropout_threshold(p)?;
        let Some(dims) = launch::elementwise(dx.len()) else {
            return Ok(());
        };
        let n = dx.len() as u64;
        // SAFETY: the launcher matches dropout_bwd's parameters; dx and dy hold n floats (checked above).
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_dropout_bwd(
                cfg,
                dx.as_mut_ptr(),
                dy.as_ptr(),
                n,
                seed,
                step,
                threshold,
                scale,
            )
        })
    }

    fn adam_step(
        &self,
        p: &mut &mut [f32],
        m: &mut &mut [f32],
        v: &mut &mut [f32],
        g: &&[f32],
        step: &AdamStep,
    ) -> Result<()> {
        const OP: &str = "adam_step";
        check_same_len(
            OP,
            p.len(),
            &[("m", m.len()), ("v", v.len()), ("g", g.len())],
        )?;
        let scalars = crate::launch::AdamScalars::of(OP, step)?;
        let Some(dims) = launch::elementwise(p.len()) else {
            return Ok(());
        };
        let n = p.len() as u64;
        // SAFETY: the launcher matches adam_step's parameters; p, m, v and g hold n floats (checked above).
        run(OP, dims, self.order, |cfg| unsafe {
            emu_launch_adam_step(
                cfg,
                p.as_mut_ptr(),
                m.as_mut_ptr(),
                v.as_mut_ptr(),
                g.as_ptr(),
                n,
                scalars,
            )
        })
    }
}
