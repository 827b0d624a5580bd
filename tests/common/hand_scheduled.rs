//! The MNIST net's training step as it was scheduled by hand before the graph (`src/nn/mnist.rs` of main at
//! faf535b, with the module's forward and backward of `nn::InceptionModule`): the reference the graph's
//! step is held equal to, bit for bit, in `tests/graph.rs`.
#![allow(dead_code)]

use inception_cuda::backend::{Backend, BackendHandle};
use inception_cuda::nn::{
    InceptionModule, MnistConfig, ModuleSaved, ModuleScratch, ParamEntry, StepStats, TrainState,
    LOSS_RING,
};
use inception_cuda::shape::{AdamStep, LinearShape};
use inception_cuda::{Error, Result};

const CLASSES: usize = 10;

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
pub struct HandScheduledMnist<B: Backend> {
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

impl<B: Backend> std::fmt::Debug for HandScheduledMnist<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandScheduledMnist")
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

impl<B: Backend> HandScheduledMnist<B> {
    /// A net on backend `b` with PyTorch's default initialisation (every weight and bias uniform in
    /// ±1/√fan_in), drawn from `seed`; `seed` also drives the dropout masks.
    ///
    /// `b` is the backend by value (`CpuBackend`, `EmuBackend`) or shared (`CudaDevice::backend_arc()`).
    pub fn new(b: impl BackendHandle<Backend = B>, config: MnistConfig, seed: u64) -> Result<Self> {
        let b = b.into_backend();
        let c = config;
        if [c.map1, c.map2, c.reduce, c.hidden, c.image].contains(&0) {
            return Err(Error::InvalidShape {
                op: "HandScheduledMnist::new",
                reason: format!("zero width in {c:?}"),
            });
        }
        let (m1, m2, entries) = c.param_table();
        let at = entries.last().map_or(0, |e| e.range.end);
        let mut rng = SplitMix64(seed);
        let mut host = vec![0.0f32; at];
        for e in &entries {
            let bound = 1.0 / (e.fan_in as f32).sqrt();
            host[e.range.clone()]
                .iter_mut()
                .for_each(|v| *v = rng.uniform(bound));
        }
        let losses = b.alloc_zeros(LOSS_RING)?;
        Ok(HandScheduledMnist {
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
                op: "HandScheduledMnist::param",
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
        let r = self.entry(name)?.range.clone();
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
            if labels.len() != n {
                return Err(Error::BufferLength {
                    op,
                    what: "labels",
                    expected: n,
                    len: labels.len(),
                });
            }
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
        let fc1 = LinearShape::new(n, b.len(&ws.m2_out) / n, c.hidden);
        let fc2 = LinearShape::new(n, c.hidden, CLASSES);
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
    pub fn train_loaded(&mut self, lr: f64) -> Result<StepStats> {
        self.forward(true)?;
        self.backward(false)?;
        self.step += 1;
        let adam = AdamStep::new(lr, self.step);
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
        let fc1 = LinearShape::new(n, b.len(&ws.m2_out) / n.max(1), self.config.hidden);
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
        let slot = (self.step as usize - 1) % LOSS_RING;
        b.copy(
            &mut b.view_mut(&mut self.losses, slot..slot + 1)?,
            &b.view(&ws.loss, 0..1)?,
        )?;
        self.pending += 1;
        Ok(StepStats { step: self.step })
    }

    /// The mean loss of the training steps since the last call (at most the last [`LOSS_RING`]), read from
    /// the device: the one synchronisation of a logging point. `None` when no step ran since.
    pub fn take_mean_loss(&mut self) -> Result<Option<f32>> {
        if self.pending == 0 {
            return Ok(None);
        }
        let n = self.pending.min(LOSS_RING);
        let host = self.b.to_host(&self.losses)?;
        let last = (self.step as usize - 1) % LOSS_RING;
        let sum: f64 = (0..n)
            .map(|k| host[(last + LOSS_RING - k) % LOSS_RING] as f64)
            .sum();
        self.pending = 0;
        Ok(Some((sum / n as f64) as f32))
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
        let fc1 = LinearShape::new(n, b.len(&ws.m2_out) / n, c.hidden);
        let fc2 = LinearShape::new(n, c.hidden, CLASSES);
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

fn missing_workspace() -> Error {
    Error::Backward {
        reason: "no batch loaded".into(),
    }
}
