//! Launchers of `kernels/linear.cu`.

use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

use super::{driver_error, launch_config, CudaBackend};
use crate::launch::{checked, AdamScalars, GemmDims};
use crate::shape::{AdamStep, LinearShape};
use crate::Result;

type V<'a> = CudaViewMut<'a, f32>;
type R<'a> = CudaView<'a, f32>;

// SAFETY: #[repr(C)] with the fields of GemmDims in kernels/linear.cu in the same order (six u64 then four
// u32: no padding, no pointers).
unsafe impl DeviceRepr for GemmDims {}
// SAFETY: #[repr(C)], six f32 in the order of AdamScalars in kernels/adam.cuh.
unsafe impl DeviceRepr for AdamScalars {}

// SAFETY (all launches below): the pushed arguments match the kernel's parameter list in kernels/linear.cu;
// every buffer's length was checked against the plan's dims, which bound every index the kernels form; outputs
// are borrowed mutably, so they alias no input.

/// `y = x · wᵀ + b`: split-K partial products into the device's scratch buffer (kept between calls, grown on
/// first use, so steady-state steps allocate nothing), then their sum in a fixed order plus the bias.
/// Shapes: `y [m, n_out]`, `x [m, k_in]`, `w [n_out, k_in]`, `b [n_out]`.
pub fn linear_fwd(
    dev: &CudaBackend,
    y: &mut V<'_>,
    x: &R<'_>,
    w: &R<'_>,
    b: &R<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_fwd";
    let p = checked::linear_fwd(OP, s, y.len(), x.len(), w.len(), b.len())?;
    let Some(reduce) = p.reduce else {
        return Ok(());
    };
    dev.with_scratch(p.partials_len(), |partials| {
        let (d, dims) = p.fwd;
        let mut args = dev.stream().launch_builder(&dev.kernels().linear_fwd);
        args.arg(&mut *partials).arg(x).arg(w).arg(&d);
        // SAFETY: see the module comment; the scratch holds splits·m·n_out floats.
        unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
        let mut args = dev
            .stream()
            .launch_builder(&dev.kernels().linear_fwd_reduce);
        let partials = partials.as_view();
        args.arg(y)
            .arg(&partials)
            .arg(b)
            .arg(&p.m)
            .arg(&p.n_out)
            .arg(&p.splits);
        // SAFETY: see the module comment.
        unsafe { args.launch(launch_config(reduce)) }.map_err(driver_error(OP))?;
        Ok(())
    })
}

/// `dx = dy · w`. Shapes: `dx [m, k_in]`, `dy [m, n_out]`, `w [n_out, k_in]`.
pub fn linear_dgrad(
    dev: &CudaBackend,
    dx: &mut V<'_>,
    dy: &R<'_>,
    w: &R<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_dgrad";
    let p = checked::linear_dgrad(OP, s, dx.len(), dy.len(), w.len())?;
    if dx.is_empty() {
        return Ok(());
    }
    let (d, dims) = p.dgrad;
    let mut args = dev.stream().launch_builder(&dev.kernels().linear_dgrad);
    args.arg(dx).arg(dy).arg(w).arg(&d);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// `dw = dyᵀ · x`. Shapes: `dw [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_wgrad(
    dev: &CudaBackend,
    dw: &mut V<'_>,
    dy: &R<'_>,
    x: &R<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_wgrad";
    let p = checked::linear_wgrad(OP, s, dw.len(), dy.len(), x.len())?;
    if dw.is_empty() {
        return Ok(());
    }
    let (d, dims) = p.wgrad;
    let mut args = dev.stream().launch_builder(&dev.kernels().linear_wgrad);
    args.arg(dw).arg(dy).arg(x).arg(&d);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// Adam applied to `w` with the gradient `dyᵀ · x`, which is never stored: the result of [`linear_wgrad`]
/// then [`super::adam_step`] over `w`, bit for bit, without writing and reading back the gradient (for fc1 at
/// batch 50, 562 MB each way). `w` is updated in place, so run [`linear_dgrad`] (which reads it) first.
/// Shapes: `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
///
/// ```no_run
/// use inception_cuda::{cuda, shape::{AdamStep, LinearShape}, Device};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let dev = Device::cuda(0)?;
/// let Device::Cuda(d) = &dev else { unreachable!() };
/// let gpu = d.backend();
/// // A 784 → 10 layer at batch 50: its weights and Adam moments, the output gradient and the input.
/// let s = LinearShape { m: 50, k_in: 784, n_out: 10 };
/// let mut w = gpu.stream().clone_htod(&vec![0.01f32; 10 * 784])?;
/// let (mut m, mut v) = (gpu.stream().alloc_zeros::<f32>(7840)?, gpu.stream().alloc_zeros::<f32>(7840)?);
/// let dy = gpu.stream().clone_htod(&vec![0.1f32; 50 * 10])?;
/// let x = gpu.stream().clone_htod(&vec![0.5f32; 50 * 784])?;
/// let wmv = [&mut w.as_view_mut(), &mut m.as_view_mut(), &mut v.as_view_mut()];
/// cuda::linear_wgrad_adam(gpu, wmv, &dy.as_view(), &x.as_view(), &s, &AdamStep::new(1e-3, 1))?;
/// # Ok(())
/// # }
/// ```
pub fn linear_wgrad_adam(
    dev: &CudaBackend,
    [w, m, v]: [&mut V<'_>; 3],
    dy: &R<'_>,
    x: &R<'_>,
    s: &LinearShape,
    step: &AdamStep,
) -> Result<()> {
    const OP: &str = "linear_wgrad_adam";
    let p = checked::linear_wgrad_adam(OP, s, [w.len(), m.len(), v.len()], dy.len(), x.len())?;
    let scalars = AdamScalars::of(OP, step)?;
    if w.is_empty() {
        return Ok(());
    }
    let (d, dims) = p.wgrad_adam;
    let mut args = dev
        .stream()
        .launch_builder(&dev.kernels().linear_wgrad_adam);
    args.arg(w)
        .arg(m)
        .arg(v)
        .arg(dy)
        .arg(x)
        .arg(&d)
        .arg(&scalars);
    // SAFETY: see the module comment; w, m and v are three distinct mutable borrows.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// `db = Σ_rows dy`, rows in order. Shapes: `db [n_out]`, `dy [m, n_out]`.
pub fn linear_bgrad(dev: &CudaBackend, db: &mut V<'_>, dy: &R<'_>, s: &LinearShape) -> Result<()> {
    const OP: &str = "linear_bgrad";
    let p = checked::linear_bgrad(OP, s, db.len(), dy.len())?;
    let Some(dims) = p.bgrad else { return Ok(()) };
    let mut args = dev.stream().launch_builder(&dev.kernels().linear_bgrad);
    args.arg(db).arg(dy).arg(&p.m).arg(&p.n_out);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}
