//! The emulation backend (feature `emulation`): the CUDA kernels of `kernels/*.cu`, compiled as C++20 against
//! `kernels/emu/cuda_emu.h`, run on the CPU with the launch geometry of [`crate::launch`], the same the CUDA
//! backend uses. Threads of a block run as fibers in a chosen order, blocks in sequence; the emulator turns
//! the CUDA undefined behaviour it can see (divergent barriers, inactive lanes in warp intrinsics, writes
//! past dynamic shared memory, device asserts) into errors. It is for tests, not speed. Two builds check
//! more: `INCEPTION_CUDA_EMU_ASAN=1` (AddressSanitizer: out-of-bounds and use-after-free accesses) and
//! `INCEPTION_CUDA_EMU_RACECHECK=1` (races in shared and global memory, see [`racecheck_build`]).
//!
//! All `unsafe` of this backend is the FFI into the emulated launchers, each with a `// SAFETY:` line.

use std::ffi::{c_char, c_void, CStr};
use std::marker::PhantomData;

use crate::backend::Backend;
use crate::launch::LaunchDims;
use crate::launcher::{Driver, Kernel, Value};
use crate::{Error, Result};

pub mod planted;

/// Whether the emulated kernels were built with AddressSanitizer (`INCEPTION_CUDA_EMU_ASAN=1`).
pub fn asan_build() -> bool {
    cfg!(emu_asan)
}

/// Whether the emulated kernels were built for the race checker (`INCEPTION_CUDA_EMU_RACECHECK=1`): every
/// shared and global access of a kernel is checked, and a conflict between two threads of a block not
/// separated by a barrier, or between two blocks of a launch, fails the launch with an error naming both.
pub fn racecheck_build() -> bool {
    cfg!(emu_racecheck)
}

/// Shared-memory traffic of emulated launches, as the racecheck build counts it (the lanes' accesses grouped
/// into warp instructions; each instruction served in phases of 128 bytes, a phase taking as many wavefronts
/// as the most distinct words in one of the 32 banks). It predicts `ncu`'s shared-memory wavefronts and bank
/// conflicts of the same instructions, for kernels whose lanes stay converged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)] // six u64 in this order, as emu_take_shared_traffic writes them
pub struct SharedTraffic {
    /// Warp-level shared-memory loads.
    pub load_requests: u64,
    /// The wavefronts they took.
    pub load_wavefronts: u64,
    /// The wavefronts they would take without bank conflicts.
    pub load_ideal: u64,
    /// Warp-level shared-memory stores (`cp.async` destinations included).
    pub store_requests: u64,
    /// The wavefronts they took.
    pub store_wavefronts: u64,
    /// The wavefronts they would take without bank conflicts.
    pub store_ideal: u64,
}

impl SharedTraffic {
    /// Wavefronts beyond the conflict-free count, loads and stores together.
    pub fn conflicts(&self) -> u64 {
        self.load_wavefronts + self.store_wavefronts - self.load_ideal - self.store_ideal
    }
}

impl std::ops::AddAssign for SharedTraffic {
    fn add_assign(&mut self, o: SharedTraffic) {
        self.load_requests += o.load_requests;
        self.load_wavefronts += o.load_wavefronts;
        self.load_ideal += o.load_ideal;
        self.store_requests += o.store_requests;
        self.store_wavefronts += o.store_wavefronts;
        self.store_ideal += o.store_ideal;
    }
}

/// Per kernel (its op name, in order of first launch), the shared-memory traffic counted on this thread.
type TrafficLog = Vec<(&'static str, SharedTraffic)>;

thread_local! {
    static TRAFFIC: std::cell::RefCell<Option<TrafficLog>> = const { std::cell::RefCell::new(None) };
}

/// Runs `f` with the shared-memory traffic of its emulated launches on this thread counted; returns its
/// result and the traffic per kernel (by op name, in order of first launch). Needs the racecheck build
/// (`INCEPTION_CUDA_EMU_RACECHECK=1`): elsewhere an error that says so.
pub fn count_shared_traffic<R>(f: impl FnOnce() -> R) -> Result<(R, TrafficLog)> {
    #[cfg(emu_racecheck)]
    {
        /// Stops counting when dropped, also when `f` panics.
        struct Counting;
        impl Drop for Counting {
            fn drop(&mut self) {
                // SAFETY: clears a flag of the calling thread and its totals.
                unsafe { emu_shared_traffic(0) };
            }
        }
        // SAFETY: sets a flag of the calling thread and clears its totals.
        unsafe { emu_shared_traffic(1) };
        let counting = Counting;
        TRAFFIC.with(|t| *t.borrow_mut() = Some(Vec::new()));
        let r = f();
        drop(counting);
        let log = TRAFFIC.with(|t| t.borrow_mut().take()).unwrap_or_default();
        Ok((r, log))
    }
    #[cfg(not(emu_racecheck))]
    {
        let _ = f;
        Err(Error::Emulation {
            op: "count_shared_traffic",
            message: "shared-memory traffic is counted by the racecheck build only: set \
                      INCEPTION_CUDA_EMU_RACECHECK=1"
                .into(),
        })
    }
}

/// Adds the traffic of the launch that just ran to `op`'s, if counting.
#[cfg(emu_racecheck)]
fn log_traffic(op: &'static str) {
    TRAFFIC.with(|t| {
        let mut t = t.borrow_mut();
        let Some(log) = t.as_mut() else { return };
        let mut one = SharedTraffic::default();
        // SAFETY: writes six u64 into `one` (repr(C): six u64 fields in the order the emulator writes them).
        unsafe { emu_take_shared_traffic(std::ptr::from_mut(&mut one).cast()) };
        match log.iter_mut().find(|(name, _)| *name == op) {
            Some((_, sum)) => *sum += one,
            None => log.push((op, one)),
        }
    });
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
    /// The emulator's entry point (generated by build.rs from the `.cu` parameter lists): runs kernel
    /// number `kernel` of `Kernel::ALL` with `params[i]` pointing at the value of its parameter `i`, as
    /// `cuLaunchKernel`'s kernelParams. 0 on success, -1 for an unknown kernel, else an emulator error.
    fn emu_launch(kernel: u32, cfg: *const Launch, params: *const *mut c_void) -> i32;
}

#[cfg(emu_racecheck)]
extern "C" {
    /// Starts (1) or stops (0) counting shared-memory traffic on the calling thread; clears its totals.
    fn emu_shared_traffic(on: i32);
    /// Writes the calling thread's totals (loads: requests, wavefronts, ideal; stores: the same) to
    /// `out[0..6]` and clears them.
    fn emu_take_shared_traffic(out: *mut u64);
}

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
    let status = launch(&cfg);
    #[cfg(emu_racecheck)]
    log_traffic(op);
    if status == 0 {
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

    crate::backend::for_each_kernel!(forward_to_launchers);
}

/// One argument of an emulated launch: a buffer's address, or the address of a value.
enum Slot {
    Ptr(*mut c_void),
    Val(*const c_void),
}

/// The arguments of an emulated launch, borrowing the buffers and values they point at for `'a`.
pub struct EmuArgs<'a> {
    slots: Vec<Slot>,
    borrows: PhantomData<&'a mut ()>,
}

impl Driver for EmuBackend {
    type Args<'a> = EmuArgs<'a>;

    fn args(&self, _kernel: Kernel) -> EmuArgs<'_> {
        EmuArgs {
            slots: Vec::new(),
            borrows: PhantomData,
        }
    }

    fn push_out<'a>(args: &mut EmuArgs<'a>, v: &'a mut &mut [f32]) {
        args.slots.push(Slot::Ptr(v.as_mut_ptr().cast()));
    }

    fn push_in<'a>(args: &mut EmuArgs<'a>, v: &'a &[f32]) {
        args.slots.push(Slot::Ptr(v.as_ptr().cast_mut().cast()));
    }

    fn push_labels<'a>(args: &mut EmuArgs<'a>, v: &'a Vec<u32>) {
        args.slots.push(Slot::Ptr(v.as_ptr().cast_mut().cast()));
    }

    fn push_labels_out<'a>(args: &mut EmuArgs<'a>, v: &'a mut Vec<u32>) {
        args.slots.push(Slot::Ptr(v.as_mut_ptr().cast()));
    }

    fn push_null(args: &mut EmuArgs<'_>, _kind: crate::launcher::ParamKind) {
        args.slots.push(Slot::Ptr(std::ptr::null_mut()));
    }

    fn push_value<'a>(args: &mut EmuArgs<'a>, v: Value<'a>) {
        let p: *const c_void = match v {
            Value::U32(x) => (x as *const u32).cast(),
            Value::I32(x) => (x as *const i32).cast(),
            Value::U64(x) => (x as *const u64).cast(),
            Value::F32(x) => (x as *const f32).cast(),
            Value::ConvDims(x) => (x as *const crate::bindings::ConvDims).cast(),
            Value::ReduceDims(x) => (x as *const crate::bindings::ReduceDims).cast(),
            Value::GemmDims(x) => (x as *const crate::bindings::GemmDims).cast(),
            Value::AdamScalars(x) => (x as *const crate::bindings::AdamScalars).cast(),
        };
        args.slots.push(Slot::Val(p));
    }

    fn launch(
        &self,
        op: &'static str,
        kernel: Kernel,
        dims: LaunchDims,
        args: EmuArgs<'_>,
    ) -> Result<()> {
        // kernelParams: the address of each argument's value (for a buffer, of the slot holding its address).
        let params: Vec<*mut c_void> = args
            .slots
            .iter()
            .map(|s| match s {
                Slot::Ptr(p) => (p as *const *mut c_void).cast_mut().cast(),
                Slot::Val(v) => v.cast_mut(),
            })
            .collect();
        let mut unknown = false;
        let result = run(op, dims, self.order, |cfg| {
            // SAFETY: `Launch::run` checked the arguments against the kernel's parameter list in its .cu file,
            // so each params[i] points at a live value of parameter i's type (the slots and the borrowed values
            // outlive this call); the launchers checked every buffer's length against the sizes passed, and
            // the kernels index below those sizes; outputs come from mutable borrows, so they alias no input.
            let rc = unsafe { emu_launch(kernel as u32, cfg, params.as_ptr()) };
            unknown = rc == -1;
            rc
        });
        if unknown {
            return Err(Error::Internal {
                op,
                reason: format!(
                    "the emulator has no kernel #{} ({})",
                    kernel as u32,
                    kernel.name()
                ),
            });
        }
        result
    }

    crate::cpu::host_views!();
}
