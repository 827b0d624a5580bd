//! Model files: safetensors holding exactly the tensors of the reference PyTorch module (its names, shapes and
//! layouts, float32), with the config as metadata strings, so PyTorch's strict `load_state_dict` accepts our
//! files and a file PyTorch saved with plain `save_file` (no metadata) loads here: the widths are read off
//! the tensor shapes. Writes are atomic and durable: a temporary file, fsynced, renamed into place, then the
//! folder fsynced.
//!
//! A checkpoint ([`InceptionMnist::save_checkpoint`]) is one unit in a run folder: the model file
//! `model-<step>.safetensors`, the training state `train_state-<step>.safetensors` and, written last, the
//! manifest [`MANIFEST`] naming both with their step, size and CRC-32 and holding the run's recipe. The
//! manifest's rename is the commit: a crash before it leaves the previous checkpoint in force, and
//! [`InceptionMnist::load_checkpoint`] refuses files that do not match their manifest or each other. After
//! the commit `model.safetensors` is replaced by a link to (or copy of) the new model file, for
//! `--eval-only` and PyTorch, and the previous unit's files are removed.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::backend::{Backend, BackendHandle, Download};
use crate::nn::{InceptionMnist, MnistConfig, ParamEntry};
use crate::{Error, Result};

fn file_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Data {
        file: path.to_path_buf(),
        line: None,
        reason: reason.into(),
    }
}

/// The temporary name of a write of `path` by this process: `<stem>.tmp-<pid>`.
fn temporary(path: &Path) -> PathBuf {
    path.with_extension(format!("tmp-{}", std::process::id()))
}

/// Flushes the folder `dir` to disk, so a rename in it survives a power loss (where the platform allows
/// opening a folder; elsewhere nothing).
fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        File::open(dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| file_error(dir, format!("cannot sync the folder: {e}")))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably: a temporary file in the same folder, fsynced, renamed
/// over `path`, then the folder fsynced. A failure removes the temporary file and names the path.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temporary(path);
    let written = File::create(&tmp)
        .and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        })
        .map_err(|e| file_error(&tmp, format!("cannot write: {e}")))
        .and_then(|()| {
            std::fs::rename(&tmp, path).map_err(|e| {
                file_error(path, format!("cannot replace with {}: {e}", tmp.display()))
            })
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Writes `tensors` (name, shape, values) and `metadata` to `path` atomically (see [`write_file_atomic`]).
pub fn write_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_file_atomic(path, &serialize_tensors(path, tensors, metadata)?)
}

/// The safetensors bytes of `tensors` and `metadata` (`path` names the file in errors).
fn serialize_tensors(
    path: &Path,
    tensors: &[(String, Vec<usize>, Vec<f32>)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
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
    let bytes = safetensors::serialize(views, Some(metadata))
        .map_err(|e| file_error(path, format!("cannot serialize: {e}")))?;
    deterministic_header(path, bytes)
}

/// `bytes` with its safetensors header's JSON written with sorted keys: safetensors writes the metadata map in
/// hash order, which differs between maps, so two writes of the same tensors would differ in bytes (and in
/// the manifest's CRC). The data and its offsets are unchanged; the header stays padded to 8 bytes.
fn deterministic_header(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: &str| file_error(path, format!("cannot serialize: {what}"));
    let len = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes)
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| 8 + n <= bytes.len())
        .ok_or_else(|| bad("no header"))?;
    let header: serde_json::Value =
        serde_json::from_slice(&bytes[8..8 + len]).map_err(|e| bad(&e.to_string()))?;
    let mut text = serde_json::to_vec(&header).map_err(|e| bad(&e.to_string()))?;
    text.resize(text.len().next_multiple_of(8), b' ');
    let mut bytes = bytes;
    if text.len() == len {
        // the same keys and values in another order: the same length, rewritten in place
        bytes[8..8 + len].copy_from_slice(&text);
        return Ok(bytes);
    }
    let mut out = Vec::with_capacity(8 + text.len() + bytes.len() - 8 - len);
    out.extend_from_slice(&(text.len() as u64).to_le_bytes());
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + len..]);
    Ok(out)
}

/// The largest safetensors header read (safetensors' own limit).
const MAX_HEADER: u64 = 100_000_000;

/// The bytes of safetensors file `path`, read no further than its header declares: the 8-byte header
/// length, the JSON header, then the data up to the largest end offset it names (and one byte more, so that
/// trailing bytes are reported by the parser rather than read without bound).
fn read_safetensors_bytes(path: &Path) -> Result<Vec<u8>> {
    let mut file = File::open(path).map_err(|e| file_error(path, format!("cannot read: {e}")))?;
    let io = |e: std::io::Error| file_error(path, format!("cannot read: {e}"));
    let mut bytes = Vec::new();
    (&mut file).take(8).read_to_end(&mut bytes).map_err(io)?;
    let n = match <[u8; 8]>::try_from(bytes.as_slice()) {
        Ok(b) => u64::from_le_bytes(b),
        Err(_) => {
            return Err(file_error(
                path,
                format!("not a safetensors file: {} bytes", bytes.len()),
            ))
        }
    };
    if n > MAX_HEADER {
        return Err(file_error(
            path,
            format!("not a safetensors file: header of {n} bytes (at most {MAX_HEADER})"),
        ));
    }
    (&mut file).take(n).read_to_end(&mut bytes).map_err(io)?;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..])
        .map_err(|e| file_error(path, format!("not a safetensors file: bad header: {e}")))?;
    let data_end = header
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    (&mut file)
        .take(data_end.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(io)?;
    Ok(bytes)
}

/// Every f32 tensor of a safetensors file (name → (shape, values)) and its metadata.
#[allow(clippy::type_complexity)]
pub fn read_tensors(
    path: &Path,
) -> Result<(
    HashMap<String, (Vec<usize>, Vec<f32>)>,
    HashMap<String, String>,
)> {
    parse_tensors(path, &read_safetensors_bytes(path)?)
}

/// [`read_tensors`] of bytes already read from `path`.
#[allow(clippy::type_complexity)]
fn parse_tensors(
    path: &Path,
    bytes: &[u8],
) -> Result<(
    HashMap<String, (Vec<usize>, Vec<f32>)>,
    HashMap<String, String>,
)> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| file_error(path, format!("not a safetensors file: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(bytes)
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
    let per_px = map2.saturating_mul(4);
    let image = (1..=4096usize)
        .find(|&s| s.checked_mul(s).and_then(|a| a.checked_mul(per_px)) == Some(flat))
        .ok_or_else(|| {
            file_error(
                path,
                format!("fc1.weight has {flat} inputs, not image² × 4·map2 = image² × {per_px} for a square image"),
            )
        })?;
    let config = MnistConfig {
        map1,
        map2,
        reduce,
        hidden,
        dropout,
        image,
    };
    config
        .validate("InceptionMnist::load")
        .map_err(|e| file_error(path, e.to_string()))?;
    Ok(config)
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

/// The manifest of a checkpoint unit, written last: its presence with matching files is the checkpoint.
pub const MANIFEST: &str = "checkpoint.json";
/// The `format` field of [`MANIFEST`].
pub const MANIFEST_FORMAT: &str = "inception-cuda checkpoint 1";
/// The model file beside the unit for `--eval-only` and PyTorch: a link to (or copy of) the latest unit's.
pub const MODEL_FILE: &str = "model.safetensors";
/// The training-state file of folders from before checkpoint units.
const LEGACY_TRAIN_STATE: &str = "train_state.safetensors";

/// What a checkpoint unit holds besides the tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// Training steps taken.
    pub step: u64,
    /// The model file (in the run folder).
    pub model: PathBuf,
    /// The training-state file (in the run folder).
    pub train_state: PathBuf,
    /// The run's recipe as the caller stored it (learning rate, batch size, seed, ...).
    pub recipe: BTreeMap<String, String>,
}

/// The file names of the unit of step `step`.
fn unit_names(step: u64) -> (String, String) {
    (
        format!("model-{step:08}.safetensors"),
        format!("train_state-{step:08}.safetensors"),
    )
}

/// CRC-32 (IEEE, as gzip's) of `bytes`, as 8 hex digits.
fn crc32(bytes: &[u8]) -> String {
    let mut crc = flate2::Crc::new();
    crc.update(bytes);
    format!("{:08x}", crc.sum())
}

/// Removes the temporary files `<name>.tmp-<pid>` in `dir` left by processes that no longer run (killed
/// mid-write); returns the paths removed. Only where process ids can be looked up (`/proc`); elsewhere none.
pub fn remove_stale_temporaries(dir: &Path) -> Result<Vec<PathBuf>> {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return Ok(Vec::new());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(file_error(dir, format!("cannot list: {e}"))),
    };
    let mut removed = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.rsplit_once(".tmp-").map(|(_, pid)| pid) else {
            continue;
        };
        let alive = pid.parse::<u32>().map_or(true, |p| {
            p == std::process::id() || proc.join(p.to_string()).exists()
        });
        if !alive && entry.file_type().is_ok_and(|t| t.is_file()) {
            let path = entry.path();
            std::fs::remove_file(&path).map_err(|e| {
                file_error(&path, format!("cannot remove a stale temporary file: {e}"))
            })?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// The manifest of `dir`: `Ok(None)` when there is none.
pub fn read_manifest(dir: &Path) -> Result<Option<Checkpoint>> {
    let path = dir.join(MANIFEST);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(file_error(&path, format!("cannot read: {e}"))),
    };
    let (checkpoint, _) = parse_manifest(&path, &text)?;
    Ok(Some(checkpoint))
}

/// Size and CRC-32 each file of a manifest declares.
struct Declared {
    bytes: u64,
    crc32: String,
}

fn parse_manifest(path: &Path, text: &[u8]) -> Result<(Checkpoint, [Declared; 2])> {
    let bad = |what: &str| {
        file_error(
            path,
            format!("not a checkpoint manifest ({MANIFEST_FORMAT}): {what}"),
        )
    };
    let json: serde_json::Value = serde_json::from_slice(text).map_err(|e| bad(&format!("{e}")))?;
    match json.get("format").and_then(|f| f.as_str()) {
        Some(MANIFEST_FORMAT) => {}
        other => return Err(bad(&format!("format is {other:?}"))),
    }
    let step = json
        .get("step")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| bad("no step"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let file = |key: &str| -> Result<(PathBuf, Declared)> {
        let f = json
            .get("files")
            .and_then(|f| f.get(key))
            .ok_or_else(|| bad(&format!("no files.{key}")))?;
        let name = f
            .get("name")
            .and_then(|n| n.as_str())
            .filter(|n| !n.is_empty() && Path::new(n).file_name() == Some(std::ffi::OsStr::new(n)))
            .ok_or_else(|| bad(&format!("files.{key}.name is not a file name")))?;
        let bytes = f
            .get("bytes")
            .and_then(|b| b.as_u64())
            .ok_or_else(|| bad(&format!("no files.{key}.bytes")))?;
        let crc32 = f
            .get("crc32")
            .and_then(|c| c.as_str())
            .ok_or_else(|| bad(&format!("no files.{key}.crc32")))?
            .to_string();
        Ok((dir.join(name), Declared { bytes, crc32 }))
    };
    let (model, model_declared) = file("model")?;
    let (train_state, state_declared) = file("train_state")?;
    let recipe = json
        .get("recipe")
        .and_then(|r| r.as_object())
        .map(|r| {
            r.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Ok((
        Checkpoint {
            step,
            model,
            train_state,
            recipe,
        },
        [model_declared, state_declared],
    ))
}

/// The bytes of a file a manifest names, checked against the size and CRC-32 it declares (reading no more
/// than that size, plus one byte).
fn read_declared(manifest: &Path, path: &Path, declared: &Declared) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| {
            f.take(declared.bytes.saturating_add(1))
                .read_to_end(&mut bytes)
        })
        .map_err(|e| {
            file_error(
                path,
                format!("cannot read the file {} names: {e}", manifest.display()),
            )
        })?;
    if bytes.len() as u64 != declared.bytes {
        return Err(file_error(
            path,
            format!(
                "{} bytes, but {} declares {}: the file is not the one of this checkpoint",
                if bytes.len() as u64 > declared.bytes {
                    format!("more than {}", declared.bytes)
                } else {
                    bytes.len().to_string()
                },
                manifest.display(),
                declared.bytes
            ),
        ));
    }
    let crc = crc32(&bytes);
    if crc != declared.crc32 {
        return Err(file_error(
            path,
            format!(
                "CRC-32 {crc}, but {} declares {}: the file is corrupt or not the one of this checkpoint",
                manifest.display(),
                declared.crc32
            ),
        ));
    }
    Ok(bytes)
}

/// The `step` metadata of a unit's file.
fn step_of(path: &Path, meta: &HashMap<String, String>) -> Result<u64> {
    meta.get("step")
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| file_error(path, "metadata step missing or not a number"))
}

impl<B: Backend> InceptionMnist<B> {
    /// The model file's tensors and metadata (the config and the step).
    fn model_tensors(&self) -> Result<ModelTensors> {
        Ok(self.model_tensors_of(&self.host_values()?))
    }

    /// The model file's tensors and metadata from the flat parameter values (one host copy of them).
    fn model_tensors_of(&self, values: &[f32]) -> ModelTensors {
        model_tensors_of(self.params(), self.config(), self.step(), values)
    }

    fn train_state_tensors(&self) -> Result<ModelTensors> {
        let [_, adam_m, adam_v] = self.host_state()?;
        self.train_state_tensors_of(adam_m, adam_v)
    }

    /// The training-state file's tensors and metadata from Adam's moments (already on the host).
    fn train_state_tensors_of(&self, adam_m: Vec<f32>, adam_v: Vec<f32>) -> Result<ModelTensors> {
        let pending = self.pending_losses()?;
        Ok(train_state_tensors_of(
            self.step(),
            self.seed(),
            adam_m,
            adam_v,
            pending,
        ))
    }
}

/// The model file's tensors (the parameters of `entries`, cut out of the flat `values`) and metadata (the
/// config and the step).
fn model_tensors_of(
    entries: &[ParamEntry],
    c: &MnistConfig,
    step: u64,
    values: &[f32],
) -> ModelTensors {
    let tensors = entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.shape.clone(),
                values[e.range.clone()].to_vec(),
            )
        })
        .collect();
    let meta = HashMap::from([
        ("map1".to_string(), c.map1.to_string()),
        ("map2".to_string(), c.map2.to_string()),
        ("reduce".to_string(), c.reduce.to_string()),
        ("hidden".to_string(), c.hidden.to_string()),
        ("dropout".to_string(), c.dropout.to_string()),
        ("step".to_string(), step.to_string()),
    ]);
    (tensors, meta)
}

/// The training-state file's tensors (Adam's moments, the losses not yet logged) and metadata (step, seed).
fn train_state_tensors_of(
    step: u64,
    seed: u64,
    adam_m: Vec<f32>,
    adam_v: Vec<f32>,
    pending: Vec<f32>,
) -> ModelTensors {
    let len = adam_m.len();
    let tensors = vec![
        ("adam.m".to_string(), vec![len], adam_m),
        ("adam.v".to_string(), vec![len], adam_v),
        ("loss.pending".to_string(), vec![pending.len()], pending),
    ];
    let meta = HashMap::from([
        ("step".to_string(), step.to_string()),
        ("seed".to_string(), seed.to_string()),
    ]);
    (tensors, meta)
}

impl<B: Backend> InceptionMnist<B> {
    /// Saves the parameters as a model file (the reference module's tensors, config and step as metadata),
    /// atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (tensors, meta) = self.model_tensors()?;
        write_tensors(path, &tensors, meta)
    }

    /// Saves Adam's moments, the losses not yet logged, the step count and the dropout seed beside a model
    /// file, atomically. A resume
    /// takes a whole checkpoint unit instead: see [`Self::save_checkpoint`].
    pub fn save_train_state(&self, path: &Path) -> Result<()> {
        let (tensors, meta) = self.train_state_tensors()?;
        write_tensors(path, &tensors, meta)
    }

    /// Restores [`Self::save_train_state`]'s file: the next steps equal those of the uninterrupted run.
    pub fn load_train_state(&mut self, path: &Path) -> Result<()> {
        let bytes = read_safetensors_bytes(path)?;
        self.set_train_state_bytes(path, &bytes)
    }

    fn set_train_state_bytes(&mut self, path: &Path, bytes: &[u8]) -> Result<()> {
        let (mut tensors, meta) = parse_tensors(path, bytes)?;
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
            .and_then(|()| {
                // The losses of the steps since the last logging point (absent from older files).
                let pending = tensors.remove("loss.pending").map(|(_, v)| v);
                self.set_pending_losses(&pending.unwrap_or_default())
            })
            .map_err(|e| file_error(path, e.to_string()))
    }

    /// Loads a model file (ours, or PyTorch's `save_file` of the reference module) onto backend `b`. A
    /// missing, extra or mis-shaped tensor is an error naming it and both shapes.
    pub fn load(path: &Path, b: impl BackendHandle<Backend = B>, seed: u64) -> Result<Self> {
        let bytes = read_safetensors_bytes(path)?;
        Self::load_bytes(path, &bytes, b, seed).map(|(net, _)| net)
    }

    /// [`Self::load`] of bytes read from `path`; also returns the file's metadata.
    fn load_bytes(
        path: &Path,
        bytes: &[u8],
        b: impl BackendHandle<Backend = B>,
        seed: u64,
    ) -> Result<(Self, HashMap<String, String>)> {
        let (tensors, meta) = parse_tensors(path, bytes)?;
        let config = config_of(path, &tensors, &meta)?;
        let (_, _, entries) = config.param_table();
        check_tensors(path, &entries, &tensors)?;
        let mut net = InceptionMnist::new(b, config, seed)?;
        for e in &entries {
            net.set_param(&e.name, &tensors[&e.name].1)
                .map_err(|err| file_error(path, err.to_string()))?;
        }
        Ok((net, meta))
    }

    /// Saves a checkpoint unit of the current step into run folder `dir` (see the module's documentation):
    /// refused, with nothing written, when a parameter or moment is not finite ([`Self::check_finite`]), so
    /// a diverged model never replaces a good checkpoint. `recipe` is stored in the manifest as given.
    pub fn save_checkpoint(
        &self,
        dir: &Path,
        recipe: &BTreeMap<String, String>,
    ) -> Result<Checkpoint> {
        self.checkpoint_snapshot()?.write(dir, recipe)
    }

    /// The contents of a checkpoint unit of the current step, copied to the host: what
    /// [`CheckpointSnapshot::write`] writes, on this thread or another (training goes on meanwhile). Refused
    /// when a parameter or moment is not finite ([`Self::check_finite`]).
    pub fn checkpoint_snapshot(&self) -> Result<CheckpointSnapshot> {
        self.checkpoint_snapshot_async()?.finish()
    }

    /// [`Self::checkpoint_snapshot`] without waiting: the parameters and both moments are copied to host
    /// memory in stream order ([`Backend::download_async`]: pinned memory on a GPU), so the copy holds this
    /// step's values however many steps are issued after it; [`PendingSnapshot::finish`], on any thread,
    /// waits for the copy, checks every value is finite and builds the files' contents. (The losses not yet
    /// logged are read here: none at a logging point.)
    pub fn checkpoint_snapshot_async(&self) -> Result<PendingSnapshot> {
        Ok(PendingSnapshot {
            step: self.step(),
            seed: self.seed(),
            config: *self.config(),
            entries: self.params().to_vec(),
            state: self.download_state()?,
            pending: self.pending_losses()?,
        })
    }
}

/// A checkpoint's copy in flight ([`InceptionMnist::checkpoint_snapshot_async`]): sendable to a writer thread.
pub struct PendingSnapshot {
    step: u64,
    seed: u64,
    config: MnistConfig,
    entries: Vec<ParamEntry>,
    /// The parameters and Adam's two moments, being copied.
    state: [Download; 3],
    pending: Vec<f32>,
}

impl std::fmt::Debug for PendingSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingSnapshot")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl PendingSnapshot {
    /// The training step it holds.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Waits for the copy, checks that every parameter and moment is finite (an error naming the first that
    /// is not, with its step) and builds the unit's contents: the same as a synchronous
    /// [`InceptionMnist::checkpoint_snapshot`] of that step.
    pub fn finish(self) -> Result<CheckpointSnapshot> {
        let [values, adam_m, adam_v] = self.state;
        let state = [values.wait()?, adam_m.wait()?, adam_v.wait()?];
        crate::nn::check_finite_state(&self.entries, self.step, &state)?;
        let [values, adam_m, adam_v] = state;
        Ok(CheckpointSnapshot {
            step: self.step,
            model: model_tensors_of(&self.entries, &self.config, self.step, &values),
            train_state: train_state_tensors_of(self.step, self.seed, adam_m, adam_v, self.pending),
        })
    }
}

/// A checkpoint unit's tensors on the host ([`InceptionMnist::checkpoint_snapshot`]), not yet written: it can
/// be sent to a writer thread, so the files, their fsyncs and the manifest do not stall training.
pub struct CheckpointSnapshot {
    step: u64,
    model: ModelTensors,
    train_state: ModelTensors,
}

impl std::fmt::Debug for CheckpointSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckpointSnapshot")
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

impl CheckpointSnapshot {
    /// The training step it holds.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Writes the unit into run folder `dir` (see the module's documentation): both tensor files, each
    /// fsynced before its rename, then the manifest (the commit point), then `model.safetensors`; the files
    /// of earlier units go. The same bytes as [`InceptionMnist::save_checkpoint`]. An I/O error names the file.
    pub fn write(self, dir: &Path, recipe: &BTreeMap<String, String>) -> Result<Checkpoint> {
        let step = self.step;
        let (model_name, state_name) = unit_names(step);
        let (model, train_state) = (dir.join(&model_name), dir.join(&state_name));
        let mut files = serde_json::Map::new();
        for (key, path, (tensors, meta)) in [
            ("model", &model, self.model),
            ("train_state", &train_state, self.train_state),
        ] {
            let bytes = serialize_tensors(path, &tensors, meta)?;
            drop(tensors);
            write_file_atomic(path, &bytes)?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            files.insert(
                key.into(),
                serde_json::json!({ "name": name, "bytes": bytes.len(), "crc32": crc32(&bytes) }),
            );
        }
        let manifest = serde_json::json!({
            "format": MANIFEST_FORMAT,
            "step": step,
            "files": files,
            "recipe": recipe,
        });
        let text = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| file_error(&dir.join(MANIFEST), format!("cannot serialize: {e}")))?;
        write_file_atomic(&dir.join(MANIFEST), &text)?; // the commit point
                                                        // After the commit: model.safetensors follows, and the files of earlier units go.
        let link = dir.join(MODEL_FILE);
        let tmp = temporary(&link);
        let _ = std::fs::remove_file(&tmp);
        std::fs::hard_link(&model, &tmp)
            .or_else(|_| std::fs::copy(&model, &tmp).map(|_| ()))
            .and_then(|()| std::fs::rename(&tmp, &link))
            .map_err(|e| {
                file_error(
                    &link,
                    format!("cannot replace with {}: {e}", model.display()),
                )
            })?;
        sync_dir(dir)?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let ours = (name.starts_with("model-") || name.starts_with("train_state-"))
                    && name.ends_with(".safetensors");
                if ours && name != model_name && name != state_name {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(Checkpoint {
            step,
            model,
            train_state,
            recipe: recipe.clone(),
        })
    }
}

impl<B: Backend> InceptionMnist<B> {
    /// Loads the checkpoint unit of run folder `dir` onto backend `b`: the net with its training state, and
    /// the unit's step, files and recipe. Refused, naming the files: a folder without a manifest (a folder
    /// from before checkpoint units is named as such), a file whose size or CRC-32 differs from the
    /// manifest's, and a model and training state of different steps.
    pub fn load_checkpoint(
        dir: &Path,
        b: impl BackendHandle<Backend = B>,
    ) -> Result<(Self, Checkpoint)> {
        if !dir.is_dir() {
            return Err(file_error(
                dir,
                if dir.exists() {
                    "not a folder: a checkpoint is resumed from its run folder".to_string()
                } else {
                    "no such folder".to_string()
                },
            ));
        }
        let manifest = dir.join(MANIFEST);
        let text = match std::fs::read(&manifest) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let legacy = dir.join(LEGACY_TRAIN_STATE).exists();
                let reason = if legacy {
                    format!(
                        "a run folder from before checkpoint units ({MODEL_FILE} + {LEGACY_TRAIN_STATE}, \
                         no {MANIFEST}): it cannot be resumed, since nothing shows that the two files \
                         belong together; expected {MANIFEST} ({MANIFEST_FORMAT}) naming \
                         model-<step>.safetensors and train_state-<step>.safetensors with their step, \
                         size and CRC-32. Its {MODEL_FILE} still loads for --eval-only"
                    )
                } else {
                    format!("no checkpoint here: {MANIFEST} ({MANIFEST_FORMAT}) is missing")
                };
                return Err(file_error(dir, reason));
            }
            Err(e) => return Err(file_error(&manifest, format!("cannot read: {e}"))),
        };
        let (checkpoint, [model_declared, state_declared]) = parse_manifest(&manifest, &text)?;
        let model_bytes = read_declared(&manifest, &checkpoint.model, &model_declared)?;
        let state_bytes = read_declared(&manifest, &checkpoint.train_state, &state_declared)?;
        let (mut net, model_meta) = Self::load_bytes(&checkpoint.model, &model_bytes, b, 0)?;
        drop(model_bytes);
        let model_step = step_of(&checkpoint.model, &model_meta)?;
        let (_, state_meta) = SafeTensors::read_metadata(&state_bytes)
            .map_err(|e| file_error(&checkpoint.train_state, format!("bad header: {e}")))?;
        let state_step = step_of(
            &checkpoint.train_state,
            &state_meta.metadata().clone().unwrap_or_default(),
        )?;
        if model_step != state_step || model_step != checkpoint.step {
            return Err(file_error(
                dir,
                format!(
                    "the checkpoint's files do not belong together: {} holds step {model_step}, {} \
                     holds step {state_step}, {MANIFEST} says step {}",
                    checkpoint.model.display(),
                    checkpoint.train_state.display(),
                    checkpoint.step
                ),
            ));
        }
        net.set_train_state_bytes(&checkpoint.train_state, &state_bytes)?;
        Ok((net, checkpoint))
    }
}

/// Tensors (name, shape, values) and metadata of a file.
type ModelTensors = (Vec<(String, Vec<usize>, Vec<f32>)>, HashMap<String, String>);
