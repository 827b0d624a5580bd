//! Layers: the Inception module and the MNIST net of the original write-up, over any [`crate::Backend`].

mod inception;
mod mnist;
mod mnist_graph;

pub use inception::{
    inception, BranchMacs, InceptionModule, InceptionWidths, ModuleLayout, ModuleSaved,
    ModuleScratch,
};
pub(crate) use mnist::check_finite_state;
pub use mnist::{InceptionMnist, MnistConfig, ParamEntry, StepStats, TrainState, LOSS_RING};
pub use mnist_graph::MnistGraph;
