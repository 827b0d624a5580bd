//! Runs training steps of the full MNIST net on the GPU and nothing else, for a profiler to attribute every
//! kernel of a step (`scripts/device-suite.sh` runs it under `ncu`, `scripts/ncu-summary.py` makes the table).
//! Prints the mean wall time of the timed steps (host clock around synchronised steps).
//!
//!     cargo run --example profile_step --release -- [BATCH] [WARM_UP_STEPS] [TIMED_STEPS] [MODE] [PRECISION]
//!
//! MODE: `loaded` (default: one batch loaded from the host once, the step issued launch by launch),
//! `gathered` (each step's batch gathered on the device from 1,000 resident images, issued launch by launch)
//! or `replayed` (gathered, the step captured once as a CUDA graph and replayed: train_mnist's GPU step).
//! PRECISION: `fp32` (default) or `tf32` (the convolutions' and linear layers' products on the tensor cores).
//!
//! Needs a CUDA GPU: without one it says why and exits with status 2.

use std::time::Instant;

use inception_cuda::data::Dataset;
use inception_cuda::nn::{InceptionMnist, MnistConfig};
use inception_cuda::shape::Precision;
use inception_cuda::Device;

fn arg(i: usize, default: usize) -> Result<usize, Box<dyn std::error::Error>> {
    match std::env::args().nth(i) {
        Some(s) => Ok(s
            .parse()
            .map_err(|e| format!("argument {i} ({s:?}): {e}"))?),
        None => Ok(default),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (batch, warm, timed) = (arg(1, 50)?, arg(2, 1)?, arg(3, 1)?);
    let mode = std::env::args().nth(4).unwrap_or_else(|| "loaded".into());
    if !["loaded", "gathered", "replayed"].contains(&mode.as_str()) {
        return Err(format!("MODE {mode:?}: loaded, gathered or replayed").into());
    }
    let precision: Precision = match std::env::args().nth(5) {
        None => Precision::Fp32,
        Some(name) => name.parse()?,
    };
    let dev = match Device::cuda(0) {
        Ok(dev) => dev,
        Err(reason) => {
            eprintln!("this example needs a CUDA GPU: {reason}");
            std::process::exit(2);
        }
    };
    let Device::Cuda(cuda) = &dev else {
        unreachable!("Device::cuda returns a CUDA device")
    };
    let mut net = InceptionMnist::new(cuda.backend_arc(), MnistConfig::default(), 0)?;
    net.set_precision(precision)?;
    // images [batch, 1, 28, 28] in [0, 1), labels [batch]
    let images: Vec<f32> = (0..batch * 784)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32)
        .collect();
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 7) % 10).collect();
    let count = batch.max(1000);
    let set = Dataset {
        images: (0..count * 784)
            .map(|i| (i as u32).wrapping_mul(2_654_435_761) as f32 / u32::MAX as f32)
            .collect(),
        labels: (0..count as u32).map(|i| (i * 7) % 10).collect(),
        rows: 28,
        cols: 28,
    };
    let resident = net.to_device(&set)?;
    net.set_capture(mode == "replayed");
    net.reserve_steps(1e-4, (warm.max(2) + timed) as u64)?;
    net.load_batch(&images, Some(&labels))?;
    let step = |net: &mut InceptionMnist<_>| -> inception_cuda::Result<()> {
        match mode.as_str() {
            "loaded" => net.train_loaded(1e-4).map(|_| ()),
            _ => net.train_gathered(&resident, batch, 1e-4).map(|_| ()),
        }
    };
    for _ in 0..warm.max(if mode == "replayed" { 2 } else { 0 }) {
        step(&mut net)?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..timed {
        step(&mut net)?;
    }
    dev.synchronize()?;
    let ms = t0.elapsed().as_secs_f64() * 1e3 / timed.max(1) as f64;
    println!(
        "{}: batch {batch}, {mode}, {precision:?}, {timed} timed steps after {warm} warm-up: {ms:.3} ms/step ({} replayed), \
         loss {:.5}",
        dev.describe(),
        net.replays(),
        net.loss()?
    );
    Ok(())
}
