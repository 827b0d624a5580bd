//! The MNIST Inception net of the original write-up: two Inception modules, fc 700 + ReLU + dropout, fc 10,
//! trained with softmax cross-entropy and Adam. Parameter names and layouts are those of
//! `reference/inception_mnist.py`; parameters, gradients and both Adam moments each live in one flat buffer
//! (each parameter a range of it), so Adam is one launch over all of them.
//!
//! A training step runs forward, loss, backward and Adam on preallocated buffers (allocated once per batch
//! size); the loss stays in a device buffer until [`InceptionMnist::loss`] reads it.

use std::ops::Range;

use super::inception::{InceptionModule, InceptionWidths, ModuleSaved, ModuleScratch};
use crate::backend::{Backend, BackendHandle};
use crate::shape::{AdamStep, LinearShape};
use crate::tensor::check_alloc;
use crate::{Error, Result};

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

    /// Elements of the activation and gradient buffers of a batch of `n` (workspace of a training step),
    /// `None` on overflow. The config must have passed [`Self::validate`].
    fn workspace_elems(&self, n: usize) -> Option<usize> {
        let c = *self;
        let hw = product(&[n, c.image, c.image])?;
        let module = |c_in: usize, map: usize| -> Option<usize> {
            let c_out = map.checked_mul(4)?;
            // saved (mid3, mid5, pooled) + scratch (g, dpooled, dmid) + output + its gradient
            product(&[
                hw,
                sum(&[
                    c.reduce, c.reduce, c_in, c_out, c_in, c.reduce, c_out, c_out,
                ])?,
            ])
        };
        sum(&[
            hw,
            module(1, c.map1)?,
            module(c.map1.checked_mul(4)?, c.map2)?,
            product(&[n, c.hidden, 5])?,
            product(&[n, CLASSES, 2])?,
            1,
        ])
    }

    /// The two modules and every parameter of the net, in the reference's order, without allocating. Sizes
    /// are not checked here: a config from outside goes through [`Self::validate`] first.
    pub fn param_table(&self) -> (InceptionModule, InceptionModule, Vec<ParamEntry>) {
        let c = *self;
        let m1 = InceptionModule {
            c_in: 1,
            widths: InceptionWidths::uniform(c.map1, c.reduce),
        };
        let m2 = InceptionModule {
            c_in: m1.c_out(),
            widths: InceptionWidths::uniform(c.map2, c.reduce),
        };
        let mut entries = Vec::new();
        let mut at = 0;
        for (prefix, m) in [("inception1", &m1), ("inception2", &m2)] {
            for (name, shape, range) in m.layout().params {
                let fan_in = module_fan_in(name, m);
                entries.push(ParamEntry {
                    name: format!("{prefix}.{name}"),
                    shape,
                    range: at + range.start..at + range.end,
                    fan_in,
                });
            }
            at += m.layout().len();
        }
        let flat = c.image * c.image * m2.c_out();
        for (name, out, inp) in [("fc1", c.hidden, flat), ("fc2", CLASSES, c.hidden)] {
            for (suffix, shape) in [("weight", vec![out, inp]), ("bias", vec![out])] {
                let len: usize = shape.iter().product();
                entries.push(ParamEntry {
                    name: format!("{name}.{suffix}"),
                    shape,
                    range: at..at + len,
                    fan_in: inp,
                });
                at += len;
            }
        }
        (m1, m2, entries)
    }
}

/// One named parameter and where it lives in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// The reference's name, for example `inception1.conv3x3.weight` or `fc1.bias`.
    pub name: String,
    /// PyTorch's shape: conv weight `[out, in, kh, kw]`, linear weight `[out, in]`.
    pub shape: Vec<usize>,
    /// Its elements in the flat buffers.
    pub range: Range<usize>,
    /// Fan-in of its layer (PyTorch's default init draws uniformly in ±1/√fan_in).
    pub fan_in: usize,
}

/// Slots of the on-device loss history behind [`InceptionMnist::take_mean_loss`].
pub const LOSS_RING: usize = 1024;

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

/// Activations and gradients of one batch size.
struct Workspace<B: Backend> {
    n: usize,
    x: B::Buf,
    labels: B::Labels,
    m1_out: B::Buf,
    m1_saved: ModuleSaved<B>,
    m1_scratch: ModuleScratch<B>,
    m2_out: B::Buf,
    m2_saved: ModuleSaved<B>,
    m2_scratch: ModuleScratch<B>,
    h1: B::Buf,
    a1: B::Buf,
    d1: B::Buf,
    logits: B::Buf,
    loss: B::Buf,
    dlogits: B::Buf,
    dd1: B::Buf,
    dh1: B::Buf,
    dm2: B::Buf,
    dm1: B::Buf,
}

/// The MNIST Inception net on backend `B`, with its parameters, gradients and Adam state.
pub struct InceptionMnist<B: Backend> {
    b: std::sync::Arc<B>,
    config: MnistConfig,
    m1: InceptionModule,
    m2: InceptionModule,
    entries: Vec<ParamEntry>,
    params: B::Buf,
    grads: B::Buf,
    adam_m: B::Buf,
    adam_v: B::Buf,
    step: u64,
    seed: u64,
    ws: Option<Workspace<B>>,
    /// Each step's loss, copied on the device into slot `step % LOSS_RING`; read back by `take_mean_loss`.
    losses: B::Buf,
    /// Steps whose loss sits in `losses` since the last `take_mean_loss`.
    pending: usize,
}

impl<B: Backend> std::fmt::Debug for InceptionMnist<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InceptionMnist")
            .field("backend", &self.b.name())
            .field("config", &self.config)
            .field("params", &self.param_count())
            .field("step", &self.step)
            .finish()
    }
}

/// SplitMix64: a fixed, documented stream, so a seed gives the same initial weights in every version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-bound, bound) from 24 random bits.
    fn uniform(&mut self, bound: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * bound
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
        let (m1, m2, entries) = c.param_table();
        let mut rng = SplitMix64(seed);
        let mut host = vec![0.0f32; at];
        for e in &entries {
            let bound = 1.0 / (e.fan_in as f32).sqrt();
            host[e.range.clone()]
                .iter_mut()
                .for_each(|v| *v = rng.uniform(bound));
        }
        let losses = b.alloc_zeros(LOSS_RING)?;
        Ok(InceptionMnist {
            params: b.upload(&host)?,
            grads: b.alloc_zeros(at)?,
            adam_m: b.alloc_zeros(at)?,
            adam_v: b.alloc_zeros(at)?,
            b,
            config: c,
            m1,
            m2,
            entries,
            step: 0,
            seed,
            ws: None,
            losses,
            pending: 0,
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

    /// Every parameter, in the reference's order.
    pub fn params(&self) -> &[ParamEntry] {
        &self.entries
    }

    /// Total number of parameters.
    pub fn param_count(&self) -> usize {
        self.entries.last().map_or(0, |e| e.range.end)
    }

    /// Adam's step count so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    fn entry(&self, name: &str) -> Result<&ParamEntry> {
        self.entries
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::InvalidShape {
                op: "InceptionMnist::param",
                reason: format!("no parameter named {name:?}"),
            })
    }

    /// The values of parameter `name` (copied to the host).
    pub fn param(&self, name: &str) -> Result<Vec<f32>> {
        let r = self.entry(name)?.range.clone();
        self.b.read(&self.b.view(&self.params, r)?)
    }

    /// The gradient of parameter `name` from the last [`Self::forward_backward`] or training step (copied to
    /// the host). A training step does not store fc1's weight gradient (it goes straight into Adam: see
    /// [`Self::train_loaded`]); `grad("fc1.weight")` then still holds the last `forward_backward`'s.
    pub fn grad(&self, name: &str) -> Result<Vec<f32>> {
        let r = self.entry(name)?.range.clone();
        self.b.read(&self.b.view(&self.grads, r)?)
    }

    /// Overwrites parameter `name` (for loading weights; the length must match its shape).
    pub fn set_param(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let e = self.entry(name)?;
        if values.len() != e.range.len() {
            return Err(Error::InvalidShape {
                op: "InceptionMnist::set_param",
                reason: format!(
                    "parameter {name} of shape {:?} takes {} values, got {}",
                    e.shape,
                    e.range.len(),
                    values.len()
                ),
            });
        }
        let r = e.range.clone();
        self.b
            .write(&mut self.b.view_mut(&mut self.params, r)?, values)
    }

    fn image_len(&self) -> usize {
        self.config.image * self.config.image
    }

    fn workspace(&mut self, n: usize) -> Result<()> {
        if self.ws.as_ref().is_some_and(|ws| ws.n == n) {
            return Ok(());
        }
        let elems = self
            .config
            .workspace_elems(n)
            .ok_or_else(|| Error::InvalidShape {
                op: "InceptionMnist::workspace",
                reason: format!(
                    "a batch of {n} has more activations than fit in memory for {:?}",
                    self.config
                ),
            })?;
        // A host-resident backend's `alloc_zeros` aborts on failure; the CUDA driver returns an error.
        if self.b.name() != "cuda" {
            check_alloc(
                "InceptionMnist::workspace",
                &format!("the activations and gradients of a batch of {n}"),
                elems,
            )?;
        }
        self.ws = None; // the old batch size's buffers go before the new ones are allocated
        let (b, hw) = (&*self.b, n * self.image_len());
        let (m1, m2, c) = (&self.m1, &self.m2, &self.config);
        let (_, h, w) = (n, c.image, c.image);
        let z = |len| b.alloc_zeros(len);
        self.ws = Some(Workspace {
            n,
            x: z(hw)?,
            labels: b.upload_labels(&vec![0; n])?,
            m1_out: z(hw * m1.c_out())?,
            m1_saved: m1.alloc_saved(b, n, h, w)?,
            m1_scratch: m1.alloc_scratch(b, n, h, w)?,
            m2_out: z(hw * m2.c_out())?,
            m2_saved: m2.alloc_saved(b, n, h, w)?,
            m2_scratch: m2.alloc_scratch(b, n, h, w)?,
            h1: z(n * c.hidden)?,
            a1: z(n * c.hidden)?,
            d1: z(n * c.hidden)?,
            logits: z(n * CLASSES)?,
            loss: z(1)?,
            dlogits: z(n * CLASSES)?,
            dd1: z(n * c.hidden)?,
            dh1: z(n * c.hidden)?,
            dm2: z(hw * m2.c_out())?,
            dm1: z(hw * m1.c_out())?,
        });
        Ok(())
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

    /// Copies a batch into the device workspace (allocated once per batch size): `images` holds `n` images
    /// of `image × image` pixels in [0, 1], `labels` (when given) their `n` classes. [`Self::train_loaded`] then
    /// trains on it without touching the host. Returns `n`.
    pub fn load_batch(&mut self, images: &[f32], labels: Option<&[u32]>) -> Result<usize> {
        let n = self.check_batch("load_batch", images, labels)?;
        self.workspace(n)?;
        let b = &*self.b;
        let ws = self.ws.as_mut().ok_or_else(missing_workspace)?;
        b.write(&mut b.view_mut(&mut ws.x, 0..images.len())?, images)?;
        if let Some(labels) = labels {
            b.write_labels(&mut ws.labels, labels)?;
        }
        Ok(n)
    }

    /// Forward of the loaded batch through both modules and fc1 + ReLU (+ dropout when `train`) and fc2,
    /// into `ws.logits`.
    fn forward(&mut self, train: bool) -> Result<()> {
        let (b, c) = (&*self.b, self.config);
        let ws = self.ws.as_mut().ok_or_else(missing_workspace)?;
        let n = ws.n;
        let dims = (n, c.image, c.image);
        let all = |buf: &B::Buf| 0..b.len(buf);
        let (m1_base, m2_base) = (0, self.m1.layout().len());
        let r = all(&ws.m1_out);
        self.m1.forward(
            b,
            &mut b.view_mut(&mut ws.m1_out, r)?,
            &mut ws.m1_saved,
            &b.view(&ws.x, all(&ws.x))?,
            (&self.params, m1_base),
            dims,
        )?;
        let r = all(&ws.m2_out);
        self.m2.forward(
            b,
            &mut b.view_mut(&mut ws.m2_out, r)?,
            &mut ws.m2_saved,
            &b.view(&ws.m1_out, all(&ws.m1_out))?,
            (&self.params, m2_base),
            dims,
        )?;
        let fc1 = LinearShape {
            m: n,
            k_in: b.len(&ws.m2_out) / n,
            n_out: c.hidden,
        };
        let fc2 = LinearShape {
            m: n,
            k_in: c.hidden,
            n_out: CLASSES,
        };
        let p = |name: &str| -> Result<B::View<'_>> {
            let e = self
                .entries
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.range.clone())
                .unwrap_or(0..0);
            b.view(&self.params, e)
        };
        let r = all(&ws.h1);
        b.linear_fwd(
            &mut b.view_mut(&mut ws.h1, r.clone())?,
            &b.view(&ws.m2_out, all(&ws.m2_out))?,
            &p("fc1.weight")?,
            &p("fc1.bias")?,
            &fc1,
        )?;
        b.relu_fwd(
            &mut b.view_mut(&mut ws.a1, r.clone())?,
            &b.view(&ws.h1, r.clone())?,
        )?;
        let fc2_in = if train && c.dropout > 0.0 {
            b.dropout_fwd(
                &mut b.view_mut(&mut ws.d1, r.clone())?,
                &b.view(&ws.a1, r.clone())?,
                c.dropout,
                self.seed,
                self.step + 1,
            )?;
            &ws.d1
        } else {
            &ws.a1
        };
        let r2 = all(&ws.logits);
        b.linear_fwd(
            &mut b.view_mut(&mut ws.logits, r2)?,
            &b.view(fc2_in, r)?,
            &p("fc2.weight")?,
            &p("fc2.bias")?,
            &fc2,
        )
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
    /// once the workspace exists). Adam's step count and bias corrections are launch arguments, so a captured
    /// step replays with the values of its capture.
    ///
    /// fc1's weight gradient is not stored: `linear_wgrad_adam` applies it to the weights and Adam's moments
    /// as it is formed (for fc1 that saves writing and reading back 562 MB a step), so after a step
    /// [`Self::grad`] holds every gradient but that one; [`Self::forward_backward`] computes them all.
    ///
    /// The learning rate and step count are checked before anything runs, and the step count advances only
    /// when the whole step succeeded: after an error the next step is the one a fresh attempt would take.
    pub fn train_loaded(&mut self, lr: f64) -> Result<StepStats> {
        let step = self.step.checked_add(1).ok_or_else(|| Error::OutOfRange {
            op: "train_step",
            what: "step count".into(),
            value: self.step.to_string(),
            allowed: "below u64::MAX",
        })?;
        let adam = AdamStep::new(lr, step);
        adam.scalars("train_step")?;
        if self.ws.is_none() {
            return Err(missing_workspace());
        }
        self.forward(true)?;
        self.backward(false)?;
        let b = &*self.b;
        let len = b.len(&self.params);
        let fc1w = self
            .entries
            .iter()
            .find(|e| e.name == "fc1.weight")
            .map_or(0..0, |e| e.range.clone());
        // Adam over the flat buffers around fc1's weight (one launch each side)...
        for r in [0..fc1w.start, fc1w.end..len] {
            b.adam_step(
                &mut b.view_mut(&mut self.params, r.clone())?,
                &mut b.view_mut(&mut self.adam_m, r.clone())?,
                &mut b.view_mut(&mut self.adam_v, r.clone())?,
                &b.view(&self.grads, r)?,
                &adam,
            )?;
        }
        // ...and over fc1's weight with its gradient formed in the update (after fc1's dgrad read the weight).
        let ws = self.ws.as_ref().ok_or_else(missing_workspace)?;
        let n = ws.n;
        let fc1 = LinearShape {
            m: n,
            k_in: b.len(&ws.m2_out) / n.max(1),
            n_out: self.config.hidden,
        };
        let dh1 = if self.config.dropout > 0.0 {
            &ws.dd1
        } else {
            &ws.dh1
        };
        b.linear_wgrad_adam(
            [
                &mut b.view_mut(&mut self.params, fc1w.clone())?,
                &mut b.view_mut(&mut self.adam_m, fc1w.clone())?,
                &mut b.view_mut(&mut self.adam_v, fc1w)?,
            ],
            &b.view(dh1, 0..b.len(dh1))?,
            &b.view(&ws.m2_out, 0..b.len(&ws.m2_out))?,
            &fc1,
            &adam,
        )?;
        // Keep the step's loss on the device for the mean at the next logging point.
        let slot = ((step - 1) % LOSS_RING as u64) as usize;
        b.copy(
            &mut b.view_mut(&mut self.losses, slot..slot + 1)?,
            &b.view(&ws.loss, 0..1)?,
        )?;
        self.pending += 1;
        self.step = step;
        Ok(StepStats { step })
    }

    /// The mean loss of the training steps since the last call (at most the last [`LOSS_RING`]), read from
    /// the device: the one synchronisation of a logging point. `None` when no step ran since.
    pub fn take_mean_loss(&mut self) -> Result<Option<f32>> {
        if self.pending == 0 {
            return Ok(None);
        }
        let n = self.pending.min(LOSS_RING);
        let host = self.b.to_host(&self.losses)?;
        let last = (self.step.saturating_sub(1) % LOSS_RING as u64) as usize;
        let sum: f64 = (0..n)
            .map(|k| host[(last + LOSS_RING - k) % LOSS_RING] as f64)
            .sum();
        self.pending = 0;
        Ok(Some((sum / n as f64) as f32))
    }

    /// The losses of the steps since the last [`Self::take_mean_loss`], oldest first (at most
    /// [`LOSS_RING`]), read from the device: a checkpoint stores them so that the first mean logged after a
    /// resume equals the uninterrupted run's.
    pub fn pending_losses(&self) -> Result<Vec<f32>> {
        let n = self.pending.min(LOSS_RING);
        if n == 0 {
            return Ok(Vec::new());
        }
        let host = self.b.to_host(&self.losses)?;
        let last = (self.step.saturating_sub(1) % LOSS_RING as u64) as usize;
        Ok((0..n)
            .rev()
            .map(|k| host[(last + LOSS_RING - k) % LOSS_RING])
            .collect())
    }

    /// Restores [`Self::pending_losses`] as the losses of the last `losses.len()` steps (after
    /// [`Self::set_train_state`] has set the step count).
    pub fn set_pending_losses(&mut self, losses: &[f32]) -> Result<()> {
        let n = losses.len();
        if n > LOSS_RING || n as u64 > self.step {
            return Err(Error::OutOfRange {
                op: "set_pending_losses",
                what: "pending losses".into(),
                value: format!("{n} at step {}", self.step),
                allowed: "at most the step count and LOSS_RING",
            });
        }
        let mut host = self.b.to_host(&self.losses)?;
        let last = (self.step.saturating_sub(1) % LOSS_RING as u64) as usize;
        for (k, &v) in losses.iter().rev().enumerate() {
            host[(last + LOSS_RING - k) % LOSS_RING] = v;
        }
        self.b
            .write(&mut self.b.view_mut(&mut self.losses, 0..LOSS_RING)?, &host)?;
        self.pending = n;
        Ok(())
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
        let len = host.len();
        self.b
            .write(&mut self.b.view_mut(&mut self.params, 0..len)?, &host)
    }

    /// The optimiser state a resumed run needs: Adam's two moments (flat, in the parameters' order), its step
    /// count and the dropout seed. The data position is the step count (batches are a function of it).
    pub fn train_state(&self) -> Result<TrainState> {
        Ok(TrainState {
            adam_m: self.b.to_host(&self.adam_m)?,
            adam_v: self.b.to_host(&self.adam_v)?,
            step: self.step,
            seed: self.seed,
        })
    }

    /// Restores [`Self::train_state`]: the next steps then equal those of the uninterrupted run, bit for bit.
    pub fn set_train_state(&mut self, state: &TrainState) -> Result<()> {
        let len = self.param_count();
        crate::shape::check_len("set_train_state", "adam_m", len, state.adam_m.len())?;
        crate::shape::check_len("set_train_state", "adam_v", len, state.adam_v.len())?;
        self.b.write(
            &mut self.b.view_mut(&mut self.adam_m, 0..len)?,
            &state.adam_m,
        )?;
        self.b.write(
            &mut self.b.view_mut(&mut self.adam_v, 0..len)?,
            &state.adam_v,
        )?;
        self.step = state.step;
        self.seed = state.seed;
        Ok(())
    }

    /// Forward, loss and backward of a training step without the Adam update: afterwards [`Self::loss`]
    /// and [`Self::grad`] hold the batch's loss and gradients. Dropout uses the mask of the next step.
    pub fn forward_backward(&mut self, images: &[f32], labels: &[u32]) -> Result<()> {
        self.load_batch(images, Some(labels))?;
        self.forward(true)?;
        self.backward(true)
    }

    /// Loss and backward of the loaded batch after [`Self::forward`] with `train`; fc1's weight gradient
    /// only with `fc1_wgrad` (a training step fuses it into Adam instead).
    fn backward(&mut self, fc1_wgrad: bool) -> Result<()> {
        let (b, c) = (&*self.b, self.config);
        let ws = self.ws.as_mut().ok_or_else(missing_workspace)?;
        let n = ws.n;
        let dims = (n, c.image, c.image);
        let all = |buf: &B::Buf| 0..b.len(buf);
        let (rl, rd) = (all(&ws.loss), all(&ws.dlogits));
        b.softmax_xent(
            &mut b.view_mut(&mut ws.loss, rl)?,
            &mut b.view_mut(&mut ws.dlogits, rd.clone())?,
            &b.view(&ws.logits, rd.clone())?,
            &ws.labels,
            CLASSES,
        )?;
        let range = |name: &str| {
            self.entries
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.range.clone())
                .unwrap_or(0..0)
        };
        let fc1 = LinearShape {
            m: n,
            k_in: b.len(&ws.m2_out) / n,
            n_out: c.hidden,
        };
        let fc2 = LinearShape {
            m: n,
            k_in: c.hidden,
            n_out: CLASSES,
        };
        let dropped = c.dropout > 0.0;
        let rh = all(&ws.h1);
        // fc2
        let dlogits = b.view(&ws.dlogits, rd)?;
        let fc2_in = if dropped { &ws.d1 } else { &ws.a1 };
        b.linear_wgrad(
            &mut b.view_mut(&mut self.grads, range("fc2.weight"))?,
            &dlogits,
            &b.view(fc2_in, rh.clone())?,
            &fc2,
        )?;
        b.linear_bgrad(
            &mut b.view_mut(&mut self.grads, range("fc2.bias"))?,
            &dlogits,
            &fc2,
        )?;
        b.linear_dgrad(
            &mut b.view_mut(&mut ws.dd1, rh.clone())?,
            &dlogits,
            &b.view(&self.params, range("fc2.weight"))?,
            &fc2,
        )?;
        // Through dropout (into dh1) and ReLU (back into dd1); without dropout, ReLU alone into dh1.
        if dropped {
            b.dropout_bwd(
                &mut b.view_mut(&mut ws.dh1, rh.clone())?,
                &b.view(&ws.dd1, rh.clone())?,
                c.dropout,
                self.seed,
                self.step + 1,
            )?;
            b.relu_bwd(
                &mut b.view_mut(&mut ws.dd1, rh.clone())?,
                &b.view(&ws.dh1, rh.clone())?,
                &b.view(&ws.a1, rh.clone())?,
            )?;
        } else {
            b.relu_bwd(
                &mut b.view_mut(&mut ws.dh1, rh.clone())?,
                &b.view(&ws.dd1, rh.clone())?,
                &b.view(&ws.a1, rh.clone())?,
            )?;
        }
        let dh1 = if dropped { &ws.dd1 } else { &ws.dh1 };
        let dh1 = b.view(dh1, rh)?;
        // fc1
        let m2_out = b.view(&ws.m2_out, all(&ws.m2_out))?;
        if fc1_wgrad {
            b.linear_wgrad(
                &mut b.view_mut(&mut self.grads, range("fc1.weight"))?,
                &dh1,
                &m2_out,
                &fc1,
            )?;
        }
        b.linear_bgrad(
            &mut b.view_mut(&mut self.grads, range("fc1.bias"))?,
            &dh1,
            &fc1,
        )?;
        let rm2 = all(&ws.dm2);
        b.linear_dgrad(
            &mut b.view_mut(&mut ws.dm2, rm2.clone())?,
            &dh1,
            &b.view(&self.params, range("fc1.weight"))?,
            &fc1,
        )?;
        // The modules, last first.
        let (m1_base, m2_base) = (0, self.m1.layout().len());
        let rm1 = all(&ws.dm1);
        let m1_out = b.view(&ws.m1_out, rm1.clone())?;
        self.m2.backward(
            b,
            Some(&mut b.view_mut(&mut ws.dm1, rm1.clone())?),
            (&mut self.grads, m2_base),
            &mut ws.m2_scratch,
            &b.view(&ws.dm2, rm2)?,
            &m2_out,
            &m1_out,
            &ws.m2_saved,
            &self.params,
            dims,
        )?;
        self.m1.backward(
            b,
            None,
            (&mut self.grads, m1_base),
            &mut ws.m1_scratch,
            &b.view(&ws.dm1, rm1)?,
            &m1_out,
            &b.view(&ws.x, all(&ws.x))?,
            &ws.m1_saved,
            &self.params,
            dims,
        )
    }

    /// The mean loss of the last training step (reads one value back from the device).
    pub fn loss(&self) -> Result<f32> {
        let ws = self.ws.as_ref().ok_or_else(|| Error::Backward {
            reason: "no training step has run".into(),
        })?;
        Ok(self.b.to_host(&ws.loss)?[0])
    }

    /// Logits `[n, 10]` of a batch in evaluation mode (no dropout).
    pub fn logits(&mut self, images: &[f32]) -> Result<Vec<f32>> {
        self.load_batch(images, None)?;
        self.forward(false)?;
        let ws = self.ws.as_ref().ok_or_else(|| Error::Backward {
            reason: "workspace missing".into(),
        })?;
        self.b.to_host(&ws.logits)
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
        for (what, buf) in [
            ("parameter", &self.params),
            ("Adam first moment of", &self.adam_m),
            ("Adam second moment of", &self.adam_v),
        ] {
            let host = self.b.to_host(buf)?;
            if let Some(i) = host.iter().position(|v| !v.is_finite()) {
                let e = self.entries.iter().find(|e| e.range.contains(&i));
                let name = e.map_or("?".to_string(), |e| {
                    format!("{}[{}]", e.name, i - e.range.start)
                });
                return Err(Error::NonFinite {
                    op: "check_finite",
                    what: format!("{what} {name} at step {}", self.step),
                    value: host[i],
                });
            }
        }
        Ok(())
    }
}

/// Fan-in of the layer owning module parameter `name` (its weight's `in·k·k`).
fn module_fan_in(name: &str, m: &InceptionModule) -> usize {
    let w = &m.widths;
    let layer = name.split('.').next().unwrap_or("");
    match layer {
        "conv3x3" => w.c3x3_reduce * 9,
        "conv5x5" => w.c5x5_reduce * 25,
        _ => m.c_in, // the 1×1 convs: branch1x1, reduce3x3, reduce5x5, pool_proj
    }
}

fn missing_workspace() -> Error {
    Error::Backward {
        reason: "no batch loaded".into(),
    }
}
