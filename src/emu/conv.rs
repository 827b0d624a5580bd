//! Emulated launchers of `kernels/conv.cu`, with the CUDA launchers' checks, geometry and kernel sequence.

use super::{run, Launch, ThreadOrder};
use crate::backend::reduce_conv_param_ranges;
use crate::launch::{checked, ConvDims, ReduceDims};
use crate::shape::{ConvShape, ReduceConvShape};
use crate::Result;

extern "C" {
    fn emu_launch_conv_fwd(
        cfg: *const Launch,
        y: *mut f32,
        x: *const f32,
        w: *const f32,
        b: *const f32,
        d: ConvDims,
        relu: i32,
    ) -> i32;
    fn emu_launch_conv_dgrad(
        cfg: *const Launch,
        dx: *mut f32,
        dy: *const f32,
        w: *const f32,
        d: ConvDims,
        accumulate: i32,
    ) -> i32;
    fn emu_launch_conv_wgrad(
        cfg: *const Launch,
        partials: *mut f32,
        dy: *const f32,
        x: *const f32,
        d: ConvDims,
        imgs_per_split: u32,
    ) -> i32;
    fn emu_launch_conv_bgrad(
        cfg: *const Launch,
        partials: *mut f32,
        dy: *const f32,
        d: ConvDims,
        imgs_per_split: u32,
    ) -> i32;
    fn emu_launch_conv_split_sum(
        cfg: *const Launch,
        out: *mut f32,
        partials: *const f32,
        len: u64,
        splits: u32,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch_reduce_conv_fwd(
        cfg: *const Launch,
        y: *mut f32,
        mid: *mut f32,
        x: *const f32,
        w1: *const f32,
        b1: *const f32,
        w2: *const f32,
        b2: *const f32,
        d: ReduceDims,
    ) -> i32;
    fn emu_launch_reduce_conv_dmid(
        cfg: *const Launch,
        dpre: *mut f32,
        dy: *const f32,
        w2: *const f32,
        mid: *const f32,
        d: ReduceDims,
    ) -> i32;
}

// SAFETY (all launches below): each launcher matches its kernel's parameter list; every buffer's length was
// checked against the dims passed (the kernels index below them), and outputs are borrowed mutably.

pub(super) fn conv_fwd(
    o: ThreadOrder,
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    s: &ConvShape,
    relu: bool,
) -> Result<()> {
    const OP: &str = "conv_fwd";
    let d = checked::conv_fwd(OP, s, y.len(), x.len(), w.len(), b.len())?;
    let Some(dims) = d.fwd() else { return Ok(()) };
    // SAFETY: see the module comment.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_conv_fwd(
            cfg,
            y.as_mut_ptr(),
            x.as_ptr(),
            w.as_ptr(),
            b.as_ptr(),
            d,
            i32::from(relu),
        )
    })
}

pub(super) fn conv_dgrad(
    o: ThreadOrder,
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    s: &ConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "conv_dgrad";
    let d = checked::conv_dgrad(OP, s, dx.len(), dy.len(), w.len())?;
    dgrad(o, dx, dy, w, d, accumulate)
}

fn dgrad(
    o: ThreadOrder,
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    d: ConvDims,
    accumulate: bool,
) -> Result<()> {
    let Some(dims) = d.dgrad() else { return Ok(()) };
    // SAFETY: see the module comment.
    run("conv_dgrad", dims, o, |cfg| unsafe {
        emu_launch_conv_dgrad(
            cfg,
            dx.as_mut_ptr(),
            dy.as_ptr(),
            w.as_ptr(),
            d,
            i32::from(accumulate),
        )
    })
}

pub(super) fn conv_wgrad(
    o: ThreadOrder,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    s: &ConvShape,
) -> Result<()> {
    const OP: &str = "conv_wgrad";
    let d = checked::conv_wgrad(OP, s, dw.len(), dy.len(), x.len())?;
    wgrad(o, dw, dy, x, d)
}

fn wgrad(o: ThreadOrder, dw: &mut [f32], dy: &[f32], x: &[f32], d: ConvDims) -> Result<()> {
    const OP: &str = "conv_wgrad";
    let Some(dims) = d.wgrad() else {
        dw.fill(0.0); // no images: the gradient is zero
        return Ok(());
    };
    let mut partials = vec![f32::NAN; d.wgrad_partials_len()];
    // SAFETY: see the module comment; partials holds splits·c_out·c_in·k·k floats.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_conv_wgrad(
            cfg,
            partials.as_mut_ptr(),
            dy.as_ptr(),
            x.as_ptr(),
            d,
            d.imgs_per_split(),
        )
    })?;
    split_sum(o, dw, &partials, d.splits(), OP)
}

/// `out = Σ_z partials[z]`, the CUDA launchers' conv_split_sum.
fn split_sum(
    o: ThreadOrder,
    out: &mut [f32],
    partials: &[f32],
    splits: u32,
    op: &'static str,
) -> Result<()> {
    let Some(dims) = crate::launch::elementwise(out.len()) else {
        return Ok(());
    };
    crate::backend::check_range(op, &(0..out.len() * splits as usize), partials.len())?;
    // SAFETY: see the module comment; partials holds splits·len floats (checked above).
    run(op, dims, o, |cfg| unsafe {
        emu_launch_conv_split_sum(
            cfg,
            out.as_mut_ptr(),
            partials.as_ptr(),
            out.len() as u64,
            splits,
        )
    })
}

pub(super) fn conv_bgrad(o: ThreadOrder, db: &mut [f32], dy: &[f32], s: &ConvShape) -> Result<()> {
    const OP: &str = "conv_bgrad";
    let d = checked::conv_bgrad(OP, s, db.len(), dy.len())?;
    bgrad(o, db, dy, d)
}

fn bgrad(o: ThreadOrder, db: &mut [f32], dy: &[f32], d: ConvDims) -> Result<()> {
    const OP: &str = "conv_bgrad";
    let Some(dims) = d.bgrad() else {
        db.fill(0.0);
        return Ok(());
    };
    let mut partials = vec![f32::NAN; d.splits() as usize * d.c_out as usize];
    // SAFETY: see the module comment; partials holds splits·c_out floats, one per block.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_conv_bgrad(
            cfg,
            partials.as_mut_ptr(),
            dy.as_ptr(),
            d,
            d.imgs_per_split(),
        )
    })?;
    split_sum(o, db, &partials, d.splits(), OP)
}

pub(super) fn reduce_conv_fwd(
    o: ThreadOrder,
    y: &mut [f32],
    mid: &mut [f32],
    x: &[f32],
    params: &[f32],
    s: &ReduceConvShape,
) -> Result<()> {
    const OP: &str = "reduce_conv_fwd";
    let d = checked::reduce_conv_fwd(OP, s, y.len(), mid.len(), x.len(), params.len())?;
    let [r1, rb1, r2, rb2] = reduce_conv_param_ranges(s);
    let Some(dims) = d.fwd(OP)? else {
        return Ok(());
    };
    let (w1, b1, w2, b2) = (&params[r1], &params[rb1], &params[r2], &params[rb2]);
    // SAFETY: see the module comment; the dynamic shared memory holds one image's reduced map.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_reduce_conv_fwd(
            cfg,
            y.as_mut_ptr(),
            mid.as_mut_ptr(),
            x.as_ptr(),
            w1.as_ptr(),
            b1.as_ptr(),
            w2.as_ptr(),
            b2.as_ptr(),
            d,
        )
    })
}

#[allow(clippy::too_many_arguments)]
pub(super) fn reduce_conv_bwd(
    o: ThreadOrder,
    dx: &mut [f32],
    dparams: &mut [f32],
    scratch: &mut [f32],
    dy: &[f32],
    x: &[f32],
    mid: &[f32],
    params: &[f32],
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
    let (w1, w2) = (&params[r1.clone()], &params[r2.clone()]);
    wgrad(o, &mut dparams[r2], dy, mid, d.conv())?;
    bgrad(o, &mut dparams[rb2], dy, d.conv())?;
    if let Some(dims) = d.dmid() {
        // SAFETY: see the module comment.
        run(OP, dims, o, |cfg| unsafe {
            emu_launch_reduce_conv_dmid(
                cfg,
                scratch.as_mut_ptr(),
                dy.as_ptr(),
                w2.as_ptr(),
                mid.as_ptr(),
                d,
            )
        })?;
    }
    wgrad(o, &mut dparams[r1], scratch, x, d.reduce())?;
    bgrad(o, &mut dparams[rb1], scratch, d.reduce())?;
    dgrad(o, dx, scratch, w1, d.reduce(), accumulate)
}
