//! Model files: safetensors holding exactly the tensors of the reference PyTorch module (its names, shapes and
//! layouts, float32), with the config as metadata strings, so PyTorch's strict `load_state_dict` accepts our
//! files and a file PyTorch saved with plain `save_file` (no metadata) loads here: the widths are read off
//! the tensor shapes. Writes are atomic: a temporary file, then a rename.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::backend::{Backend, BackendHandle};
use crate::nn::{InceptionMnist, MnistConfig, ParamEntry};
use crate::{Error, Result};

fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        file: path.to_path_buf(),
        line: None,
        reason: reason.into(),
    }
}

/// Writes `tensors` (name, shape, values) and `metadata` to `path` atomically.
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|(_, _, v)| v.iter().flat_map(|x| x.to_le_bytes()).collect())
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| {
            TensorView::new(Dtype::F32, shape.clone(), b)
                .map(|v| (name.clone(), v))
                .map_err(|e| file_error(path, format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    safetensors::serialize_to_file(views, Some(metadata), &tmp)
        .map_err(|e| file_error(&tmp, format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| file_error(path, format!("cannot replace with {}: {e}", tmp.display())))
}

/// Every f32 tensor of a safetensors file (name → (shape, values)) and its metadata.
#[allow(clippy::type_complexity)]
pub fn read_tensors(
    path: &Path,
) -> Result<(
    HashMap<String, (Vec<usize>, Vec<f32>)>,
    HashMap<String, String>,
)> {
    let bytes = std::fs::read(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| file_error(path, format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)
        .map_err(|e| file_error(path, format!("bad header: {e}")))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != Dtype::F32 {
            return Err(file_error(
                path,
                format!("tensor {name} is {:?}, expected F32", view.dtype()),
            ));
        }
        let values = view
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    Ok((tensors, metadata))
}

/// The net's config from a model file: its metadata when present, else read off the tensor shapes (dropout,
/// which no shape shows, is then the default 0.5).
fn config_of(
    path: &Path,
    tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    meta: &HashMap<String, String>,
) -> Result<MnistConfig> {
    let dim = |name: &str, axis: usize| -> Result<usize> {
        let (shape, _) = tensors
            .get(name)
            .ok_or_else(|| file_error(path, format!("missing tensor {name}")))?;
        shape
            .get(axis)
            .copied()
            .ok_or_else(|| file_error(path, format!("tensor {name} has shape {shape:?}")))
    };
    let number = |key: &str, from_shape: Result<usize>| -> Result<usize> {
        match meta.get(key) {
            Some(v) => v
                .parse()
                .map_err(|_| file_error(path, format!("metadata {key} = {v:?} is not a number"))),
            None => from_shape,
        }
    };
    let map1 = number("map1", dim("inception1.branch1x1.weight", 0))?;
    let map2 = number("map2", dim("inception2.branch1x1.weight", 0))?;
    let reduce = number("reduce", dim("inception1.reduce3x3.weight", 0))?;
    let hidden = number("hidden", dim("fc1.weight", 0))?;
    let dropout = match meta.get("dropout") {
        Some(v) => v
            .parse()
            .map_err(|_| file_error(path, format!("metadata dropout = {v:?} is not a number")))?,
        None => MnistConfig::default().dropout,
    };
    let flat = dim("fc1.weight", 1)?;
    let per_px = 4 * map2;
    let image = (1..=4096).find(|s| s * s * per_px == flat).ok_or_else(|| {
        file_error(
            path,
            format!("fc1.weight has {flat} inputs, not image² × {per_px} for a square image"),
        )
    })?;
    Ok(MnistConfig {
        map1,
        map2,
        reduce,
        hidden,
        dropout,
        image,
    })
}

/// Checks that the file holds exactly the parameters of `entries`, with their shapes.
fn check_tensors(
    path: &Path,
    entries: &[ParamEntry],
    tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> Result<()> {
    for e in entries {
        match tensors.get(&e.name) {
            None => {
                return Err(file_error(
                    path,
                    format!("missing tensor {} (expected shape {:?})", e.name, e.shape),
                ))
            }
            Some((shape, _)) if *shape != e.shape => {
                return Err(file_error(
                    path,
                    format!(
                        "tensor {} has shape {shape:?}, expected {:?}",
                        e.name, e.shape
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    let mut extra: Vec<&String> = tensors
        .keys()
        .filter(|k| !entries.iter().any(|e| &e.name == *k))
        .collect();
    extra.sort();
    match extra.first() {
        Some(name) => Err(file_error(
            path,
            format!("unexpected tensor {name} with shape {:?}", tensors[*name].0),
        )),
        None => Ok(()),
    }
}

impl<B: Backend> InceptionMnist<B> {
    /// Saves the parameters as a model file (the reference module's tensors, config as metadata), atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let c = self.config();
        let tensors = self
            .params()
            .iter()
            .map(|e| {
                self.param(&e.name)
                    .map(|v| (e.name.clone(), e.shape.clone(), v))
            })
            .collect::<Result<Vec<_>>>()?;
        let meta = HashMap::from([
            ("map1".to_string(), c.map1.to_string()),
            ("map2".to_string(), c.map2.to_string()),
            ("reduce".to_string(), c.reduce.to_string()),
            ("hidden".to_string(), c.hidden.to_string()),
            ("dropout".to_string(), c.dropout.to_string()),
        ]);
        write_tensors(path, &tensors, meta)
    }

    /// Saves Adam's moments, the step count and the dropout seed beside a model file, atomically.
    pub fn save_train_state(&self, path: &Path) -> Result<()> {
        let state = self.train_state()?;
        let len = state.adam_m.len();
        let tensors = vec![
            ("adam.m".to_string(), vec![len], state.adam_m),
            ("adam.v".to_string(), vec![len], state.adam_v),
        ];
        let meta = HashMap::from([
            ("step".to_string(), state.step.to_string()),
            ("seed".to_string(), state.seed.to_string()),
        ]);
        write_tensors(path, &tensors, meta)
    }

    /// Restores [`Self::save_train_state`]'s file: the next steps equal those of the uninterrupted run.
    pub fn load_train_state(&mut self, path: &Path) -> Result<()> {
        let (mut tensors, meta) = read_tensors(path)?;
        let mut take = |name: &str| {
            tensors
                .remove(name)
                .map(|(_, v)| v)
                .ok_or_else(|| file_error(path, format!("missing tensor {name}")))
        };
        let (adam_m, adam_v) = (take("adam.m")?, take("adam.v")?);
        let number = |key: &str| -> Result<u64> {
            meta.get(key)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| file_error(path, format!("metadata {key} missing or not a number")))
        };
        let state = crate::nn::TrainState {
            adam_m,
            adam_v,
            step: number("step")?,
            seed: number("seed")?,
        };
        self.set_train_state(&state)
            .map_err(|e| file_error(path, e.to_string()))
    }

    /// Loads a model file (ours, or PyTorch's `save_file` of the reference module) onto backend `b`. A
    /// missing, extra or mis-shaped tensor is an error naming it and both shapes.
    pub fn load(path: &Path, b: impl BackendHandle<Backend = B>, seed: u64) -> Result<Self> {
        let (tensors, meta) = read_tensors(path)?;
        let config = config_of(path, &tensors, &meta)?;
        let (_, _, entries) = config.param_table();
        check_tensors(path, &entries, &tensors)?;
        let mut net = InceptionMnist::new(b, config, seed)?;
        for e in &entries {
            net.set_param(&e.name, &tensors[&e.name].1)?;
        }
        Ok(net)
    }
}
