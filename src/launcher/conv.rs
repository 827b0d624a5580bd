//! Launchers of `kernels/conv.cu`: the plain convs and the fused reduce conv (its backward is a sequence of
//! the conv kernels over the saved reduced map).

use super::{Driver, Kernel};
use crate::backend::reduce_conv_param_ranges;
use crate::bindings::{ConvDims, ReduceDims};
use crate::launch::{check_lens, elementwise, LaunchDims};
use crate::shape::{ConvShape, Precision, ReduceConvShape};
use crate::Result;

/// Convolution into a channel slice of `y`, optional ReLU epilogue. Shapes: `y [n, c_total, h, w]`,
/// `x [n, c_in, h, w]`, `w [c_out, c_in, k, k]`, `b [c_out]`.
pub fn conv_fwd<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    w: &D::View<'_>,
    b: &D::View<'_>,
    s: &ConvShape,
    relu: bool,
) -> Result<()> {
    const OP: &str = "conv_fwd";
    let cd = ConvDims::of(OP, s)?;
    check_lens(
        OP,
        &[
            ("y", s.y_len(OP)?, D::len_of_mut(y)),
            ("x", s.x_len(OP)?, D::len_of(x)),
            ("w", s.w_len(OP)?, D::len_of(w)),
            ("b", s.c_out, D::len_of(b)),
        ],
    )?;
    let (kernel, dims) = match s.precision {
        Precision::Fp32 => (Kernel::ConvFwd, cd.fwd()),
        Precision::Tf32 => (Kernel::ConvFwdTf32, cd.fwd_tf32(OP)?),
    };
    let Some(dims) = dims else { return Ok(()) };
    launch!(d, OP, kernel, dims; out y, inp x, inp w, inp b, val &cd, val &i32::from(relu))?;
    Ok(())
}

/// Input gradient of a conv, overwriting or accumulating into `dx [n, c_in, h, w]`. With `y [n, c_total, h,
/// w]` (the conv's output after a ReLU) `dy` counts only where `y > 0`: the ReLU's backward folded in.
pub fn conv_dgrad<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: Option<&D::View<'_>>,
    w: &D::View<'_>,
    s: &ConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "conv_dgrad";
    let cd = ConvDims::of(OP, s)?;
    check_lens(
        OP,
        &[
            ("dx", s.x_len(OP)?, D::len_of_mut(dx)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
            ("w", s.w_len(OP)?, D::len_of(w)),
        ],
    )?;
    check_mask::<D>(OP, y, s.y_len(OP)?)?;
    dgrad(d, OP, dx, dy, y, w, &cd, s.precision, accumulate)
}

/// Checks the length of an optional ReLU mask `y` (the forward output, as long as `dy`).
fn check_mask<D: Driver + ?Sized>(
    op: &'static str,
    y: Option<&D::View<'_>>,
    len: usize,
) -> Result<()> {
    match y {
        Some(y) => check_lens(op, &[("y", len, D::len_of(y))]),
        None => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)] // the kernel's arguments, plus the op and the precision that picks it
fn dgrad<D: Driver + ?Sized>(
    d: &D,
    op: &'static str,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: Option<&D::View<'_>>,
    w: &D::View<'_>,
    cd: &ConvDims,
    precision: Precision,
    accumulate: bool,
) -> Result<()> {
    let (kernel, dims) = match precision {
        Precision::Fp32 => (Kernel::ConvDgrad, cd.dgrad()),
        Precision::Tf32 => (Kernel::ConvDgradTf32, cd.dgrad_tf32(op)?),
    };
    let Some(dims) = dims else {
        return Ok(());
    };
    launch!(d, op, kernel, dims; out dx, inp dy, inp_opt y, inp w, val cd, val &i32::from(accumulate))?;
    Ok(())
}

/// Weight and bias gradients of a conv in one kernel: an implicit GEMM split over images into the driver's
/// scratch memory, the bias as row sums of its `dy` tiles, then the splits of both summed in order by one
/// `conv_split_sum`. Shapes: `dwdb [c_out·c_in·k·k + c_out]` (`dw [c_out, c_in, k, k]` then `db [c_out]`, as a
/// conv's weight and bias lie in the flat parameter buffer), `dy [n, c_total, h, w]`, `x [n, c_in, h, w]`;
/// `dy` masked by `y` as in [`conv_dgrad`].
pub fn conv_wgrad<D: Driver + ?Sized>(
    d: &D,
    dwdb: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: Option<&D::View<'_>>,
    x: &D::View<'_>,
    s: &ConvShape,
) -> Result<()> {
    const OP: &str = "conv_wgrad";
    let cd = ConvDims::of(OP, s)?;
    check_lens(
        OP,
        &[
            ("dwdb", s.w_len(OP)? + s.c_out, D::len_of_mut(dwdb)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
            ("x", s.x_len(OP)?, D::len_of(x)),
        ],
    )?;
    check_mask::<D>(OP, y, s.y_len(OP)?)?;
    wgrad(d, OP, dwdb, dy, y, x, &cd, s.precision)
}

/// The launches of [`conv_wgrad`] (lengths checked by the caller).
#[allow(clippy::too_many_arguments)] // the kernel's arguments, plus the op and the precision that picks it
fn wgrad<D: Driver + ?Sized>(
    d: &D,
    op: &'static str,
    dwdb: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: Option<&D::View<'_>>,
    x: &D::View<'_>,
    cd: &ConvDims,
    precision: Precision,
) -> Result<()> {
    let (kernel, dims) = match precision {
        Precision::Fp32 => (Kernel::ConvWgrad, cd.wgrad()),
        Precision::Tf32 => (Kernel::ConvWgradTf32, cd.wgrad_tf32(op)?),
    };
    let Some(dims) = dims else {
        return d.zero(op, dwdb); // no images: the gradients are zero
    };
    d.with_scratch(op, cd.wgrad_partials_len(), |partials| {
        launch!(d, op, kernel, dims; out partials, inp dy, inp_opt y, inp x, val cd,
            val &cd.imgs_per_split())?;
        split_sum(d, op, dwdb, &D::reader(partials), cd.splits())
    })
}

/// `out = Σ_z partials[z]` over `splits` slices of `out`'s length, in order.
fn split_sum<D: Driver + ?Sized>(
    d: &D,
    op: &'static str,
    out: &mut D::ViewMut<'_>,
    partials: &D::View<'_>,
    splits: u32,
) -> Result<()> {
    let len = D::len_of_mut(out);
    check_lens(
        op,
        &[("partials", len * splits as usize, D::len_of(partials))],
    )?;
    let Some(dims) = elementwise(len) else {
        return Ok(());
    };
    launch!(d, op, Kernel::ConvSplitSum, dims; out out, inp partials, val &(len as u64), val &splits)?;
    Ok(())
}

/// The fused reduce conv forward; `mid` receives the reduced map. `params` is `[w1 | b1 | w2 | b2]`.
/// Shapes: `y [n, c_total, h, w]`, `mid [n, c_mid, h, w]`, `x [n, c_in, h, w]`.
pub fn reduce_conv_fwd<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    mid: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    params: &D::View<'_>,
    s: &ReduceConvShape,
) -> Result<()> {
    const OP: &str = "reduce_conv_fwd";
    let rd = ReduceDims::of(OP, s, d.max_dynamic_shared())?;
    let ranges = reduce_conv_param_ranges(s);
    check_lens(
        OP,
        &[
            ("y", s.conv().y_len(OP)?, D::len_of_mut(y)),
            ("mid", s.mid_len(OP)?, D::len_of_mut(mid)),
            ("x", s.reduce().x_len(OP)?, D::len_of(x)),
            ("params", ranges[3].end, D::len_of(params)),
        ],
    )?;
    let dims = match s.precision {
        Precision::Fp32 => rd.fwd(OP)?,
        Precision::Tf32 => rd.fwd_tf32(OP)?,
    };
    let Some(dims) = dims else {
        return Ok(());
    };
    let w2_len = ranges[2].len();
    let [w1, b1, w2, b2] = ranges.map(|r| D::sub(params, r));
    let views = [&w1?, &b1?, &w2?, &b2?];
    // In TF32 with c_mid a multiple of 8 the kernel's k×k conv runs tap-major on a rounded, tap-major copy of
    // w2 (conv_taps_tf32, into scratch memory before each forward: w2 changes every step).
    match (s.precision, elementwise(w2_len)) {
        (Precision::Tf32, Some(taps)) if s.c_mid % 8 == 0 => d.with_scratch(OP, w2_len, |w2t| {
            launch!(d, OP, Kernel::ConvTapsTf32, taps; out w2t, inp views[2],
                val &rd.c_out, val &rd.c_mid, val &(rd.k * rd.k))?;
            fwd_launch(
                d,
                s.precision,
                dims,
                y,
                mid,
                x,
                views,
                Some(&D::reader(w2t)),
                &rd,
            )
        }),
        _ => fwd_launch(d, s.precision, dims, y, mid, x, views, None, &rd),
    }
}

/// The launch of [`reduce_conv_fwd`]: the fp32 kernel, or the TF32 one with `w2t` (its k×k weights tap-major:
/// the output of kernel conv_taps_tf32) or without. The parameter views come in as arguments: a generic
/// driver's view made in a function and pushed there is beyond what the borrow checker can prove lives long
/// enough.
#[allow(clippy::too_many_arguments)] // the kernel's arguments, plus the precision that picks it
fn fwd_launch<D: Driver + ?Sized>(
    d: &D,
    precision: Precision,
    dims: LaunchDims,
    y: &mut D::ViewMut<'_>,
    mid: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    [w1, b1, w2, b2]: [&D::View<'_>; 4],
    w2t: Option<&D::View<'_>>,
    rd: &ReduceDims,
) -> Result<()> {
    const OP: &str = "reduce_conv_fwd";
    match precision {
        Precision::Fp32 => {
            launch!(d, OP, Kernel::ReduceConvFwd, dims; out y, out mid, inp x, inp w1,
            inp b1, inp w2, inp b2, val rd)
        }
        Precision::Tf32 => {
            launch!(d, OP, Kernel::ReduceConvFwdTf32, dims; out y, out mid, inp x, inp w1,
            inp b1, inp w2, inp_opt w2t, inp b2, val rd)
        }
    }?;
    Ok(())
}

/// The fused reduce conv backward, as kernels over the saved reduced map: `dw2`, `db2` from `dy` (one
/// `conv_wgrad` and its split sum); `dpre` (in `scratch`) through the k×k conv and the reduce ReLU; `dw1`, `db1`
/// (the same pair) and `dx` from `dpre`. `dparams` receives
/// `[dw1 | db1 | dw2 | db2]`. With `y` (the forward output, after the fused conv's ReLU) `dy` is the gradient
/// of `y`, read where `y > 0` by the two kernels that read it (the ReLU's backward folded in); without, `dy`
/// is the gradient before that ReLU. Shapes: as the forward, `scratch [n, c_mid, h, w]`.
#[allow(clippy::too_many_arguments)]
pub fn reduce_conv_bwd<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dparams: &mut D::ViewMut<'_>,
    scratch: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: Option<&D::View<'_>>,
    x: &D::View<'_>,
    mid: &D::View<'_>,
    params: &D::View<'_>,
    s: &ReduceConvShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "reduce_conv_bwd";
    let rd = ReduceDims::of(OP, s, d.max_dynamic_shared())?;
    let [r1, rb1, r2, rb2] = reduce_conv_param_ranges(s);
    let (x_len, mid_len) = (s.reduce().x_len(OP)?, s.mid_len(OP)?);
    check_lens(
        OP,
        &[
            ("dx", x_len, D::len_of_mut(dx)),
            ("x", x_len, D::len_of(x)),
            ("dy", s.conv().y_len(OP)?, D::len_of(dy)),
            ("mid", mid_len, D::len_of(mid)),
            ("scratch", mid_len, D::len_of_mut(scratch)),
            ("params", rb2.end, D::len_of(params)),
            ("dparams", rb2.end, D::len_of_mut(dparams)),
        ],
    )?;
    check_mask::<D>(OP, y, s.conv().y_len(OP)?)?;
    let (w1, w2) = (D::sub(params, r1.clone())?, D::sub(params, r2.clone())?);
    let (conv, reduce) = (rd.conv(), rd.reduce());
    // [dw2 | db2] and [dw1 | db1] are contiguous in the block: each pair is one conv_wgrad.
    wgrad(
        d,
        OP,
        &mut D::sub_mut(dparams, r2.start..rb2.end)?,
        dy,
        y,
        mid,
        &conv,
        s.precision,
    )?;
    let (kernel, dims) = match s.precision {
        Precision::Fp32 => (Kernel::ReduceConvDmid, rd.dmid()),
        Precision::Tf32 => (Kernel::ReduceConvDmidTf32, rd.dmid_tf32(OP)?),
    };
    if let Some(dims) = dims {
        dmid_launch(d, kernel, dims, scratch, dy, y, &w2, mid, &rd)?;
    }
    let dpre = D::reader(scratch);
    wgrad(
        d,
        OP,
        &mut D::sub_mut(dparams, r1.start..rb1.end)?,
        &dpre,
        None,
        x,
        &reduce,
        s.precision,
    )?;
    dgrad(
        d,
        OP,
        dx,
        &dpre,
        None,
        &w1,
        &reduce,
        s.precision,
        accumulate,
    )
}

/// The launch of `reduce_conv_dmid` (the view of `w2` as an argument: see [`fwd_launch`]).
#[allow(clippy::too_many_arguments)]
fn dmid_launch<D: Driver + ?Sized>(
    d: &D,
    kernel: Kernel,
    dims: LaunchDims,
    dpre: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: Option<&D::View<'_>>,
    w2: &D::View<'_>,
    mid: &D::View<'_>,
    rd: &ReduceDims,
) -> Result<()> {
    launch!(d, "reduce_conv_bwd", kernel, dims; out dpre, inp dy, inp_opt y, inp w2, inp mid, val rd)?;
    Ok(())
}
