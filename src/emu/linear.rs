//! Emulated launchers of `kernels/linear.cu`, with the CUDA launchers' checks, geometry and sequence.

use super::{run, Launch, ThreadOrder};
use crate::launch::{checked, AdamScalars, GemmDims};
use crate::shape::{AdamStep, LinearShape};
use crate::Result;

extern "C" {
    fn emu_launch_linear_fwd(
        cfg: *const Launch,
        partials: *mut f32,
        x: *const f32,
        w: *const f32,
        d: GemmDims,
    ) -> i32;
    fn emu_launch_linear_fwd_reduce(
        cfg: *const Launch,
        y: *mut f32,
        partials: *const f32,
        b: *const f32,
        m: u32,
        n_out: u32,
        splits: u32,
    ) -> i32;
    fn emu_launch_linear_dgrad(
        cfg: *const Launch,
        dx: *mut f32,
        dy: *const f32,
        w: *const f32,
        d: GemmDims,
    ) -> i32;
    fn emu_launch_linear_wgrad(
        cfg: *const Launch,
        dw: *mut f32,
        dy: *const f32,
        x: *const f32,
        d: GemmDims,
    ) -> i32;
    #[allow(clippy::too_many_arguments)]
    fn emu_launch_linear_wgrad_adam(
        cfg: *const Launch,
        w: *mut f32,
        m: *mut f32,
        v: *mut f32,
        dy: *const f32,
        x: *const f32,
        d: GemmDims,
        s: AdamScalars,
    ) -> i32;
    fn emu_launch_linear_bgrad(
        cfg: *const Launch,
        db: *mut f32,
        dy: *const f32,
        m: u32,
        n_out: u32,
    ) -> i32;
}

// SAFETY (all launches below): each launcher matches its kernel's parameter list; every buffer's length was
// checked against the plan's dims, which bound every index the kernels form; outputs are borrowed mutably.

pub(super) fn linear_fwd(
    o: ThreadOrder,
    y: &mut [f32],
    x: &[f32],
    w: &[f32],
    b: &[f32],
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_fwd";
    let p = checked::linear_fwd(OP, s, y.len(), x.len(), w.len(), b.len())?;
    let Some(reduce) = p.reduce else {
        return Ok(());
    };
    let mut partials = vec![f32::NAN; p.partials_len()];
    let (d, dims) = p.fwd;
    // SAFETY: see the module comment; partials holds splits·m·n_out floats.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_linear_fwd(cfg, partials.as_mut_ptr(), x.as_ptr(), w.as_ptr(), d)
    })?;
    // SAFETY: see the module comment.
    run(OP, reduce, o, |cfg| unsafe {
        emu_launch_linear_fwd_reduce(
            cfg,
            y.as_mut_ptr(),
            partials.as_ptr(),
            b.as_ptr(),
            p.m,
            p.n_out,
            p.splits,
        )
    })
}

pub(super) fn linear_dgrad(
    o: ThreadOrder,
    dx: &mut [f32],
    dy: &[f32],
    w: &[f32],
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_dgrad";
    let p = checked::linear_dgrad(OP, s, dx.len(), dy.len(), w.len())?;
    if dx.is_empty() {
        return Ok(());
    }
    let (d, dims) = p.dgrad;
    // SAFETY: see the module comment.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_linear_dgrad(cfg, dx.as_mut_ptr(), dy.as_ptr(), w.as_ptr(), d)
    })
}

pub(super) fn linear_wgrad(
    o: ThreadOrder,
    dw: &mut [f32],
    dy: &[f32],
    x: &[f32],
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_wgrad";
    let p = checked::linear_wgrad(OP, s, dw.len(), dy.len(), x.len())?;
    if dw.is_empty() {
        return Ok(());
    }
    let (d, dims) = p.wgrad;
    // SAFETY: see the module comment.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_linear_wgrad(cfg, dw.as_mut_ptr(), dy.as_ptr(), x.as_ptr(), d)
    })
}

pub(super) fn linear_bgrad(
    o: ThreadOrder,
    db: &mut [f32],
    dy: &[f32],
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_bgrad";
    let p = checked::linear_bgrad(OP, s, db.len(), dy.len())?;
    let Some(dims) = p.bgrad else { return Ok(()) };
    // SAFETY: see the module comment.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_linear_bgrad(cfg, db.as_mut_ptr(), dy.as_ptr(), p.m, p.n_out)
    })
}

pub(super) fn linear_wgrad_adam(
    o: ThreadOrder,
    [w, m, v]: [&mut [f32]; 3],
    dy: &[f32],
    x: &[f32],
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
    // SAFETY: see the module comment; w, m and v are three distinct mutable borrows.
    run(OP, dims, o, |cfg| unsafe {
        emu_launch_linear_wgrad_adam(
            cfg,
            w.as_mut_ptr(),
            m.as_mut_ptr(),
            v.as_mut_ptr(),
            dy.as_ptr(),
            x.as_ptr(),
            d,
            scalars,
        )
    })
}
