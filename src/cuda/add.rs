//! Launchers of `kernels/add.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{driver_error, launch_config, CudaBackend};
use crate::backend::check_same_len;
use crate::{launch, Result};

/// `y = a + b` elementwise on the device's stream. Shapes: `y, a, b: [n]`.
pub fn add_fwd(
    dev: &CudaBackend,
    y: &mut CudaViewMut<'_, f32>,
    a: &CudaView<'_, f32>,
    b: &CudaView<'_, f32>,
) -> Result<()> {
    const OP: &str = "add_fwd";
    check_same_len(OP, y.len(), &[("a", a.len()), ("b", b.len())])?;
    let Some(dims) = launch::elementwise(y.len()) else {
        return Ok(());
    };
    let n = y.len() as u64;
    let mut args = dev.stream().launch_builder(&dev.kernels().add_fwd);
    args.arg(y).arg(a).arg(b).arg(&n);
    // SAFETY: the arguments match add_fwd(float* y, const float* a, const float* b, unsigned long long n); all
    // three hold n floats in device memory (lengths checked above; views of another device's memory fail the launch with a driver error, they cannot touch host memory); y is borrowed mutably, so unaliased.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}
