//! The MNIST Inception net of the original write-up as a graph definition.

use super::inception::{inception, InceptionWidths};
use super::mnist::{MnistConfig, CLASSES};
use crate::graph::{Graph, Value};
use crate::Result;

/// The MNIST net as a graph, with the values a caller runs it by.
#[derive(Clone, Debug)]
pub struct MnistGraph {
    /// The graph: input `images [1, image, image]`, parameters with the reference's names and order.
    pub graph: Graph,
    /// The logits `[10]` (the output of an inference plan).
    pub logits: Value,
    /// The mean softmax cross-entropy (the loss of a training plan).
    pub loss: Value,
}

impl MnistConfig {
    /// The net as a graph: two Inception modules, flatten, fc1 + ReLU + dropout, fc2, softmax cross-entropy.
    pub fn graph(&self) -> Result<MnistGraph> {
        let c = *self;
        let mut g = Graph::new();
        let x = g.input("images", &[1, c.image, c.image])?;
        let y = inception(
            &mut g,
            "inception1",
            x,
            InceptionWidths::uniform(c.map1, c.reduce),
        )?;
        let y = inception(
            &mut g,
            "inception2",
            y,
            InceptionWidths::uniform(c.map2, c.reduce),
        )?;
        let y = g.flatten(y)?;
        let features = g.shape(y)[0];
        let (w1, b1) = g.linear_params("fc1", features, c.hidden)?;
        let (w2, b2) = g.linear_params("fc2", c.hidden, CLASSES)?;
        let h = g.linear(y, w1, b1)?;
        let h = g.relu(h)?;
        let h = if c.dropout > 0.0 {
            g.dropout(h, c.dropout)?
        } else {
            h
        };
        let logits = g.linear(h, w2, b2)?;
        let loss = g.softmax_xent(logits)?;
        Ok(MnistGraph {
            graph: g,
            logits,
            loss,
        })
    }
}
