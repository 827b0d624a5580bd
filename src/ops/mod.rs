//! Tensor ops: each checks shapes and devices, dispatches to the tensor's backend, and records its
//! hand-written backward (right under the forward, in the same file) on the tape of its tracked inputs.

mod add;
mod relu;

pub use add::add;
pub use relu::{relu, relu_bwd};
