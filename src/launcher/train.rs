//! Launchers of the elementwise kernels (`kernels/relu.cu`, `add.cu`), max pooling (`pool.cu`) and the
//! training kernels (`train.cu`: softmax cross-entropy, dropout, Adam).

use super::{Driver, Kernel};
use crate::backend::check_same_len;
use crate::bindings::AdamScalars;
use crate::cpu::dropout_threshold;
use crate::launch::{elementwise, pool_plan, softmax_plan};
use crate::shape::{AdamStep, PoolShape};
use crate::Result;

/// `y = max(x, 0)` elementwise; NaN propagates. Shapes: `y, x: [n]`.
pub fn relu_fwd<D: Driver + ?Sized>(d: &D, y: &mut D::ViewMut<'_>, x: &D::View<'_>) -> Result<()> {
    const OP: &str = "relu_fwd";
    let n = D::len_of_mut(y);
    check_same_len(OP, n, &[("x", D::len_of(x))])?;
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    launch!(d, OP, Kernel::ReluFwd, dims; out y, inp x, val &(n as u64))?;
    Ok(())
}

/// `dx = dy` where `y > 0`, else 0. Shapes: `dx, dy, y: [n]`.
pub fn relu_bwd<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    y: &D::View<'_>,
) -> Result<()> {
    const OP: &str = "relu_bwd";
    let n = D::len_of_mut(dx);
    check_same_len(OP, n, &[("dy", D::len_of(dy)), ("y", D::len_of(y))])?;
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    launch!(d, OP, Kernel::ReluBwd, dims; out dx, inp dy, inp y, val &(n as u64))?;
    Ok(())
}

/// `y = a + b` elementwise. Shapes: `y, a, b: [n]`.
pub fn add_fwd<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    a: &D::View<'_>,
    b: &D::View<'_>,
) -> Result<()> {
    const OP: &str = "add_fwd";
    let n = D::len_of_mut(y);
    check_same_len(OP, n, &[("a", D::len_of(a)), ("b", D::len_of(b))])?;
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    launch!(d, OP, Kernel::AddFwd, dims; out y, inp a, inp b, val &(n as u64))?;
    Ok(())
}

/// 3×3 stride-1 max pooling. Shapes: `y, x: [n, c, h, w]`.
pub fn maxpool3x3s1_fwd<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    s: &PoolShape,
) -> Result<()> {
    const OP: &str = "maxpool3x3s1_fwd";
    let lens = [("y", D::len_of_mut(y)), ("x", D::len_of(x))];
    let Some(p) = pool_plan(OP, s, &lens)? else {
        return Ok(());
    };
    launch!(d, OP, Kernel::Maxpool3x3s1Fwd, p.dims; out y, inp x, val &p.planes, val &p.h, val &p.w)?;
    Ok(())
}

/// Gather backward of max pooling, overwriting or accumulating into `dx`. Shapes: `dx, dy, x: [n, c, h, w]`.
pub fn maxpool3x3s1_bwd<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    x: &D::View<'_>,
    s: &PoolShape,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "maxpool3x3s1_bwd";
    let lens = [
        ("dx", D::len_of_mut(dx)),
        ("dy", D::len_of(dy)),
        ("x", D::len_of(x)),
    ];
    let Some(p) = pool_plan(OP, s, &lens)? else {
        return Ok(());
    };
    launch!(d, OP, Kernel::Maxpool3x3s1Bwd, p.bwd_dims; out dx, inp dy, inp x, val &p.planes, val &p.h,
        val &p.w, val &i32::from(accumulate), val &p.bwd_tile_h)?;
    Ok(())
}

/// Mean softmax cross-entropy and its gradient; the loss stays on the device. The kernel cannot report a
/// label out of range (it writes a NaN loss): a driver that keeps labels in host memory has them checked
/// here, on a GPU callers check them before uploading them (as [`crate::nn`] does).
/// Shapes: `loss [1]`, `dlogits, logits: [m, classes]`, `labels [m]`.
pub fn softmax_xent<D: Driver + ?Sized>(
    d: &D,
    loss: &mut D::ViewMut<'_>,
    dlogits: &mut D::ViewMut<'_>,
    logits: &D::View<'_>,
    labels: &D::Labels,
    classes: usize,
) -> Result<()> {
    const OP: &str = "softmax_xent";
    let m = D::len_of_labels(labels);
    let lens = [
        D::len_of_mut(loss),
        D::len_of_mut(dlogits),
        D::len_of(logits),
    ];
    let Some(dims) = softmax_plan(OP, m, classes, lens)? else {
        return d.zero(OP, loss);
    };
    if let Some(host) = D::labels_on_host(labels) {
        crate::cpu::check_labels(OP, host, classes)?;
    }
    let (m, classes) = (m as u32, classes as u32); // checked by softmax_plan
    launch!(d, OP, Kernel::SoftmaxXent, dims; out loss, out dlogits, inp logits, labels labels, val &m,
        val &classes)?;
    Ok(())
}

/// `count[0]` (+)= the rows of `logits [m, classes]` whose first largest logit is at their label (`labels [m]`),
/// `count[1]` (+)= the rows holding a NaN (never correct). One block of 256 threads. Shapes: `count [2]`.
pub fn count_correct<D: Driver + ?Sized>(
    d: &D,
    count: &mut D::ViewMut<'_>,
    logits: &D::View<'_>,
    labels: &D::Labels,
    classes: usize,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "count_correct";
    let m = D::len_of_labels(labels);
    let rows_of = m.checked_mul(classes).ok_or(crate::Error::ShapeOverflow {
        op: OP,
        shape: vec![m, classes],
    })?;
    crate::launch::check_lens(
        OP,
        &[
            ("count", 2, D::len_of_mut(count)),
            ("logits", rows_of, D::len_of(logits)),
        ],
    )?;
    let (Ok(m32), Ok(c32)) = (u32::try_from(m), u32::try_from(classes)) else {
        return Err(crate::Error::InvalidShape {
            op: OP,
            reason: format!("{m} rows of {classes} classes exceed u32"),
        });
    };
    if classes == 0 && m > 0 {
        return Err(crate::Error::InvalidShape {
            op: OP,
            reason: format!("{m} rows of 0 classes"),
        });
    }
    let dims = crate::launch::LaunchDims::new([1, 1, 1], 256, 0);
    launch!(d, OP, Kernel::CountCorrect, dims; out count, inp logits, labels labels, val &m32,
        val &c32, val &i32::from(accumulate))?;
    Ok(())
}

/// Inverted dropout with the hash mask of `(seed, step)`. Shapes: `y, x: [n]`.
pub fn dropout_fwd<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    p: f32,
    seed: u64,
    step: u64,
) -> Result<()> {
    dropout(
        d,
        ("dropout_fwd", Kernel::DropoutFwd),
        y,
        x,
        p,
        [seed, step],
    )
}

/// Dropout's backward: the same mask and scale applied to `dy`. Shapes: `dx, dy: [n]`.
pub fn dropout_bwd<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    p: f32,
    seed: u64,
    step: u64,
) -> Result<()> {
    dropout(
        d,
        ("dropout_bwd", Kernel::DropoutBwd),
        dx,
        dy,
        p,
        [seed, step],
    )
}

/// Both dropout kernels: `(out, input, n, seed, step, threshold, scale)`.
fn dropout<D: Driver + ?Sized>(
    d: &D,
    (op, kernel): (&'static str, Kernel),
    out: &mut D::ViewMut<'_>,
    inp: &D::View<'_>,
    p: f32,
    [seed, step]: [u64; 2],
) -> Result<()> {
    let n = D::len_of_mut(out);
    check_same_len(op, n, &[("input", D::len_of(inp))])?;
    let (threshold, scale) = dropout_threshold(p)?;
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    launch!(d, op, kernel, dims; out out, inp inp, val &(n as u64), val &seed, val &step,
        val &threshold, val &scale)?;
    Ok(())
}

/// One Adam update over flat buffers. Shapes: `p, m, v, g: [n]`.
pub fn adam_step<D: Driver + ?Sized>(
    d: &D,
    p: &mut D::ViewMut<'_>,
    m: &mut D::ViewMut<'_>,
    v: &mut D::ViewMut<'_>,
    g: &D::View<'_>,
    step: &AdamStep,
) -> Result<()> {
    const OP: &str = "adam_step";
    let n = D::len_of_mut(p);
    let lens = [
        ("m", D::len_of_mut(m)),
        ("v", D::len_of_mut(v)),
        ("g", D::len_of(g)),
    ];
    check_same_len(OP, n, &lens)?;
    let scalars = AdamScalars::of(OP, step)?;
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    launch!(d, OP, Kernel::AdamStep, dims; out p, out m, out v, inp g, val &(n as u64), val &scalars)?;
    Ok(())
}
