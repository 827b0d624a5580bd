//! Planning a graph for one backend, batch size and precision: every buffer allocated once, a concat's parts
//! placed as channel slices of its buffer, ReLUs fused into their producers' epilogues (and, by default, their
//! backward into the kernels that read their gradient), and forward, backward and Adam as fixed launch lists
//! that allocate nothing and never wait for the device.

use std::collections::BTreeSet;
use std::ops::Range;
use std::sync::Arc;

use super::builder::{Graph, Op, Value};
use super::defs;
use super::params::{param_table, Params};
use crate::backend::{Backend, BackendHandle, StepGraph};
use crate::data::DeviceDataset;
use crate::shape::{AdamStep, ConvShape, LinearShape, PoolShape, ReduceConvShape};
use crate::{Error, Result};

/// Slots of the on-device loss history behind [`Plan::take_mean_loss`].
pub const LOSS_RING: usize = 1024;

pub use crate::shape::Precision;

/// Which linear weights a training step updates with `linear_wgrad_adam` (gradient formed inside the Adam
/// update, never stored) instead of `linear_wgrad` then `adam_step`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum FuseWgradAdam {
    /// Every linear weight (whose gradient feeds only Adam: a parameter is used by one op).
    #[default]
    Every,
    /// The linear weights of these names.
    Named(Vec<String>),
    /// None.
    Never,
}

/// Options of a training plan.
///
/// ```
/// use inception_cuda::graph::{FuseWgradAdam, Precision, TrainOptions};
/// let opts = TrainOptions { fuse_wgrad_adam: FuseWgradAdam::Never, ..TrainOptions::default() };
/// assert_eq!(opts.precision, Precision::Fp32);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrainOptions {
    /// The kernels' arithmetic.
    pub precision: Precision,
    /// Which linear weights get the fused update.
    pub fuse_wgrad_adam: FuseWgradAdam,
    /// Plan the backward of a ReLU applied in its producers' epilogues (a module's ReLU over its concat, a
    /// conv's ReLU) and of a fused reduce conv's own ReLU as a `relu_bwd` pass of its own, as before the
    /// fold. By default (`false`) it is folded into the kernels that first read the gradient (the convs'
    /// dgrad and wgrad, the fused conv's first backward kernels), which read `dy` where the output `y > 0`:
    /// one pass and one buffer fewer per ReLU, the same bits; on backends that do not gain from it
    /// ([`crate::Backend::FOLDS_RELU_BWD`]: the CPU) the pass stays separate either way.
    pub separate_relu_bwd: bool,
}

/// A buffer of the plan and the elements of it an op uses (from 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BufRef {
    id: usize,
    len: usize,
}

/// One launch of a planned step: buffers resolved, shapes fixed.
#[derive(Clone, Debug)]
enum Launch {
    ConvFwd {
        y: BufRef,
        x: BufRef,
        w: Range<usize>,
        b: Range<usize>,
        s: ConvShape,
        relu: bool,
    },
    ReduceConvFwd {
        y: BufRef,
        mid: BufRef,
        x: BufRef,
        p: Range<usize>,
        s: ReduceConvShape,
    },
    MaxPoolFwd {
        y: BufRef,
        x: BufRef,
        s: PoolShape,
    },
    LinearFwd {
        y: BufRef,
        x: BufRef,
        w: Range<usize>,
        b: Range<usize>,
        s: LinearShape,
    },
    ReluFwd {
        y: BufRef,
        x: BufRef,
    },
    DropoutFwd {
        y: BufRef,
        x: BufRef,
        p: f32,
    },
    SoftmaxXent {
        loss: BufRef,
        dlogits: BufRef,
        logits: BufRef,
        classes: usize,
    },
    ReluBwd {
        dx: BufRef,
        dy: BufRef,
        y: BufRef,
    },
    DropoutBwd {
        dx: BufRef,
        dy: BufRef,
        p: f32,
    },
    /// `mask`: the output after a ReLU whose backward is folded in (`dy` read where it is > 0).
    ConvBwd {
        dx: Option<(BufRef, bool)>,
        dw: Range<usize>,
        db: Range<usize>,
        dy: BufRef,
        mask: Option<BufRef>,
        x: BufRef,
        w: Range<usize>,
        s: ConvShape,
    },
    /// `mask`: as [`Launch::ConvBwd`]'s (the fused conv's output, after its ReLU).
    ReduceConvBwd {
        dx: BufRef,
        accumulate: bool,
        dp: Range<usize>,
        scratch: BufRef,
        dy: BufRef,
        mask: Option<BufRef>,
        x: BufRef,
        mid: BufRef,
        p: Range<usize>,
        s: ReduceConvShape,
    },
    MaxPoolBwd {
        dx: BufRef,
        accumulate: bool,
        dy: BufRef,
        x: BufRef,
        s: PoolShape,
    },
    /// `dw` is `(range, fused)`: a fused weight's gradient is formed by the optimizer's
    /// `linear_wgrad_adam` in a training step, and stored only by [`Plan::forward_backward`].
    LinearBwd {
        dx: Option<BufRef>,
        dw: (Range<usize>, bool),
        db: Range<usize>,
        dy: BufRef,
        x: BufRef,
        w: Range<usize>,
        s: LinearShape,
    },
    /// `dst += add` (for gradients whose kernel cannot accumulate), through `tmp`.
    Accumulate {
        dst: BufRef,
        add: BufRef,
        tmp: BufRef,
    },
    Adam {
        range: Range<usize>,
    },
    LinearWgradAdam {
        w: Range<usize>,
        dy: BufRef,
        x: BufRef,
        s: LinearShape,
    },
    /// A training step's backward of a linear layer whose weight gets the fused update and whose input needs
    /// a gradient: `linear_bwd_adam` (dx from the weight before its update, then the update, one pass over
    /// the weight and its moments) and the bias gradient. Replaces that layer's `LinearBwd` and
    /// `LinearWgradAdam` in [`Plan::step`].
    LinearBwdAdam {
        dx: BufRef,
        w: Range<usize>,
        db: Range<usize>,
        dy: BufRef,
        x: BufRef,
        s: LinearShape,
    },
}

impl Launch {
    /// The arithmetic of a launch's products: its shape's precision; `None` for launches without products.
    #[cfg(test)]
    fn precision(&self) -> Option<Precision> {
        match self {
            Launch::ConvFwd { s, .. } | Launch::ConvBwd { s, .. } => Some(s.precision),
            Launch::ReduceConvFwd { s, .. } | Launch::ReduceConvBwd { s, .. } => Some(s.precision),
            Launch::LinearFwd { s, .. }
            | Launch::LinearBwd { s, .. }
            | Launch::LinearWgradAdam { s, .. }
            | Launch::LinearBwdAdam { s, .. } => Some(s.precision),
            _ => None,
        }
    }
}

/// The step count after one more step of `params`: an error past `u32::MAX` (the device step counter that
/// a training step reads and advances is 32 bits; a run of 2³² steps of 1 ms would take 50 days).
fn next_step<B: Backend>(params: &Params<B>) -> Result<u64> {
    match params.step.checked_add(1) {
        Some(step) if step <= u64::from(u32::MAX) => Ok(step),
        _ => Err(Error::OutOfRange {
            op: "Plan::step",
            what: "step count".into(),
            value: params.step.to_string(),
            allowed: "below u32::MAX (the device step counter is 32 bits)",
        }),
    }
}

/// What a captured training step was recorded with: a step replays only with the same parameters, Adam
/// table, data set and input buffer (their device addresses are in the graph) and the same dropout seed (a
/// value argument of the dropout launches; `Params::set_train_state` may change it under the same id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct GraphKey {
    params: u64,
    table_version: u64,
    data: u64,
    input: BufRef,
    seed: u64,
}

/// The launch lists of a training step: `backward` with each fused linear layer that has an input gradient
/// done in one pass ([`Launch::LinearBwdAdam`]), and `adam` without those layers' separate update.
fn one_pass_lists(backward: &[Launch], adam: &[Launch]) -> (Vec<Launch>, Vec<Launch>) {
    let mut done = Vec::new();
    let step_backward = backward
        .iter()
        .map(|l| match l {
            Launch::LinearBwd {
                dx: Some(dx),
                dw: (w, true),
                db,
                dy,
                x,
                s,
                ..
            } => {
                done.push(w.clone());
                Launch::LinearBwdAdam {
                    dx: *dx,
                    w: w.clone(),
                    db: db.clone(),
                    dy: *dy,
                    x: *x,
                    s: *s,
                }
            }
            other => other.clone(),
        })
        .collect();
    let step_adam = adam
        .iter()
        .filter(|l| !matches!(l, Launch::LinearWgradAdam { w, .. } if done.contains(w)))
        .cloned()
        .collect();
    (step_backward, step_adam)
}

/// Where a value lives: a buffer and, for a concat's part, its channel slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Loc {
    buf: usize,
    len: usize,
    c_total: usize,
    c_offset: usize,
}

/// How a ReLU is planned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReluKind {
    /// Its own kernel.
    Standalone,
    /// Applied by the producer's epilogue (a conv, or every part of a concat); backward is its own.
    Epilogue,
    /// Over a fused reduce conv, which ends with a ReLU: the same value.
    Alias,
}

fn plan_err(op: &'static str, reason: String) -> Error {
    Error::Graph { op, reason }
}

/// The planning state of one graph.
struct Planner<'g> {
    g: &'g Graph,
    op: &'static str,
    n: usize,
    train: bool,
    /// The arithmetic of the convolutions' and linear layers' products.
    precision: Precision,
    /// Whether epilogue and fused-conv ReLUs have their backward folded into the kernels that read their
    /// gradient ([`TrainOptions::separate_relu_bwd`] unset).
    fold_relu: bool,
    live: Vec<bool>,
    consumers: Vec<Vec<usize>>,
    bufs: Vec<(usize, &'static str)>,
    fwd: Vec<Option<Loc>>,
    grad: Vec<Option<Loc>>,
    needs_grad: Vec<bool>,
    relu: Vec<ReluKind>,
    conv_relu: Vec<bool>,
    part_of: Vec<Option<usize>>,
    scratch: [Option<usize>; 4],
    written: Vec<bool>,
    forward: Vec<Launch>,
    backward: Vec<Launch>,
    fused: Vec<Launch>,
}

const SCRATCH_A: usize = 0;
const SCRATCH_B: usize = 1;
const SCRATCH_MID: usize = 2;
const SCRATCH_SINK: usize = 3;

impl<'g> Planner<'g> {
    fn new(g: &'g Graph, op: &'static str, n: usize, train: bool, target: Value) -> Result<Self> {
        if n == 0 {
            return Err(plan_err(op, "batch size 0".into()));
        }
        let len = g.nodes.len();
        let mut live = vec![false; len];
        let mut stack = vec![target.0];
        while let Some(i) = stack.pop() {
            if i >= len {
                return Err(plan_err(op, format!("value {i} is not of this graph")));
            }
            if !std::mem::replace(&mut live[i], true) {
                stack.extend(g.nodes[i].inputs().iter().map(|v| v.0));
            }
        }
        let mut consumers = vec![Vec::new(); len];
        for (i, node) in g.nodes.iter().enumerate().filter(|(i, _)| live[*i]) {
            for v in node.inputs() {
                if consumers[v.0].contains(&i) {
                    return Err(plan_err(
                        op,
                        format!("{} (value {i}) reads value {} twice", node.name(), v.0),
                    ));
                }
                consumers[v.0].push(i);
            }
        }
        Ok(Planner {
            g,
            op,
            n,
            train,
            precision: Precision::Fp32,
            fold_relu: false,
            live,
            consumers,
            bufs: Vec::new(),
            fwd: vec![None; len],
            grad: vec![None; len],
            needs_grad: vec![false; len],
            relu: vec![ReluKind::Standalone; len],
            conv_relu: vec![false; len],
            part_of: vec![None; len],
            scratch: [None; 4],
            written: Vec::new(),
            forward: Vec::new(),
            backward: Vec::new(),
            fused: Vec::new(),
        })
    }

    fn live_nodes(&self) -> impl Iterator<Item = (usize, &'g Op)> + '_ {
        let g = self.g;
        g.nodes.iter().enumerate().filter(|(i, _)| self.live[*i])
    }

    fn elems(&self, v: usize) -> usize {
        match &self.g.nodes[v] {
            Op::SoftmaxXent { .. } => 1,
            _ => self.n * self.g.shapes[v].iter().product::<usize>(),
        }
    }

    fn new_buf(&mut self, len: usize, role: &'static str) -> usize {
        self.bufs.push((len, role));
        self.written.push(false);
        self.bufs.len() - 1
    }

    fn full(&mut self, v: usize, role: &'static str) -> Loc {
        let len = self.elems(v);
        let c = self.g.shapes[v].first().copied().unwrap_or(1);
        Loc {
            buf: self.new_buf(len, role),
            len,
            c_total: c,
            c_offset: 0,
        }
    }

    /// A scratch buffer shared by every op that needs one of this kind, grown to the largest use.
    fn scratch(&mut self, which: usize, len: usize) -> BufRef {
        let id = match self.scratch[which] {
            Some(id) => id,
            None => {
                let id = self.new_buf(0, "scratch");
                self.scratch[which] = Some(id);
                id
            }
        };
        self.bufs[id].0 = self.bufs[id].0.max(len);
        BufRef { id, len }
    }

    fn r(loc: Loc) -> BufRef {
        BufRef {
            id: loc.buf,
            len: loc.len,
        }
    }

    fn fwd_ref(&self, v: Value) -> Result<BufRef> {
        self.fwd[v.0]
            .map(Self::r)
            .ok_or_else(|| plan_err(self.op, format!("value {} has no buffer", v.0)))
    }

    fn fwd_loc(&self, v: usize) -> Result<Loc> {
        self.fwd[v].ok_or_else(|| plan_err(self.op, format!("value {v} has no buffer")))
    }

    fn grad_loc(&self, v: usize) -> Result<Loc> {
        self.grad[v].ok_or_else(|| plan_err(self.op, format!("value {v} has no gradient buffer")))
    }

    fn param_range(&self, p: super::Param) -> Range<usize> {
        let mut at = 0;
        for (i, d) in self.g.params.iter().enumerate() {
            let len: usize = d.shape.iter().product();
            if i == p.0 {
                return at..at + len;
            }
            at += len;
        }
        at..at
    }

    fn chw(&self, v: usize) -> (usize, usize, usize) {
        match self.g.shapes[v].as_slice() {
            [c, h, w] => (*c, *h, *w),
            _ => (0, 0, 0),
        }
    }

    /// Concat parts, ReLU fusion.
    fn fuse(&mut self) -> Result<()> {
        let g = self.g;
        for (i, node) in g.nodes.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            match node {
                Op::Concat { parts } => {
                    let mut reduce = false;
                    for (k, p) in parts.iter().enumerate() {
                        match &g.nodes[p.0] {
                            Op::Conv { .. } => {}
                            Op::ReduceConv { .. } => reduce = true,
                            other => {
                                return Err(plan_err(
                                    self.op,
                                    format!(
                                        "concat (value {i}): part {k} comes from {}, which cannot write a channel \
                                         slice (only conv and reduce_conv can)",
                                        other.name()
                                    ),
                                ))
                            }
                        }
                        if self.consumers[p.0] != [i] {
                            return Err(plan_err(
                                self.op,
                                format!(
                                    "concat (value {i}): part {k} (value {}) is also read by another op; a part is \
                                     written in place into the concat",
                                    p.0
                                ),
                            ));
                        }
                        self.part_of[p.0] = Some(i);
                    }
                    let relu_after = matches!(self.consumers[i].as_slice(),
                        [c] if matches!(g.nodes[*c], Op::Relu { .. }));
                    if reduce && !relu_after {
                        return Err(plan_err(
                            self.op,
                            format!(
                                "concat (value {i}) has a reduce_conv part, whose ReLU is built in: apply relu to \
                                 the concat (and nothing else to it) so that every part ends with one"
                            ),
                        ));
                    }
                }
                Op::Relu { x } => {
                    let sole = self.consumers[x.0] == [i];
                    self.relu[i] = match &g.nodes[x.0] {
                        Op::ReduceConv { .. } if self.part_of[x.0].is_none() => ReluKind::Alias,
                        Op::Conv { .. } if sole => {
                            self.conv_relu[x.0] = true;
                            ReluKind::Epilogue
                        }
                        Op::Concat { parts } if sole => {
                            for p in parts {
                                self.conv_relu[p.0] = true;
                            }
                            ReluKind::Epilogue
                        }
                        _ => ReluKind::Standalone,
                    };
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A buffer for each concat's output (or its gradient), and its parts' channel slices inside it. A
    /// folded ReLU's input shares the ReLU's gradient ([`Self::share_folded_grads`]): no buffer here.
    fn place_concats(&mut self, grad: bool) {
        let g = self.g;
        for (i, node) in g.nodes.iter().enumerate() {
            let Op::Concat { .. } = node else { continue };
            if !self.live[i] || (grad && (!self.needs_grad[i] || self.folded_relu_of(i).is_some()))
            {
                continue;
            }
            let loc = self.full(i, if grad { "gradient" } else { "activation" });
            self.place_parts(i, loc, grad);
        }
    }

    /// Concat `i` at `loc` (its output or gradient), its parts in channel slices of it.
    fn place_parts(&mut self, i: usize, loc: Loc, grad: bool) {
        let g = self.g;
        let locs = if grad { &mut self.grad } else { &mut self.fwd };
        locs[i] = Some(loc);
        if let Op::Concat { parts } = &g.nodes[i] {
            let mut at = 0;
            for p in parts {
                locs[p.0] = Some(Loc {
                    c_offset: at,
                    ..loc
                });
                at += g.shapes[p.0].first().copied().unwrap_or(0);
            }
        }
    }

    /// The epilogue ReLU that is the only reader of value `v`, when the plan folds its backward into the
    /// kernels that read its gradient: then `v`'s gradient is the ReLU's (the producers read it where the
    /// output > 0).
    fn folded_relu_of(&self, v: usize) -> Option<usize> {
        match self.consumers[v].as_slice() {
            [c] if self.fold_relu && self.relu[*c] == ReluKind::Epilogue => Some(*c),
            _ => None,
        }
    }

    /// With the ReLU backward folded: the input of each epilogue ReLU (a conv, or a concat and its parts)
    /// gets the ReLU's gradient buffer as its own.
    fn share_folded_grads(&mut self) {
        let g = self.g;
        for (i, node) in g.nodes.iter().enumerate() {
            let Op::Relu { x } = node else { continue };
            if !self.live[i] || self.folded_relu_of(x.0) != Some(i) {
                continue;
            }
            if let Some(loc) = self.grad[i] {
                self.place_parts(x.0, loc, true);
            }
        }
    }

    /// Forward buffers: one per value, a concat's parts inside it, aliases sharing.
    fn place_forward(&mut self) -> Result<()> {
        let g = self.g;
        self.place_concats(false);
        for (i, node) in g.nodes.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            self.fwd[i] = match node {
                Op::Concat { .. } => continue,
                Op::Conv { .. } | Op::ReduceConv { .. } if self.part_of[i].is_some() => continue,
                Op::Relu { x } if self.relu[i] != ReluKind::Standalone => self.fwd[x.0],
                Op::Flatten { x } => self.fwd[x.0].map(|l| Loc {
                    c_total: l.len / self.n,
                    ..l
                }),
                Op::Dropout { x, .. } if !self.train => self.fwd[x.0],
                Op::Input { .. } => Some(self.full(i, "input")),
                _ => Some(self.full(i, "activation")),
            };
        }
        Ok(())
    }

    /// Which values need a gradient, and their buffers.
    fn place_grads(&mut self) -> Result<()> {
        let g = self.g;
        for (i, node) in g.nodes.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            self.needs_grad[i] = match node {
                Op::Input { .. } | Op::SoftmaxXent { .. } => false,
                Op::Conv { .. } | Op::ReduceConv { .. } | Op::Linear { .. } => true,
                other => other.inputs().iter().any(|v| self.needs_grad[v.0]),
            };
        }
        self.place_concats(true);
        for (i, node) in g.nodes.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            if !self.needs_grad[i] {
                continue;
            }
            self.grad[i] = match node {
                Op::Concat { .. } => continue,
                Op::Conv { .. } | Op::ReduceConv { .. } if self.part_of[i].is_some() => continue,
                Op::Conv { .. } if self.folded_relu_of(i).is_some() => continue,
                Op::Relu { x } if self.relu[i] == ReluKind::Alias => self.grad[x.0],
                Op::Flatten { x } => self.grad[x.0].map(|l| Loc {
                    c_total: l.len / self.n,
                    ..l
                }),
                _ => Some(self.full(i, "gradient")),
            };
        }
        self.share_folded_grads();
        // Shared weights would need their gradients summed: unsupported.
        let mut users = vec![0usize; g.params.len()];
        for (_, node) in self.live_nodes() {
            let ps: Vec<usize> = match node {
                Op::Conv { w, b, .. } | Op::Linear { w, b, .. } => vec![w.0, b.0],
                Op::ReduceConv { p, .. } => p.iter().map(|p| p.0).collect(),
                _ => vec![],
            };
            for p in ps {
                users[p] += 1;
                if users[p] > 1 {
                    return Err(plan_err(
                        self.op,
                        format!(
                            "parameter {} is used by two ops (shared weights are not supported)",
                            g.params[p].name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn conv_shape(&self, i: usize, x: Value, k: usize) -> Result<ConvShape> {
        let (c_in, h, w) = self.chw(x.0);
        let (c_out, _, _) = self.chw(i);
        let loc = self.fwd_loc(i)?;
        let s = ConvShape::new(self.n, c_in, c_out, h, w, k)
            .into_slice(loc.c_total, loc.c_offset)
            .with_precision(self.precision);
        s.validate(self.op)?;
        Ok(s)
    }

    fn reduce_shape(&self, i: usize, x: Value, k: usize) -> Result<ReduceConvShape> {
        let (c_in, h, w) = self.chw(x.0);
        let (c_out, _, _) = self.chw(i);
        let loc = self.fwd_loc(i)?;
        let c_mid = match &self.g.nodes[i] {
            Op::ReduceConv { p, .. } => self.g.params[p[0].0].shape.first().copied().unwrap_or(0),
            _ => 0,
        };
        let s = ReduceConvShape {
            n: self.n,
            c_in,
            c_mid,
            c_out,
            h,
            w,
            k,
            c_total: loc.c_total,
            c_offset: loc.c_offset,
            precision: self.precision,
        };
        s.validate(self.op)?;
        Ok(s)
    }

    fn linear_shape(&self, i: usize, x: Value) -> LinearShape {
        let (k_in, n_out) = (
            self.g.shapes[x.0].iter().product(),
            self.g.shapes[i].iter().product(),
        );
        LinearShape::new(self.n, k_in, n_out).with_precision(self.precision)
    }

    /// The forward launch list; `saved` holds each fused reduce conv's reduced map (training) or not.
    fn plan_forward(&mut self, saved: &mut Vec<Option<BufRef>>) -> Result<()> {
        let g = self.g;
        *saved = vec![None; g.nodes.len()];
        for (i, node) in g.nodes.iter().enumerate() {
            if !self.live[i] {
                continue;
            }
            let launch = match node {
                Op::Input { .. } | Op::Concat { .. } | Op::Flatten { .. } => continue,
                Op::Relu { .. } if self.relu[i] != ReluKind::Standalone => continue,
                Op::Dropout { .. } if !self.train => continue,
                Op::Conv { x, w, b, k } => Launch::ConvFwd {
                    y: Self::r(self.fwd_loc(i)?),
                    x: self.fwd_ref(*x)?,
                    w: self.param_range(*w),
                    b: self.param_range(*b),
                    s: self.conv_shape(i, *x, *k)?,
                    relu: self.conv_relu[i],
                },
                Op::ReduceConv { x, p, k } => {
                    let s = self.reduce_shape(i, *x, *k)?;
                    let mid_len = s.mid_len(self.op)?;
                    let mid = if self.train {
                        BufRef {
                            id: self.new_buf(mid_len, "saved"),
                            len: mid_len,
                        }
                    } else {
                        self.scratch(SCRATCH_MID, mid_len)
                    };
                    saved[i] = Some(mid);
                    Launch::ReduceConvFwd {
                        y: Self::r(self.fwd_loc(i)?),
                        mid,
                        x: self.fwd_ref(*x)?,
                        p: self.param_range(p[0]).start..self.param_range(p[3]).end,
                        s,
                    }
                }
                Op::MaxPool { x } => {
                    let (c, h, w) = self.chw(x.0);
                    Launch::MaxPoolFwd {
                        y: Self::r(self.fwd_loc(i)?),
                        x: self.fwd_ref(*x)?,
                        s: PoolShape { n: self.n, c, h, w },
                    }
                }
                Op::Linear { x, w, b } => Launch::LinearFwd {
                    y: Self::r(self.fwd_loc(i)?),
                    x: self.fwd_ref(*x)?,
                    w: self.param_range(*w),
                    b: self.param_range(*b),
                    s: self.linear_shape(i, *x),
                },
                Op::Relu { x } => Launch::ReluFwd {
                    y: Self::r(self.fwd_loc(i)?),
                    x: self.fwd_ref(*x)?,
                },
                Op::Dropout { x, p } => Launch::DropoutFwd {
                    y: Self::r(self.fwd_loc(i)?),
                    x: self.fwd_ref(*x)?,
                    p: *p,
                },
                Op::SoftmaxXent { logits } => {
                    if self.consumers[logits.0] != [i] {
                        return Err(plan_err(
                            self.op,
                            format!(
                                "softmax_xent: its logits (value {}) are read by another op",
                                logits.0
                            ),
                        ));
                    }
                    let dlogits = match self.grad[logits.0] {
                        Some(l) => Self::r(l),
                        None => self.scratch(SCRATCH_A, self.elems(logits.0)),
                    };
                    self.written[dlogits.id] = true;
                    Launch::SoftmaxXent {
                        loss: Self::r(self.fwd_loc(i)?),
                        dlogits,
                        logits: self.fwd_ref(*logits)?,
                        classes: g.shapes[logits.0].first().copied().unwrap_or(0),
                    }
                }
            };
            self.forward.push(launch);
        }
        Ok(())
    }

    /// The gradient buffer of input `x` as the target of one more contribution: `(buffer, accumulate)`.
    fn contribute(&mut self, x: Value) -> Result<Option<(BufRef, bool)>> {
        if !self.needs_grad[x.0] {
            return Ok(None);
        }
        let loc = self.grad_loc(x.0)?;
        let acc = std::mem::replace(&mut self.written[loc.buf], true);
        Ok(Some((Self::r(loc), acc)))
    }

    /// As [`Self::contribute`] for kernels that only overwrite: the kernel's target, then an `Accumulate`
    /// into the gradient when it already holds a contribution (pushed by `finish`).
    fn contribute_plain(&mut self, x: Value) -> Result<Option<(BufRef, Option<Launch>)>> {
        Ok(match self.contribute(x)? {
            None => None,
            Some((dst, false)) => Some((dst, None)),
            Some((dst, true)) => {
                let add = self.scratch(SCRATCH_A, dst.len);
                let tmp = self.scratch(SCRATCH_B, dst.len);
                Some((add, Some(Launch::Accumulate { dst, add, tmp })))
            }
        })
    }

    fn plan_backward(&mut self, saved: &[Option<BufRef>], fuse: &FuseWgradAdam) -> Result<()> {
        let g = self.g;
        // Ready when every reader of its output is done; the earliest-defined ready node first (so a value
        // read by several branches gets their contributions in definition order).
        let mut waiting: Vec<usize> = self.consumers.iter().map(Vec::len).collect();
        let mut ready: BTreeSet<usize> = (0..g.nodes.len())
            .filter(|&i| self.live[i] && waiting[i] == 0)
            .collect();
        while let Some(i) = ready.pop_first() {
            let node = &g.nodes[i];
            for v in node.inputs() {
                waiting[v.0] -= 1;
                if waiting[v.0] == 0 {
                    ready.insert(v.0);
                }
            }
            if !self.needs_grad[i] {
                continue;
            }
            let dy = |p: &Self| p.grad_loc(i).map(Self::r);
            match node {
                Op::Input { .. }
                | Op::Concat { .. }
                | Op::Flatten { .. }
                | Op::SoftmaxXent { .. } => {}
                Op::Relu { .. } if self.relu[i] == ReluKind::Alias => {}
                // Folded into the kernels of its producers' backward (they read dy where y > 0).
                Op::Relu { x } if self.folded_relu_of(x.0) == Some(i) => {}
                Op::Relu { x } => {
                    let (dy, y) = (dy(self)?, Self::r(self.fwd_loc(i)?));
                    if let Some((dx, acc)) = self.contribute_plain(*x)? {
                        self.backward.push(Launch::ReluBwd { dx, dy, y });
                        self.backward.extend(acc);
                    }
                }
                Op::Dropout { x, p } => {
                    let dy = dy(self)?;
                    if let Some((dx, acc)) = self.contribute_plain(*x)? {
                        self.backward.push(Launch::DropoutBwd { dx, dy, p: *p });
                        self.backward.extend(acc);
                    }
                }
                Op::MaxPool { x } => {
                    let (c, h, w) = self.chw(x.0);
                    let (dy, xr) = (dy(self)?, self.fwd_ref(*x)?);
                    if let Some((dx, accumulate)) = self.contribute(*x)? {
                        let s = PoolShape { n: self.n, c, h, w };
                        self.backward.push(Launch::MaxPoolBwd {
                            dx,
                            accumulate,
                            dy,
                            x: xr,
                            s,
                        });
                    }
                }
                Op::Conv { x, w, b, k } => {
                    let s = self.conv_shape(i, *x, *k)?;
                    let (dy, xr) = (dy(self)?, self.fwd_ref(*x)?);
                    let dx = self.contribute(*x)?;
                    // Its epilogue ReLU's backward folded in: the output (after the ReLU) as the mask.
                    let relu_folded = match self.part_of[i] {
                        Some(concat) => self.folded_relu_of(concat).is_some(),
                        None => self.folded_relu_of(i).is_some(),
                    };
                    let mask = if relu_folded {
                        Some(Self::r(self.fwd_loc(i)?))
                    } else {
                        None
                    };
                    self.backward.push(Launch::ConvBwd {
                        dx,
                        dw: self.param_range(*w),
                        db: self.param_range(*b),
                        dy,
                        mask,
                        x: xr,
                        w: self.param_range(*w),
                        s,
                    });
                }
                Op::ReduceConv { x, p, k } => {
                    let s = self.reduce_shape(i, *x, *k)?;
                    let mut dy = dy(self)?;
                    // Its output ReLU (built in; the module's ReLU when it is a concat's part): folded into
                    // the kernels that read dy, or through relu_bwd first. A part of a concat whose ReLU is
                    // not folded gets its dy through that ReLU's own backward pass.
                    let mask = match self.part_of[i] {
                        Some(concat) if self.folded_relu_of(concat).is_some() => {
                            Some(Self::r(self.fwd_loc(i)?))
                        }
                        Some(_) => None,
                        None if self.fold_relu => Some(Self::r(self.fwd_loc(i)?)),
                        None => {
                            let g_buf = self.new_buf(dy.len, "gradient");
                            let y = Self::r(self.fwd_loc(i)?);
                            let pre = BufRef {
                                id: g_buf,
                                len: dy.len,
                            };
                            self.backward.push(Launch::ReluBwd { dx: pre, dy, y });
                            dy = pre;
                            None
                        }
                    };
                    let xr = self.fwd_ref(*x)?;
                    let (dx, accumulate) = match self.contribute(*x)? {
                        Some(t) => t,
                        None => (self.scratch(SCRATCH_SINK, xr.len), false),
                    };
                    let mid = saved[i].ok_or_else(|| {
                        plan_err(self.op, format!("reduce_conv {i}: no saved map"))
                    })?;
                    let scratch = self.scratch(SCRATCH_MID, mid.len);
                    let pr = self.param_range(p[0]).start..self.param_range(p[3]).end;
                    self.backward.push(Launch::ReduceConvBwd {
                        dx,
                        accumulate,
                        dp: pr.clone(),
                        scratch,
                        dy,
                        mask,
                        x: xr,
                        mid,
                        p: pr,
                        s,
                    });
                }
                Op::Linear { x, w, b } => {
                    let s = self.linear_shape(i, *x);
                    let (dy, xr) = (dy(self)?, self.fwd_ref(*x)?);
                    let fused = match fuse {
                        FuseWgradAdam::Every => true,
                        FuseWgradAdam::Named(names) => {
                            names.iter().any(|n| *n == g.params[w.0].name)
                        }
                        FuseWgradAdam::Never => false,
                    };
                    let wr = self.param_range(*w);
                    let (dx, acc) = match self.contribute_plain(*x)? {
                        Some((dx, acc)) => (Some(dx), acc),
                        None => (None, None),
                    };
                    self.backward.push(Launch::LinearBwd {
                        dx,
                        dw: (wr.clone(), fused),
                        db: self.param_range(*b),
                        dy,
                        x: xr,
                        w: wr.clone(),
                        s,
                    });
                    self.backward.extend(acc);
                    if fused {
                        self.fused.push(Launch::LinearWgradAdam {
                            w: wr,
                            dy,
                            x: xr,
                            s,
                        });
                    }
                }
            }
        }
        Ok(())
    }
}

/// A graph planned for one backend, batch size and precision: every buffer allocated, every launch fixed.
/// A training plan ([`Plan::train`]) runs forward, loss, backward and Adam; an inference plan
/// ([`Plan::inference`]) runs the forward to one output, without dropout and saving nothing for backward.
///
/// ```
/// use inception_cuda::cpu::CpuBackend;
/// use inception_cuda::graph::{Graph, Params, Plan};
/// # fn main() -> inception_cuda::Result<()> {
/// let mut g = Graph::new();
/// let x = g.input("x", &[3])?;
/// let (w, b) = g.linear_params("fc", 3, 2)?;
/// let logits = g.linear(x, w, b)?;
/// g.softmax_xent(logits)?;
/// let mut params = Params::new(CpuBackend, &g, 1)?;
/// let mut train = Plan::train(CpuBackend, &g, 2)?;
/// train.set_input("x", &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])?;
/// train.set_labels(&[0, 1])?;
/// train.step(&mut params, 1e-2)?;
/// assert!(train.loss()?.is_finite());
/// let mut eval = Plan::inference(CpuBackend, &g, 1, logits)?;
/// eval.set_input("x", &[0.1, 0.2, 0.3])?;
/// eval.forward(&params)?;
/// assert_eq!(eval.output()?.len(), 2);
/// # Ok(())
/// # }
/// ```
pub struct Plan<B: Backend> {
    b: Arc<B>,
    batch: usize,
    train: bool,
    precision: Precision,
    bufs: Vec<Option<B::Buf>>,
    bytes: usize,
    inputs: Vec<(String, BufRef)>,
    labels: B::Labels,
    output: BufRef,
    forward: Vec<Launch>,
    backward: Vec<Launch>,
    adam: Vec<Launch>,
    /// The training step's backward and Adam lists ([`one_pass_lists`]); `backward` and `adam` as planned
    /// serve [`Plan::forward_backward`].
    step_lists: (Vec<Launch>, Vec<Launch>),
    losses: Option<B::Buf>,
    pending: usize,
    last_step: u64,
    param_len: usize,
    /// Whether [`Plan::step_gathered`] records its step as a graph and replays it (where the backend can).
    capture: bool,
    /// Whether a gathered step has run uncaptured (sizing the backend's working memory before a capture).
    warm: bool,
    /// The captured gathered step and what it was recorded with.
    graph: Option<(GraphKey, Box<dyn StepGraph>)>,
    /// Steps run by replaying a captured graph.
    replays: u64,
    /// Seconds spent recording graphs.
    capture_secs: f64,
    /// Graphs of the step recorded so far.
    captures: u64,
}

impl<B: Backend> std::fmt::Debug for Plan<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("backend", &self.b.name())
            .field("batch", &self.batch)
            .field("train", &self.train)
            .field("bytes", &self.bytes)
            .field(
                "launches",
                &(self.forward.len() + self.backward.len() + self.adam.len()),
            )
            .finish()
    }
}

impl<B: Backend> Plan<B> {
    /// A training plan of `g` (which must have a loss, [`Graph::softmax_xent`]) for batches of `batch`, with
    /// the default [`TrainOptions`].
    pub fn train(b: impl BackendHandle<Backend = B>, g: &Graph, batch: usize) -> Result<Self> {
        Self::train_with(b, g, batch, &TrainOptions::default())
    }

    /// A training plan with `opts`.
    pub fn train_with(
        b: impl BackendHandle<Backend = B>,
        g: &Graph,
        batch: usize,
        opts: &TrainOptions,
    ) -> Result<Self> {
        const OP: &str = "Plan::train";
        let loss = g
            .nodes
            .iter()
            .position(|n| matches!(n, Op::SoftmaxXent { .. }))
            .ok_or_else(|| plan_err(OP, "the graph has no loss (softmax_xent)".into()))?;
        let mut p = Planner::new(g, OP, batch, true, Value(loss))?;
        p.precision = opts.precision;
        p.fold_relu = !opts.separate_relu_bwd && B::FOLDS_RELU_BWD;
        p.fuse()?;
        p.place_forward()?;
        p.place_grads()?;
        let mut saved = Vec::new();
        p.plan_forward(&mut saved)?;
        p.plan_backward(&saved, &opts.fuse_wgrad_adam)?;
        // Adam over the runs of parameters outside the fused linear weights, one launch per run.
        let table = param_table(g);
        let len = table.last().map_or(0, |e| e.range.end);
        let mut fused: Vec<Range<usize>> = p
            .fused
            .iter()
            .filter_map(|l| match l {
                Launch::LinearWgradAdam { w, .. } => Some(w.clone()),
                _ => None,
            })
            .collect();
        fused.sort_by_key(|r| r.start);
        let mut adam = Vec::new();
        let mut at = 0;
        for r in fused.iter().chain(std::iter::once(&(len..len))) {
            if r.start > at {
                adam.push(Launch::Adam { range: at..r.start });
            }
            at = r.end;
        }
        adam.append(&mut p.fused);
        let output = p.fwd_ref(Value(loss))?;
        Self::allocate(b, p, opts.precision, output, adam, len)
    }

    /// An inference plan of `g` for batches of `batch`, computing `output` (dropout is the identity; nothing
    /// is saved for backward), in fp32.
    pub fn inference(
        b: impl BackendHandle<Backend = B>,
        g: &Graph,
        batch: usize,
        output: Value,
    ) -> Result<Self> {
        Self::inference_with(b, g, batch, output, Precision::Fp32)
    }

    /// [`Plan::inference`] with the products (convolutions, linear layers) in `precision`, as a training plan
    /// of [`TrainOptions::precision`] runs its forward.
    pub fn inference_with(
        b: impl BackendHandle<Backend = B>,
        g: &Graph,
        batch: usize,
        output: Value,
        precision: Precision,
    ) -> Result<Self> {
        const OP: &str = "Plan::inference";
        let mut p = Planner::new(g, OP, batch, false, output)?;
        p.precision = precision;
        if matches!(g.nodes[output.0], Op::SoftmaxXent { .. }) {
            return Err(plan_err(
                OP,
                "the output is the loss: plan its logits instead".into(),
            ));
        }
        p.fuse()?;
        p.place_forward()?;
        let mut saved = Vec::new();
        p.plan_forward(&mut saved)?;
        let out = p.fwd_loc(output.0)?;
        if out.len != p.elems(output.0) {
            return Err(plan_err(
                OP,
                format!("output value {} is a concat part", output.0),
            ));
        }
        let len = param_table(g).last().map_or(0, |e| e.range.end);
        Self::allocate(b, p, precision, Planner::r(out), Vec::new(), len)
    }

    fn allocate(
        b: impl BackendHandle<Backend = B>,
        p: Planner<'_>,
        precision: Precision,
        output: BufRef,
        adam: Vec<Launch>,
        param_len: usize,
    ) -> Result<Self> {
        let b = b.into_backend();
        // A host-resident backend's `alloc_zeros` aborts on failure (the CUDA driver returns an error).
        if b.name() != "cuda" {
            let elems = p
                .bufs
                .iter()
                .try_fold(0usize, |t, (len, _)| t.checked_add(*len));
            crate::tensor::check_alloc(
                "Plan::allocate",
                &format!("the activations and gradients of a batch of {}", p.n),
                elems.unwrap_or(usize::MAX),
            )?;
        }
        let mut bufs = Vec::with_capacity(p.bufs.len());
        for &(len, _) in &p.bufs {
            bufs.push(Some(b.alloc_zeros(len)?));
        }
        let inputs = p
            .live_nodes()
            .filter_map(|(i, n)| match n {
                Op::Input { name } => p.fwd[i].map(|l| (name.clone(), Planner::r(l))),
                _ => None,
            })
            .collect();
        let losses = if p.train {
            Some(b.alloc_zeros(LOSS_RING)?)
        } else {
            None
        };
        let bytes = p.bufs.iter().map(|(len, _)| len * 4).sum::<usize>()
            + if p.train { LOSS_RING * 4 } else { 0 }
            + p.n * 4;
        Ok(Plan {
            labels: b.upload_labels(&vec![0; p.n])?,
            b,
            batch: p.n,
            train: p.train,
            precision,
            bufs,
            bytes,
            inputs,
            output,
            step_lists: one_pass_lists(&p.backward, &adam),
            forward: p.forward,
            backward: p.backward,
            adam,
            losses,
            pending: 0,
            last_step: 0,
            param_len,
            capture: true,
            warm: false,
            graph: None,
            replays: 0,
            capture_secs: 0.0,
            captures: 0,
        })
    }

    /// The batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// The kernels' arithmetic.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Bytes of every buffer the plan allocated (activations, what backward saves, gradients, scratch,
    /// labels, the loss history); the parameters' four flat buffers are [`Params::bytes`].
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Launches of the plan's ops in a training step (forward, backward, Adam) or in an inference forward:
    /// one per op, an op of several kernels (a conv's backward, the fused reduce conv's backward) counting
    /// once.
    pub fn launches(&self) -> usize {
        self.forward.len() + self.backward.len() + self.adam.len()
    }

    /// Copies a batch into input `name`: `batch × shape` values. A missing name is an error.
    pub fn set_input(&mut self, name: &str, data: &[f32]) -> Result<()> {
        let r = self
            .inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| plan_err("Plan::set_input", format!("no input named {name:?}")))?;
        crate::shape::check_len("Plan::set_input", "data", r.len, data.len())?;
        let b = &*self.b;
        let buf = self.bufs[r.id]
            .as_mut()
            .ok_or_else(|| plan_err("Plan::set_input", "buffer in use".into()))?;
        b.write(&mut b.view_mut(buf, 0..r.len)?, data)
    }

    /// Copies the batch's `batch` class labels (for the loss).
    pub fn set_labels(&mut self, labels: &[u32]) -> Result<()> {
        crate::shape::check_len("Plan::set_labels", "labels", self.batch, labels.len())?;
        self.b.write_labels(&mut self.labels, labels)
    }

    /// Runs the forward launches with `params` (a training plan's forward includes the loss, and dropout
    /// uses the mask of the next step).
    pub fn forward(&mut self, params: &Params<B>) -> Result<()> {
        self.check_params(params)?;
        let mut ctx = Ctx {
            values: Values::Shared(&params.values),
            grads: None,
            moments: None,
            seed: params.seed,
            step: params.step + 1,
            adam: AdamStep::new(0.0, params.step + 1),
            store_fused: false,
            device: None,
        };
        let Plan {
            b,
            bufs,
            labels,
            forward,
            ..
        } = self;
        forward
            .iter()
            .try_for_each(|l| exec(&**b, bufs, labels, l, &mut ctx))
    }

    /// Forward, loss and backward without the update, storing every gradient in `params` (fused linear
    /// weights' included); dropout uses the mask of the next step.
    pub fn forward_backward(&mut self, params: &mut Params<B>) -> Result<()> {
        self.need_train("Plan::forward_backward")?;
        self.check_params(params)?;
        let step = next_step(params)?;
        let seed = params.seed;
        let Params { values, grads, .. } = params;
        let mut ctx = Ctx {
            values: Values::Shared(values),
            grads: Some(grads),
            moments: None,
            seed,
            step,
            adam: AdamStep::new(0.0, step),
            store_fused: true,
            device: None,
        };
        let Plan {
            b,
            bufs,
            labels,
            forward,
            backward,
            ..
        } = self;
        forward
            .iter()
            .chain(backward.iter())
            .try_for_each(|l| exec(&**b, bufs, labels, l, &mut ctx))
    }

    /// One training step: forward, loss, backward and Adam with learning rate `lr` over every parameter
    /// (fused linear weights through `linear_wgrad_adam`, or with their input gradient in one pass through
    /// `linear_bwd_adam`), all on the backend's stream, allocating nothing and
    /// never waiting for the device. The step's loss is kept on the device ([`Self::take_mean_loss`]).
    ///
    /// What depends on the step is read on the device from `params`' device step counter: the dropout
    /// masks' step and Adam's scalars (a row of the Adam table, [`Params::reserve_steps`], built here when
    /// it does not cover the step); the step's last launch stores the loss and advances the counter. So the
    /// same launches serve every step, and a captured step replays right ([`Self::step_gathered`]).
    pub fn step(&mut self, params: &mut Params<B>, lr: f64) -> Result<()> {
        let step = self.prepare_step(params, lr)?;
        self.issue_step(params)?;
        self.finish_step(params, step);
        Ok(())
    }

    /// The training step of `params`' device step counter on the batch gathered on the device from `data`
    /// into input `input` and the labels: images `(s · batch) mod max(len − batch, 1)` onwards, `s` being the
    /// steps taken (the host's [`crate::data::Dataset::batch`] of the step), then [`Self::step`]. Nothing is
    /// copied from the host.
    ///
    /// On a backend that records graphs (CUDA) the second such step is captured as a graph (the first runs
    /// as it is issued and sizes the backend's working memory) and every later one replays it, while the
    /// parameters, the Adam table, `data`, `input` and the dropout seed are those it was captured with
    /// (otherwise it is captured again); [`Self::set_capture`] turns this off. Elsewhere every step runs its launches directly: the
    /// same launches, the same device-counter logic, the same results.
    pub fn step_gathered(
        &mut self,
        params: &mut Params<B>,
        data: &DeviceDataset<B>,
        input: &str,
        lr: f64,
    ) -> Result<()> {
        let step = self.prepare_step(params, lr)?;
        let at = self.input_ref("Plan::step_gathered", input)?;
        crate::shape::check_len(
            "Plan::step_gathered",
            "the data set's pixels per image",
            at.len / self.batch.max(1),
            data.pixels(),
        )?;
        let key = GraphKey {
            params: params.id,
            table_version: params.table_version,
            data: data.id,
            input: at,
            seed: params.seed,
        };
        if self
            .graph
            .as_ref()
            .is_some_and(|(k, g)| *k != key || !g.is_current())
        {
            self.graph = None;
        }
        if self.capture && self.warm && self.graph.is_none() {
            let (b, t) = (self.b.clone(), std::time::Instant::now());
            let mut issue = || self.issue_gathered(params, data, at);
            let graph = b.capture_graph(&mut issue)?;
            if let Some(g) = graph {
                self.graph = Some((key, g));
                self.capture_secs += t.elapsed().as_secs_f64();
                self.captures += 1;
            }
        }
        match &self.graph {
            Some((_, g)) if self.capture => {
                g.replay()?;
                self.replays += 1;
            }
            _ => self.issue_gathered(params, data, at)?,
        }
        self.warm = true;
        self.finish_step(params, step);
        Ok(())
    }

    /// Whether [`Self::step_gathered`] captures its step as a graph and replays it (on by default; only a
    /// backend that records graphs, CUDA, does). Off, every step is issued launch by launch: a replayed run
    /// and an uncaptured one give the same bits.
    pub fn set_capture(&mut self, on: bool) {
        self.capture = on;
        if !on {
            self.graph = None;
        }
    }

    /// Training steps run so far by replaying a captured graph.
    pub fn replays(&self) -> u64 {
        self.replays
    }

    /// Seconds spent recording graphs of the step (on the host, the graph's instantiation included).
    pub fn capture_seconds(&self) -> f64 {
        self.capture_secs
    }

    /// Graphs of the step recorded so far: one for a run whose step never changed what it was captured
    /// with (a parameter set, the Adam table, the data set, the input, the seed, the backend's working
    /// memory), more for each time one did.
    pub fn captures(&self) -> u64 {
        self.captures
    }

    /// Copies images `start..start + batch` of the resident data set `data` into input `input` and their
    /// labels into the plan's labels (for the loss, or [`Self::count_correct_loaded`]), on the device.
    pub fn gather(&mut self, input: &str, data: &DeviceDataset<B>, start: usize) -> Result<()> {
        const OP: &str = "Plan::gather";
        let at = self.input_ref(OP, input)?;
        crate::shape::check_len(
            OP,
            "the data set's pixels per image",
            at.len / self.batch.max(1),
            data.pixels(),
        )?;
        let b = &*self.b;
        let buf = self.bufs[at.id]
            .as_mut()
            .ok_or_else(|| plan_err(OP, "buffer in use".into()))?;
        b.batch_gather(
            &mut b.view_mut(buf, 0..at.len)?,
            &mut self.labels,
            &b.view(&data.images, 0..b.len(&data.images))?,
            &data.labels,
            start,
        )
    }

    /// The buffer of input `name`.
    fn input_ref(&self, op: &'static str, name: &str) -> Result<BufRef> {
        self.inputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, r)| *r)
            .ok_or_else(|| plan_err(op, format!("no input named {name:?}")))
    }

    /// The checks of a training step before anything is launched, and the Adam table made to cover it:
    /// returns the step count after it.
    fn prepare_step(&mut self, params: &mut Params<B>, lr: f64) -> Result<u64> {
        self.need_train("Plan::step")?;
        self.check_params(params)?;
        let step = next_step(params)?;
        AdamStep::new(lr, step).scalars("Plan::step")?;
        params.reserve_steps(lr, step)?;
        if self.losses.is_none() || self.bufs.get(self.output.id).is_none() {
            return Err(plan_err("Plan::step", "no loss buffer".into()));
        }
        Ok(step)
    }

    /// The launches of a gathered training step: the batch of the device counter, then the step.
    fn issue_gathered(
        &mut self,
        params: &mut Params<B>,
        data: &DeviceDataset<B>,
        at: BufRef,
    ) -> Result<()> {
        {
            let b = &*self.b;
            let buf = self.bufs[at.id]
                .as_mut()
                .ok_or_else(|| plan_err("Plan::step_gathered", "buffer in use".into()))?;
            b.batch_gather_at(
                &mut b.view_mut(buf, 0..at.len)?,
                &mut self.labels,
                &b.view(&data.images, 0..b.len(&data.images))?,
                &data.labels,
                &params.counter,
            )?;
        }
        self.issue_step(params)
    }

    /// The launches of a training step (after [`Self::prepare_step`]): nothing on the host changes, so the
    /// same call can be recorded as a graph.
    fn issue_step(&mut self, params: &mut Params<B>) -> Result<()> {
        let seed = params.seed;
        let Params {
            values,
            grads,
            adam_m,
            adam_v,
            counter,
            adam_table,
            ..
        } = params;
        let table = adam_table
            .as_ref()
            .ok_or_else(|| plan_err("Plan::step", "no Adam table".into()))?;
        {
            let mut ctx = Ctx {
                values: Values::Mut(values),
                grads: Some(grads),
                moments: Some((adam_m, adam_v)),
                seed,
                step: 0,
                adam: AdamStep::new(0.0, 1),
                store_fused: false,
                device: Some((&table.buf, &*counter)),
            };
            let Plan {
                b,
                bufs,
                labels,
                forward,
                step_lists: (step_backward, step_adam),
                ..
            } = self;
            forward
                .iter()
                .chain(step_backward.iter())
                .chain(step_adam.iter())
                .try_for_each(|l| exec(&**b, bufs, labels, l, &mut ctx))?;
        }
        // The step's loss into the loss ring (read at the next logging point), then the counter advanced.
        let b = &*self.b;
        let (Some(losses), Some(Some(loss))) =
            (self.losses.as_mut(), self.bufs.get(self.output.id))
        else {
            return Err(plan_err("Plan::step", "no loss buffer".into()));
        };
        b.step_end(
            &mut b.view_mut(losses, 0..LOSS_RING)?,
            counter,
            &b.view(loss, 0..1)?,
        )
    }

    /// The host's side of a step issued: its count, and the losses pending on the device.
    fn finish_step(&mut self, params: &mut Params<B>, step: u64) {
        params.step = step;
        self.pending += 1;
        self.last_step = step;
    }

    /// The loss of the last forward of a training plan (reads one value back from the device).
    pub fn loss(&self) -> Result<f32> {
        self.need_train("Plan::loss")?;
        Ok(self.output()?.first().copied().unwrap_or(f32::NAN))
    }

    /// Counts the rows of the plan's output (logits `[batch, classes]`, after [`Self::forward`]) whose first
    /// largest value is at their label into `count [2]` on the device: `count[0]` (+)= correct rows,
    /// `count[1]` (+)= rows holding a NaN; added to when `accumulate`. Nothing is read back: an evaluation
    /// over many batches reads the two numbers once. `labels` are checked (`< classes`) before the upload.
    pub fn count_correct(
        &mut self,
        count: &mut B::ViewMut<'_>,
        labels: &[u32],
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "Plan::count_correct";
        crate::shape::check_len(OP, "labels", self.batch, labels.len())?;
        let classes = self.output.len / self.batch.max(1);
        crate::cpu::check_labels(OP, labels, classes)?;
        self.b.write_labels(&mut self.labels, labels)?;
        self.count_correct_loaded(count, accumulate)
    }

    /// [`Self::count_correct`] against the labels already in the plan (gathered on the device by
    /// [`Self::gather`], whose data set's labels were checked at its upload).
    pub fn count_correct_loaded(
        &mut self,
        count: &mut B::ViewMut<'_>,
        accumulate: bool,
    ) -> Result<()> {
        const OP: &str = "Plan::count_correct";
        let classes = self.output.len / self.batch.max(1);
        let out = self.bufs[self.output.id]
            .as_ref()
            .ok_or_else(|| plan_err(OP, "buffer in use".into()))?;
        let logits = self.b.view(out, 0..self.output.len)?;
        self.b
            .count_correct(count, &logits, &self.labels, classes, accumulate)
    }

    /// The output of an inference plan (`batch × shape`), or a training plan's loss (copied to the host).
    pub fn output(&self) -> Result<Vec<f32>> {
        let buf = self.bufs[self.output.id]
            .as_ref()
            .ok_or_else(|| plan_err("Plan::output", "buffer in use".into()))?;
        self.b.read(&self.b.view(buf, 0..self.output.len)?)
    }

    /// The mean loss of the training steps since the last call (at most the last [`LOSS_RING`]), read from
    /// the device: the one synchronisation of a logging point. `None` when no step ran since.
    pub fn take_mean_loss(&mut self) -> Result<Option<f32>> {
        let Some(losses) = self.losses.as_ref() else {
            return Err(plan_err(
                "Plan::take_mean_loss",
                "an inference plan has no loss".into(),
            ));
        };
        if self.pending == 0 {
            return Ok(None);
        }
        let n = self.pending.min(LOSS_RING);
        let host = self.b.to_host(losses)?;
        let last = (self.last_step as usize + LOSS_RING - 1) % LOSS_RING;
        let sum: f64 = (0..n)
            .map(|k| host[(last + LOSS_RING - k) % LOSS_RING] as f64)
            .sum();
        self.pending = 0;
        Ok(Some((sum / n as f64) as f32))
    }

    /// The losses of the steps since the last [`Self::take_mean_loss`], oldest first (at most
    /// [`LOSS_RING`]), read from the device; empty for an inference plan.
    pub fn pending_losses(&self) -> Result<Vec<f32>> {
        let (Some(losses), n) = (self.losses.as_ref(), self.pending.min(LOSS_RING)) else {
            return Ok(Vec::new());
        };
        if n == 0 {
            return Ok(Vec::new());
        }
        let host = self.b.to_host(losses)?;
        let last = (self.last_step as usize + LOSS_RING - 1) % LOSS_RING;
        Ok((0..n)
            .rev()
            .map(|k| host[(last + LOSS_RING - k) % LOSS_RING])
            .collect())
    }

    /// Restores [`Self::pending_losses`] as the losses of the `losses.len()` steps up to `step` (a resumed
    /// run's), so the next [`Self::take_mean_loss`] equals the uninterrupted run's.
    pub fn set_pending_losses(&mut self, losses: &[f32], step: u64) -> Result<()> {
        const OP: &str = "Plan::set_pending_losses";
        let n = losses.len();
        if n > LOSS_RING || n as u64 > step {
            return Err(Error::OutOfRange {
                op: OP,
                what: "pending losses".into(),
                value: format!("{n} at step {step}"),
                allowed: "at most the step count and LOSS_RING",
            });
        }
        let b = self.b.clone();
        let Some(buf) = self.losses.as_mut() else {
            return Err(plan_err(OP, "an inference plan has no loss".into()));
        };
        let mut host = b.to_host(buf)?;
        let last = ((step + LOSS_RING as u64 - 1) % LOSS_RING as u64) as usize;
        for (k, &v) in losses.iter().rev().enumerate() {
            host[(last + LOSS_RING - k) % LOSS_RING] = v;
        }
        b.write(&mut b.view_mut(buf, 0..LOSS_RING)?, &host)?;
        self.pending = n;
        self.last_step = step;
        Ok(())
    }

    fn need_train(&self, op: &'static str) -> Result<()> {
        if self.train {
            Ok(())
        } else {
            Err(plan_err(
                op,
                "an inference plan has no loss or backward".into(),
            ))
        }
    }

    fn check_params(&self, params: &Params<B>) -> Result<()> {
        crate::shape::check_len("Plan", "params", self.param_len, params.len())
    }
}

/// What the launches of one run read and update besides the plan's buffers.
struct Ctx<'p, B: Backend> {
    values: Values<'p, B>,
    grads: Option<&'p mut B::Buf>,
    moments: Option<(&'p mut B::Buf, &'p mut B::Buf)>,
    seed: u64,
    /// The dropout step (Adam's step count after this step).
    step: u64,
    adam: AdamStep,
    /// Whether fused linear weights get their gradient stored (forward_backward) or not (a training step).
    store_fused: bool,
    /// A training step's Adam table and device step counter: dropout and Adam read the step on the device
    /// (the `_at` kernels) instead of `step` and `adam`.
    device: Option<(&'p B::Buf, &'p B::Labels)>,
}

fn missing(what: &str) -> Error {
    plan_err(
        "Plan",
        format!("{what} missing (a training step's buffers are absent)"),
    )
}

fn take<B: Backend>(bufs: &mut [Option<B::Buf>], r: BufRef) -> Result<B::Buf> {
    bufs.get_mut(r.id)
        .and_then(Option::take)
        .ok_or_else(|| missing("buffer"))
}

fn view<'a, B: Backend>(b: &'a B, bufs: &'a [Option<B::Buf>], r: BufRef) -> Result<B::View<'a>> {
    let buf = bufs
        .get(r.id)
        .and_then(Option::as_ref)
        .ok_or_else(|| missing("buffer"))?;
    b.view(buf, 0..r.len)
}

/// Runs `f` with buffer `r` taken out of `bufs` (so that the others can be viewed meanwhile), then puts it
/// back.
fn with_out<B: Backend>(
    bufs: &mut [Option<B::Buf>],
    r: BufRef,
    f: impl FnOnce(&mut B::Buf, &[Option<B::Buf>]) -> Result<()>,
) -> Result<()> {
    let mut out = take::<B>(bufs, r)?;
    let res = f(&mut out, bufs);
    bufs[r.id] = Some(out);
    res
}

/// As [`with_out`] with two buffers.
fn with_outs<B: Backend>(
    bufs: &mut [Option<B::Buf>],
    r: [BufRef; 2],
    f: impl FnOnce(&mut B::Buf, &mut B::Buf, &[Option<B::Buf>]) -> Result<()>,
) -> Result<()> {
    let mut first = take::<B>(bufs, r[0])?;
    let res = match take::<B>(bufs, r[1]) {
        Ok(mut second) => {
            let res = f(&mut first, &mut second, bufs);
            bufs[r[1].id] = Some(second);
            res
        }
        Err(e) => Err(e),
    };
    bufs[r[0].id] = Some(first);
    res
}

fn exec<B: Backend>(
    b: &B,
    bufs: &mut [Option<B::Buf>],
    labels: &B::Labels,
    launch: &Launch,
    ctx: &mut Ctx<'_, B>,
) -> Result<()> {
    let p = |r: &Range<usize>| b.view(ctx.values.get(), r.clone());
    match launch {
        Launch::ConvFwd {
            y,
            x,
            w,
            b: bias,
            s,
            relu,
        } => with_out::<B>(bufs, *y, |yb, bufs| {
            b.conv_fwd(
                &mut b.view_mut(yb, 0..y.len)?,
                &view(b, bufs, *x)?,
                &p(w)?,
                &p(bias)?,
                s,
                *relu,
            )
        }),
        Launch::ReduceConvFwd {
            y,
            mid,
            x,
            p: pr,
            s,
        } => with_outs::<B>(bufs, [*y, *mid], |yb, mb, bufs| {
            b.reduce_conv_fwd(
                &mut b.view_mut(yb, 0..y.len)?,
                &mut b.view_mut(mb, 0..mid.len)?,
                &view(b, bufs, *x)?,
                &p(pr)?,
                s,
            )
        }),
        Launch::MaxPoolFwd { y, x, s } => with_out::<B>(bufs, *y, |yb, bufs| {
            b.maxpool3x3s1_fwd(&mut b.view_mut(yb, 0..y.len)?, &view(b, bufs, *x)?, s)
        }),
        Launch::LinearFwd {
            y,
            x,
            w,
            b: bias,
            s,
        } => with_out::<B>(bufs, *y, |yb, bufs| {
            b.linear_fwd(
                &mut b.view_mut(yb, 0..y.len)?,
                &view(b, bufs, *x)?,
                &p(w)?,
                &p(bias)?,
                s,
            )
        }),
        Launch::ReluFwd { y, x } => with_out::<B>(bufs, *y, |yb, bufs| {
            b.relu_fwd(&mut b.view_mut(yb, 0..y.len)?, &view(b, bufs, *x)?)
        }),
        Launch::DropoutFwd { y, x, p: prob } => with_out::<B>(bufs, *y, |yb, bufs| {
            let (yv, xv) = (&mut b.view_mut(yb, 0..y.len)?, &view(b, bufs, *x)?);
            match ctx.device {
                Some((_, counter)) => b.dropout_fwd_at(yv, xv, *prob, ctx.seed, counter),
                None => b.dropout_fwd(yv, xv, *prob, ctx.seed, ctx.step),
            }
        }),
        Launch::SoftmaxXent {
            loss,
            dlogits,
            logits,
            classes,
        } => with_outs::<B>(bufs, [*loss, *dlogits], |lb, db, bufs| {
            b.softmax_xent(
                &mut b.view_mut(lb, 0..loss.len)?,
                &mut b.view_mut(db, 0..dlogits.len)?,
                &view(b, bufs, *logits)?,
                labels,
                *classes,
            )
        }),
        Launch::ReluBwd { dx, dy, y } => with_out::<B>(bufs, *dx, |db, bufs| {
            b.relu_bwd(
                &mut b.view_mut(db, 0..dx.len)?,
                &view(b, bufs, *dy)?,
                &view(b, bufs, *y)?,
            )
        }),
        Launch::DropoutBwd { dx, dy, p: prob } => with_out::<B>(bufs, *dx, |db, bufs| {
            let (dxv, dyv) = (&mut b.view_mut(db, 0..dx.len)?, &view(b, bufs, *dy)?);
            match ctx.device {
                Some((_, counter)) => b.dropout_bwd_at(dxv, dyv, *prob, ctx.seed, counter),
                None => b.dropout_bwd(dxv, dyv, *prob, ctx.seed, ctx.step),
            }
        }),
        Launch::Accumulate { dst, add, tmp } => {
            with_outs::<B>(bufs, [*dst, *tmp], |db, tb, bufs| {
                b.copy(&mut b.view_mut(tb, 0..tmp.len)?, &b.view(db, 0..dst.len)?)?;
                b.add_fwd(
                    &mut b.view_mut(db, 0..dst.len)?,
                    &b.view(tb, 0..tmp.len)?,
                    &view(b, bufs, *add)?,
                )
            })
        }
        Launch::MaxPoolBwd {
            dx,
            accumulate,
            dy,
            x,
            s,
        } => with_out::<B>(bufs, *dx, |db, bufs| {
            b.maxpool3x3s1_bwd(
                &mut b.view_mut(db, 0..dx.len)?,
                &view(b, bufs, *dy)?,
                &view(b, bufs, *x)?,
                s,
                *accumulate,
            )
        }),
        Launch::ConvBwd {
            dx,
            dw,
            db,
            dy,
            mask,
            x,
            w,
            s,
        } => {
            let grads = ctx
                .grads
                .as_deref_mut()
                .ok_or_else(|| missing("gradients"))?;
            let mut run =
                |dxb: Option<(&mut B::Buf, usize, bool)>, bufs: &[Option<B::Buf>]| -> Result<()> {
                    let mut dxv = match dxb {
                        Some((buf, len, acc)) => Some((b.view_mut(buf, 0..len)?, acc)),
                        None => None,
                    };
                    let dx = dxv.as_mut().map(|(v, a)| (v, *a));
                    let (dyv, xv, wv) = (view(b, bufs, *dy)?, view(b, bufs, *x)?, p(w)?);
                    let mv = mask.map(|m| view(b, bufs, m)).transpose()?;
                    defs::conv_bwd(
                        b,
                        dx,
                        grads,
                        [dw.clone(), db.clone()],
                        &dyv,
                        mv.as_ref(),
                        &xv,
                        &wv,
                        s,
                    )
                };
            match dx {
                Some((d, acc)) => {
                    with_out::<B>(bufs, *d, |dxb, bufs| run(Some((dxb, d.len, *acc)), bufs))
                }
                None => run(None, bufs),
            }
        }
        Launch::ReduceConvBwd {
            dx,
            accumulate,
            dp,
            scratch,
            dy,
            mask,
            x,
            mid,
            p: pr,
            s,
        } => {
            let grads = ctx
                .grads
                .as_deref_mut()
                .ok_or_else(|| missing("gradients"))?;
            with_outs::<B>(bufs, [*dx, *scratch], |dxb, sb, bufs| {
                b.reduce_conv_bwd(
                    &mut b.view_mut(dxb, 0..dx.len)?,
                    &mut b.view_mut(grads, dp.clone())?,
                    &mut b.view_mut(sb, 0..scratch.len)?,
                    &view(b, bufs, *dy)?,
                    mask.map(|m| view(b, bufs, m)).transpose()?.as_ref(),
                    &view(b, bufs, *x)?,
                    &view(b, bufs, *mid)?,
                    &p(pr)?,
                    s,
                    *accumulate,
                )
            })
        }
        Launch::LinearBwd {
            dx,
            dw,
            db,
            dy,
            x,
            w,
            s,
        } => {
            let grads = ctx
                .grads
                .as_deref_mut()
                .ok_or_else(|| missing("gradients"))?;
            let dw = (!dw.1 || ctx.store_fused).then(|| dw.0.clone());
            let run = |dxb: Option<(&mut B::Buf, usize)>, bufs: &[Option<B::Buf>]| -> Result<()> {
                let mut dxv = match dxb {
                    Some((buf, len)) => Some(b.view_mut(buf, 0..len)?),
                    None => None,
                };
                let (dyv, xv, wv) = (view(b, bufs, *dy)?, view(b, bufs, *x)?, p(w)?);
                defs::linear_bwd(b, dxv.as_mut(), grads, dw, db.clone(), &dyv, &xv, &wv, s)
            };
            match dx {
                Some(d) => with_out::<B>(bufs, *d, |dxb, bufs| run(Some((dxb, d.len)), bufs)),
                None => run(None, bufs),
            }
        }
        Launch::Adam { range } => {
            let (Some(grads), Some((m, v)), Values::Mut(values)) =
                (ctx.grads.as_deref(), ctx.moments.as_mut(), &mut ctx.values)
            else {
                return Err(missing("Adam state"));
            };
            let (pv, mv, vv, gv) = (
                &mut b.view_mut(values, range.clone())?,
                &mut b.view_mut(m, range.clone())?,
                &mut b.view_mut(v, range.clone())?,
                &b.view(grads, range.clone())?,
            );
            match ctx.device {
                Some((table, counter)) => {
                    b.adam_step_at(pv, mv, vv, gv, &b.view(table, 0..b.len(table))?, counter)
                }
                None => b.adam_step(pv, mv, vv, gv, &ctx.adam),
            }
        }
        Launch::LinearBwdAdam {
            dx,
            w,
            db,
            dy,
            x,
            s,
        } => {
            let (Some(grads), Some((m, v)), Values::Mut(values)) = (
                ctx.grads.as_deref_mut(),
                ctx.moments.as_mut(),
                &mut ctx.values,
            ) else {
                return Err(missing("Adam state"));
            };
            b.linear_bgrad(&mut b.view_mut(grads, db.clone())?, &view(b, bufs, *dy)?, s)?;
            with_out::<B>(bufs, *dx, |dxb, bufs| {
                let (dyv, xv) = (view(b, bufs, *dy)?, view(b, bufs, *x)?);
                let dxv = &mut b.view_mut(dxb, 0..dx.len)?;
                let wmv = [
                    &mut b.view_mut(values, w.clone())?,
                    &mut b.view_mut(m, w.clone())?,
                    &mut b.view_mut(v, w.clone())?,
                ];
                match ctx.device {
                    Some((table, counter)) => {
                        let tv = b.view(table, 0..b.len(table))?;
                        b.linear_bwd_adam_at(dxv, wmv, &dyv, &xv, s, &tv, counter)
                    }
                    None => b.linear_bwd_adam(dxv, wmv, &dyv, &xv, s, &ctx.adam),
                }
            })
        }
        Launch::LinearWgradAdam { w, dy, x, s } => {
            let (Some((m, v)), Values::Mut(values)) = (ctx.moments.as_mut(), &mut ctx.values)
            else {
                return Err(missing("Adam state"));
            };
            let wmv = [
                &mut b.view_mut(values, w.clone())?,
                &mut b.view_mut(m, w.clone())?,
                &mut b.view_mut(v, w.clone())?,
            ];
            let (dyv, xv) = (view(b, bufs, *dy)?, view(b, bufs, *x)?);
            match ctx.device {
                Some((table, counter)) => {
                    let tv = b.view(table, 0..b.len(table))?;
                    b.linear_wgrad_adam_at(wmv, &dyv, &xv, s, &tv, counter)
                }
                None => b.linear_wgrad_adam(wmv, &dyv, &xv, s, &ctx.adam),
            }
        }
    }
}

/// The parameter values of a run: read-only (forward, backward) or writable (a training step's Adam).
enum Values<'p, B: Backend> {
    Shared(&'p B::Buf),
    Mut(&'p mut B::Buf),
}

impl<B: Backend> Values<'_, B> {
    fn get(&self) -> &B::Buf {
        match self {
            Values::Shared(v) => v,
            Values::Mut(v) => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Launch, Plan, Precision, TrainOptions};
    use crate::cpu::CpuBackend;
    use crate::nn::MnistConfig;

    /// A training plan's precision reaches every launch with products: the convolutions (plain and fused,
    /// forward and backward) as well as the linear layers; an inference plan's too, fp32 by default.
    #[test]
    fn every_product_of_a_training_plan_runs_in_its_precision() {
        let cfg = MnistConfig::tiny();
        let def = cfg.graph().expect("small net");
        for precision in Precision::ALL {
            let opts = TrainOptions {
                precision,
                ..TrainOptions::default()
            };
            let plan = Plan::train_with(CpuBackend, &def.graph, 2, &opts).expect("plan");
            let lists = [
                &plan.forward,
                &plan.backward,
                &plan.adam,
                &plan.step_lists.0,
                &plan.step_lists.1,
            ];
            let launches: Vec<&Launch> = lists.into_iter().flatten().collect();
            let convs = launches
                .iter()
                .filter(|l| {
                    matches!(
                        l,
                        Launch::ConvFwd { .. }
                            | Launch::ConvBwd { .. }
                            | Launch::ReduceConvFwd { .. }
                            | Launch::ReduceConvBwd { .. }
                    )
                })
                .count();
            assert!(convs >= 4, "{precision:?}: {convs} conv launches");
            for l in &launches {
                if let Some(p) = l.precision() {
                    assert_eq!(p, precision, "{l:?}");
                }
            }
            let logits = def.logits;
            let eval = Plan::inference_with(CpuBackend, &def.graph, 2, logits, precision)
                .expect("inference plan");
            assert_eq!(eval.precision(), precision);
            let products = eval.forward.iter().filter_map(|l| l.precision());
            assert!(products.clone().count() >= 4, "{:?}", eval.forward);
            assert!(products.into_iter().all(|p| p == precision));
            let fp32 = Plan::inference(CpuBackend, &def.graph, 2, logits).expect("inference plan");
            assert!(fp32
                .forward
                .iter()
                .all(|l| l.precision().is_none_or(|p| p == Precision::Fp32)));
        }
    }
}
