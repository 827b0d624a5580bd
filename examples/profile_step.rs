//! Runs training steps of the full MNIST net on the GPU and nothing else, for a profiler to attribute every
//! kernel of a step (`scripts/device-suite.sh` runs it under `ncu`, `scripts/ncu-summary.py` makes the table).
//! Prints the mean wall time of the timed steps (host clock around synchronised steps).
//!
//!     cargo run --example profile_step --release -- [BATCH] [WARM_UP_STEPS] [TIMED_STEPS] [fp32|tf32]
//!
//! Needs a CUDA GPU: without one it says why and exits with status 2.

use std::time::Instant;

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
    let precision = match std::env::args().nth(4).as_deref() {
        None | Some("fp32") => Precision::Fp32,
        Some("tf32") => Precision::Tf32,
        Some(other) => return Err(format!("argument 4 ({other:?}): fp32 or tf32").into()),
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
    net.load_batch(&images, Some(&labels))?;
    for _ in 0..warm {
        net.train_loaded(1e-4)?;
    }
    dev.synchronize()?;
    let t0 = Instant::now();
    for _ in 0..timed {
        net.train_loaded(1e-4)?;
    }
    dev.synchronize()?;
    let ms = t0.elapsed().as_secs_f64() * 1e3 / timed.max(1) as f64;
    println!(
        "{}: batch {batch}, {precision:?}, {timed} timed steps after {warm} warm-up: {ms:.3} ms/step, loss {:.5}",
        dev.describe(),
        net.loss()?
    );
    Ok(())
}
