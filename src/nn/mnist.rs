//! The MNIST Inception net of the original write-up: two Inception modules, fc 700 + ReLU + dropout, fc 10,
//! trained with softmax cross-entropy and Adam. Defined once on the graph ([`MnistConfig::graph`]) and run
//! by its plans: parameter names and layouts are those of `reference/inception_mnist.py`; parameters,
//! gradients and both Adam moments each live in one flat buffer ([`crate::graph::Params`]).
//!
//! A training step runs the training plan of its batch size (planned once per batch size): forward, loss,
//! backward and Adam on buffers allocated once; the loss stays in a device buffer until
//! [`InceptionMnist::loss`] reads it. Evaluation runs an inference plan of its own batch size.

use std::sync::Arc;

use super::inception::{InceptionModule, InceptionWidths};
use super::mnist_graph::MnistGraph;
use crate::backend::{Backend, BackendHandle};
use crate::graph::{FuseWgradAdam, Params, Plan, SplitMix64, TrainOptions};
use crate::{Error, Result};

pub use crate::graph::{ParamEntry, LOSS_RING};

/// Classes of MNIST.
pub const CLASSES: usize = 10;

/// Shapes and hyperparameters of the net. Defaults: the write-up's 32, 64, 16, 700, dropout 0.5, 28×28.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MnistConfig {
    /// Maps of every branch of module 1.
    pub map1: usize,
    /// Maps of every branch of module 2.
    pub map2: usize,
    /// Maps of every 1×1 reduce.
    pub reduce: usize,
    /// Width of fc1.
    pub hidden: usize,
    /// Dropout probability on fc1's activations (training only).
    pub dropout: f32,
    /// Image side (28 for MNIST; smaller in tests).
    pub image: usize,
}

impl Default for MnistConfig {
    fn default() -> Self {
        MnistConfig {
            map1: 32,
            map2: 64,
            reduce: 16,
            hidden: 700,
            dropout: 0.5,
            image: 28,
        }
    }
}

impl MnistConfig {
    /// The two modules.
    pub fn modules(&self) -> (InceptionModule, InceptionModule) {
        let m1 = InceptionModule {
            c_in: 1,
            widths: InceptionWidths::uniform(self.map1, self.reduce),
        };
        let m2 = InceptionModule {
            c_in: m1.c_out(),
            widths: InceptionWidths::uniform(self.map2, self.reduce),
        };
        (m1, m2)
    }

    /// The two modules and every parameter of the net, in the reference's order (the graph's table;
    /// empty for a configuration with a zero width, which [`Self::graph`] rejects).
    pub fn param_table(&self) -> (InceptionModule, InceptionModule, Vec<ParamEntry>) {
        let (m1, m2) = self.modules();
        let entries = self
            .graph()
            .map(|def| crate::graph::param_table(&def.graph))
            .unwrap_or_default();
        (m1, m2, entries)
    }
}

/// Adam's moments, its step count and the dropout seed: with the parameters, all a resumed run needs.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainState {
    /// First moments, flat in the parameters' order.
    pub adam_m: Vec<f32>,
    /// Second moments, flat in the parameters' order.
    pub adam_v: Vec<f32>,
    /// Training steps taken.
    pub step: u64,
    /// The seed of the dropout masks.
    pub seed: u64,
}

/// What a training step reports without synchronising: its step number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepStats {
    /// Adam's step count after this step (1 for the first).
    pub step: u64,
}

/// The MNIST Inception net on backend `B`, with its parameters, gradients and Adam state.
pub struct InceptionMnist<B: Backend> {
    b: Arc<B>,
    config: MnistConfig,
    m1: InceptionModule,
    m2: InceptionModule,
    def: MnistGraph,
    params: Params<B>,
    /// The training plan of the last training batch size.
    train: Option<Plan<B>>,
    /// The inference plan of the last evaluation batch size.
    eval: Option<Plan<B>>,
}

impl<B: Backend> std::fmt::Debug for InceptionMnist<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InceptionMnist")
            .field("backend", &self.b.name())
            .field("config", &self.config)
            .field("params", &self.param_count())
            .field("step", &self.step())
            .finish()
    }
}

impl<B: Backend> InceptionMnist<B> {
    /// A net on backend `b` with PyTorch's default initialisation (every weight and bias uniform in
    /// ±1/√fan_in), drawn from `seed`; `seed` also drives the dropout masks.
    ///
    /// `b` is the backend by value (`CpuBackend`, `EmuBackend`) or shared (`CudaDevice::backend_arc()`).
    pub fn new(b: impl BackendHandle<Backend = B>, config: MnistConfig, seed: u64) -> Result<Self> {
        let b = b.into_backend();
        let c = config;
        if [c.map1, c.map2, c.reduce, c.hidden, c.image].contains(&0) {
            return Err(Error::InvalidShape {
                op: "InceptionMnist::new",
                reason: format!("zero width in {c:?}"),
            });
        }
        let def = c.graph()?;
        let (m1, m2) = c.modules();
        Ok(InceptionMnist {
            params: Params::new(b.clone(), &def.graph, seed)?,
            b,
            config: c,
            m1,
            m2,
            def,
            train: None,
            eval: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &MnistConfig {
        &self.config
    }

    /// The two Inception modules.
    pub fn modules(&self) -> (&InceptionModule, &InceptionModule) {
        (&self.m1, &self.m2)
    }

    /// The net's graph.
    pub fn graph(&self) -> &MnistGraph {
        &self.def
    }

    /// Every parameter, in the reference's order.
    pub fn params(&self) -> &[ParamEntry] {
        self.params.table()
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// Adam's step count so far.
    pub fn step(&self) -> u64 {
        self.params.step()
    }

    /// The values of parameter `name` (copied to the host).
    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        self.params.get(name)
    }

    /// The gradient of parameter `name` from the last [`Self::forward_backward`] or training step (copied to
    /// the host). A training step does not store fc1's weight gradient (it goes straight into Adam: see
    /// [`Self::train_loaded`]); `grad("fc1.weight")` then still holds the last `forward_backward`'s.
    pub fn grad(&self, name: &str) -> Result<Vec<f32>> {
        self.params.grad(name)
    }

    /// Overwrites parameter `name` (for loading weights; the length must match its shape).
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        self.params.set(name, values)
    }

    fn image_len(&self) -> usize {
        self.config.image * self.config.image
    }

    /// Checks a batch: `images` holds `n` images of `image × image` pixels, `labels` `n` labels.
    fn check_batch(
        &self,
        op: &'static str,
        images: &[f32],
        labels: Option<&[u32]>,
    ) -> Result<usize> {
        let px = self.image_len();
        if images.is_empty() || images.len() % px != 0 {
            return Err(Error::BufferLength {
                op,
                what: "images",
                expected: px * images.len().div_ceil(px).max(1),
                len: images.len(),
            });
        }
        let n = images.len() / px;
        if let Some(labels) = labels {
            crate::shape::check_len(op, "labels", n, labels.len())?;
        }
        Ok(n)
    }

    /// The training plan for batches of `n` (planned on first use of that size).
    fn train_plan(&mut self, n: usize) -> Result<&mut Plan<B>> {
        if self.train.as_ref().is_none_or(|p| p.batch() != n) {
            // fc1's weight (99.94 % of the parameters) gets the fused update; fc2's 7,000 weights keep the
            // stored gradient and `adam_step`, as the hand-scheduled step had it (the fused CPU twin sums
            // the gradient in another order, so fusing fc2 too would change the step's bits).
            let opts = TrainOptions {
                fuse_wgrad_adam: FuseWgradAdam::Named(vec!["fc1.weight".into()]),
                ..TrainOptions::default()
            };
            self.train = Some(Plan::train_with(self.b.clone(), &self.def.graph, n, &opts)?);
        }
        self.train.as_mut().ok_or_else(no_step)
    }

    /// Copies a batch into the training plan's buffers (planned once per batch size): `images` holds `n`
    /// images of `image × image` pixels in [0, 1], `labels` (when given) their `n` classes.
    /// [`Self::train_loaded`] then trains on it without touching the host. Returns `n`.
    pub fn load_batch(&mut self, images: &[f32], labels: Option<&[u32]>) -> Result<usize> {
        let n = self.check_batch("load_batch", images, labels)?;
        let plan = self.train_plan(n)?;
        plan.set_input("images", images)?;
        if let Some(labels) = labels {
            plan.set_labels(labels)?;
        }
        Ok(n)
    }

    /// One training step on a batch (`images`: `n × image²` pixels in [0, 1], `labels`: `n` classes):
    /// forward, loss, backward, Adam with learning rate `lr`. Nothing is read back: call [`Self::loss`]
    /// at logging points.
    pub fn train_step(&mut self, images: &[f32], labels: &[u32], lr: f64) -> Result<StepStats> {
        self.load_batch(images, Some(labels))?;
        self.train_loaded(lr)
    }

    /// One training step on the batch of [`Self::load_batch`]: forward, loss, backward and Adam, all on the
    /// backend's stream, allocating nothing and never waiting for the device (a CUDA graph can capture it
    /// once the plan exists). Adam's step count and bias corrections are launch arguments, so a captured
    /// step replays with the values of its capture.
    ///
    /// fc1's weight gradient is not stored: `linear_wgrad_adam` applies it to the weights and Adam's moments
    /// as it is formed (for fc1 that saves writing and reading back 562 MB a step), so after a step
    /// [`Self::grad`] holds every gradient but that one; [`Self::forward_backward`] computes them all.
    pub fn train_loaded(&mut self, lr: f64) -> Result<StepStats> {
        let plan = self.train.as_mut().ok_or_else(no_batch)?;
        plan.step(&mut self.params, lr)?;
        Ok(StepStats {
            step: self.params.step(),
        })
    }

    /// The mean loss of the training steps since the last call (at most the last [`LOSS_RING`]), read from
    /// the device: the one synchronisation of a logging point. `None` when no step ran since.
    pub fn take_mean_loss(&mut self) -> Result<Option<f32>> {
        match self.train.as_mut() {
            Some(plan) => plan.take_mean_loss(),
            None => Ok(None),
        }
    }

    /// Re-draws every weight and bias from the write-up's initialisation: a normal of standard deviation 0.1
    /// truncated at two standard deviations (TensorFlow's `truncated_normal`), from `seed`.
    pub fn init_writeup(&mut self, seed: u64) -> Result<()> {
        let mut rng = SplitMix64(seed);
        let mut normal = || loop {
            // Box–Muller from two 24-bit uniforms in (0, 1]; redraw outside ±2σ.
            let u1 = ((rng.next_u64() >> 40) as f64 + 1.0) / (1u64 << 24) as f64;
            let u2 = (rng.next_u64() >> 40) as f64 / (1u64 << 24) as f64;
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            if z.abs() <= 2.0 {
                return (0.1 * z) as f32;
            }
        };
        let host: Vec<f32> = (0..self.param_count()).map(|_| normal()).collect();
        self.params.set_all(&host)
    }

    /// The optimiser state a resumed run needs: Adam's two moments (flat, in the parameters' order), its step
    /// count and the dropout seed. The data position is the step count (batches are a function of it).
    pub fn train_state(&self) -> Result<TrainState> {
        let (adam_m, adam_v) = self.params.moments()?;
        Ok(TrainState {
            adam_m,
            adam_v,
            step: self.params.step(),
            seed: self.params.seed(),
        })
    }

    /// Restores [`Self::train_state`]: the next steps then equal those of the uninterrupted run, bit for bit.
    pub fn set_train_state(&mut self, state: &TrainState) -> Result<()> {
        self.params
            .set_train_state(&state.adam_m, &state.adam_v, state.step, state.seed)
    }

    /// Forward, loss and backward of a training step without the Adam update: afterwards [`Self::loss`]
    /// and [`Self::grad`] hold the batch's loss and gradients. Dropout uses the mask of the next step.
    pub fn forward_backward(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        self.load_batch(images, Some(labels))?;
        let plan = self.train.as_mut().ok_or_else(no_batch)?;
        plan.forward_backward(&mut self.params)
    }

    /// The mean loss of the last training step (reads one value back from the device).
    pub fn loss(&self) -> Result<f32> {
        self.train.as_ref().ok_or_else(no_step)?.loss()
    }

    /// Logits `[n, 10]` of a batch in evaluation mode (no dropout), by the inference plan of its batch size.
    pub fn logits(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        let n = self.check_batch("logits", images, None)?;
        if self.eval.as_ref().is_none_or(|p| p.batch() != n) {
            self.eval = Some(Plan::inference(
                self.b.clone(),
                &self.def.graph,
                n,
                self.def.logits,
            )?);
        }
        let plan = self.eval.as_mut().ok_or_else(no_step)?;
        plan.set_input("images", images)?;
        plan.forward(&self.params)?;
        plan.output()
    }

    /// Predicted classes of a batch (evaluation mode).
    pub fn predict(&mut self, images: &[f32]) -> Result<Vec<u32>> {
        let logits = self.logits(images)?;
        Ok(logits
            .chunks(CLASSES)
            .map(|row| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(
                        (0, f32::NEG_INFINITY),
                        |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
                    );
                best.0 as u32
            })
            .collect())
    }
}

fn no_step() -> Error {
    Error::Backward {
        reason: "no training step has run".into(),
    }
}

fn no_batch() -> Error {
    Error::Backward {
        reason: "no batch loaded".into(),
    }
}
