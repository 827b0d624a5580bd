//! A graph's parameters on a backend: values, gradients and both Adam moments, each one flat buffer in
//! declaration order (each parameter a range of it), looked up by name; plus Adam's step count (on the host
//! and as the device step counter), the Adam table of the run and the dropout seed.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::builder::Graph;
use crate::backend::{Backend, BackendHandle};
use crate::shape::{AdamStep, ADAM_ROW};
use crate::{Error, Result};

/// A fresh identity for an object whose device addresses a captured step holds (parameters, data sets).
pub(crate) fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// Rows an Adam table gets at least when a step outgrows it (1,024 steps: 24 KiB).
const MIN_TABLE_ROWS: usize = 1024;

/// The Adam table of a run on the device ([`AdamStep::table`] at one learning rate): the Adam kernels of a
/// training step read row `counter[0]` of it.
pub(crate) struct AdamTable<B: Backend> {
    pub(crate) buf: B::Buf,
    pub(crate) lr: f64,
    pub(crate) rows: usize,
}

/// One named parameter and where it lives in the flat buffers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamEntry {
    /// The name given to [`Graph::param`], for example `inception1.conv3x3.weight` or `fc1.bias`.
    pub name: String,
    /// Its shape: conv weight `[out, in, kh, kw]`, linear weight `[out, in]`.
    pub shape: Vec<usize>,
    /// Its elements in the flat buffers.
    pub range: Range<usize>,
    /// Fan-in of its layer for [`super::Init::FanIn`] (PyTorch's default draws uniformly in ±1/√fan_in),
    /// else 0.
    pub fan_in: usize,
}

/// The parameter table of a graph: names, shapes and ranges in declaration order, without allocating.
pub fn param_table(g: &Graph) -> Vec<ParamEntry> {
    let mut at = 0;
    g.params
        .iter()
        .map(|d| {
            let len: usize = d.shape.iter().product();
            at += len;
            ParamEntry {
                name: d.name.clone(),
                shape: d.shape.clone(),
                range: at - len..at,
                fan_in: d.init.fan_in(),
            }
        })
        .collect()
}

/// SplitMix64: a fixed, documented stream, so a seed gives the same initial weights in every version.
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [-bound, bound) from 24 random bits.
    pub(crate) fn uniform(&mut self, bound: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (2.0 * u - 1.0) * bound
    }
}

/// Parameters, gradients and Adam moments of a graph on backend `B`, shared by its plans (a training plan
/// and an inference plan of other batch sizes read and update the same values).
///
/// ```
/// use inception_cuda::cpu::CpuBackend;
/// use inception_cuda::graph::{Graph, Params};
/// # fn main() -> inception_cuda::Result<()> {
/// let mut g = Graph::new();
/// let (w, b) = g.linear_params("fc", 3, 2)?;
/// let params = Params::new(CpuBackend, &g, 7)?;
/// assert_eq!(params.get("fc.weight")?.len(), 6);
/// assert!(params.get("fc.missing").is_err());
/// # let _ = (w, b);
/// # Ok(())
/// # }
/// ```
pub struct Params<B: Backend> {
    pub(crate) b: Arc<B>,
    pub(crate) table: Vec<ParamEntry>,
    pub(crate) values: B::Buf,
    pub(crate) grads: B::Buf,
    pub(crate) adam_m: B::Buf,
    pub(crate) adam_v: B::Buf,
    /// Adam's step count (training steps taken).
    pub(crate) step: u64,
    /// The device step counter `[1]`: `step` in device memory (32 bits), advanced by the device at the end
    /// of every training step (`step_end`), read by the step's gather, dropout and Adam launches.
    pub(crate) counter: B::Labels,
    /// The Adam table of the steps so far planned, if any.
    pub(crate) adam_table: Option<AdamTable<B>>,
    /// Bumped whenever the table is rebuilt (a new buffer): a captured step holds the old one's address.
    pub(crate) table_version: u64,
    /// This object's identity (see [`next_id`]).
    pub(crate) id: u64,
    /// The seed of the dropout masks.
    pub(crate) seed: u64,
}

impl<B: Backend> std::fmt::Debug for Params<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("backend", &self.b.name())
            .field("params", &self.len())
            .field("step", &self.step)
            .finish()
    }
}

impl<B: Backend> Params<B> {
    /// The parameters of `g` on backend `b`, drawn by each one's [`super::Init`] from one SplitMix64 stream
    /// seeded with `seed`, in declaration order; `seed` also drives the dropout masks. Gradients and moments
    /// start at zero.
    pub fn new(b: impl BackendHandle<Backend = B>, g: &Graph, seed: u64) -> Result<Self> {
        let b = b.into_backend();
        let table = param_table(g);
        let len = table.last().map_or(0, |e| e.range.end);
        crate::tensor::check_alloc("Params::new", &format!("the {len} parameters"), len)?;
        let mut rng = SplitMix64(seed);
        let mut host = vec![0.0f32; len];
        for (e, d) in table.iter().zip(&g.params) {
            if let Some(bound) = d.init.bound() {
                host[e.range.clone()]
                    .iter_mut()
                    .for_each(|v| *v = rng.uniform(bound));
            }
        }
        Ok(Params {
            values: b.upload(&host)?,
            grads: b.alloc_zeros(len)?,
            adam_m: b.alloc_zeros(len)?,
            adam_v: b.alloc_zeros(len)?,
            counter: b.upload_labels(&[0])?,
            b,
            table,
            step: 0,
            adam_table: None,
            table_version: 0,
            id: next_id(),
            seed,
        })
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<B> {
        &self.b
    }

    /// Every parameter, in declaration order.
    pub fn table(&self) -> &[ParamEntry] {
        &self.table
    }

    /// Elements of all parameters.
    pub fn len(&self) -> usize {
        self.table.last().map_or(0, |e| e.range.end)
    }

    /// Whether the graph has no parameters.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the four flat buffers (values, gradients, two moments).
    pub fn bytes(&self) -> usize {
        4 * self.len() * std::mem::size_of::<f32>()
    }

    /// Adam's step count (training steps taken).
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The dropout seed.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The entry of parameter `name`, or an error naming it.
    pub fn entry(&self, name: &str) -> Result<&ParamEntry> {
        self.table
            .iter()
            .find(|e| e.name == name)
            .ok_or_else(|| Error::Graph {
                op: "Params::entry",
                reason: format!("no parameter named {name:?}"),
            })
    }

    /// The values of parameter `name` (copied to the host).
    pub fn get(&self, name: &str) -> Result<Vec<f32>> {
        let r = self.entry(name)?.range.clone();
        self.b.read(&self.b.view(&self.values, r)?)
    }

    /// The gradient of parameter `name` from the last backward that stored it (copied to the host).
    pub fn grad(&self, name: &str) -> Result<Vec<f32>> {
        let r = self.entry(name)?.range.clone();
        self.b.read(&self.b.view(&self.grads, r)?)
    }

    /// Overwrites parameter `name` (the length must match its shape).
    pub fn set(&mut self, name: &str, values: &[f32]) -> Result<()> {
        let e = self.entry(name)?;
        if values.len() != e.range.len() {
            return Err(crate::Error::InvalidShape {
                op: "Params::set",
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
            .write(&mut self.b.view_mut(&mut self.values, r)?, values)
    }

    /// Overwrites every value (flat, in declaration order).
    pub fn set_all(&mut self, values: &[f32]) -> Result<()> {
        let len = self.len();
        crate::shape::check_len("Params::set_all", "values", len, values.len())?;
        self.b
            .write(&mut self.b.view_mut(&mut self.values, 0..len)?, values)
    }

    /// Every value, flat in declaration order (copied to the host).
    pub fn values(&self) -> Result<Vec<f32>> {
        self.b.to_host(&self.values)
    }

    /// The values and both moments copied to host memory in stream order without waiting
    /// ([`Backend::download_async`]).
    pub fn download_state(&self) -> Result<[crate::backend::Download; 3]> {
        Ok([
            self.b.download_async(&self.values)?,
            self.b.download_async(&self.adam_m)?,
            self.b.download_async(&self.adam_v)?,
        ])
    }

    /// Adam's two moments, flat in declaration order (copied to the host).
    pub fn moments(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((self.b.to_host(&self.adam_m)?, self.b.to_host(&self.adam_v)?))
    }

    /// Adam's table covering the steps `1..=steps` at learning rate `lr` ([`AdamStep::table`]), built and
    /// uploaded now if the current one does not (a run calls it once with its last step, so that no step
    /// rebuilds it: a captured step holds the table's address). A training step at another learning rate or
    /// past the table rebuilds it, growing it to at least twice its rows.
    pub fn reserve_steps(&mut self, lr: f64, steps: u64) -> Result<()> {
        let covered = self
            .adam_table
            .as_ref()
            .is_some_and(|t| t.lr.to_bits() == lr.to_bits() && t.rows as u64 >= steps);
        if covered {
            return Ok(());
        }
        let grown = match &self.adam_table {
            Some(t) if t.lr.to_bits() == lr.to_bits() => t.rows.saturating_mul(2),
            _ => 0,
        };
        let want = usize::try_from(steps).map_err(|_| Error::OutOfRange {
            op: "Params::reserve_steps",
            what: "steps".into(),
            value: steps.to_string(),
            allowed: "a table that fits in memory",
        })?;
        let rows = want.max(grown).max(MIN_TABLE_ROWS);
        crate::tensor::check_alloc(
            "Params::reserve_steps",
            &format!("an Adam table of {rows} steps"),
            rows.saturating_mul(ADAM_ROW),
        )?;
        let host = AdamStep::table(lr, rows)?;
        self.adam_table = Some(AdamTable {
            buf: self.b.upload(&host)?,
            lr,
            rows,
        });
        self.table_version += 1;
        Ok(())
    }

    /// Restores Adam's moments, its step count and the dropout seed.
    pub fn set_train_state(
        &mut self,
        adam_m: &[f32],
        adam_v: &[f32],
        step: u64,
        seed: u64,
    ) -> Result<()> {
        let len = self.len();
        crate::shape::check_len("set_train_state", "adam_m", len, adam_m.len())?;
        crate::shape::check_len("set_train_state", "adam_v", len, adam_v.len())?;
        self.b
            .write(&mut self.b.view_mut(&mut self.adam_m, 0..len)?, adam_m)?;
        self.b
            .write(&mut self.b.view_mut(&mut self.adam_v, 0..len)?, adam_v)?;
        // The device step counter is 32 bits: a step count past it is kept on the host, where the next
        // training step refuses it (`Plan::step`).
        let device = u32::try_from(step).unwrap_or(u32::MAX);
        self.b.write_labels(&mut self.counter, &[device])?;
        self.step = step;
        self.seed = seed;
        Ok(())
    }
}
