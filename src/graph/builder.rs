//! The graph builder: named inputs and parameters, and ops on values. Shapes are per example (the batch
//! size is the plan's); every method checks its operands' shapes and returns an error naming the op.

use crate::shape::CONV_KERNEL_SIZES;
use crate::{Error, Result};

/// A tensor of a graph (one example's shape; a plan adds the batch dimension). Cheap to copy.
///
/// ```
/// use inception_cuda::graph::Graph;
/// # fn main() -> inception_cuda::Result<()> {
/// let mut g = Graph::new();
/// let x = g.input("images", &[1, 5, 5])?;
/// assert_eq!(g.shape(x), &[1, 5, 5]);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Value(pub(crate) usize);

/// A named parameter of a graph (its values live in [`crate::graph::Params`]). Cheap to copy.
///
/// ```
/// use inception_cuda::graph::{Graph, Init};
/// # fn main() -> inception_cuda::Result<()> {
/// let mut g = Graph::new();
/// let w = g.param("fc.weight", &[10, 4], Init::FanIn(4))?;
/// assert_eq!(g.param_name(w), "fc.weight");
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Param(pub(crate) usize);

/// How a parameter's initial values are drawn (from one seeded SplitMix64 stream over all parameters in
/// declaration order).
///
/// ```
/// use inception_cuda::graph::Init;
/// // PyTorch's default for a conv with 16 input channels and a 3×3 kernel: uniform in ±1/√144.
/// assert_eq!(Init::FanIn(16 * 9).bound(), Some(1.0 / 12.0));
/// assert_eq!(Init::Zeros.bound(), None);
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Uniform in ±1/√fan_in (PyTorch's default for conv and linear weights and biases).
    FanIn(usize),
    /// Uniform in ±bound.
    Uniform(f32),
    /// All zeros (draws nothing from the stream).
    Zeros,
}

impl Init {
    /// The bound of the uniform draw, `None` for [`Init::Zeros`].
    pub fn bound(&self) -> Option<f32> {
        match *self {
            Init::FanIn(fan_in) => Some(1.0 / (fan_in.max(1) as f32).sqrt()),
            Init::Uniform(bound) => Some(bound),
            Init::Zeros => None,
        }
    }

    /// The fan-in of [`Init::FanIn`], else 0.
    pub fn fan_in(&self) -> usize {
        match *self {
            Init::FanIn(f) => f,
            _ => 0,
        }
    }
}

/// One declared parameter.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParamDecl {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The ops a graph is made of; node `i` defines value `i`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Op {
    /// A named input.
    Input { name: String },
    /// Stride-1 'same' conv with bias, kernel `k` (a plan may fuse a following ReLU into its epilogue).
    Conv {
        x: Value,
        w: Param,
        b: Param,
        k: usize,
    },
    /// The fused `1×1 → ReLU → k×k → ReLU`, parameters `[w1, b1, w2, b2]` declared consecutively.
    ReduceConv { x: Value, p: [Param; 4], k: usize },
    /// 3×3 stride-1 'same' max pool.
    MaxPool { x: Value },
    /// Channel concatenation of `[c, h, w]` values (planned as slices written in place).
    Concat { parts: Vec<Value> },
    /// `max(x, 0)`.
    Relu { x: Value },
    /// `x · wᵀ + b`.
    Linear { x: Value, w: Param, b: Param },
    /// Inverted dropout with probability `p` (identity in an inference plan).
    Dropout { x: Value, p: f32 },
    /// `[c, h, w] → [c·h·w]` (no copy).
    Flatten { x: Value },
    /// Mean softmax cross-entropy of `logits [classes]` against the plan's labels: a `[1]` loss.
    SoftmaxXent { logits: Value },
}

impl Op {
    /// The values this op reads.
    pub fn inputs(&self) -> Vec<Value> {
        match self {
            Op::Input { .. } => vec![],
            Op::Conv { x, .. }
            | Op::ReduceConv { x, .. }
            | Op::MaxPool { x }
            | Op::Relu { x }
            | Op::Linear { x, .. }
            | Op::Dropout { x, .. }
            | Op::Flatten { x } => vec![*x],
            Op::Concat { parts } => parts.clone(),
            Op::SoftmaxXent { logits } => vec![*logits],
        }
    }

    /// The op's name in errors.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Input { .. } => "input",
            Op::Conv { .. } => "conv",
            Op::ReduceConv { k: 3, .. } => "reduce_conv3x3",
            Op::ReduceConv { .. } => "reduce_conv5x5",
            Op::MaxPool { .. } => "maxpool3x3s1",
            Op::Concat { .. } => "concat",
            Op::Relu { .. } => "relu",
            Op::Linear { .. } => "linear",
            Op::Dropout { .. } => "dropout",
            Op::Flatten { .. } => "flatten",
            Op::SoftmaxXent { .. } => "softmax_xent",
        }
    }
}

/// A net defined once: inputs, named parameters and ops on values. Plan it with
/// [`crate::graph::Plan::train`] or [`crate::graph::Plan::inference`].
///
/// ```
/// use inception_cuda::graph::Graph;
/// # fn main() -> inception_cuda::Result<()> {
/// let mut g = Graph::new();
/// let x = g.input("images", &[1, 6, 6])?;
/// let (w, b) = g.conv_params("conv", 1, 4, 3)?;
/// let y = g.conv(x, w, b)?;
/// let y = g.relu(y)?; // fused into the conv's epilogue when planned
/// let y = g.flatten(y)?;
/// let (w, b) = g.linear_params("fc", 4 * 36, 10)?;
/// let logits = g.linear(y, w, b)?;
/// let loss = g.softmax_xent(logits)?;
/// assert_eq!(g.shape(loss), &[1]);
/// assert_eq!(g.param_count(), 4 * 9 + 4 + 10 * 144 + 10);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct Graph {
    pub(crate) nodes: Vec<Op>,
    pub(crate) shapes: Vec<Vec<usize>>,
    pub(crate) params: Vec<ParamDecl>,
}

fn err(op: &'static str, reason: String) -> Error {
    Error::Graph { op, reason }
}

impl Graph {
    /// An empty graph.
    pub fn new() -> Graph {
        Graph::default()
    }

    fn push(&mut self, op: Op, shape: Vec<usize>) -> Value {
        self.nodes.push(op);
        self.shapes.push(shape);
        Value(self.nodes.len() - 1)
    }

    fn check_value(&self, op: &'static str, v: Value) -> Result<&[usize]> {
        self.shapes
            .get(v.0)
            .map(Vec::as_slice)
            .ok_or_else(|| err(op, format!("value {} is not of this graph", v.0)))
    }

    fn check_param(&self, op: &'static str, p: Param) -> Result<&ParamDecl> {
        self.params
            .get(p.0)
            .ok_or_else(|| err(op, format!("parameter {} is not of this graph", p.0)))
    }

    fn chw(&self, op: &'static str, what: &str, v: Value) -> Result<[usize; 3]> {
        let s = self.check_value(op, v)?;
        <[usize; 3]>::try_from(s)
            .map_err(|_| err(op, format!("{what} has shape {s:?}, expected [c, h, w]")))
    }

    fn expect_param(&self, op: &'static str, p: Param, shape: &[usize]) -> Result<()> {
        let d = self.check_param(op, p)?;
        if d.shape == shape {
            Ok(())
        } else {
            Err(err(
                op,
                format!(
                    "parameter {} has shape {:?}, expected {shape:?}",
                    d.name, d.shape
                ),
            ))
        }
    }

    /// The per-example shape of `v` (empty for a value of another graph).
    pub fn shape(&self, v: Value) -> &[usize] {
        self.shapes.get(v.0).map_or(&[], Vec::as_slice)
    }

    /// The name of parameter `p` (empty for a parameter of another graph).
    pub fn param_name(&self, p: Param) -> &str {
        self.params.get(p.0).map_or("", |d| d.name.as_str())
    }

    /// Elements of all parameters.
    pub fn param_count(&self) -> usize {
        self.params
            .iter()
            .map(|d| d.shape.iter().product::<usize>())
            .sum()
    }

    /// The parameter named `name`, or an error.
    pub fn param_named(&self, name: &str) -> Result<Param> {
        self.params
            .iter()
            .position(|d| d.name == name)
            .map(Param)
            .ok_or_else(|| err("Graph::param_named", format!("no parameter named {name:?}")))
    }

    /// A named input of per-example shape `shape` (`[c, h, w]` for images, `[features]` for vectors).
    pub fn input(&mut self, name: &str, shape: &[usize]) -> Result<Value> {
        const OP: &str = "Graph::input";
        if shape.is_empty() || shape.contains(&0) {
            return Err(err(OP, format!("input {name:?} has shape {shape:?}")));
        }
        if self
            .nodes
            .iter()
            .any(|n| matches!(n, Op::Input { name: m } if m == name))
        {
            return Err(err(OP, format!("a second input named {name:?}")));
        }
        Ok(self.push(
            Op::Input {
                name: name.to_string(),
            },
            shape.to_vec(),
        ))
    }

    /// A parameter named `name` (unique in the graph) of shape `shape`, initialised by `init`. Parameters
    /// live in flat buffers in declaration order.
    pub fn param(&mut self, name: &str, shape: &[usize], init: Init) -> Result<Param> {
        const OP: &str = "Graph::param";
        if self.params.iter().any(|d| d.name == name) {
            return Err(err(OP, format!("a second parameter named {name:?}")));
        }
        if shape.is_empty() || shape.contains(&0) {
            return Err(err(OP, format!("parameter {name:?} has shape {shape:?}")));
        }
        self.params.push(ParamDecl {
            name: name.to_string(),
            shape: shape.to_vec(),
            init,
        });
        Ok(Param(self.params.len() - 1))
    }

    /// `{name}.weight [c_out, c_in, k, k]` and `{name}.bias [c_out]`, PyTorch's default initialisation.
    pub fn conv_params(
        &mut self,
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
    ) -> Result<(Param, Param)> {
        let fan_in = Init::FanIn(c_in * k * k);
        Ok((
            self.param(&format!("{name}.weight"), &[c_out, c_in, k, k], fan_in)?,
            self.param(&format!("{name}.bias"), &[c_out], fan_in)?,
        ))
    }

    /// `{name}.weight [out, in]` and `{name}.bias [out]`, PyTorch's default initialisation.
    pub fn linear_params(
        &mut self,
        name: &str,
        inputs: usize,
        outputs: usize,
    ) -> Result<(Param, Param)> {
        let fan_in = Init::FanIn(inputs);
        Ok((
            self.param(&format!("{name}.weight"), &[outputs, inputs], fan_in)?,
            self.param(&format!("{name}.bias"), &[outputs], fan_in)?,
        ))
    }

    /// Stride-1 'same' convolution of `x [c_in, h, w]` with `w [c_out, c_in, k, k]` (k = 1, 3, 5) and
    /// `b [c_out]`.
    pub fn conv(&mut self, x: Value, w: Param, b: Param) -> Result<Value> {
        const OP: &str = "Graph::conv";
        let [c_in, h, wd] = self.chw(OP, "x", x)?;
        let ws = self.check_param(OP, w)?.shape.clone();
        let [c_out, _, k, _] = <[usize; 4]>::try_from(ws.as_slice()).map_err(|_| {
            err(
                OP,
                format!("weight has shape {ws:?}, expected [c_out, c_in, k, k]"),
            )
        })?;
        if !CONV_KERNEL_SIZES.contains(&k) {
            return Err(err(OP, format!("kernel size {k} (supported: 1, 3, 5)")));
        }
        self.expect_param(OP, w, &[c_out, c_in, k, k])?;
        self.expect_param(OP, b, &[c_out])?;
        Ok(self.push(Op::Conv { x, w, b, k }, vec![c_out, h, wd]))
    }

    /// The fused reduce conv `relu(w2 ⊛ relu(w1 ⊛ x + b1) + b2)`: `w1 [c_mid, c_in, 1, 1]`, `b1 [c_mid]`,
    /// `w2 [c_out, c_mid, k, k]` (k = 3 or 5), `b2 [c_out]`, declared consecutively in this order (the
    /// kernel reads them as one block). Its output ReLU is part of the op.
    pub fn reduce_conv(&mut self, x: Value, [w1, b1, w2, b2]: [Param; 4]) -> Result<Value> {
        const OP: &str = "Graph::reduce_conv";
        let [c_in, h, wd] = self.chw(OP, "x", x)?;
        let w2s = self.check_param(OP, w2)?.shape.clone();
        let [c_out, c_mid, k, _] = <[usize; 4]>::try_from(w2s.as_slice()).map_err(|_| {
            err(
                OP,
                format!("w2 has shape {w2s:?}, expected [c_out, c_mid, k, k]"),
            )
        })?;
        if k != 3 && k != 5 {
            return Err(err(
                OP,
                format!("fused reduce conv kernel size {k} (supported: 3, 5)"),
            ));
        }
        self.expect_param(OP, w1, &[c_mid, c_in, 1, 1])?;
        self.expect_param(OP, b1, &[c_mid])?;
        self.expect_param(OP, w2, &[c_out, c_mid, k, k])?;
        self.expect_param(OP, b2, &[c_out])?;
        if [b1.0, w2.0, b2.0] != [w1.0 + 1, w1.0 + 2, w1.0 + 3] {
            return Err(err(
                OP,
                format!(
                    "parameters {}, {}, {}, {} are not declared consecutively (w1, b1, w2, b2)",
                    self.param_name(w1),
                    self.param_name(b1),
                    self.param_name(w2),
                    self.param_name(b2)
                ),
            ));
        }
        Ok(self.push(
            Op::ReduceConv {
                x,
                p: [w1, b1, w2, b2],
                k,
            },
            vec![c_out, h, wd],
        ))
    }

    /// 3×3 stride-1 'same' max pooling of `x [c, h, w]`.
    pub fn maxpool3x3s1(&mut self, x: Value) -> Result<Value> {
        let s = self.chw("Graph::maxpool3x3s1", "x", x)?;
        Ok(self.push(Op::MaxPool { x }, s.to_vec()))
    }

    /// The channel concatenation of `[c_i, h, w]` values. Each part must be a conv or fused reduce conv
    /// read by nothing else: the plan makes it write its channel slice of the result in place.
    pub fn concat(&mut self, parts: &[Value]) -> Result<Value> {
        const OP: &str = "Graph::concat";
        let first = *parts
            .first()
            .ok_or_else(|| err(OP, "no parts".to_string()))?;
        let [_, h, w] = self.chw(OP, "part 0", first)?;
        let mut c = 0;
        for (i, &p) in parts.iter().enumerate() {
            let [ci, hi, wi] = self.chw(OP, "part", p)?;
            if (hi, wi) != (h, w) {
                return Err(err(
                    OP,
                    format!(
                        "part {i} has shape {:?}, expected [_, {h}, {w}]",
                        [ci, hi, wi]
                    ),
                ));
            }
            c += ci;
        }
        Ok(self.push(
            Op::Concat {
                parts: parts.to_vec(),
            },
            vec![c, h, w],
        ))
    }

    /// `max(x, 0)`. A plan fuses it into the epilogue of the conv (or of every part of the concat) that
    /// produces `x` when nothing else reads `x`, and runs it as its own op otherwise.
    pub fn relu(&mut self, x: Value) -> Result<Value> {
        let s = self.check_value("Graph::relu", x)?.to_vec();
        Ok(self.push(Op::Relu { x }, s))
    }

    /// `x [in] · wᵀ + b` with `w [out, in]`, `b [out]`.
    pub fn linear(&mut self, x: Value, w: Param, b: Param) -> Result<Value> {
        const OP: &str = "Graph::linear";
        let xs = self.check_value(OP, x)?.to_vec();
        let [k_in] = <[usize; 1]>::try_from(xs.as_slice()).map_err(|_| {
            err(
                OP,
                format!("x has shape {xs:?}, expected [features] (flatten it)"),
            )
        })?;
        let ws = self.check_param(OP, w)?.shape.clone();
        let n_out = ws.first().copied().unwrap_or(0);
        self.expect_param(OP, w, &[n_out, k_in])?;
        self.expect_param(OP, b, &[n_out])?;
        Ok(self.push(Op::Linear { x, w, b }, vec![n_out]))
    }

    /// Inverted dropout with probability `p` in `[0, 1)` (training plans; identity in inference plans).
    pub fn dropout(&mut self, x: Value, p: f32) -> Result<Value> {
        const OP: &str = "Graph::dropout";
        let s = self.check_value(OP, x)?.to_vec();
        if !(0.0..1.0).contains(&p) {
            return Err(Error::OutOfRange {
                op: OP,
                what: "p".into(),
                value: p.to_string(),
                allowed: "0 <= p < 1",
            });
        }
        Ok(self.push(Op::Dropout { x, p }, s))
    }

    /// `[c, h, w] → [c·h·w]` (the same buffer).
    pub fn flatten(&mut self, x: Value) -> Result<Value> {
        let s = self.check_value("Graph::flatten", x)?;
        let len = s.iter().product();
        Ok(self.push(Op::Flatten { x }, vec![len]))
    }

    /// Mean softmax cross-entropy of `logits [classes]` against the labels loaded into the plan: the `[1]`
    /// loss a training plan minimises. A graph has at most one.
    pub fn softmax_xent(&mut self, logits: Value) -> Result<Value> {
        const OP: &str = "Graph::softmax_xent";
        let s = self.check_value(OP, logits)?.to_vec();
        if s.len() != 1 {
            return Err(err(
                OP,
                format!("logits have shape {s:?}, expected [classes]"),
            ));
        }
        if self
            .nodes
            .iter()
            .any(|n| matches!(n, Op::SoftmaxXent { .. }))
        {
            return Err(err(OP, "a second loss".to_string()));
        }
        Ok(self.push(Op::SoftmaxXent { logits }, vec![1]))
    }
}
