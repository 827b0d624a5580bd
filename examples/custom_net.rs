//! A net that is not the write-up's, written with the graph API and nothing else from the crate's insides:
//! three Inception modules with GoogLeNet's (3a), (3b), (3b) widths (each divided by 4 on the CPU), a
//! flatten and a linear head, trained for 100 steps of Adam on MNIST (GPU when there is one, else the CPU),
//! then evaluated on the test set (the first 1,000 images on the CPU, all 10,000 on a GPU).
//!
//!     cargo run --release --example custom_net [-- DATA_DIR]

use std::time::Instant;

use inception_cuda::cpu::CpuBackend;
use inception_cuda::data::load_dir;
use inception_cuda::graph::{Graph, Params, Plan};
use inception_cuda::nn::{inception, InceptionWidths};
use inception_cuda::{Backend, BackendHandle, Device};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

const STEPS: u64 = 100;

/// GoogLeNet's (3b): 128, 128, 192, 32, 96, 64.
fn googlenet_3b() -> InceptionWidths {
    InceptionWidths {
        c1x1: 128,
        c3x3_reduce: 128,
        c3x3: 192,
        c5x5_reduce: 32,
        c5x5: 96,
        pool_proj: 64,
    }
}

/// Every width divided by `d` (at least 1).
fn narrow(w: InceptionWidths, d: usize) -> InceptionWidths {
    let f = |c: usize| (c / d).max(1);
    InceptionWidths {
        c1x1: f(w.c1x1),
        c3x3_reduce: f(w.c3x3_reduce),
        c3x3: f(w.c3x3),
        c5x5_reduce: f(w.c5x5_reduce),
        c5x5: f(w.c5x5),
        pool_proj: f(w.pool_proj),
    }
}

fn main() -> Res<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "data".into());
    let (device, why) = Device::cuda_if_available(0);
    if let Some(why) = why {
        eprintln!("no GPU used: {why}");
    }
    println!("device: {}", device.describe());
    match &device {
        Device::Cpu => train(CpuBackend, 4, 16, 1000, &dir),
        #[cfg(feature = "cuda")]
        Device::Cuda(cuda) => train(cuda.backend_arc(), 1, 64, 10_000, &dir),
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Err("built without the cuda feature".into()),
    }
}

fn train<B: Backend>(
    backend: impl BackendHandle<Backend = B>,
    divide: usize,
    batch: usize,
    test_images: usize,
    dir: &str,
) -> Res<()> {
    let b = backend.into_backend();
    let data = load_dir(std::path::Path::new(dir))?;
    let side = data.train.rows;

    // The net, defined once.
    let mut g = Graph::new();
    let x = g.input("images", &[1, side, side])?;
    let y = inception(
        &mut g,
        "inception_3a",
        x,
        narrow(InceptionWidths::googlenet_3a(), divide),
    )?;
    let y = inception(&mut g, "inception_3b", y, narrow(googlenet_3b(), divide))?;
    let y = inception(&mut g, "inception_3c", y, narrow(googlenet_3b(), divide))?;
    let y = g.flatten(y)?;
    let (w, bias) = g.linear_params("head", g.shape(y)[0], 10)?;
    let logits = g.linear(y, w, bias)?;
    g.softmax_xent(logits)?;

    // Planned once per batch size: training at `batch`, evaluation at 100.
    let mut params = Params::new(b.clone(), &g, 1)?;
    let mut train = Plan::train(b.clone(), &g, batch)?;
    let eval_batch = 100;
    let mut eval = Plan::inference(b, &g, eval_batch, logits)?;
    println!(
        "{} parameters ({:.1} MB with gradients and Adam moments); plans: training {:.1} MB, {} launches a step; \
         evaluation {:.1} MB",
        params.len(),
        params.bytes() as f64 / 1e6,
        train.bytes() as f64 / 1e6,
        train.launches(),
        eval.bytes() as f64 / 1e6
    );

    let start = Instant::now();
    for step in 0..STEPS {
        let (images, labels) = data.train.batch(step, batch)?;
        train.set_input("images", images)?;
        train.set_labels(labels)?;
        train.step(&mut params, 1e-3)?;
        if (step + 1) % 25 == 0 {
            let loss = train.take_mean_loss()?.unwrap_or(f32::NAN);
            println!(
                "step {:>3}: mean loss {loss:.4} ({:.1} s)",
                step + 1,
                start.elapsed().as_secs_f64()
            );
        }
    }

    let n = test_images.min(data.test.len()) / eval_batch * eval_batch;
    let px = data.test.pixels();
    let mut correct = 0;
    for k in 0..n / eval_batch {
        let range = k * eval_batch..(k + 1) * eval_batch;
        eval.set_input(
            "images",
            &data.test.images[range.start * px..range.end * px],
        )?;
        eval.forward(&params)?;
        let out = eval.output()?;
        for (row, &label) in out.chunks(10).zip(&data.test.labels[range]) {
            let best = (0..10).fold(0, |best, c| if row[c] > row[best] { c } else { best });
            correct += usize::from(best == label as usize);
        }
    }
    println!(
        "test accuracy after {STEPS} steps: {:.2} % ({correct} of {n} test images); {:.1} s in all",
        100.0 * correct as f64 / n.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
