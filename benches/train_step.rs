//! One full-size training step of the MNIST Inception net (forward, loss, backward, Adam over all 140.6 M
//! parameters): the CPU twins at batch 50, and the CUDA kernels at batch 50 and 256 when a GPU is present (the
//! batch is on the device; the device is synchronised inside the timed region).
//!
//!     cargo bench --bench train_step

use criterion::{criterion_group, criterion_main, Criterion};

#[cfg(feature = "cuda")]
#[path = "support/secs.rs"]
mod secs;
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{InceptionMnist, MnistConfig};
use inception_cuda::Device;

const BATCH: usize = 50;

fn batch(seed: u32) -> (Vec<f32>, Vec<u32>) {
    let images = (0..BATCH * 784)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed) as f32 / u32::MAX as f32)
        .collect();
    let labels = (0..BATCH as u32).map(|i| (i * 7 + seed) % 10).collect();
    (images, labels)
}

fn train_step(c: &mut Criterion) {
    if std::env::var("INCEPTION_BENCH_CPU").is_ok_and(|v| v == "0") {
        return println!("CPU group skipped (INCEPTION_BENCH_CPU=0)");
    }
    let mut net = InceptionMnist::new(CpuBackend, MnistConfig::default(), 0).expect("net");
    let (images, labels) = batch(1);
    net.train_step(&images, &labels, 1e-4)
        .expect("warm-up step"); // allocates the workspace
    let mut group = c.benchmark_group(format!("train_step [{}]", Device::Cpu.describe()));
    group
        .sample_size(10)
        .measurement_time(std::time::Duration::from_secs(20));
    group.bench_function("batch 50, fp32", |b| {
        b.iter(|| net.train_step(&images, &labels, 1e-4).expect("step"));
    });
    group.finish();
    let loss = net.loss().expect("loss");
    assert!(
        loss.is_finite(),
        "the benchmarked steps produced a non-finite loss"
    );
}

#[cfg(feature = "cuda")]
fn train_step_gpu(c: &mut Criterion) {
    let dev = match Device::cuda(0) {
        Ok(dev) => dev,
        Err(reason) => return eprintln!("GPU train_step benchmarks skipped: {reason}"),
    };
    let Device::Cuda(cuda) = &dev else { return };
    let mut group = c.benchmark_group(format!("train_step [{}]", dev.describe()));
    group
        .sample_size(20)
        .measurement_time(secs::measurement_or(std::time::Duration::from_secs(5)));
    use inception_cuda::shape::Precision;
    for (batch, precision) in [
        (50usize, Precision::Fp32),
        (256, Precision::Fp32),
        (50, Precision::Tf32),
        (256, Precision::Tf32),
    ] {
        let mut net =
            InceptionMnist::new(cuda.backend_arc(), MnistConfig::default(), 0).expect("net");
        net.set_precision(precision).expect("precision");
        let images: Vec<f32> = (0..batch * 784).map(|i| (i % 255) as f32 / 255.0).collect();
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
        net.load_batch(&images, Some(&labels)).expect("load");
        net.train_loaded(1e-4).expect("warm-up step"); // workspace and scratch exist from here on
        dev.synchronize().expect("sync");
        group.bench_function(format!("batch {batch}, {precision}"), |b| {
            b.iter(|| {
                net.train_loaded(1e-4).expect("step");
                dev.synchronize().expect("sync");
            })
        });
        assert!(
            net.loss().expect("loss").is_finite(),
            "non-finite loss on the GPU"
        );
    }
    group.finish();
}

#[cfg(not(feature = "cuda"))]
fn train_step_gpu(_: &mut Criterion) {
    eprintln!("GPU train_step benchmarks skipped: built without the `cuda` feature");
}

criterion_group!(benches, train_step, train_step_gpu);
criterion_main!(benches);
