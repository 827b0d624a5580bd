//! Launchers of the planted-bug kernels of `kernels/emu/planted/planted.cu` (and their one correct twin),
//! for the tests that show what the emulator catches. Not part of the crate's API.
#![doc(hidden)]

use super::{run, Launch, ThreadOrder};
use crate::backend::check_same_len;
use crate::launch::LaunchDims;
use crate::shape::check_len;
use crate::{Error, Result};

extern "C" {
    fn emu_launch_planted_divergent_barrier(cfg: *const Launch, y: *mut f32, n: u64) -> i32;
    fn emu_launch_planted_missing_barrier_sum(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
    ) -> i32;
    fn emu_launch_block_sum(cfg: *const Launch, y: *mut f32, x: *const f32) -> i32;
    fn emu_launch_planted_relu_no_grid_stride(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        n: u64,
    ) -> i32;
    fn emu_launch_planted_oob_write(cfg: *const Launch, y: *mut f32, n: u64) -> i32;
    fn emu_launch_planted_shfl_inactive_lane(cfg: *const Launch, y: *mut f32) -> i32;
    fn emu_launch_planted_dynamic_shared_overflow(cfg: *const Launch, y: *mut f32) -> i32;
    fn emu_launch_planted_mma_wrong_fragment(
        cfg: *const Launch,
        d: *mut f32,
        a: *const f32,
        b: *const f32,
        c: *const f32,
    ) -> i32;
    fn emu_launch_planted_cp_async_stage(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        mode: u32,
    ) -> i32;
    fn emu_launch_planted_cp_async_pipeline(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        tiles: u32,
        bug: u32,
    ) -> i32;
    fn emu_launch_planted_blocks_share_output(cfg: *const Launch, y: *mut f32) -> i32;
    fn emu_launch_planted_warp_exchange(cfg: *const Launch, y: *mut f32, synced: u32) -> i32;
    fn emu_launch_bank_pattern(cfg: *const Launch, y: *mut f32, stride: u32, width: u32) -> i32;
    fn emu_launch_planted_misaligned_float4(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        offset: u32,
    ) -> i32;
}

fn one_block(threads: usize, shared_bytes: u32) -> Result<LaunchDims> {
    if threads == 0 || threads > 256 {
        return Err(Error::InvalidShape {
            op: "planted",
            reason: format!("{threads} threads (1..=256)"),
        });
    }
    Ok(LaunchDims::new([1, 1, 1], threads as u32, shared_bytes))
}

/// Threads 0..16 of each block wait at a `__syncthreads()` the others never reach.
pub fn divergent_barrier(y: &mut [f32], dims: LaunchDims, order: ThreadOrder) -> Result<()> {
    let covered = dims.grid as usize * dims.block as usize;
    check_len("planted_divergent_barrier", "y", covered, y.len())?;
    let n = y.len() as u64;
    // SAFETY: the kernel writes y[i] for i < n only, and y holds n floats.
    run("planted_divergent_barrier", dims, order, |cfg| unsafe {
        emu_launch_planted_divergent_barrier(cfg, y.as_mut_ptr(), n)
    })
}

/// `y[0] = Σ x` through shared memory with the barrier missing (one block of `x.len()` ≤ 256 threads).
pub fn missing_barrier_sum(y: &mut [f32; 1], x: &[f32], order: ThreadOrder) -> Result<()> {
    let dims = one_block(x.len(), 0)?;
    // SAFETY: one block of x.len() threads reads x[tid] and thread 0 writes y[0].
    run("planted_missing_barrier_sum", dims, order, |cfg| unsafe {
        emu_launch_planted_missing_barrier_sum(cfg, y.as_mut_ptr(), x.as_ptr())
    })
}

/// The correct version: `y[0] = Σ x` (shared memory), `y[1 + w]` = warp `w`'s sum (shuffles); `x.len()` a
/// multiple of 32, at most 256.
pub fn block_sum(y: &mut [f32], x: &[f32], order: ThreadOrder) -> Result<()> {
    let dims = one_block(x.len(), 0)?;
    if x.len() % 32 != 0 {
        return Err(Error::InvalidShape {
            op: "block_sum",
            reason: "x.len() must be a multiple of 32".into(),
        });
    }
    check_len("block_sum", "y", 1 + x.len() / 32, y.len())?;
    // SAFETY: one block of x.len() threads reads x[tid]; writes go to y[0] and y[1 + tid / 32], all in y.
    run("block_sum", dims, order, |cfg| unsafe {
        emu_launch_block_sum(cfg, y.as_mut_ptr(), x.as_ptr())
    })
}

/// ReLU without a grid-stride loop, launched with the given geometry.
pub fn relu_no_grid_stride(
    y: &mut [f32],
    x: &[f32],
    dims: LaunchDims,
    order: ThreadOrder,
) -> Result<()> {
    check_same_len("planted_relu_no_grid_stride", y.len(), &[("x", x.len())])?;
    let n = y.len() as u64;
    // SAFETY: the kernel touches indices < n only; y and x hold n floats.
    run("planted_relu_no_grid_stride", dims, order, |cfg| unsafe {
        emu_launch_planted_relu_no_grid_stride(cfg, y.as_mut_ptr(), x.as_ptr(), n)
    })
}

/// Writes `y[0..=n]` with `n = y.len()`: one element past the end.
///
/// # Safety
/// Writes out of bounds on purpose. Call it only in a child process of the AddressSanitizer build, which
/// stops at the write.
pub unsafe fn oob_write(y: &mut [f32], dims: LaunchDims) -> Result<()> {
    let n = y.len() as u64;
    // SAFETY: none: the caller promised an ASan build that stops the process at the out-of-bounds write.
    run(
        "planted_oob_write",
        dims,
        ThreadOrder::Forward,
        |cfg| unsafe { emu_launch_planted_oob_write(cfg, y.as_mut_ptr(), n) },
    )
}

/// Half of each warp exits, the other half shuffles with a full mask.
pub fn shfl_inactive_lane(y: &mut [f32], order: ThreadOrder) -> Result<()> {
    let dims = one_block(y.len(), 0)?;
    // SAFETY: one block of y.len() threads, each writing at most y[tid].
    run("planted_shfl_inactive_lane", dims, order, |cfg| unsafe {
        emu_launch_planted_shfl_inactive_lane(cfg, y.as_mut_ptr())
    })
}

/// Each of `y.len()` threads writes one float of dynamic shared memory, of which the launch gives
/// `shared_bytes`.
pub fn dynamic_shared_overflow(y: &mut [f32], shared_bytes: u32, order: ThreadOrder) -> Result<()> {
    let dims = one_block(y.len(), shared_bytes)?;
    if super::asan_build() && (shared_bytes as usize) < 4 * y.len() {
        return Err(Error::InvalidShape {
            op: "planted_dynamic_shared_overflow",
            reason: "under ASan the overflow would abort the process".into(),
        });
    }
    // SAFETY: one block of y.len() threads writes y[tid]; the shared-memory buffer is the emulator's own,
    // with guard bytes after it that the emulator checks (the bug this launch plants).
    run(
        "planted_dynamic_shared_overflow",
        dims,
        order,
        |cfg| unsafe { emu_launch_planted_dynamic_shared_overflow(cfg, y.as_mut_ptr()) },
    )
}

/// `mma_tf32_tile` with two of A's fragment indices swapped (a1 and a2): shapes as
/// [`crate::cpu::mma_tf32_tile`].
pub fn mma_wrong_fragment(
    d: &mut [f32],
    a: &[f32],
    b: &[f32],
    c: &[f32],
    order: ThreadOrder,
) -> Result<()> {
    const OP: &str = "planted_mma_wrong_fragment";
    check_len(OP, "d", 128, d.len())?;
    check_len(OP, "a", 128, a.len())?;
    check_len(OP, "b", 64, b.len())?;
    check_len(OP, "c", 128, c.len())?;
    let dims = one_block(32, 0)?;
    // SAFETY: one warp reads a[0..128], b[0..64], c[0..128] and writes d[0..128], all checked above.
    run(OP, dims, order, |cfg| unsafe {
        emu_launch_planted_mma_wrong_fragment(
            cfg,
            d.as_mut_ptr(),
            a.as_ptr(),
            b.as_ptr(),
            c.as_ptr(),
        )
    })
}

/// How [`cp_async_stage`] stages its input (mode 0 is correct; the others plant one bug each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpAsyncBug {
    /// Issue, commit, wait, barrier, read: correct.
    None = 0,
    /// Reads after the barrier but before its wait.
    ReadBeforeWait = 1,
    /// Waits for its own copy but skips the barrier before reading its neighbour's.
    MissingBarrier = 2,
    /// Copies 16 bytes from an address 4 bytes past a 16-byte boundary.
    Misaligned = 3,
    /// Exits with its copy never waited for.
    NeverWaited = 4,
}

/// `y[4·t + u] = x[4·((t + 1) % threads) + u]` through shared memory filled by `cp.async` (one block of
/// `x.len() / 4` ≤ 256 threads), with the bug `bug` planted. `x` holds one float more than the threads read
/// (the misaligned copy reads one past the slice's first float4s).
pub fn cp_async_stage(y: &mut [f32], x: &[f32], bug: CpAsyncBug, order: ThreadOrder) -> Result<()> {
    const OP: &str = "planted_cp_async_stage";
    let threads = y.len() / 4;
    check_len(OP, "y", 4 * threads, y.len())?;
    check_len(OP, "x", 4 * threads + 4, x.len())?;
    let dims = one_block(threads, 0)?;
    // SAFETY: one block of y.len() / 4 threads; thread t reads x[4t .. 4t + 5) at most (x has 4 floats to
    // spare) and writes y[4t .. 4t + 4).
    run(OP, dims, order, |cfg| unsafe {
        emu_launch_planted_cp_async_stage(cfg, y.as_mut_ptr(), x.as_ptr(), bug as u32)
    })
}

/// `y[4·t + u] = Σₖ x[k][4·((t + 1) % threads) + u]` over `x.len() / y.len()` tiles of `y.len() / 4` ≤ 256
/// float4s, double-buffered through shared memory by `cp.async`; with `missing_barrier` a stage is refilled
/// without the barrier that ends the other threads' reads of it (a race only the racecheck build reports).
pub fn cp_async_pipeline(
    y: &mut [f32],
    x: &[f32],
    missing_barrier: bool,
    order: ThreadOrder,
) -> Result<()> {
    const OP: &str = "planted_cp_async_pipeline";
    let threads = y.len() / 4;
    check_len(OP, "y", 4 * threads, y.len())?;
    if threads == 0 || x.len() % y.len() != 0 || x.as_ptr() as usize % 16 != 0 {
        return Err(Error::InvalidShape {
            op: OP,
            reason: "x: whole tiles of y.len() floats, 16-byte aligned".into(),
        });
    }
    let tiles = (x.len() / y.len()) as u32;
    let dims = one_block(threads, 0)?;
    // SAFETY: one block of y.len() / 4 threads; thread t reads x[4(k·threads + t) ..][..4] for k < tiles (all
    // in x) and writes y[4t ..][..4].
    run(OP, dims, order, |cfg| unsafe {
        emu_launch_planted_cp_async_pipeline(
            cfg,
            y.as_mut_ptr(),
            x.as_ptr(),
            tiles,
            u32::from(missing_barrier),
        )
    })
}

/// `blocks` blocks of `y.len()` ≤ 256 threads, each writing `y[tid] = blockIdx.x`: a race between blocks.
pub fn blocks_share_output(y: &mut [f32], blocks: u32, order: ThreadOrder) -> Result<()> {
    let mut dims = one_block(y.len(), 0)?;
    dims.grid = blocks;
    // SAFETY: every block's thread t writes y[t], t < y.len().
    run("planted_blocks_share_output", dims, order, |cfg| unsafe {
        emu_launch_planted_blocks_share_output(cfg, y.as_mut_ptr())
    })
}

/// One warp: `y[lane] = (lane + 1) % 32` through shared memory, with or without the `__syncwarp()` between
/// the writes and the reads.
pub fn warp_exchange(y: &mut [f32; 32], synced: bool, order: ThreadOrder) -> Result<()> {
    let dims = one_block(32, 0)?;
    // SAFETY: one warp; lane l writes y[l], l < 32.
    run("planted_warp_exchange", dims, order, |cfg| unsafe {
        emu_launch_planted_warp_exchange(cfg, y.as_mut_ptr(), u32::from(synced))
    })
}

/// One warp: lane `l` loads `width` (1, 2 or 4) floats at once from `s[l · stride]` of a shared array of
/// 4,096 floats holding `s[i] = i`, and writes their sum to `y[l]`: bank patterns for the shared-memory
/// traffic counter ([`super::count_shared_traffic`]).
pub fn bank_pattern(y: &mut [f32; 32], stride: u32, width: u32) -> Result<()> {
    if ![1, 2, 4].contains(&width) || stride % width != 0 || 31 * stride + width > 4096 {
        return Err(Error::InvalidShape {
            op: "bank_pattern",
            reason: format!(
                "width {width} (1, 2 or 4), stride {stride} (a multiple of it, in the array)"
            ),
        });
    }
    let dims = one_block(32, 0)?;
    // SAFETY: one warp; lane l reads shared memory only and writes y[l], l < 32.
    run("bank_pattern", dims, ThreadOrder::Forward, |cfg| unsafe {
        emu_launch_bank_pattern(cfg, y.as_mut_ptr(), stride, width)
    })
}

/// One warp: lane `l` writes `y[l]` = the sum of the float4 at `x[offset..offset + 4]`, which is misaligned
/// unless `offset` is a multiple of 4 (`x` 16-byte aligned). The racecheck build reports the misaligned
/// access; other builds refuse the launch (their emulated copy may use aligned vector moves).
pub fn misaligned_float4(y: &mut [f32; 32], x: &[f32], offset: u32) -> Result<()> {
    const OP: &str = "planted_misaligned_float4";
    if !super::racecheck_build() {
        return Err(Error::InvalidShape {
            op: OP,
            reason: "launched by the racecheck build only (INCEPTION_CUDA_EMU_RACECHECK=1)".into(),
        });
    }
    if x.as_ptr() as usize % 16 != 0 || x.len() < offset as usize + 4 {
        return Err(Error::InvalidShape {
            op: OP,
            reason: format!(
                "x: 16-byte aligned, at least {} floats",
                offset as usize + 4
            ),
        });
    }
    let dims = one_block(32, 0)?;
    // SAFETY: one warp reads x[offset..offset + 4] (inside x, checked above) through the racecheck build's
    // byte-wise vector copy, and lane l writes y[l], l < 32.
    run(OP, dims, ThreadOrder::Forward, |cfg| unsafe {
        emu_launch_planted_misaligned_float4(cfg, y.as_mut_ptr(), x.as_ptr(), offset)
    })
}
