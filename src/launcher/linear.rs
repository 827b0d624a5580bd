//! Launchers of `kernels/linear.cu`.

use super::train::AdamArgs;
use super::{Driver, Kernel, Launch};
use crate::bindings::{
    BWD_ADAM_MAX_BATCH, BWD_TC_COLS, BWD_TC_SHARED_FLOATS, BWD_TC_THREADS, GEMM_THREADS,
};
use crate::launch::{check_lens, linear_plan, LaunchDims, LinearPlan};
use crate::shape::{AdamStep, LinearShape, Precision};
use crate::Result;

/// The kernel of a product in the layer's precision: the fp32 kernel or its tensor-core twin.
fn pick(s: &LinearShape, fp32: Kernel, tf32: Kernel) -> Kernel {
    match s.precision {
        Precision::Fp32 => fp32,
        Precision::Tf32 => tf32,
    }
}

/// The plan of a linear layer's launch after checking each `(buffer, expected length, length)`.
fn checked(
    op: &'static str,
    s: &LinearShape,
    bufs: &[(&'static str, usize, usize)],
) -> Result<LinearPlan> {
    let p = linear_plan(op, s)?;
    check_lens(op, bufs)?;
    Ok(p)
}

/// `y = x · wᵀ + b`: split-K partial products into the driver's scratch memory (on the GPU kept between
/// calls and grown on first use, so steady-state steps allocate nothing), then their sum in a fixed order
/// plus the bias. Shapes: `y [m, n_out]`, `x [m, k_in]`, `w [n_out, k_in]`, `b [n_out]`.
pub fn linear_fwd<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    w: &D::View<'_>,
    b: &D::View<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_fwd";
    let p = checked(
        OP,
        s,
        &[
            ("y", s.y_len(OP)?, D::len_of_mut(y)),
            ("x", s.x_len(OP)?, D::len_of(x)),
            ("w", s.w_len(OP)?, D::len_of(w)),
            ("b", s.n_out, D::len_of(b)),
        ],
    )?;
    let Some(reduce) = p.reduce else {
        return Ok(());
    };
    let (gd, dims) = p.fwd;
    d.with_scratch(OP, p.partials_len(), |partials| {
        let kernel = pick(s, Kernel::LinearFwd, Kernel::LinearFwdTf32);
        launch!(d, OP, kernel, dims; out partials, inp x, inp w, val &gd)?;
        reduce_partials(d, reduce, y, &D::reader(partials), b, &p)
    })
}

/// `linear_fwd_reduce`: `y = Σ_z partials[z] + b` (the partials' view passed in, as the borrow checker
/// needs for a view made inside the caller).
fn reduce_partials<D: Driver + ?Sized>(
    d: &D,
    dims: LaunchDims,
    y: &mut D::ViewMut<'_>,
    partials: &D::View<'_>,
    b: &D::View<'_>,
    p: &LinearPlan,
) -> Result<()> {
    launch!(d, "linear_fwd", Kernel::LinearFwdReduce, dims; out y, inp partials, inp b, val &p.m,
        val &p.n_out, val &p.splits)?;
    Ok(())
}

/// `dx = dy · w`. Shapes: `dx [m, k_in]`, `dy [m, n_out]`, `w [n_out, k_in]`.
pub fn linear_dgrad<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    w: &D::View<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_dgrad";
    let p = checked(
        OP,
        s,
        &[
            ("dx", s.x_len(OP)?, D::len_of_mut(dx)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
            ("w", s.w_len(OP)?, D::len_of(w)),
        ],
    )?;
    if D::len_of_mut(dx) == 0 {
        return Ok(());
    }
    let (gd, dims) = p.dgrad;
    let kernel = pick(s, Kernel::LinearDgrad, Kernel::LinearDgradTf32);
    launch!(d, OP, kernel, dims; out dx, inp dy, inp w, val &gd)?;
    Ok(())
}

/// `dw = dyᵀ · x`. Shapes: `dw [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_wgrad<D: Driver + ?Sized>(
    d: &D,
    dw: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_wgrad";
    let p = checked(
        OP,
        s,
        &[
            ("dw", s.w_len(OP)?, D::len_of_mut(dw)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
            ("x", s.x_len(OP)?, D::len_of(x)),
        ],
    )?;
    if D::len_of_mut(dw) == 0 {
        return Ok(());
    }
    let (gd, dims) = p.wgrad;
    let kernel = pick(s, Kernel::LinearWgrad, Kernel::LinearWgradTf32);
    launch!(d, OP, kernel, dims; out dw, inp dy, inp x, val &gd)?;
    Ok(())
}

/// Adam applied to `w` with the gradient `dyᵀ · x`, which is never stored: the result of [`linear_wgrad`]
/// then [`super::adam_step`] over `w`, bit for bit, without writing and reading back the gradient (for fc1 at
/// batch 50, 562 MB each way). `w` is updated in place, so run [`linear_dgrad`] (which reads it) first.
/// Shapes: `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
///
/// ```no_run
/// # #[cfg(feature = "cuda")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use inception_cuda::{cuda, shape::{AdamStep, LinearShape}, Device};
///
/// let dev = Device::cuda(0)?;
/// let Device::Cuda(d) = &dev else { unreachable!() };
/// let gpu = d.backend();
/// // A 784 → 10 layer at batch 50: its weights and Adam moments, the output gradient and the input.
/// let s = LinearShape::new(50, 784, 10);
/// let mut w = gpu.stream().clone_htod(&vec![0.01f32; 10 * 784])?;
/// let (mut m, mut v) = (gpu.stream().alloc_zeros::<f32>(7840)?, gpu.stream().alloc_zeros::<f32>(7840)?);
/// let dy = gpu.stream().clone_htod(&vec![0.1f32; 50 * 10])?;
/// let x = gpu.stream().clone_htod(&vec![0.5f32; 50 * 784])?;
/// let wmv = [&mut w.as_view_mut(), &mut m.as_view_mut(), &mut v.as_view_mut()];
/// cuda::linear_wgrad_adam(gpu, wmv, &dy.as_view(), &x.as_view(), &s, &AdamStep::new(1e-3, 1))?;
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "cuda"))]
/// # fn main() {}
/// ```
pub fn linear_wgrad_adam<D: Driver + ?Sized>(
    d: &D,
    w_m_v: [&mut D::ViewMut<'_>; 3],
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
    step: &AdamStep,
) -> Result<()> {
    let args = AdamArgs::of("linear_wgrad_adam", step)?;
    wgrad_adam(d, w_m_v, dy, x, s, &args)
}

/// [`linear_wgrad_adam`] with the scalars read on the device: row `counter[0]` of the Adam table
/// `table [rows, 6]` (see [`super::adam_step_at`]).
pub fn linear_wgrad_adam_at<D: Driver + ?Sized>(
    d: &D,
    w_m_v: [&mut D::ViewMut<'_>; 3],
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
    table: &D::View<'_>,
    counter: &D::Labels,
) -> Result<()> {
    let args = AdamArgs::table("linear_wgrad_adam", table, counter)?;
    wgrad_adam(d, w_m_v, dy, x, s, &args)
}

fn wgrad_adam<D: Driver + ?Sized>(
    d: &D,
    [w, m, v]: [&mut D::ViewMut<'_>; 3],
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
    args: &AdamArgs<'_, '_, D>,
) -> Result<()> {
    const OP: &str = "linear_wgrad_adam";
    let wl = s.w_len(OP)?;
    let p = checked(
        OP,
        s,
        &[
            ("w", wl, D::len_of_mut(w)),
            ("adam_m", wl, D::len_of_mut(m)),
            ("adam_v", wl, D::len_of_mut(v)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
            ("x", s.x_len(OP)?, D::len_of(x)),
        ],
    )?;
    if wl == 0 {
        return Ok(());
    }
    let (gd, dims) = p.wgrad_adam;
    let kernel = pick(s, Kernel::LinearWgradAdam, Kernel::LinearWgradAdamTf32);
    let l = Launch::new(d, OP, kernel, dims)
        .out(w)
        .out(m)
        .out(v)
        .inp(dy)
        .inp(x)
        .val(&gd);
    args.push(l).run()
}

/// `db = Σ_rows dy`, rows in order. Shapes: `db [n_out]`, `dy [m, n_out]`.
pub fn linear_bgrad<D: Driver + ?Sized>(
    d: &D,
    db: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    s: &LinearShape,
) -> Result<()> {
    const OP: &str = "linear_bgrad";
    let p = checked(
        OP,
        s,
        &[
            ("db", s.n_out, D::len_of_mut(db)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
        ],
    )?;
    let Some(dims) = p.bgrad else { return Ok(()) };
    launch!(d, OP, Kernel::LinearBgrad, dims; out db, inp dy, val &p.m, val &p.n_out)?;
    Ok(())
}

/// fc1's backward and Adam in one pass over the weight (`linear_bwd_adam` of kernels/linear.cu): `dx = dy · w`
/// from the weight before its update, then `w, m, v` updated by Adam with `dyᵀ · x`, every element of the
/// weight and its moments read and written once. `dx` equals [`linear_dgrad`]'s bits and `w, m, v`
/// [`linear_wgrad_adam`]'s, in either precision (`linear_bwd_adam_tf32` on the tensor cores). Batches of more
/// than `BWD_ADAM_MAX_BATCH` (64) rows, and TF32 on a device that cannot give a block the kernel's 137 KB of
/// shared memory, take the two-kernel form ([`linear_dgrad`], then [`linear_wgrad_adam`]), with the same
/// results. Shapes:
/// `dx [m, k_in]`, `w, adam_m, adam_v [n_out, k_in]`, `dy [m, n_out]`, `x [m, k_in]`.
pub fn linear_bwd_adam<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    w_m_v: [&mut D::ViewMut<'_>; 3],
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
    step: &AdamStep,
) -> Result<()> {
    let args = AdamArgs::of("linear_bwd_adam", step)?;
    bwd_adam(d, dx, w_m_v, dy, x, s, &args)
}

/// [`linear_bwd_adam`] with the scalars read on the device: row `counter[0]` of the Adam table
/// `table [rows, 6]` (see [`super::adam_step_at`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_bwd_adam_at<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    w_m_v: [&mut D::ViewMut<'_>; 3],
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
    table: &D::View<'_>,
    counter: &D::Labels,
) -> Result<()> {
    let args = AdamArgs::table("linear_bwd_adam", table, counter)?;
    bwd_adam(d, dx, w_m_v, dy, x, s, &args)
}

fn bwd_adam<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    [w, m, v]: [&mut D::ViewMut<'_>; 3],
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &LinearShape,
    args: &AdamArgs<'_, '_, D>,
) -> Result<()> {
    const OP: &str = "linear_bwd_adam";
    let wl = s.w_len(OP)?;
    let p = checked(
        OP,
        s,
        &[
            ("dx", s.x_len(OP)?, D::len_of_mut(dx)),
            ("w", wl, D::len_of_mut(w)),
            ("adam_m", wl, D::len_of_mut(m)),
            ("adam_v", wl, D::len_of_mut(v)),
            ("dy", s.y_len(OP)?, D::len_of(dy)),
            ("x", s.x_len(OP)?, D::len_of(x)),
        ],
    )?;
    // The TF32 kernel's chunks of w, m, v and dy need BWD_TC_SHARED_FLOATS of shared memory (137 KB):
    // devices that cannot give a block that much (consumer GPUs: 99 KB) take the two-kernel form too.
    let tc_fits = (BWD_TC_SHARED_FLOATS as usize) * 4 <= d.max_dynamic_shared();
    if s.m > BWD_ADAM_MAX_BATCH as usize || (s.precision == Precision::Tf32 && !tc_fits) {
        linear_dgrad(d, dx, dy, &D::reader(w), s)?;
        return wgrad_adam(d, [w, m, v], dy, x, s, args);
    }
    if wl == 0 {
        return Ok(());
    }
    let (kernel, cols, threads, shared) = match s.precision {
        Precision::Fp32 => (Kernel::LinearBwdAdam, GEMM_THREADS, GEMM_THREADS, 0),
        Precision::Tf32 => (
            Kernel::LinearBwdAdamTf32,
            BWD_TC_COLS,
            BWD_TC_THREADS,
            BWD_TC_SHARED_FLOATS * 4,
        ),
    };
    let blocks = s.k_in.div_ceil(cols as usize);
    let dims = LaunchDims::new([crate::launch::grid_x(OP, blocks)?, 1, 1], threads, shared);
    let l = Launch::new(d, OP, kernel, dims)
        .out(dx)
        .out(w)
        .out(m)
        .out(v)
        .inp(dy)
        .inp(x)
        .val(&p.m)
        .val(&p.n_out)
        .val(&p.k_in);
    args.push(l).run()
}
