//! Launcher of `kernels/mma.cu`: the tensor-core probe.

use super::{Driver, Kernel};
use crate::launch::{check_lens, LaunchDims};
use crate::Result;

/// `d = a · b + c` for one 16 × 8 × 8 tile, operands rounded to TF32, on one warp's tensor cores. Shapes:
/// `d, a, c: [16, 8]`, `b: [8, 8]` (k, n), row-major.
pub fn mma_tf32_tile<D: Driver + ?Sized>(
    d: &D,
    out: &mut D::ViewMut<'_>,
    a: &D::View<'_>,
    b: &D::View<'_>,
    c: &D::View<'_>,
) -> Result<()> {
    const OP: &str = "mma_tf32_tile";
    check_lens(
        OP,
        &[
            ("d", 128, D::len_of_mut(out)),
            ("a", 128, D::len_of(a)),
            ("b", 64, D::len_of(b)),
            ("c", 128, D::len_of(c)),
        ],
    )?;
    let dims = LaunchDims::new([1, 1, 1], 32, 0);
    launch!(d, OP, Kernel::MmaTf32Tile, dims; out out, inp a, inp b, inp c)?;
    Ok(())
}
