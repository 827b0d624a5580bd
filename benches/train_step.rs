//! One full-size training step of the MNIST Inception net (batch 50: forward, loss, backward, Adam over all
//! 140.6 M parameters). CPU group now; the GPU group arrives with the CUDA training step.
//!
//!     cargo bench --bench train_step

use criterion::{criterion_group, criterion_main, Criterion};
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

criterion_group!(benches, train_step);
criterion_main!(benches);
