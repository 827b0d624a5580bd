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
