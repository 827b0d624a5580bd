//! Launchers of `kernels/relu.cu`.

use cudarc::driver::{CudaView, CudaViewMut, PushKernelArg};

use super::{driver_error, launch_config, CudaBackend};
use crate::backend::check_same_len;
use crate::{launch, Result};

/// `y = max(x, 0)` elementwise on the device's stream; NaN propagates. Shapes: `y, x: [n]`.
pub fn relu_fwd(
    dev: &CudaBackend,
    y: &mut CudaViewMut<'_, f32>,
    x: &CudaView<'_, f32>,
) -> Result<()> {
    const OP: &str = "relu_fwd";
    check_same_len(OP, y.len(), &[("x", x.len())])?;
    let Some(dims) = launch::elementwise(y.len()) else {
        return Ok(());
    };
    let n = y.len() as u64;
    let mut args = dev.stream().launch_builder(&dev.kernels().relu_fwd);
    args.arg(y).arg(x).arg(&n);
    // SAFETY: the arguments match relu_fwd(float* y, const float* x, unsigned long long n); y and x hold n
    // floats in device memory (lengths checked above; views of another device's memory fail the launch with a driver error, they cannot touch host memory) and cannot alias (y is borrowed mutably).
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// `dx = dy` where `y > 0`, else 0, on the device's stream. Shapes: `dx, dy, y: [n]`.
pub fn relu_bwd(
    dev: &CudaBackend,
    dx: &mut CudaViewMut<'_, f32>,
    dy: &CudaView<'_, f32>,
    y: &CudaView<'_, f32>,
) -> Result<()> {
    const OP: &str = "relu_bwd";
    check_same_len(OP, dx.len(), &[("dy", dy.len()), ("y", y.len())])?;
    let Some(dims) = launch::elementwise(dx.len()) else {
        return Ok(());
    };
    let n = dx.len() as u64;
    let mut args = dev.stream().launch_builder(&dev.kernels().relu_bwd);
    args.arg(dx).arg(dy).arg(y).arg(&n);
    // SAFETY: the arguments match relu_bwd(float* dx, const float* dy, const float* y, unsigned long long n);
    // all three hold n floats in device memory (lengths checked above; views of another device's memory fail the launch with a driver error, they cannot touch host memory); dx is borrowed mutably, so unaliased.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}
