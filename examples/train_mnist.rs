//! Trains the MNIST Inception net of the original write-up and prints its test accuracy: on the GPU where
//! there is one (20,000 steps), on the CPU otherwise (a shortened 200-step run that says so).
//!
//!     cargo run --example train_mnist --release [-- --help]
//!
//! Writes to `--out` (default `runs/<unix time>`, made unique; an existing non-empty folder only with
//! `--overwrite`): checkpoint units (`checkpoint.json` naming `model-<step>.safetensors` and
//! `train_state-<step>.safetensors`, with the run's recipe, for `--resume`), `model.safetensors` (the latest
//! checkpoint's model, the reference PyTorch module's tensors), `log.jsonl` (one line per evaluation) and
//! `curves.svg` (loss and validation accuracy). The last line printed is `test accuracy: NN.NN%`.
//!
//! Every number is checked before anything runs, the data set before the first step, and every checkpoint
//! before it is written: a diverged model is never saved, and the error names the last good checkpoint.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use inception_cuda::checkpoint::{
    remove_stale_temporaries, write_file_atomic, Checkpoint, MANIFEST,
};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::data::{load_dir, Dataset, DeviceDataset, MnistSplits};
use inception_cuda::nn::{InceptionMnist, MnistConfig};
use inception_cuda::shape::{AdamStep, Precision};
use inception_cuda::{Backend, BackendHandle, Device};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceArg {
    /// The GPU if one can be used, else the CPU.
    Auto,
    Cpu,
    Cuda,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Init {
    /// PyTorch's default: uniform in ±1/√fan_in (the reference reached 99.01 % with it).
    Pytorch,
    /// The write-up's: a normal of σ 0.1 truncated at 2σ.
    Writeup,
}

/// The arithmetic of the convolutions' and linear layers' products (`--precision`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum PrecisionArg {
    /// f32 operands and accumulation.
    Fp32,
    /// TF32 operands on the tensor cores (cvt.rna rounding), f32 accumulation, in every conv and linear layer.
    Tf32,
}

impl From<PrecisionArg> for Precision {
    fn from(p: PrecisionArg) -> Precision {
        match p {
            PrecisionArg::Fp32 => Precision::Fp32,
            PrecisionArg::Tf32 => Precision::Tf32,
        }
    }
}

impl Args {
    /// `--precision`, when given.
    fn precision(&self) -> Option<Precision> {
        self.precision.map(Precision::from)
    }
}

impl Init {
    fn name(self) -> &'static str {
        match self {
            Init::Pytorch => "pytorch",
            Init::Writeup => "writeup",
        }
    }
}

/// Train the MNIST Inception net of the original write-up.
///
/// The recipe options (widths, dropout, lr, batch, steps, seed, init) default to the write-up's; a resumed
/// run takes them from its checkpoint, and one given explicitly is compared with the stored recipe.
#[derive(Parser, Debug)]
struct Args {
    /// MNIST folder: the four IDX files (gzip or raw) or mnist_train.csv and mnist_test.csv.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data"))]
    data: PathBuf,
    /// Maps of every branch of module 1 [default: 32].
    #[arg(long)]
    map1: Option<usize>,
    /// Maps of every branch of module 2 [default: 64].
    #[arg(long)]
    map2: Option<usize>,
    /// Maps of every 1×1 reduce [default: 16].
    #[arg(long)]
    reduce: Option<usize>,
    /// Width of fc1 [default: 700].
    #[arg(long)]
    hidden: Option<usize>,
    /// Dropout probability on fc1's activations, in [0, 1) [default: 0.5].
    #[arg(long)]
    dropout: Option<f32>,
    /// Adam's learning rate [default: 1e-4].
    #[arg(long)]
    lr: Option<f64>,
    /// Images per step [default: 50].
    #[arg(long)]
    batch: Option<usize>,
    /// Training steps (default: 20,000 on a GPU, 200 on the CPU).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    /// Seed of the initial weights and the dropout masks [default: 0].
    #[arg(long)]
    seed: Option<u64>,
    /// Output folder (default runs/<unix time>, made unique). It must be empty or new unless --overwrite.
    #[arg(long, conflicts_with = "resume")]
    out: Option<PathBuf>,
    /// Replace the run in a non-empty --out (its checkpoints, log and plot are deleted first).
    #[arg(long, conflicts_with = "resume")]
    overwrite: bool,
    /// Initialisation [default: pytorch].
    #[arg(long, value_enum)]
    init: Option<Init>,
    /// The products' arithmetic (convs, linear layers), in training and evaluation [default: fp32; TF32's
    /// accuracy on the full schedule is unmeasured].
    #[arg(long, value_enum)]
    precision: Option<PrecisionArg>,
    /// Validation accuracy (and the logged loss) every this many steps [default: 100].
    #[arg(long)]
    log_every: Option<u64>,
    /// A checkpoint every this many steps (and at the last) [default: 5000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// Images per validation and test batch (an inference plan of its own, with its own workspace)
    /// [default: 1000 on a GPU, the training batch on the CPU].
    #[arg(long)]
    eval_batch: Option<usize>,
    /// On a GPU: issue every step launch by launch instead of replaying it as a captured CUDA graph (the
    /// results are the same bits; for measuring the uncaptured step).
    #[arg(long)]
    no_graph: bool,
    /// Continue the run saved in this folder (its checkpoint.json and the files it names).
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Only evaluate --checkpoint on the test set.
    #[arg(long, requires = "checkpoint")]
    eval_only: bool,
    /// A model file (ours or one saved by PyTorch) for --eval-only.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `argv` (program name first) and runs it: the command line without a process, for tests.
#[allow(dead_code)]
pub(crate) fn run_args<I, T>(argv: I) -> Res<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    run(Args::try_parse_from(argv)?)
}

/// The numbers of the command line that need no data or device: checked before anything runs.
fn validate(args: &Args) -> Res<()> {
    for (flag, v) in [
        ("--log-every", args.log_every),
        ("--checkpoint-every", args.checkpoint_every),
    ] {
        if v == Some(0) {
            return Err(format!("{flag} 0: the cadence must be at least 1 step").into());
        }
    }
    if let Some(d) = args.dropout {
        if !(d.is_finite() && (0.0..1.0).contains(&d)) {
            return Err(format!("--dropout {d}: a probability in [0, 1) is needed").into());
        }
    }
    if let Some(lr) = args.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(format!("--lr {lr}: a finite learning rate above 0 is needed").into());
        }
        AdamStep::new(lr, 1)
            .scalars("--lr")
            .map_err(|e| format!("--lr {lr}: {e}"))?;
    }
    if args.batch == Some(0) {
        return Err("--batch 0: a batch needs at least one image".into());
    }
    if args.eval_batch == Some(0) {
        return Err("--eval-batch 0: a batch needs at least one image".into());
    }
    for (flag, v) in [
        ("--map1", args.map1),
        ("--map2", args.map2),
        ("--reduce", args.reduce),
        ("--hidden", args.hidden),
    ] {
        if v == Some(0) {
            return Err(format!("{flag} 0: a width must be at least 1").into());
        }
    }
    Ok(())
}

fn run(args: Args) -> Res<()> {
    let started = Instant::now();
    validate(&args)?;
    let device_started = Instant::now();
    let device = match args.device {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::cuda(0)?,
        DeviceArg::Auto => {
            let (device, why) = Device::cuda_if_available(0);
            if let Some(why) = why {
                eprintln!("no GPU used: {why}");
            }
            device
        }
    };
    eprintln!("device: {}", device.describe());
    match &device {
        Device::Cpu => train(CpuBackend, false, &args, started, device_started.elapsed()),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => train(
            cuda.backend_arc(),
            true,
            &args,
            started,
            device_started.elapsed(),
        ),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err("built without the cuda feature".into()),
    }
}

/// Accuracy of `net` on the first `n` images of `data`, in batches of `batch` (the training batch, so the
/// net's workspace is not reallocated between training and evaluation; the result does not depend on it).
fn accuracy<B: Backend>(
    net: &mut InceptionMnist<B>,
    data: &Dataset,
    n: usize,
    batch: usize,
) -> Res<f64> {
    if n == 0 {
        return Err("no images to evaluate".into());
    }
    let px = data.pixels();
    let (images, labels) = (
        data.images
            .get(..n * px)
            .ok_or("the data set holds fewer pixels than its labels need")?,
        data.labels
            .get(..n)
            .ok_or("the data set holds fewer labels than asked for")?,
    );
    // Correct predictions are counted on the device and read once.
    Ok(net.accuracy(images, labels, batch)?)
}

/// Checks the data set before the first step: images in every split, all of one square size (that of the
/// net when `image` is given), and enough training images for a batch.
fn check_data(data: &MnistSplits, dir: &Path, image: Option<usize>, batch: usize) -> Res<()> {
    let t = &data.train;
    for (name, set) in [
        ("training", t),
        ("validation", &data.val),
        ("test", &data.test),
    ] {
        if set.is_empty() {
            return Err(format!("{}: the {name} set has no images", dir.display()).into());
        }
        if (set.rows, set.cols) != (t.rows, t.cols) {
            return Err(format!(
                "{}: the {name} images are {}×{}, the training images {}×{}",
                dir.display(),
                set.rows,
                set.cols,
                t.rows,
                t.cols
            )
            .into());
        }
    }
    if let Some(image) = image.filter(|&i| i != t.rows || i != t.cols) {
        return Err(format!(
            "{}: the images are {}×{}, the model takes {image}×{image}",
            dir.display(),
            t.rows,
            t.cols
        )
        .into());
    }
    if batch > t.len() {
        return Err(format!(
            "--batch {batch}: the training set of {} has {} images",
            dir.display(),
            t.len()
        )
        .into());
    }
    Ok(())
}

/// A new, unique folder `runs/<unix time>` (`-2`, `-3`, ... when taken, also by a run started in the same
/// second): created here, so two runs never share one.
pub(crate) fn unique_run_folder() -> Res<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let runs = Path::new("runs");
    std::fs::create_dir_all(runs)
        .map_err(|e| format!("{}: cannot create the folder: {e}", runs.display()))?;
    for n in 1..10_000 {
        let dir = match n {
            1 => runs.join(secs.to_string()),
            _ => runs.join(format!("{secs}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(format!("{}: cannot create the folder: {e}", dir.display()).into())
            }
        }
    }
    Err(format!("{}: no free run folder name for {secs}", runs.display()).into())
}

/// Whether a file name is one a run writes (what --overwrite deletes).
fn is_run_file(name: &str) -> bool {
    let unit = (name.starts_with("model") || name.starts_with("train_state"))
        && name.ends_with(".safetensors");
    unit || name.contains(".tmp-") || [MANIFEST, "log.jsonl", "curves.svg"].contains(&name)
}

/// The output folder of a new run: `--out` (refused when it holds anything, unless --overwrite, which
/// deletes the files a run writes when `create`) or, when `create`, a new unique folder. Without `create`
/// only the checks run (before the net is allocated); with it the folder is made ready.
fn fresh_out(args: &Args, create: bool) -> Res<Option<PathBuf>> {
    let Some(out) = &args.out else {
        return if create {
            unique_run_folder().map(Some)
        } else {
            Ok(None)
        };
    };
    let entries: Vec<_> = match std::fs::read_dir(out) {
        Ok(entries) => entries.flatten().collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(format!("{}: cannot use as --out: {e}", out.display()).into()),
    };
    if !entries.is_empty() {
        if !args.overwrite {
            let mut names: Vec<String> = entries
                .iter()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            return Err(format!(
                "{} is not empty ({}): --resume {} continues its run, --overwrite replaces it, or \
                 choose another --out",
                out.display(),
                names.join(", "),
                out.display()
            )
            .into());
        }
        if !create {
            return Ok(None);
        }
        // The manifest first: a crash part-way leaves no checkpoint that names deleted files.
        let manifest = out.join(MANIFEST);
        if manifest.exists() {
            std::fs::remove_file(&manifest)
                .map_err(|e| format!("{}: cannot delete: {e}", manifest.display()))?;
        }
        for e in entries {
            if is_run_file(&e.file_name().to_string_lossy()) && e.path().is_file() {
                std::fs::remove_file(e.path())
                    .map_err(|err| format!("{}: cannot delete: {err}", e.path().display()))?;
            }
        }
    }
    if create {
        std::fs::create_dir_all(out)
            .map_err(|e| format!("{}: cannot create the output folder: {e}", out.display()))?;
    }
    Ok(Some(out.clone()))
}

/// The value of recipe option `key` for a resumed run: the stored one, unless the command line gives one.
/// A given value that differs is an error for what a resume cannot change (`fixed`), else it is said.
fn resumed_value<T>(
    recipe: &BTreeMap<String, String>,
    key: &str,
    given: Option<T>,
    fixed: bool,
    manifest: &Path,
) -> Res<Option<T>>
where
    T: std::str::FromStr + std::fmt::Display + PartialEq + Copy,
{
    let stored = recipe.get(key).and_then(|v| v.parse::<T>().ok());
    match (stored, given) {
        (Some(s), Some(g)) if s != g => {
            if fixed {
                Err(format!(
                    "--{key} {g}: the resumed run has {key} {s} ({}); a resume cannot change it",
                    manifest.display()
                )
                .into())
            } else {
                let differs = if ["steps", "log_every", "checkpoint_every"].contains(&key) {
                    ""
                } else {
                    ": the run no longer equals an uninterrupted one"
                };
                eprintln!(
                    "note: this resume changes {key} from {s} to {g} ({}){differs}",
                    manifest.display()
                );
                Ok(Some(g))
            }
        }
        (s, g) => Ok(g.or(s)),
    }
}

/// Keeps the lines of `log.jsonl` up to step `step` (those after it were logged after the checkpoint and
/// will be logged again) and returns their points for the plot.
fn truncate_log(path: &Path, step: u64) -> Res<Vec<(u64, f32, f64)>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display()).into()),
    };
    let (mut kept, mut points) = (String::new(), Vec::new());
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue; // a line cut by a kill
        };
        let s = v.get("step").and_then(|s| s.as_u64());
        if s.is_some_and(|s| s <= step) {
            kept.push_str(line);
            kept.push('\n');
            let loss = v.get("loss").and_then(|l| l.as_f64());
            let val = v.get("val_accuracy").and_then(|a| a.as_f64());
            if let (Some(s), Some(loss), Some(val)) = (s, loss, val) {
                points.push((s, loss as f32, val));
            }
        }
    }
    write_file_atomic(path, kept.as_bytes())?;
    Ok(points)
}

/// The data sets resident on the device for a GPU run: training steps and evaluations gather their batches
/// there, so no step copies anything from the host.
struct Resident<B: Backend> {
    train: DeviceDataset<B>,
    val: DeviceDataset<B>,
    test: DeviceDataset<B>,
}

fn train<H: BackendHandle>(
    backend: H,
    gpu: bool,
    args: &Args,
    started: Instant,
    kernel_load: std::time::Duration,
) -> Res<()> {
    let t = Instant::now();
    let data = load_dir(&args.data)?;
    let data_load = t.elapsed().as_secs_f64();
    if args.eval_only {
        let path = args
            .checkpoint
            .as_deref()
            .ok_or("--eval-only needs --checkpoint FILE")?;
        let mut net = InceptionMnist::load(path, backend, args.seed.unwrap_or(0))?;
        net.set_precision(args.precision().unwrap_or_default())?;
        check_data(&data, &args.data, Some(net.config().image), 1)?;
        let acc = accuracy(
            &mut net,
            &data.test,
            data.test.len(),
            args.eval_batch.or(args.batch).unwrap_or(50),
        )
        .map_err(|e| format!("{}: {e}", path.display()))?;
        println!("test accuracy: {acc:.2}%");
        return Ok(());
    }
    let (out, mut net, mut recipe, mut curve) = match &args.resume {
        Some(dir) => {
            let removed = if dir.is_dir() {
                remove_stale_temporaries(dir)?
            } else {
                Vec::new() // load_checkpoint says what is wrong
            };
            if !removed.is_empty() {
                eprintln!(
                    "removed {} temporary file(s) of killed runs in {}",
                    removed.len(),
                    dir.display()
                );
            }
            let (net, ckpt) = InceptionMnist::load_checkpoint(dir, backend)?;
            let manifest = dir.join(MANIFEST);
            let r = &ckpt.recipe;
            let c = *net.config();
            let stored = |key: &str| r.get(key).cloned();
            // Fixed by the checkpoint: the widths and dropout (in the model file) and the seed and init.
            for (key, given, have) in [
                ("map1", args.map1, c.map1),
                ("map2", args.map2, c.map2),
                ("reduce", args.reduce, c.reduce),
                ("hidden", args.hidden, c.hidden),
            ] {
                resumed_value(
                    &BTreeMap::from([(key.to_string(), have.to_string())]),
                    key,
                    given,
                    true,
                    &manifest,
                )?;
            }
            resumed_value(
                &BTreeMap::from([("dropout".to_string(), c.dropout.to_string())]),
                "dropout",
                args.dropout,
                true,
                &manifest,
            )?;
            resumed_value(r, "seed", args.seed, true, &manifest)?;
            if let (Some(s), Some(g)) = (stored("init"), args.init) {
                if s != g.name() {
                    return Err(format!(
                        "--init {}: the resumed run has init {s} ({}); a resume cannot change it",
                        g.name(),
                        manifest.display()
                    )
                    .into());
                }
            }
            let lr = resumed_value(r, "lr", args.lr, false, &manifest)?.unwrap_or(1e-4);
            let batch = resumed_value(r, "batch", args.batch, false, &manifest)?.unwrap_or(50);
            let precision = resumed_value(r, "precision", args.precision(), false, &manifest)?;
            let mut recipe = r.clone();
            recipe.insert("lr".into(), lr.to_string());
            recipe.insert("batch".into(), batch.to_string());
            recipe.insert(
                "precision".into(),
                precision.unwrap_or_default().to_string(),
            );
            for (key, given) in [
                ("steps", args.steps),
                ("log_every", args.log_every),
                ("checkpoint_every", args.checkpoint_every),
            ] {
                if let Some(v) = resumed_value(r, key, given, false, &manifest)? {
                    recipe.insert(key.into(), v.to_string());
                }
            }
            eprintln!("resumed {} at step {}", dir.display(), net.step());
            let curve = truncate_log(&dir.join("log.jsonl"), ckpt.step)?;
            (dir.clone(), net, recipe, curve)
        }
        None => {
            let d = MnistConfig::default();
            let config = MnistConfig {
                map1: args.map1.unwrap_or(d.map1),
                map2: args.map2.unwrap_or(d.map2),
                reduce: args.reduce.unwrap_or(d.reduce),
                hidden: args.hidden.unwrap_or(d.hidden),
                dropout: args.dropout.unwrap_or(d.dropout),
                image: data.train.rows,
            };
            config.validate("train_mnist")?;
            let batch = args.batch.unwrap_or(50);
            check_data(&data, &args.data, None, batch)?;
            let (seed, init) = (args.seed.unwrap_or(0), args.init.unwrap_or(Init::Pytorch));
            fresh_out(args, false)?;
            let mut net = InceptionMnist::new(backend, config, seed)?;
            if init == Init::Writeup {
                net.init_writeup(seed)?;
            }
            let out = fresh_out(args, true)?.ok_or("no output folder")?;
            let mut recipe = BTreeMap::new();
            for (k, v) in [
                ("map1", config.map1.to_string()),
                ("map2", config.map2.to_string()),
                ("reduce", config.reduce.to_string()),
                ("hidden", config.hidden.to_string()),
                ("dropout", config.dropout.to_string()),
                ("image", config.image.to_string()),
                ("lr", args.lr.unwrap_or(1e-4).to_string()),
                ("batch", batch.to_string()),
                ("seed", seed.to_string()),
                ("init", init.name().to_string()),
                (
                    "precision",
                    args.precision().unwrap_or_default().to_string(),
                ),
                ("log_every", args.log_every.unwrap_or(100).to_string()),
                (
                    "checkpoint_every",
                    args.checkpoint_every.unwrap_or(5000).to_string(),
                ),
            ] {
                recipe.insert(k.to_string(), v);
            }
            if let Some(steps) = args.steps {
                recipe.insert("steps".into(), steps.to_string());
            }
            (out, net, recipe, Vec::new())
        }
    };
    let precision = recipe
        .get("precision")
        .and_then(|v| v.parse::<Precision>().ok())
        .unwrap_or_default();
    net.set_precision(precision)?;
    let number = |key: &str| recipe.get(key).and_then(|v| v.parse::<f64>().ok());
    let lr = number("lr").unwrap_or(1e-4);
    let batch = recipe
        .get("batch")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(50);
    check_data(&data, &args.data, Some(net.config().image), batch)?;
    let count = |key: &str| recipe.get(key).and_then(|v| v.parse::<u64>().ok());
    let stored_steps = count("steps");
    let steps = stored_steps.unwrap_or(if gpu { 20_000 } else { 200 });
    let log_every = count("log_every").unwrap_or(100).max(1);
    let checkpoint_every = count("checkpoint_every").unwrap_or(5000).max(1);
    // The run's length as resolved here, in its checkpoints' recipe: a resume on another kind of device keeps
    // it (the default differs by device).
    recipe.insert("steps".into(), steps.to_string());
    if net.step() > steps {
        return Err(format!(
            "{}: the checkpoint is at step {}, past --steps {steps}",
            out.display(),
            net.step()
        )
        .into());
    }
    let val_n = if gpu {
        data.val.len()
    } else {
        data.val.len().min(1000)
    };
    // Evaluation batches: an inference plan of their own size and workspace (the training plan's buffers
    // stay as they are). On the CPU the training batch, as before (a batch of 1,000 would plan ~1.5 GB).
    let eval_batch = args.eval_batch.unwrap_or(if gpu { 1000 } else { batch });
    let t = Instant::now();
    let resident = if gpu {
        net.set_capture(!args.no_graph);
        net.reserve_steps(lr, steps)?;
        // The evaluations' plans and working memory exist before the step is captured, so a validation
        // neither grows the working memory nor makes the captured step stale.
        net.reserve_eval(val_n, eval_batch)?;
        Some(Resident {
            train: net.to_device(&data.train)?,
            val: net.to_device(&data.val.slice(0..val_n)?)?,
            test: net.to_device(&data.test)?,
        })
    } else {
        None
    };
    let upload = t.elapsed().as_secs_f64();
    if !gpu && stored_steps.is_none() {
        eprintln!("shortened CPU run: {steps} steps (the write-up's advice without a GPU; --steps overrides)");
    }
    if val_n < data.val.len() {
        eprintln!("validation on the first {val_n} of {} images (CPU run); the test set is evaluated in full", data.val.len());
    }
    let pb = ProgressBar::new(steps);
    pb.set_style(
        ProgressStyle::with_template("{bar:30} step {pos}/{len} {msg} [{per_sec}, eta {eta}]")
            .map_err(|e| e.to_string())?,
    );
    pb.set_position(net.step());
    let log_path = out.join("log.jsonl");
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: cannot open: {e}", log_path.display()))?;
    // The last checkpoint known good: the resumed one, then each one saved.
    let mut last_good = args.resume.as_ref().map(|_| net.step());
    let last_good_msg = |last: Option<u64>| match last {
        Some(s) => format!(
            "the last good checkpoint is step {s} in {} (--resume {})",
            out.display(),
            out.display()
        ),
        None => format!("no checkpoint was saved in {}", out.display()),
    };
    // Checkpoints: the parameters and moments are copied to host memory in stream order (pinned memory on a
    // GPU, no wait), then a background thread waits for the copy, checks every value is finite and writes the
    // unit while training goes on. At most one in flight: the previous writer is joined before the next copy
    // is issued. A diverged model or an I/O error in the writer stops the run at the next checkpoint or at the
    // end, naming the step or the file. Whatever ends the run, the checkpoint in flight is finished first, and
    // the error names the last good one.
    type Writer = (
        u64,
        std::thread::JoinHandle<inception_cuda::Result<Checkpoint>>,
    );
    let mut writer: Option<Writer> = None;
    let join = |(step, h): Writer| -> Res<Checkpoint> {
        match h
            .join()
            .map_err(|_| "the checkpoint writer thread panicked")?
        {
            Ok(c) => Ok(c),
            Err(e @ inception_cuda::Error::NonFinite { .. }) => {
                Err(format!("diverged, checkpoint of step {step} not saved: {e}").into())
            }
            Err(e) => Err(format!("checkpoint of step {step} not saved: {e}").into()),
        }
    };
    let mut time = Timing {
        startup: started.elapsed().as_secs_f64(),
        data_load,
        kernel_load: kernel_load.as_secs_f64(),
        upload,
        ..Timing::default()
    };
    let (start, first) = (Instant::now(), net.step());
    let mut run = || -> Res<f64> {
        while net.step() < steps {
            let t = Instant::now();
            match &resident {
                Some(r) => {
                    net.train_gathered(&r.train, batch, lr)?;
                }
                None => {
                    let (x, y) = data.train.batch(net.step(), batch)?;
                    net.train_step(x, y, lr)?;
                }
            }
            time.steps += t.elapsed().as_secs_f64();
            let s = net.step();
            if s % log_every == 0 || s == steps {
                let t = Instant::now();
                let loss = net.take_mean_loss()?.unwrap_or(f32::NAN);
                time.host_waits += t.elapsed().as_secs_f64();
                if !loss.is_finite() {
                    return Err(format!("non-finite loss {loss} at step {s}").into());
                }
                let t = Instant::now();
                let val = match &resident {
                    Some(r) => net.accuracy_on(&r.val, val_n, eval_batch)?,
                    None => accuracy(&mut net, &data.val, val_n, eval_batch)?,
                };
                time.validation += t.elapsed().as_secs_f64();
                let secs = start.elapsed().as_secs_f64();
                writeln!(log, "{{\"step\": {s}, \"loss\": {loss}, \"val_accuracy\": {val:.4}, \"seconds\": {secs:.2}}}")
                    .and_then(|()| log.flush())
                    .map_err(|e| format!("{}: cannot write: {e}", log_path.display()))?;
                curve.push((s, loss, val));
                pb.set_message(format!(
                    "loss {loss:.4} val {val:.2}% ({:.0} img/s)",
                    ((s - first) as f64 * batch as f64) / secs.max(1e-9)
                ));
            }
            if s % checkpoint_every == 0 || s == steps {
                let t = Instant::now();
                if let Some(w) = writer.take() {
                    // the previous checkpoint, written meanwhile
                    last_good = Some(join(w)?.step);
                }
                let pending = net.checkpoint_snapshot_async()?;
                let (dir, recipe) = (out.clone(), recipe.clone());
                let h = std::thread::spawn(move || pending.finish()?.write(&dir, &recipe));
                writer = Some((s, h));
                time.checkpoints += t.elapsed().as_secs_f64();
            }
            pb.set_position(s);
        }
        pb.finish();
        log.sync_all()
            .map_err(|e| format!("{}: cannot write: {e}", log_path.display()))?;
        write_curves(&out.join("curves.svg"), &curve)?;
        eprintln!(
            "{} steps in {:.1} s; outputs in {}",
            net.step() - first,
            start.elapsed().as_secs_f64(),
            out.display()
        );
        let t = Instant::now();
        let acc = match &resident {
            Some(r) => net.accuracy_on(&r.test, data.test.len(), eval_batch)?,
            None => accuracy(&mut net, &data.test, data.test.len(), eval_batch)?,
        };
        time.test = t.elapsed().as_secs_f64();
        Ok(acc)
    };
    let result = run();
    // The last checkpoint is written while the test set is evaluated; an error above waits for the one in
    // flight too, so that it is never lost.
    let t = Instant::now();
    let written = writer.take().map(join);
    time.checkpoints += t.elapsed().as_secs_f64();
    let outcome = match (result, written) {
        (Ok(acc), None | Some(Ok(_))) => Ok(acc),
        (Err(e), Some(Ok(c))) => {
            last_good = Some(c.step);
            Err(e)
        }
        (Err(e), Some(Err(w))) => Err(format!("{e}; and {w}").into()),
        (Err(e), None) | (Ok(_), Some(Err(e))) => Err(e),
    };
    let acc = outcome.map_err(|e| {
        pb.abandon();
        format!("{e}; {}", last_good_msg(last_good))
    })?;
    time.capture = net.capture_seconds();
    time.replays = net.replays();
    time.captures = net.captures();
    time.total = started.elapsed().as_secs_f64();
    eprintln!("{}", time.summary());
    writeln!(log, "{}", time.json())
        .and_then(|()| log.sync_all())
        .map_err(|e| format!("{}: cannot write: {e}", log_path.display()))?;
    println!("test accuracy: {acc:.2}%");
    Ok(())
}

/// Where a run's time went, in seconds (printed at the end and written as the last line of `log.jsonl`).
#[derive(Default)]
struct Timing {
    /// From the start of the program to the first step: data, device, net (or resume), output folder, the
    /// data's upload (the terms below are parts of it).
    startup: f64,
    /// Reading the data set from disk.
    data_load: f64,
    /// Opening the device: the driver, the context, the kernels' PTX loaded (JIT-compiled).
    kernel_load: f64,
    /// A GPU run's data sets and Adam table uploaded to the device, and its evaluation plans prepared.
    upload: f64,
    /// Issuing the training steps (on a GPU the kernels run asynchronously; their time shows up in the
    /// host waits), the graph captures excluded.
    steps: f64,
    /// Recording the step as a CUDA graph (once per batch size, again when working memory grew).
    capture: f64,
    /// Steps run by replaying the captured graph.
    replays: u64,
    /// Graphs of the step recorded (1 on a GPU run with graphs, 0 without).
    captures: u64,
    /// Reading the mean loss at logging points: the host's waits for the device (the queued steps).
    host_waits: f64,
    /// Validation passes.
    validation: f64,
    /// Checkpoints on the training thread: the device-to-host copies issued, and waits for the writer thread.
    checkpoints: f64,
    /// The test set's evaluation.
    test: f64,
    /// The whole run.
    total: f64,
}

impl Timing {
    /// Steps without the captures (which happen inside a step).
    fn steps_only(&self) -> f64 {
        (self.steps - self.capture).max(0.0)
    }

    fn summary(&self) -> String {
        format!(
            "time: {:.1} s in all: start-up {:.1} s (data {:.1} s, device and kernels {:.1} s, upload {:.2} s), \
             steps {:.1} s (+ graph captures: {} in {:.2} s; {} steps replayed), host waits {:.1} s, validation {:.1} s, \
             checkpoints {:.1} s (writing runs in the background), test {:.1} s",
            self.total,
            self.startup,
            self.data_load,
            self.kernel_load,
            self.upload,
            self.steps_only(),
            self.captures,
            self.capture,
            self.replays,
            self.host_waits,
            self.validation,
            self.checkpoints,
            self.test
        )
    }

    fn json(&self) -> String {
        format!(
            "{{\"time\": {{\"total\": {:.3}, \"startup\": {:.3}, \"data_load\": {:.3}, \"kernel_load\": {:.3}, \
             \"upload\": {:.3}, \"steps\": {:.3}, \"capture\": {:.3}, \"captures\": {}, \"replayed_steps\": {}, \
             \"host_waits\": {:.3}, \"validation\": {:.3}, \"checkpoints\": {:.3}, \"test\": {:.3}}}}}",
            self.total,
            self.startup,
            self.data_load,
            self.kernel_load,
            self.upload,
            self.steps_only(),
            self.capture,
            self.captures,
            self.replays,
            self.host_waits,
            self.validation,
            self.checkpoints,
            self.test
        )
    }
}

/// Loss (left axis) and validation accuracy (right axis, %) over steps, as an SVG line chart.
fn write_curves(path: &Path, points: &[(u64, f32, f64)]) -> Res<()> {
    let (w, h, pad) = (640.0, 320.0, 40.0);
    let max_step = points.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let max_loss = points
        .iter()
        .map(|p| p.1 as f64)
        .fold(0.0, f64::max)
        .max(1e-6);
    let x = |s: u64| pad + (w - 2.0 * pad) * s as f64 / max_step;
    let line = |f: &dyn Fn(&(u64, f32, f64)) -> f64| {
        points
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), h - pad - (h - 2.0 * pad) * f(p)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <line x1=\"{pad}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"black\"/>\n\
         <text x=\"{pad}\" y=\"{t}\" fill=\"#c0392b\">loss (max {max_loss:.3})</text>\n\
         <text x=\"{r2}\" y=\"{t}\" fill=\"#2471a3\" text-anchor=\"end\">validation accuracy (0–100 %)</text>\n\
         <text x=\"{r}\" y=\"{b2}\" text-anchor=\"end\">step {max_step}</text>\n\
         <polyline fill=\"none\" stroke=\"#c0392b\" stroke-width=\"2\" points=\"{loss}\"/>\n\
         <polyline fill=\"none\" stroke=\"#2471a3\" stroke-width=\"2\" points=\"{acc}\"/>\n</svg>\n",
        b = h - pad,
        r = w - pad,
        r2 = w - pad,
        t = pad - 10.0,
        b2 = h - pad + 16.0,
        loss = line(&|p| p.1 as f64 / max_loss),
        acc = line(&|p| p.2 / 100.0),
    );
    Ok(write_file_atomic(path, svg.as_bytes())?)
}
