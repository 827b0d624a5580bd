//! The tape: ops on tracked tensors record a node (inputs, output, hand-written backward); `backward` walks
//! the nodes in reverse and accumulates the gradient of a tensor read by several ops.
//!
//! Backward closures hold only detached tensors (see [`Tensor::detach`]), so the tape never owns a
//! reference to itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::tensor::check_shape;
use crate::{ops, Error, Result, Tensor, TensorId};

/// A backward pass: output gradient in, one gradient per input out (same order as the node's inputs).
type BackwardFn = Box<dyn FnOnce(&Tensor) -> Result<Vec<Tensor>> + Send>;

struct Node {
    op: &'static str,
    inputs: Vec<(TensorId, Arc<[usize]>)>,
    output: TensorId,
    backward: BackwardFn,
}

#[derive(Default)]
struct Recording {
    nodes: Vec<Node>,
    consumed: bool,
}

/// Records ops for one backward pass. Clones share the recording.
#[derive(Clone, Default)]
pub struct Tape {
    inner: Arc<Mutex<Recording>>,
}

impl std::fmt::Debug for Tape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tape({} ops)", self.len())
    }
}

/// Gradients from [`Tape::backward`], keyed by tensor identity.
#[derive(Debug, Default)]
pub struct Gradients {
    map: HashMap<TensorId, Tensor>,
}

impl Gradients {
    /// The gradient of `t`, if `t` contributed to the output.
    pub fn get(&self, t: &Tensor) -> Option<&Tensor> {
        self.map.get(&t.id())
    }

    /// Number of tensors holding a gradient.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no tensor received a gradient.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

impl Tape {
    /// An empty tape.
    pub fn new() -> Tape {
        Tape::default()
    }

    fn lock(&self) -> MutexGuard<'_, Recording> {
        // A panic elsewhere cannot leave the node list half-written, so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Number of ops recorded.
    pub fn len(&self) -> usize {
        self.lock().nodes.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `t` (same value and id) with ops on it recorded on this tape: a leaf whose gradient
    /// [`Tape::backward`] returns.
    pub fn watch(&self, t: &Tensor) -> Tensor {
        t.detach().with_tape(self.clone())
    }

    fn same(&self, other: &Tape) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Runs the recorded backward passes from `output`, seeded with `grad` (same shape and device), and
    /// returns the gradient of every tensor that `output` depends on, leaves included. Consumes the
    /// recording: a second call is an error.
    pub fn backward(&self, output: &Tensor, grad: &Tensor) -> Result<Gradients> {
        self.backward_many(&[(output, grad)])
    }

    /// [`Tape::backward`] from several outputs at once, each seeded with its own gradient (for example the
    /// four branches of a module, or several losses); gradients reaching a tensor from several of them add up.
    pub fn backward_many(&self, seeds: &[(&Tensor, &Tensor)]) -> Result<Gradients> {
        let mut grads = Gradients::default();
        for &(output, grad) in seeds {
            check_shape("backward", "seed gradient", output.shape(), grad.shape())?;
            if output.device() != grad.device() {
                return Err(Error::DeviceMismatch {
                    op: "backward",
                    what: "seed gradient",
                    expected: output.device().to_string(),
                    got: grad.device().to_string(),
                });
            }
            if !output.tape().is_some_and(|t| self.same(t)) {
                return Err(Error::Backward {
                    reason: format!("{output:?} was not recorded on this tape"),
                });
            }
            let total = match grads.map.remove(&output.id()) {
                Some(acc) => ops::add(&acc, &grad.detach())?,
                None => grad.detach(),
            };
            grads.map.insert(output.id(), total);
        }
        let nodes = {
            let mut rec = self.lock();
            if rec.consumed {
                return Err(Error::Backward {
                    reason: "this tape was already consumed by an earlier backward".into(),
                });
            }
            rec.consumed = true;
            std::mem::take(&mut rec.nodes)
        };
        for node in nodes.into_iter().rev() {
            let Some(dy) = grads.map.get(&node.output).cloned() else {
                continue; // the output does not depend on this node
            };
            let dxs = (node.backward)(&dy)?;
            if dxs.len() != node.inputs.len() {
                return Err(Error::Backward {
                    reason: format!(
                        "{} returned {} gradients for {} inputs",
                        node.op,
                        dxs.len(),
                        node.inputs.len()
                    ),
                });
            }
            for ((id, shape), dx) in node.inputs.iter().zip(dxs) {
                check_shape(node.op, "input gradient", shape, dx.shape())?;
                let total = match grads.map.remove(id) {
                    Some(acc) => ops::add(&acc, &dx)?,
                    None => dx.detach(),
                };
                grads.map.insert(*id, total);
            }
        }
        Ok(grads)
    }
}

/// Records `op` on the tape of its tracked inputs (if any) and returns `output` attached to that tape.
/// `backward` maps the output gradient to one gradient per input and must hold only detached tensors.
pub(crate) fn record(
    op: &'static str,
    inputs: &[&Tensor],
    output: Tensor,
    backward: impl FnOnce(&Tensor) -> Result<Vec<Tensor>> + Send + 'static,
) -> Result<Tensor> {
    let mut tape: Option<&Tape> = None;
    for t in inputs {
        match (tape, t.tape()) {
            (None, Some(t)) => tape = Some(t),
            (Some(a), Some(b)) if !a.same(b) => return Err(Error::TapeMismatch { op }),
            _ => {}
        }
    }
    let Some(tape) = tape else {
        return Ok(output);
    };
    let mut rec = tape.lock();
    if rec.consumed {
        return Err(Error::Backward {
            reason: format!("{op}: recorded on a tape already consumed by backward"),
        });
    }
    rec.nodes.push(Node {
        op,
        inputs: inputs.iter().map(|t| (t.id(), t.shape().into())).collect(),
        output: output.id(),
        backward: Box::new(backward),
    });
    drop(rec);
    Ok(output.with_tape(tape.clone()))
}
