//! The graph: a net defined once ([`Graph`]), its parameters on a backend ([`Params`]), and plans of it
//! ([`Plan`]) made once per backend, batch size and precision, which run forward, backward and Adam as fixed
//! launch lists on buffers allocated once (so a training step allocates nothing and never waits for the
//! device, and a CUDA graph can capture it).
//!
//! ```
//! use inception_cuda::cpu::CpuBackend;
//! use inception_cuda::graph::{Graph, Params, Plan};
//! use inception_cuda::nn::{inception, InceptionWidths};
//!
//! # fn main() -> inception_cuda::Result<()> {
//! let mut g = Graph::new();
//! let x = g.input("images", &[1, 6, 6])?;
//! let y = inception(&mut g, "inception1", x, InceptionWidths::uniform(2, 2))?;
//! let y = g.flatten(y)?;
//! let (w, b) = g.linear_params("fc", 8 * 36, 10)?;
//! let logits = g.linear(y, w, b)?;
//! g.softmax_xent(logits)?;
//!
//! let mut params = Params::new(CpuBackend, &g, 0)?;
//! let mut train = Plan::train(CpuBackend, &g, 2)?;
//! train.set_input("images", &[0.5; 2 * 36])?;
//! train.set_labels(&[3, 7])?;
//! train.step(&mut params, 1e-3)?;
//! assert!(train.loss()?.is_finite());
//! # Ok(())
//! # }
//! ```

mod builder;
pub(crate) mod defs;
mod params;
mod plan;

pub use builder::{Graph, Init, Param, Value};
pub(crate) use params::{next_id, SplitMix64};
pub use params::{param_table, ParamEntry, Params};
pub use plan::{FuseWgradAdam, Plan, Precision, TrainOptions, LOSS_RING};
