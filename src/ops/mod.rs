//! Tensor ops: each checks shapes and devices, dispatches to the tensor's backend, and records its
//! hand-written backward (right under the forward, in the same file) on the tape of its tracked inputs.

mod add;
mod conv;
mod linear;
mod pool;
mod relu;
mod train;

pub use add::add;
pub use conv::{conv, reduce_conv3x3, reduce_conv5x5};
pub use linear::linear;
pub use pool::maxpool3x3s1;
pub use relu::{relu, relu_bwd};
pub use train::{dropout, softmax_xent};
