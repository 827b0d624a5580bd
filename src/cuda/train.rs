//! Launchers of `kernels/pool.cu` and `kernels/train.cu`.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::{driver_error, launch_config, CudaBackend};
use crate::backend::check_same_len;
use crate::cpu::dropout_threshold;
use crate::shape::{AdamStep, PoolShape};
use crate::{launch, Result};

type V<'a> = CudaViewMut<'a, f32>;
type R<'a> = CudaView<'a, f32>;

// SAFETY (all launches below): the pushed arguments match the kernel's parameter list in kernels/*.cu one
// for one; every buffer's length was checked against the sizes passed (the kernels index below them only);
// outputs are borrowed mutably, so they alias no input. Views of another device's memory fail the launch
// with a driver error; they cannot touch host memory.

/// 3×3 stride-1 max pooling. Shapes: `y, x: [n, c, h, w]`.
pub fn maxpool3x3s1_fwd(dev: &CudaBackend, y: &mut V<'_>, x: &R<'_>, s: &PoolShape) -> Result<()> {
    const OP: &str = "maxpool3x3s1_fwd";
    let Some(p) = launch::pool_plan(OP, s, &[("y", y.len()), ("x", x.len())])? else {
        return Ok(());
    };
    let mut args = dev.stream().launch_builder(&dev.kernels().maxpool3x3s1_fwd);
    args.arg(y).arg(x).arg(&p.planes).arg(&p.h).arg(&p.w);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(p.dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// Gather backward of max pooling, overwriting or accumulating into `dx`. Shapes: `dx, dy, x: [n, c, h, w]`.
pub fn maxpool3x3s1_bwd(
    dev: &CudaBackend,
    dx: &mut V<'_>,
    dy: &R<'_>,
    x: &R<'_>,
    s: &PoolShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "maxpool3x3s1_bwd";
    let Some(p) = launch::pool_plan(OP, s, &[("dx", dx.len()), ("dy", dy.len()), ("x", x.len())])?
    else {
        return Ok(());
    };
    let acc = i32::from(accumulate);
    let mut args = dev.stream().launch_builder(&dev.kernels().maxpool3x3s1_bwd);
    args.arg(dx)
        .arg(dy)
        .arg(x)
        .arg(&p.planes)
        .arg(&p.h)
        .arg(&p.w)
        .arg(&acc)
        .arg(&p.bwd_tile_h);
    // SAFETY: see the module comment; the dynamic shared memory holds the tile's rows and winners.
    unsafe { args.launch(launch_config(p.bwd_dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// Mean softmax cross-entropy and its gradient; the loss stays on the device. A label out of range gives a
/// NaN loss. Shapes: `loss [1]`, `dlogits, logits: [m, classes]`, `labels [m]`.
pub fn softmax_xent(
    dev: &CudaBackend,
    loss: &mut V<'_>,
    dlogits: &mut V<'_>,
    logits: &R<'_>,
    labels: &CudaSlice<u32>,
    classes: usize,
) -> Result<()> {
    const OP: &str = "softmax_xent";
    let m = labels.len();
    let Some(dims) = launch::softmax_plan(OP, m, classes, loss.len(), dlogits.len(), logits.len())?
    else {
        return dev.stream().memset_zeros(loss).map_err(driver_error(OP));
    };
    let (m32, c32) = (m as u32, classes as u32); // checked by softmax_plan
    let mut args = dev.stream().launch_builder(&dev.kernels().softmax_xent);
    args.arg(loss)
        .arg(dlogits)
        .arg(logits)
        .arg(labels)
        .arg(&m32)
        .arg(&c32);
    // SAFETY: see the module comment; the block's dynamic shared memory holds the m row losses.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

fn dropout(
    dev: &CudaBackend,
    op: &'static str,
    out: &mut V<'_>,
    inp: &R<'_>,
    p: f32,
    seed: u64,
    step: u64,
) -> Result<()> {
    check_same_len(op, out.len(), &[("input", inp.len())])?;
    let (threshold, scale) = dropout_threshold(p)?;
    let Some(dims) = launch::elementwise(out.len()) else {
        return Ok(());
    };
    let n = out.len() as u64;
    let f = if op == "dropout_fwd" {
        &dev.kernels().dropout_fwd
    } else {
        &dev.kernels().dropout_bwd
    };
    let mut args = dev.stream().launch_builder(f);
    args.arg(out)
        .arg(inp)
        .arg(&n)
        .arg(&seed)
        .arg(&step)
        .arg(&threshold)
        .arg(&scale);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(op))?;
    Ok(())
}

/// Inverted dropout with the hash mask of `(seed, step)`. Shapes: `y, x: [n]`.
pub fn dropout_fwd(
    dev: &CudaBackend,
    y: &mut V<'_>,
    x: &R<'_>,
    p: f32,
    seed: u64,
    step: u64,
) -> Result<()> {
    dropout(dev, "dropout_fwd", y, x, p, seed, step)
}

/// Dropout's backward: the same mask and scale applied to `dy`. Shapes: `dx, dy: [n]`.
pub fn dropout_bwd(
    dev: &CudaBackend,
    dx: &mut V<'_>,
    dy: &R<'_>,
    p: f32,
    seed: u64,
    step: u64,
) -> Result<()> {
    dropout(dev, "dropout_bwd", dx, dy, p, seed, step)
}

/// One Adam update over flat buffers. Shapes: `p, m, v, g: [n]`.
pub fn adam_step(
    dev: &CudaBackend,
    p: &mut V<'_>,
    m: &mut V<'_>,
    v: &mut V<'_>,
    g: &R<'_>,
    step: &AdamStep,
) -> Result<()> {
    const OP: &str = "adam_step";
    check_same_len(
        OP,
        p.len(),
        &[("m", m.len()), ("v", v.len()), ("g", g.len())],
    )?;
    let scalars = launch::AdamScalars::of(OP, step)?;
    let Some(dims) = launch::elementwise(p.len()) else {
        return Ok(());
    };
    let n = p.len() as u64;
    let mut args = dev.stream().launch_builder(&dev.kernels().adam_step);
    args.arg(p).arg(m).arg(v).arg(g).arg(&n).arg(&scalars);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}
