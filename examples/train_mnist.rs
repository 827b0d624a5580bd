//! Trains the MNIST Inception net of the original write-up and prints its test accuracy: on the GPU where
//! there is one (20,000 steps), on the CPU otherwise (a shortened 200-step run that says so).
//!
//!     cargo run --example train_mnist --release [-- --help]
//!
//! Writes to `--out` (default `runs/<unix time>`): `model.safetensors` (the reference PyTorch module's tensors),
//! `train_state.safetensors` (Adam's state, for `--resume`), `log.jsonl` (one line per evaluation) and
//! `curves.svg` (loss and validation accuracy). The last line printed is `test accuracy: NN.NN%`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::data::{load_dir, Dataset};
use inception_cuda::nn::{InceptionMnist, MnistConfig};
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

/// Train the MNIST Inception net of the original write-up.
#[derive(Parser, Debug)]
struct Args {
    /// MNIST folder: the four IDX files (gzip or raw) or mnist_train.csv and mnist_test.csv.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/data"))]
    data: PathBuf,
    #[arg(long, default_value_t = 32)]
    map1: usize,
    #[arg(long, default_value_t = 64)]
    map2: usize,
    #[arg(long, default_value_t = 16)]
    reduce: usize,
    #[arg(long, default_value_t = 700)]
    hidden: usize,
    #[arg(long, default_value_t = 0.5)]
    dropout: f32,
    #[arg(long, default_value_t = 1e-4)]
    lr: f64,
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Training steps (default: 20,000 on a GPU, 200 on the CPU).
    #[arg(long)]
    steps: Option<u64>,
    #[arg(long, value_enum, default_value_t = DeviceArg::Auto)]
    device: DeviceArg,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Output folder (default runs/<unix time>; with --resume, the resumed folder).
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Init::Pytorch)]
    init: Init,
    /// Validation accuracy (and the logged loss) every this many steps.
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    #[arg(long, default_value_t = 5000)]
    checkpoint_every: u64,
    /// Continue the run saved in this folder (model.safetensors + train_state.safetensors).
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

fn run(args: Args) -> Res<()> {
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
        Device::Cpu => train(CpuBackend, false, &args),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => train(cuda.backend_arc(), true, &args),
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
    let (px, mut correct) = (data.pixels(), 0usize);
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let predicted = net.predict(&data.images[start * px..end * px])?;
        correct += predicted
            .iter()
            .zip(&data.labels[start..end])
            .filter(|(p, l)| p == l)
            .count();
    }
    Ok(100.0 * correct as f64 / n.max(1) as f64)
}

fn train<H: BackendHandle>(backend: H, gpu: bool, args: &Args) -> Res<()> {
    let data = load_dir(&args.data)?;
    let seed = args.seed;
    if args.eval_only {
        let path = args
            .checkpoint
            .as_deref()
            .ok_or("--eval-only needs --checkpoint FILE")?;
        let mut net = InceptionMnist::load(path, backend, seed)?;
        println!(
            "test accuracy: {:.2}%",
            accuracy(&mut net, &data.test, data.test.len(), args.batch)?
        );
        return Ok(());
    }
    let config = MnistConfig {
        map1: args.map1,
        map2: args.map2,
        reduce: args.reduce,
        hidden: args.hidden,
        dropout: args.dropout,
        image: data.train.rows,
    };
    let out = match (&args.out, &args.resume) {
        (Some(out), _) => out.clone(),
        (None, Some(dir)) => dir.clone(),
        (None, None) => {
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            PathBuf::from(format!("runs/{secs}"))
        }
    };
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut net = match &args.resume {
        Some(dir) => {
            let mut net = InceptionMnist::load(&dir.join("model.safetensors"), backend, seed)?;
            net.load_train_state(&dir.join("train_state.safetensors"))?;
            eprintln!("resumed {} at step {}", dir.display(), net.step());
            net
        }
        None => {
            let mut net = InceptionMnist::new(backend, config, seed)?;
            if args.init == Init::Writeup {
                net.init_writeup(seed)?;
            }
            net
        }
    };
    let steps = args.steps.unwrap_or(if gpu { 20_000 } else { 200 });
    let val_n = if gpu {
        data.val.len()
    } else {
        data.val.len().min(1000)
    };
    if !gpu && args.steps.is_none() {
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
    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(out.join("log.jsonl"))?;
    let (start, mut curve) = (Instant::now(), Vec::new());
    while net.step() < steps {
        let (x, y) = data.train.batch(net.step(), args.batch)?;
        net.train_step(x, y, args.lr)?;
        let s = net.step();
        if s % args.log_every == 0 || s == steps {
            let loss = net.take_mean_loss()?.unwrap_or(f32::NAN);
            if !loss.is_finite() {
                pb.abandon();
                return Err(format!(
                    "non-finite loss {loss} at step {s}; the last good checkpoint is in {}",
                    out.display()
                )
                .into());
            }
            let val = accuracy(&mut net, &data.val, val_n, args.batch)?;
            let secs = start.elapsed().as_secs_f64();
            writeln!(log, "{{\"step\": {s}, \"loss\": {loss}, \"val_accuracy\": {val:.4}, \"seconds\": {secs:.2}}}")?;
            curve.push((s, loss, val));
            pb.set_message(format!(
                "loss {loss:.4} val {val:.2}% ({:.0} img/s)",
                (s as f64 * args.batch as f64) / secs.max(1e-9)
            ));
        }
        if s % args.checkpoint_every == 0 || s == steps {
            net.save(&out.join("model.safetensors"))?;
            net.save_train_state(&out.join("train_state.safetensors"))?;
        }
        pb.set_position(s);
    }
    pb.finish();
    write_curves(&out.join("curves.svg"), &curve)?;
    eprintln!(
        "{steps} steps in {:.1} s; outputs in {}",
        start.elapsed().as_secs_f64(),
        out.display()
    );
    println!(
        "test accuracy: {:.2}%",
        accuracy(&mut net, &data.test, data.test.len(), args.batch)?
    );
    Ok(())
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
    std::fs::write(path, svg).map_err(|e| format!("{}: {e}", path.display()).into())
}
