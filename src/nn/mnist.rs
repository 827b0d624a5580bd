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
use crate::data::{Dataset, DeviceDataset};
use crate::graph::{FuseWgradAdam, Params, Plan, Precision, SplitMix64, TrainOptions};
use crate::tensor::check_alloc;
use crate::{Error, Result};

pub use crate::graph::{ParamEntry, LOSS_RING};

/// Classes of MNIST.
pub const CLASSES: usize = 10;

/// Inference plans [`InceptionMnist`] keeps, by batch size: an evaluation whose batch does not divide its
/// image count uses two (the full batches' and the last one's), and neither is planned again for the next.
const EVAL_PLANS: usize = 2;

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

/// `a · b · …` or `None` on overflow.
fn product(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// `a + b + …` or `None` on overflow.
fn sum(terms: &[usize]) -> Option<usize> {
    terms.iter().try_fold(0usize, |n, &d| n.checked_add(d))
}

/// Parameters of an Inception module of uniform widths `map` and `reduce` on `c` input channels, checked.
fn module_param_count(c: usize, map: usize, reduce: usize) -> Option<usize> {
    sum(&[
        product(&[map, c])?,
        map,
        product(&[reduce, c])?,
        reduce,
        product(&[map, reduce, 9])?,
        map,
        product(&[reduce, c])?,
        reduce,
        product(&[map, reduce, 25])?,
        map,
        product(&[map, c])?,
        map,
    ])
}

impl MnistConfig {
    /// The write-up's net shrunk to 6 × 6 images (map widths 2 and 3, reduce 2, hidden 6, dropout 0.5): every
    /// layer and launch of the full net at a size that runs in milliseconds, for tests and quick checks.
    pub const fn tiny() -> Self {
        MnistConfig {
            map1: 2,
            map2: 3,
            reduce: 2,
            hidden: 6,
            dropout: 0.5,
            image: 6,
        }
    }

    /// Checks the config before anything is sized from it (as [`InceptionMnist::new`] and
    /// [`InceptionMnist::load`] do): every width at least 1, dropout finite in [0, 1), and every size, up to
    /// the total parameter count it returns, within `usize`.
    pub fn validate(&self, op: &'static str) -> Result<usize> {
        let c = *self;
        if [c.map1, c.map2, c.reduce, c.hidden, c.image].contains(&0) {
            return Err(Error::InvalidShape {
                op,
                reason: format!("zero width in {c:?}"),
            });
        }
        if !(c.dropout.is_finite() && (0.0..1.0).contains(&c.dropout)) {
            return Err(Error::OutOfRange {
                op,
                what: "dropout".into(),
                value: c.dropout.to_string(),
                allowed: "0 <= dropout < 1",
            });
        }
        let count = (|| {
            let c2_in = c.map1.checked_mul(4)?;
            let flat = product(&[c.image, c.image, c.map2, 4])?;
            sum(&[
                module_param_count(1, c.map1, c.reduce)?,
                module_param_count(c2_in, c.map2, c.reduce)?,
                product(&[c.hidden, flat])?,
                c.hidden,
                product(&[CLASSES, c.hidden])?,
                CLASSES,
            ])
        })();
        count.ok_or_else(|| Error::InvalidShape {
            op,
            reason: format!("{c:?} has more parameters than fit in memory"),
        })
    }

    /// The two modules.
    pub fn modules(&self) -> (InceptionModule, InceptionModule) {
        let m1 = InceptionModule::new(1, InceptionWidths::uniform(self.map1, self.reduce));
        let m2 = InceptionModule::new(m1.c_out(), InceptionWidths::uniform(self.map2, self.reduce));
        (m1, m2)
    }

    /// The two modules and every parameter of the net, in the reference's order (the graph's table;
    /// empty for a configuration with a zero width, which [`Self::graph`] rejects). Sizes are not checked
    /// here: a config from outside goes through [`Self::validate`] first.
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
    /// Inference plans of the last [`EVAL_PLANS`] evaluation batch sizes used, least recently used first, all
    /// in `precision`.
    eval: Vec<Plan<B>>,
    /// Losses restored by [`InceptionMnist::set_pending_losses`] before a training plan existed.
    restored_losses: Vec<f32>,
    /// Whether gathered training steps are captured as a graph and replayed (where the backend can).
    capture: bool,
    /// The arithmetic of the products (convolutions, linear layers) in training and evaluation.
    precision: Precision,
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
        const OP: &str = "InceptionMnist::new";
        let b = b.into_backend();
        let c = config;
        let at = c.validate(OP)?;
        // The initial values are drawn on the host; a host-resident backend (the CPU twins, the emulator)
        // also holds the parameters, gradients and both moments there.
        check_alloc(OP, &format!("the {at} parameters of {c:?}"), at)?;
        if b.name() != "cuda" {
            check_alloc(
                OP,
                &format!("parameters, gradients and Adam's moments of {c:?}"),
                at.saturating_mul(4),
            )?;
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
            eval: Vec::new(),
            restored_losses: Vec::new(),
            capture: true,
            precision: Precision::Fp32,
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
            // Checked here, before the upload, for every backend (the CUDA loss kernel cannot report it).
            if let Some(i) = labels.iter().position(|&l| l as usize >= CLASSES) {
                return Err(Error::OutOfRange {
                    op,
                    what: format!("label of image {i}"),
                    value: labels[i].to_string(),
                    allowed: "0 <= label < 10",
                });
            }
        }
        if let Some(i) = images.iter().position(|v| !v.is_finite()) {
            return Err(Error::NonFinite {
                op,
                what: format!("pixel {} of image {}", i % px, i / px),
                value: images[i],
            });
        }
        Ok(n)
    }

    /// The arithmetic of the products, convolutions and linear layers, in training and evaluation (fp32
    /// unless [`Self::set_precision`] chose another).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Trains in `precision` from the next batch on: [`Precision::Tf32`] runs the products of the
    /// convolutions (plain and fused reduce convs, forward and backward) and of the linear layers (fc1, fc2)
    /// on the tensor cores with TF32 operands, f32 accumulation; evaluation ([`Self::logits`],
    /// [`Self::accuracy`]) runs in the same precision. The losses not yet read by [`Self::take_mean_loss`] are
    /// kept.
    pub fn set_precision(&mut self, precision: Precision) -> Result<()> {
        if precision != self.precision {
            if let Some(plan) = self.train.take() {
                // re-planned at the next batch
                self.restored_losses = plan.pending_losses()?;
            }
            self.precision = precision;
        }
        Ok(())
    }

    /// The training plan for batches of `n` (planned on first use of that size).
    fn train_plan(&mut self, n: usize) -> Result<&mut Plan<B>> {
        if self.train.as_ref().is_none_or(|p| p.batch() != n) {
            // fc1's weight (99.94 % of the parameters) gets the fused update; fc2's 7,000 weights keep the
            // stored gradient and `adam_step`, as the hand-scheduled step had it (the fused CPU twin sums
            // the gradient in another order, so fusing fc2 too would change the step's bits).
            let opts = TrainOptions {
                fuse_wgrad_adam: FuseWgradAdam::Named(vec!["fc1.weight".into()]),
                precision: self.precision,
                ..TrainOptions::default()
            };
            self.train = None; // the old batch size's buffers go before the new ones are allocated
            let mut plan = Plan::train_with(self.b.clone(), &self.def.graph, n, &opts)?;
            if !self.restored_losses.is_empty() {
                plan.set_pending_losses(&self.restored_losses, self.params.step())?;
                self.restored_losses.clear();
            }
            plan.set_capture(self.capture);
            self.train = Some(plan);
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

    /// A data set uploaded to this net's backend for the whole run (see [`Dataset::to_device`]): training
    /// steps gather their batches from it on the device ([`Self::train_gathered`]), evaluations theirs
    /// ([`Self::accuracy_on`]). Its images must be of this net's size.
    pub fn to_device(&self, data: &Dataset) -> Result<DeviceDataset<B>> {
        let px = self.image_len();
        if data.pixels() != px {
            return Err(Error::InvalidShape {
                op: "InceptionMnist::to_device",
                reason: format!(
                    "images of {}×{}, the net takes {}×{}",
                    data.rows, data.cols, self.config.image, self.config.image
                ),
            });
        }
        data.to_device(&*self.b)
    }

    /// Prepares Adam's table for the steps up to `steps` at learning rate `lr` (one upload; see
    /// [`Params::reserve_steps`]): a run calls it once before its first step, so no later step rebuilds
    /// it (a rebuild costs a graph capture on a GPU).
    pub fn reserve_steps(&mut self, lr: f64, steps: u64) -> Result<()> {
        self.params.reserve_steps(lr, steps)
    }

    /// One training step of `batch` images gathered on the device from `data`: the write-up's batch of the
    /// step (images `(s · batch) mod (len − batch)` onwards after `s` steps, as [`Dataset::batch`]), then
    /// forward, loss, backward and Adam with learning rate `lr`. Nothing is copied from the host; on a GPU
    /// the step is captured once as a CUDA graph and replayed (see [`Plan::step_gathered`]). The same bits
    /// as [`Self::train_step`] on the host's batch of the step.
    pub fn train_gathered(
        &mut self,
        data: &DeviceDataset<B>,
        batch: usize,
        lr: f64,
    ) -> Result<StepStats> {
        const OP: &str = "train_gathered";
        if batch == 0 || batch > data.len() {
            return Err(Error::OutOfRange {
                op: OP,
                what: "batch".into(),
                value: batch.to_string(),
                allowed: "1 <= batch <= images in the data set",
            });
        }
        self.train_plan(batch)?;
        let plan = self.train.as_mut().ok_or_else(no_batch)?;
        plan.step_gathered(&mut self.params, data, "images", lr)?;
        Ok(StepStats {
            step: self.params.step(),
        })
    }

    /// Whether [`Self::train_gathered`] captures its step as a graph and replays it, where the backend can
    /// (on by default; a replayed run equals an uncaptured one bit for bit).
    pub fn set_capture(&mut self, on: bool) {
        self.capture = on;
        if let Some(plan) = self.train.as_mut() {
            plan.set_capture(on);
        }
    }

    /// Training steps of the current training plan run by replaying a captured graph.
    pub fn replays(&self) -> u64 {
        self.train.as_ref().map_or(0, Plan::replays)
    }

    /// Seconds the current training plan spent recording its step as a graph.
    pub fn capture_seconds(&self) -> f64 {
        self.train.as_ref().map_or(0.0, Plan::capture_seconds)
    }

    /// Graphs of the step the current training plan recorded (see [`Plan::captures`]).
    pub fn captures(&self) -> u64 {
        self.train.as_ref().map_or(0, Plan::captures)
    }

    /// The mean loss of the training steps since the last call (at most the last [`LOSS_RING`]), read from
    /// the device: the one synchronisation of a logging point. `None` when no step ran since.
    pub fn take_mean_loss(&mut self) -> Result<Option<f32>> {
        match self.train.as_mut() {
            Some(plan) => plan.take_mean_loss(),
            None => Ok(None),
        }
    }

    /// The losses of the steps since the last [`Self::take_mean_loss`], oldest first (at most
    /// [`LOSS_RING`]), read from the device: a checkpoint stores them so that the first mean logged after a
    /// resume equals the uninterrupted run's.
    pub fn pending_losses(&self) -> Result<Vec<f32>> {
        match self.train.as_ref() {
            Some(plan) => plan.pending_losses(),
            None => Ok(self.restored_losses.clone()),
        }
    }

    /// Restores [`Self::pending_losses`] as the losses of the last `losses.len()` steps (after
    /// [`Self::set_train_state`] has set the step count).
    pub fn set_pending_losses(&mut self, losses: &[f32]) -> Result<()> {
        let step = self.params.step();
        if losses.len() > LOSS_RING || losses.len() as u64 > step {
            return Err(Error::OutOfRange {
                op: "set_pending_losses",
                what: "pending losses".into(),
                value: format!("{} at step {step}", losses.len()),
                allowed: "at most the step count and LOSS_RING",
            });
        }
        match self.train.as_mut() {
            Some(plan) => plan.set_pending_losses(losses, step),
            None => {
                self.restored_losses = losses.to_vec();
                Ok(())
            }
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
        let plan = self.plan_eval(n)?;
        let plan = &mut self.eval[plan];
        plan.set_input("images", images)?;
        plan.forward(&self.params)?;
        plan.output()
    }

    /// The index in `self.eval` of the inference plan for batches of `n` in the net's precision, planned on
    /// first use of that size; the plan used last is kept last, and the one used longest ago goes first when
    /// [`EVAL_PLANS`] are kept (plans of another precision are dropped).
    fn plan_eval(&mut self, n: usize) -> Result<usize> {
        let precision = self.precision;
        self.eval.retain(|p| p.precision() == precision);
        if let Some(i) = self.eval.iter().position(|p| p.batch() == n) {
            let plan = self.eval.remove(i);
            self.eval.push(plan);
            return Ok(self.eval.len() - 1);
        }
        if self.eval.len() >= EVAL_PLANS {
            self.eval.remove(0); // its buffers go before the new plan's are allocated
        }
        let (g, logits) = (&self.def.graph, self.def.logits);
        let plan = Plan::inference_with(self.b.clone(), g, n, logits, precision)?;
        self.eval.push(plan);
        Ok(self.eval.len() - 1)
    }

    /// Prepares evaluations of `images` images in batches of at most `batch` (as [`Self::accuracy`] and
    /// [`Self::accuracy_on`] run them): plans their inference plans (the full batches' and, when `batch` does
    /// not divide `images`, the last one's) and runs each forward once, so that everything an evaluation
    /// needs on the device exists — its own workspace, and the backend's working memory grown to its
    /// largest use (the linear layers' split-K partials grow with the batch: about 0.55 GB for fc1 at a
    /// batch of 1,000). A run calls it once before its first training step, as [`Self::reserve_steps`]: the
    /// evaluations then plan nothing and grow no working memory, and a captured training step stays current
    /// (on a GPU, growing the backend's working memory later costs the step a second capture). The
    /// parameters, Adam's state and the step count are untouched.
    pub fn reserve_eval(&mut self, images: usize, batch: usize) -> Result<()> {
        let batch = batch.max(1);
        let mut sizes = vec![batch.min(images)];
        if images > batch && images % batch != 0 {
            sizes.push(images % batch);
        }
        for n in sizes.into_iter().filter(|&n| n > 0) {
            let plan = self.plan_eval(n)?;
            self.eval[plan].forward(&self.params)?;
        }
        Ok(())
    }

    /// The accuracy (%) on `images` (`n × image²` pixels) with their `labels`, in evaluation mode, in batches
    /// of at most `batch`: the correct predictions are counted on the device and read once at the end (the
    /// logits never leave it). A diverged model (NaN logits) is an error naming how many images had them.
    pub fn accuracy(&mut self, images: &[f32], labels: &[u32], batch: usize) -> Result<f64> {
        const OP: &str = "accuracy";
        let n = self.check_batch(OP, images, Some(labels))?;
        let (px, batch) = (self.image_len(), batch.max(1));
        let mut count = self.b.alloc_zeros(2)?;
        for start in (0..n).step_by(batch) {
            let end = (start + batch).min(n);
            let plan = self.plan_eval(end - start)?;
            let plan = &mut self.eval[plan];
            plan.set_input("images", &images[start * px..end * px])?;
            plan.forward(&self.params)?;
            let mut counts = self.b.view_mut(&mut count, 0..2)?;
            plan.count_correct(&mut counts, &labels[start..end], start > 0)?;
        }
        self.percent_correct(OP, &count, n)
    }

    /// The accuracy (%) on the first `n` images of the resident data set `data`, in evaluation mode, in
    /// batches of at most `batch` (an inference plan of that size, its own workspace): each batch is gathered
    /// on the device, and the correct predictions are counted there and read once at the end. A diverged
    /// model (NaN logits) is an error naming how many images had them.
    pub fn accuracy_on(&mut self, data: &DeviceDataset<B>, n: usize, batch: usize) -> Result<f64> {
        const OP: &str = "accuracy";
        if n == 0 || n > data.len() {
            return Err(Error::OutOfRange {
                op: OP,
                what: "images to evaluate".into(),
                value: n.to_string(),
                allowed: "1 to the images of the data set",
            });
        }
        let batch = batch.max(1);
        let mut count = self.b.alloc_zeros(2)?;
        for start in (0..n).step_by(batch) {
            let end = (start + batch).min(n);
            let plan = self.plan_eval(end - start)?;
            let plan = &mut self.eval[plan];
            plan.gather("images", data, start)?;
            plan.forward(&self.params)?;
            let mut counts = self.b.view_mut(&mut count, 0..2)?;
            plan.count_correct_loaded(&mut counts, start > 0)?;
        }
        self.percent_correct(OP, &count, n)
    }

    /// The accuracy (%) from `count [2]` (correct predictions, images with NaN logits) over `n` images, read
    /// once; any NaN logits are an error naming how many images had them.
    fn percent_correct(&self, op: &'static str, count: &B::Buf, n: usize) -> Result<f64> {
        let count = self.b.to_host(count)?;
        if count[1] > 0.0 {
            return Err(Error::NonFinite {
                op,
                what: format!(
                    "the logits of {} of {n} images (the model's parameters are not finite?)",
                    count[1]
                ),
                value: f32::NAN,
            });
        }
        Ok(100.0 * f64::from(count[0]) / n as f64)
    }

    /// Predicted classes of a batch (evaluation mode): the first largest logit of each image. A NaN logit
    /// (a diverged model) is an error naming the image, not a class.
    pub fn predict(&mut self, images: &[f32]) -> Result<Vec<u32>> {
        let logits = self.logits(images)?;
        if let Some(i) = logits.iter().position(|v| v.is_nan()) {
            return Err(Error::NonFinite {
                op: "predict",
                what: format!(
                    "logit {} of image {} (the model's parameters are not finite?)",
                    i % CLASSES,
                    i / CLASSES
                ),
                value: logits[i],
            });
        }
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

    /// The first non-finite value among the parameters and Adam's moments, as an error naming the buffer,
    /// the parameter and the index (copies them to the host); `Ok` when all are finite. Run before a
    /// checkpoint so a diverged model is never saved.
    pub fn check_finite(&self) -> Result<()> {
        self.check_finite_host(&self.host_state()?)
    }

    /// The parameters and Adam's two moments, flat, copied to the host (one read each).
    pub(crate) fn host_state(&self) -> Result<[Vec<f32>; 3]> {
        let (adam_m, adam_v) = self.params.moments()?;
        Ok([self.host_values()?, adam_m, adam_v])
    }

    /// The parameters, flat in the reference's order, copied to the host.
    pub(crate) fn host_values(&self) -> Result<Vec<f32>> {
        self.params.values()
    }

    /// The seed of the dropout masks.
    pub(crate) fn seed(&self) -> u64 {
        self.params.seed()
    }

    /// [`Self::check_finite`] on a [`Self::host_state`] already read.
    pub(crate) fn check_finite_host(&self, state: &[Vec<f32>; 3]) -> Result<()> {
        check_finite_state(self.params(), self.step(), state)
    }

    /// The parameters and Adam's two moments copied to host memory in stream order, not waited for.
    pub(crate) fn download_state(&self) -> Result<[crate::backend::Download; 3]> {
        self.params.download_state()
    }
}

/// The first non-finite value of `state` (parameters, Adam's first and second moments, flat in the order of
/// `entries`) as an error naming the buffer, the parameter, the index and `step`.
pub(crate) fn check_finite_state(
    entries: &[ParamEntry],
    step: u64,
    state: &[Vec<f32>; 3],
) -> Result<()> {
    let whats = ["parameter", "Adam first moment of", "Adam second moment of"];
    for (what, host) in whats.into_iter().zip(state) {
        if let Some(i) = host.iter().position(|v| !v.is_finite()) {
            let e = entries.iter().find(|e| e.range.contains(&i));
            let name = e.map_or("?".to_string(), |e| {
                format!("{}[{}]", e.name, i - e.range.start)
            });
            return Err(Error::NonFinite {
                op: "check_finite",
                what: format!("{what} {name} at step {step}"),
                value: host[i],
            });
        }
    }
    Ok(())
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
