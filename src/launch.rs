//! Launch geometry of every kernel, shared by the CUDA backend and (later) the emulated one, so a wrong
//! grid or block size shows up in CI too. Pure arithmetic: no driver calls here.

/// Grid, block and dynamic shared memory of one launch (1-D for now; y and z are 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaunchDims {
    /// Blocks in x.
    pub grid: u32,
    /// Threads per block in x.
    pub block: u32,
    /// Dynamic shared memory per block, bytes.
    pub shared_bytes: u32,
}

/// Threads per block of the elementwise kernels.
pub const ELEMENTWISE_BLOCK: u32 = 256;
/// Upper bound on blocks of the elementwise kernels: their grid-stride loops cover any `n`, and ~8 waves of
/// 256-thread blocks on a 132-SM H100 saturate memory bandwidth.
pub const ELEMENTWISE_MAX_GRID: u32 = 8192;

/// Geometry of a grid-stride elementwise kernel over `n` elements (`relu_fwd`, `relu_bwd`, `add_fwd`).
/// `None` for `n == 0`: a zero-sized grid is an invalid launch, so there is nothing to launch.
pub fn elementwise(n: usize) -> Option<LaunchDims> {
    if n == 0 {
        return None;
    }
    let blocks = n
        .div_ceil(ELEMENTWISE_BLOCK as usize)
        .min(ELEMENTWISE_MAX_GRID as usize);
    Some(LaunchDims {
        grid: blocks as u32, // <= ELEMENTWISE_MAX_GRID
        block: ELEMENTWISE_BLOCK,
        shared_bytes: 0,
    })
}

/// Threads per block of `softmax_xent` (one block; rows are strided over its threads).
pub const SOFTMAX_BLOCK: u32 = 256;
/// The most rows `softmax_xent` takes: their losses sit in the block's shared memory (48 KiB).
pub const SOFTMAX_MAX_ROWS: usize = 12 * 1024;

/// A checked pooling launch: geometry and the kernel's size arguments.
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) struct PoolPlan {
    pub dims: LaunchDims,
    pub planes: u64,
    pub h: u32,
    pub w: u32,
}

/// Checks the buffers of a pooling kernel against `s` (each must hold `n·c·h·w` elements). `None` when
/// there is nothing to compute.
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) fn pool_plan(
    op: &'static str,
    s: &crate::shape::PoolShape,
    bufs: &[(&'static str, usize)],
) -> crate::Result<Option<PoolPlan>> {
    let len = s.len(op)?;
    for &(what, got) in bufs {
        crate::shape::check_len(op, what, len, got)?;
    }
    let (h, w) = (u32::try_from(s.h), u32::try_from(s.w));
    let (Ok(h), Ok(w)) = (h, w) else {
        return Err(crate::Error::InvalidShape {
            op,
            reason: format!("image {}×{} exceeds u32", s.h, s.w),
        });
    };
    Ok(elementwise(len).map(|dims| PoolPlan {
        dims,
        planes: (s.n * s.c) as u64,
        h,
        w,
    }))
}

/// Checks a `softmax_xent` launch: `loss [1]`, `dlogits` and `logits` `[m, classes]`; at most
/// [`SOFTMAX_MAX_ROWS`] rows. `None` when there are no rows or classes (the loss is then 0).
#[cfg_attr(not(any(feature = "cuda", feature = "emulation")), allow(dead_code))]
pub(crate) fn softmax_plan(
    op: &'static str,
    m: usize,
    classes: usize,
    loss: usize,
    dlogits: usize,
    logits: usize,
) -> crate::Result<Option<LaunchDims>> {
    let len = m.checked_mul(classes).ok_or(crate::Error::ShapeOverflow {
        op,
        shape: vec![m, classes],
    })?;
    crate::shape::check_len(op, "loss", 1, loss)?;
    crate::shape::check_len(op, "dlogits", len, dlogits)?;
    crate::shape::check_len(op, "logits", len, logits)?;
    if m > SOFTMAX_MAX_ROWS || u32::try_from(classes).is_err() {
        return Err(crate::Error::InvalidShape {
            op,
            reason: format!("{m} rows of {classes} classes (at most {SOFTMAX_MAX_ROWS} rows)"),
        });
    }
    if m == 0 || classes == 0 {
        return Ok(None);
    }
    Ok(Some(LaunchDims {
        grid: 1,
        block: SOFTMAX_BLOCK,
        shared_bytes: (4 * m) as u32,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elementwise_grid_covers_small_sizes_and_caps_large_ones() {
        assert_eq!(elementwise(0), None);
        assert_eq!(elementwise(1).map(|d| d.grid), Some(1));
        assert_eq!(elementwise(256).map(|d| d.grid), Some(1));
        assert_eq!(elementwise(257).map(|d| d.grid), Some(2));
        assert_eq!(
            elementwise(usize::MAX).map(|d| d.grid),
            Some(ELEMENTWISE_MAX_GRID)
        );
    }
}
