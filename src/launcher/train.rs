//! Launchers of the elementwise kernels (`kernels/relu.cu`, `add.cu`), max pooling (`pool.cu`) and the
//! training kernels (`train.cu`: softmax cross-entropy, dropout, Adam).

use super::{Driver, Kernel, Launch, ParamKind};
use crate::backend::check_same_len;
use crate::bindings::AdamScalars;
use crate::cpu::dropout_threshold;
use crate::launch::{elementwise, pool_plan, softmax_plan, LaunchDims};
use crate::shape::{check_len, AdamStep, PoolShape, ADAM_ROW};
use crate::{Error, Result};

/// Where an Adam launch's scalars come from (kernels/adam.cuh): by value (a direct call with an
/// [`AdamStep`]), or read on the device, row `counter[0]` of an Adam table.
pub(crate) enum AdamArgs<'a, 'v, D: Driver + ?Sized + 'v> {
    /// The launch's scalars, computed on the host.
    Value(AdamScalars),
    /// The table `[rows, 6]` and the device step counter `[1]`.
    Table(&'a D::View<'v>, &'a D::Labels),
}

impl<'a, 'v, D: Driver + ?Sized> AdamArgs<'a, 'v, D> {
    /// The scalars of `step` by value, checked.
    pub(crate) fn of(op: &'static str, step: &AdamStep) -> Result<Self> {
        Ok(AdamArgs::Value(AdamScalars::of(op, step)?))
    }

    /// The table form, checked: whole rows, at least one, a counter of one element; on a driver that keeps
    /// the counter in host memory (the emulator) also that its row is inside the table (on a GPU the caller
    /// keeps it so: `graph::Params` covers the step before it launches one).
    pub(crate) fn table(
        op: &'static str,
        table: &'a D::View<'v>,
        counter: &'a D::Labels,
    ) -> Result<Self> {
        let len = D::len_of(table);
        if len == 0 || len % ADAM_ROW != 0 {
            return Err(Error::InvalidShape {
                op,
                reason: format!(
                    "an Adam table of {len} floats (whole rows of {ADAM_ROW}, at least one)"
                ),
            });
        }
        check_len(op, "step counter", 1, D::len_of_labels(counter))?;
        if let Some(&[c]) = D::labels_on_host(counter) {
            let rows = len / ADAM_ROW;
            if c as usize >= rows {
                return Err(Error::OutOfRange {
                    op,
                    what: "the step counter's row of the Adam table".into(),
                    value: format!("step {} of a table of {rows} rows", u64::from(c) + 1),
                    allowed: "a step the table covers",
                });
            }
        }
        Ok(AdamArgs::Table(table, counter))
    }

    /// Pushes the kernel's last three parameters, `AdamScalars s_arg, const float* adam_table,
    /// const unsigned int* adam_step` (the table form passes [`UNUSED_SCALARS`] by value).
    pub(crate) fn push<'l>(&'l self, l: Launch<'l, D>) -> Launch<'l, D> {
        match self {
            AdamArgs::Value(s) => l.val(s).null(ParamKind::In).null(ParamKind::Labels),
            AdamArgs::Table(table, counter) => l.val(&UNUSED_SCALARS).inp(table).labels(counter),
        }
    }
}

/// The by-value scalars a table launch passes (unused by the kernel).
pub(crate) static UNUSED_SCALARS: AdamScalars = AdamScalars {
    one_minus_b1: 0.0,
    b2: 0.0,
    one_minus_b2: 0.0,
    step_size: 0.0,
    bc2_sqrt: 0.0,
    eps: 0.0,
};

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
    crate::shape::check_count_rows(OP, m)?;
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
    let op = ("dropout_fwd", Kernel::DropoutFwd);
    dropout(d, op, y, x, p, seed, Step::<D>::Value(step))
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
    let op = ("dropout_bwd", Kernel::DropoutBwd);
    dropout(d, op, dx, dy, p, seed, Step::<D>::Value(step))
}

/// [`dropout_fwd`] at the step the device step counter `counter [1]` (the steps taken) is running,
/// `counter[0] + 1`, read by the kernel. Shapes: `y, x: [n]`.
pub fn dropout_fwd_at<D: Driver + ?Sized>(
    d: &D,
    y: &mut D::ViewMut<'_>,
    x: &D::View<'_>,
    p: f32,
    seed: u64,
    counter: &D::Labels,
) -> Result<()> {
    let op = ("dropout_fwd", Kernel::DropoutFwd);
    dropout(d, op, y, x, p, seed, Step::<D>::Counter(counter))
}

/// [`dropout_bwd`] at the step of the device step counter, as [`dropout_fwd_at`]. Shapes: `dx, dy: [n]`.
pub fn dropout_bwd_at<D: Driver + ?Sized>(
    d: &D,
    dx: &mut D::ViewMut<'_>,
    dy: &D::View<'_>,
    p: f32,
    seed: u64,
    counter: &D::Labels,
) -> Result<()> {
    let op = ("dropout_bwd", Kernel::DropoutBwd);
    dropout(d, op, dx, dy, p, seed, Step::<D>::Counter(counter))
}

/// The step of a launch: a value, or the device step counter the kernel reads.
enum Step<'a, D: Driver + ?Sized> {
    Value(u64),
    Counter(&'a D::Labels),
}

/// Both dropout kernels: `(out, input, n, seed, step, device_step, threshold, scale)`.
fn dropout<D: Driver + ?Sized>(
    d: &D,
    (op, kernel): (&'static str, Kernel),
    out: &mut D::ViewMut<'_>,
    inp: &D::View<'_>,
    p: f32,
    seed: u64,
    step: Step<'_, D>,
) -> Result<()> {
    let n = D::len_of_mut(out);
    check_same_len(op, n, &[("input", D::len_of(inp))])?;
    let (threshold, scale) = dropout_threshold(p)?;
    if let Step::Counter(c) = &step {
        check_len(op, "step counter", 1, D::len_of_labels(c))?;
    }
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    let n = n as u64;
    let l = Launch::new(d, op, kernel, dims)
        .out(out)
        .inp(inp)
        .val(&n)
        .val(&seed);
    let l = match &step {
        Step::Value(v) => l.val(v).null(ParamKind::Labels),
        Step::Counter(c) => l.val(&0u64).labels(c),
    };
    l.val(&threshold).val(&scale).run()
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
    let args = AdamArgs::of("adam_step", step)?;
    adam(d, p, m, v, g, &args)
}

/// [`adam_step`] with the scalars read on the device: row `counter[0]` of the Adam table `table [rows, 6]`
/// ([`AdamStep::table`]; `counter [1]` holds the steps taken, kernels/adam.cuh). Shapes: `p, m, v, g: [n]`.
pub fn adam_step_at<D: Driver + ?Sized>(
    d: &D,
    p: &mut D::ViewMut<'_>,
    m: &mut D::ViewMut<'_>,
    v: &mut D::ViewMut<'_>,
    g: &D::View<'_>,
    table: &D::View<'_>,
    counter: &D::Labels,
) -> Result<()> {
    let args = AdamArgs::table("adam_step", table, counter)?;
    adam(d, p, m, v, g, &args)
}

fn adam<D: Driver + ?Sized>(
    d: &D,
    p: &mut D::ViewMut<'_>,
    m: &mut D::ViewMut<'_>,
    v: &mut D::ViewMut<'_>,
    g: &D::View<'_>,
    args: &AdamArgs<'_, '_, D>,
) -> Result<()> {
    const OP: &str = "adam_step";
    let n = D::len_of_mut(p);
    let lens = [
        ("m", D::len_of_mut(m)),
        ("v", D::len_of_mut(v)),
        ("g", D::len_of(g)),
    ];
    check_same_len(OP, n, &lens)?;
    let Some(dims) = elementwise(n) else {
        return Ok(());
    };
    let n = n as u64;
    let l = Launch::new(d, OP, Kernel::AdamStep, dims)
        .out(p)
        .out(m)
        .out(v)
        .inp(g)
        .val(&n);
    args.push(l).run()
}

/// Threads per block of `batch_gather` and blocks at most (a batch of MNIST is 39,200 floats).
const GATHER_BLOCK: u32 = 256;
const GATHER_MAX_GRID: usize = 1024;

/// A batch copied out of a data set resident in the driver's memory: `images [batch, px]` and
/// `labels [batch]` from images `start..start + batch` of `data [count, px]` and `all_labels [count]`.
pub fn batch_gather<D: Driver + ?Sized>(
    d: &D,
    images: &mut D::ViewMut<'_>,
    labels: &mut D::Labels,
    data: &D::View<'_>,
    all_labels: &D::Labels,
    start: usize,
) -> Result<()> {
    gather(
        d,
        images,
        labels,
        data,
        all_labels,
        Step::<D>::Value(start as u64),
    )
}

/// [`batch_gather`] of the training step the device step counter `counter [1]` (the steps taken) is
/// running: from the write-up's offset `(counter[0] · batch) mod max(count − batch, 1)`, computed by the
/// kernel, so a captured step gathers the batch of the step being replayed.
pub fn batch_gather_at<D: Driver + ?Sized>(
    d: &D,
    images: &mut D::ViewMut<'_>,
    labels: &mut D::Labels,
    data: &D::View<'_>,
    all_labels: &D::Labels,
    counter: &D::Labels,
) -> Result<()> {
    gather(
        d,
        images,
        labels,
        data,
        all_labels,
        Step::<D>::Counter(counter),
    )
}

/// Both gathers: `start` by value, or from the counter.
fn gather<D: Driver + ?Sized>(
    d: &D,
    images: &mut D::ViewMut<'_>,
    labels: &mut D::Labels,
    data: &D::View<'_>,
    all_labels: &D::Labels,
    from: Step<'_, D>,
) -> Result<()> {
    const OP: &str = "batch_gather";
    let count = D::len_of_labels(all_labels);
    let (batch, px) = crate::cpu::gather_shape(
        OP,
        D::len_of_mut(images),
        D::len_of_labels(labels),
        D::len_of(data),
        count,
    )?;
    let (Ok(batch32), Ok(px32)) = (u32::try_from(batch), u32::try_from(px)) else {
        return Err(Error::InvalidShape {
            op: OP,
            reason: format!("a batch of {batch} images of {px} pixels exceeds u32"),
        });
    };
    let span = (count - batch).max(1) as u64;
    let blocks = (batch * px)
        .div_ceil(GATHER_BLOCK as usize)
        .clamp(1, GATHER_MAX_GRID);
    let dims = LaunchDims::new([blocks as u32, 1, 1], GATHER_BLOCK, 0);
    let l = Launch::new(d, OP, Kernel::BatchGather, dims)
        .out(images)
        .labels_out(labels)
        .inp(data)
        .labels(all_labels);
    let start;
    let l = match &from {
        Step::Value(s) => {
            if *s as usize > count - batch {
                return Err(Error::OutOfRange {
                    op: OP,
                    what: "start".into(),
                    value: s.to_string(),
                    allowed: "start + batch <= images in the data set",
                });
            }
            start = *s;
            l.null(ParamKind::Labels).val(&start)
        }
        Step::Counter(c) => {
            check_len(OP, "step counter", 1, D::len_of_labels(c))?;
            start = 0;
            l.labels(c).val(&start)
        }
    };
    l.val(&span).val(&batch32).val(&px32).run()
}

/// The end of a training step on the device: `losses[counter[0] % ring] = loss[0]`, then `counter[0] += 1`.
/// One thread. Shapes: `losses [ring]`, `counter, loss: [1]`.
pub fn step_end<D: Driver + ?Sized>(
    d: &D,
    losses: &mut D::ViewMut<'_>,
    counter: &mut D::Labels,
    loss: &D::View<'_>,
) -> Result<()> {
    const OP: &str = "step_end";
    check_len(OP, "counter", 1, D::len_of_labels(counter))?;
    check_len(OP, "loss", 1, D::len_of(loss))?;
    let ring = D::len_of_mut(losses);
    let Ok(ring32 @ 1..) = u32::try_from(ring) else {
        return Err(Error::InvalidShape {
            op: OP,
            reason: format!("a loss ring of {ring} slots (1 to u32::MAX)"),
        });
    };
    let dims = LaunchDims::new([1, 1, 1], 32, 0);
    launch!(d, OP, Kernel::StepEnd, dims; out losses, labels_out counter, inp loss, val &ring32)?;
    Ok(())
}
