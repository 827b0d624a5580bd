//! Launchers of `kernels/conv.cu`: the plain convs and the fused reduce conv (its backward is a sequence of
//! the conv kernels over the saved reduced map).

use cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES;
use cudarc::driver::{CudaView, CudaViewMut, DeviceRepr, PushKernelArg};

use super::{driver_error, launch_config, CudaBackend};
use crate::backend::reduce_conv_param_ranges;
use crate::launch::{checked, ConvDims, ReduceDims};
use crate::shape::{ConvShape, ReduceConvShape};
use crate::Result;

type V<'a> = CudaViewMut<'a, f32>;
type R<'a> = CudaView<'a, f32>;

// SAFETY: both are #[repr(C)] structs of u32 fields, laid out exactly as ConvDims and ReduceDims of
// kernels/conv.cu, with no padding and no pointers.
unsafe impl DeviceRepr for ConvDims {}
// SAFETY: as above.
unsafe impl DeviceRepr for ReduceDims {}

// SAFETY (all launches below): the pushed arguments match the kernel's parameter list in kernels/conv.cu
// one for one; every buffer's length was checked against the dims passed (the kernels index below them);
// outputs are borrowed mutably, so they alias no input. Views of another device's memory fail the launch
// with a driver error; they cannot touch host memory.

/// Convolution into a channel slice of `y`, optional ReLU epilogue. Shapes: `y [n, c_total, h, w]`,
/// `x [n, c_in, h, w]`, `w [c_out, c_in, k, k]`, `b [c_out]`.
pub fn conv_fwd(
    dev: &CudaBackend,
    y: &mut V<'_>,
    x: &R<'_>,
    w: &R<'_>,
    b: &R<'_>,
    s: &ConvShape,
    relu: bool,
) -> Result<()> {
    const OP: &str = "conv_fwd";
    let d = checked::conv_fwd(OP, s, y.len(), x.len(), w.len(), b.len())?;
    let Some(dims) = d.fwd() else { return Ok(()) };
    let relu = i32::from(relu);
    let mut args = dev.stream().launch_builder(&dev.kernels().conv_fwd);
    args.arg(y).arg(x).arg(w).arg(b).arg(&d).arg(&relu);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// Input gradient of a conv, overwriting or accumulating into `dx [n, c_in, h, w]`.
pub fn conv_dgrad(
    dev: &CudaBackend,
    dx: &mut V<'_>,
    dy: &R<'_>,
    w: &R<'_>,
    s: &ConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "conv_dgrad";
    let d = checked::conv_dgrad(OP, s, dx.len(), dy.len(), w.len())?;
    dgrad(dev, dx, dy, w, &d, accumulate)
}

fn dgrad(
    dev: &CudaBackend,
    dx: &mut V<'_>,
    dy: &R<'_>,
    w: &R<'_>,
    d: &ConvDims,
    accumulate: bool,
) -> Result<()> {
    let Some(dims) = d.dgrad() else { return Ok(()) };
    let acc = i32::from(accumulate);
    let mut args = dev.stream().launch_builder(&dev.kernels().conv_dgrad);
    args.arg(dx).arg(dy).arg(w).arg(d).arg(&acc);
    // SAFETY: see the module comment.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error("conv_dgrad"))?;
    Ok(())
}

/// Weight gradient of a conv: an implicit GEMM split over images into the device's scratch memory, then the
/// splits summed in order. Shapes: `dw [c_out, c_in, k, k]`, `dy [n, c_total, h, w]`, `x [n, c_in, h, w]`.
pub fn conv_wgrad(
    dev: &CudaBackend,
    dw: &mut V<'_>,
    dy: &R<'_>,
    x: &R<'_>,
    s: &ConvShape,
) -> Result<()> {
    const OP: &str = "conv_wgrad";
    let d = checked::conv_wgrad(OP, s, dw.len(), dy.len(), x.len())?;
    wgrad(dev, dw, dy, x, &d)
}

fn wgrad(dev: &CudaBackend, dw: &mut V<'_>, dy: &R<'_>, x: &R<'_>, d: &ConvDims) -> Result<()> {
    const OP: &str = "conv_wgrad";
    let Some(dims) = d.wgrad() else {
        // no images: the gradient is zero (no outputs: nothing to do)
        return dev.stream().memset_zeros(dw).map_err(driver_error(OP));
    };
    let ips = d.imgs_per_split();
    dev.with_scratch(d.wgrad_partials_len(), |partials| {
        let mut args = dev.stream().launch_builder(&dev.kernels().conv_wgrad);
        args.arg(&mut *partials).arg(dy).arg(x).arg(d).arg(&ips);
        // SAFETY: see the module comment; the scratch holds splits·c_out·c_in·k·k floats, each block
        // writing only its own tile of its split.
        unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
        split_sum(dev, dw, &partials.as_view(), d.splits(), OP)
    })
}

/// `out = Σ_z partials[z]` over `splits` slices of `out.len()` floats, in order.
fn split_sum(
    dev: &CudaBackend,
    out: &mut V<'_>,
    partials: &R<'_>,
    splits: u32,
    op: &'static str,
) -> Result<()> {
    let Some(dims) = crate::launch::elementwise(out.len()) else {
        return Ok(());
    };
    let len = out.len() as u64;
    let mut args = dev.stream().launch_builder(&dev.kernels().conv_split_sum);
    args.arg(out).arg(partials).arg(&len).arg(&splits);
    // SAFETY: see the module comment; `partials` holds at least splits·len floats (the callers' plans).
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(op))?;
    Ok(())
}

/// Bias gradient of a conv: per-image-split block sums into the device's scratch memory, then the splits
/// summed in order. Shapes: `db [c_out]`, `dy [n, c_total, h, w]`.
pub fn conv_bgrad(dev: &CudaBackend, db: &mut V<'_>, dy: &R<'_>, s: &ConvShape) -> Result<()> {
    const OP: &str = "conv_bgrad";
    let d = checked::conv_bgrad(OP, s, db.len(), dy.len())?;
    bgrad(dev, db, dy, &d)
}

fn bgrad(dev: &CudaBackend, db: &mut V<'_>, dy: &R<'_>, d: &ConvDims) -> Result<()> {
    const OP: &str = "conv_bgrad";
    let Some(dims) = d.bgrad() else {
        return dev.stream().memset_zeros(db).map_err(driver_error(OP));
    };
    let ips = d.imgs_per_split();
    dev.with_scratch(d.splits() as usize * d.c_out as usize, |partials| {
        let mut args = dev.stream().launch_builder(&dev.kernels().conv_bgrad);
        args.arg(&mut *partials).arg(dy).arg(d).arg(&ips);
        // SAFETY: see the module comment; the scratch holds splits·c_out floats, one per block.
        unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
        split_sum(dev, db, &partials.as_view(), d.splits(), OP)
    })
}

/// The fused reduce conv forward; `mid` receives the reduced map. `params` is `[w1 | b1 | w2 | b2]`.
pub fn reduce_conv_fwd(
    dev: &CudaBackend,
    y: &mut V<'_>,
    mid: &mut V<'_>,
    x: &R<'_>,
    params: &R<'_>,
    s: &ReduceConvShape,
) -> Result<()> {
    const OP: &str = "reduce_conv_fwd";
    let d = checked::reduce_conv_fwd(OP, s, y.len(), mid.len(), x.len(), params.len())?;
    let [r1, rb1, r2, rb2] = reduce_conv_param_ranges(s);
    let Some(dims) = d.fwd(OP)? else {
        return Ok(());
    };
    let f = &dev.kernels().reduce_conv_fwd;
    f.set_attribute(
        CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
        dims.shared_bytes as i32,
    )
    .map_err(driver_error(OP))?;
    let (w1, b1, w2, b2) = (
        params.slice(r1),
        params.slice(rb1),
        params.slice(r2),
        params.slice(rb2),
    );
    let mut args = dev.stream().launch_builder(f);
    args.arg(y)
        .arg(mid)
        .arg(x)
        .arg(&w1)
        .arg(&b1)
        .arg(&w2)
        .arg(&b2)
        .arg(&d);
    // SAFETY: see the module comment; the block's dynamic shared memory (opted in above) holds one image's
    // c_mid·h·w reduced map.
    unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    Ok(())
}

/// The fused reduce conv backward, as kernels over the saved reduced map: `dw2`, `db2` from `dy`; `dpre` (in
/// `scratch`) through the k×k conv and the reduce ReLU; `dw1`, `db1`, `dx` from `dpre`.
#[allow(clippy::too_many_arguments)]
pub fn reduce_conv_bwd(
    dev: &CudaBackend,
    dx: &mut V<'_>,
    dparams: &mut V<'_>,
    scratch: &mut V<'_>,
    dy: &R<'_>,
    x: &R<'_>,
    mid: &R<'_>,
    params: &R<'_>,
    s: &ReduceConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "reduce_conv_bwd";
    let d = checked::reduce_conv_bwd(
        OP,
        s,
        dx.len(),
        x.len(),
        dy.len(),
        mid.len(),
        scratch.len(),
        params.len(),
        dparams.len(),
    )?;
    let [r1, rb1, r2, rb2] = reduce_conv_param_ranges(s);
    let (w1, w2) = (params.slice(r1.clone()), params.slice(r2.clone()));
    wgrad(dev, &mut dparams.slice_mut(r2), dy, mid, &d.conv())?;
    bgrad(dev, &mut dparams.slice_mut(rb2), dy, &d.conv())?;
    if let Some(dims) = d.dmid() {
        let mut args = dev.stream().launch_builder(&dev.kernels().reduce_conv_dmid);
        args.arg(&mut *scratch).arg(dy).arg(&w2).arg(mid).arg(&d);
        // SAFETY: see the module comment.
        unsafe { args.launch(launch_config(dims)) }.map_err(driver_error(OP))?;
    }
    let dpre = scratch.as_view();
    wgrad(dev, &mut dparams.slice_mut(r1), &dpre, x, &d.reduce())?;
    bgrad(dev, &mut dparams.slice_mut(rb1), &dpre, &d.reduce())?;
    dgrad(dev, dx, &dpre, &w1, &d.reduce(), accumulate)
}
