//! ReLU forward and backward over 16 M values: the CPU twins, and the CUDA kernels when a GPU is present.
//! Every GPU measurement synchronises the device inside the timed region.
//!
//!     cargo bench --bench relu

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use inception_cuda::{ops, Device, Tensor};

const N: usize = 1 << 24;

fn bench_device(c: &mut Criterion, device: &Device) {
    let x: Vec<f32> = (0..N).map(|i| (i % 1000) as f32 / 500.0 - 1.0).collect();
    let x = Tensor::from_vec(x, &[N], device).expect("upload x");
    let y = ops::relu(&x).expect("relu");
    let mut group = c.benchmark_group(format!("relu [{}]", device.describe()));
    // Bytes moved: forward reads x and writes y; backward reads dy and y and writes dx.
    group.throughput(Throughput::Bytes((2 * N * 4) as u64));
    group.bench_function("relu_fwd 16M", |b| {
        b.iter(|| {
            let y = ops::relu(&x).expect("relu");
            device.synchronize().expect("sync");
            y
        })
    });
    group.throughput(Throughput::Bytes((3 * N * 4) as u64));
    group.bench_function("relu_bwd 16M", |b| {
        b.iter(|| {
            let dx = ops::relu_bwd(&x, &y).expect("relu_bwd");
            device.synchronize().expect("sync");
            dx
        })
    });
    group.finish();
}

fn relu(c: &mut Criterion) {
    bench_device(c, &Device::Cpu);
    match Device::cuda(0) {
        Ok(gpu) => bench_device(c, &gpu),
        Err(reason) => eprintln!("GPU benchmarks skipped: {reason}"),
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = relu
}
criterion_main!(benches);
