//! The small net and data set of the step-capture GPU tests (tests/gpu_capture.rs, tests/gpu_eval_reserve.rs).

use inception_cuda::data::Dataset;
use inception_cuda::nn::MnistConfig;

/// The small net the capture tests train: 28 × 28 images, fc1 12,544 → 16.
pub const CFG: MnistConfig = MnistConfig {
    map1: 4,
    map2: 4,
    reduce: 2,
    hidden: 16,
    dropout: 0.5,
    image: 28,
};

/// `n` 28 × 28 images of bytes over 255 and their labels.
pub fn data_set(n: usize) -> Dataset {
    Dataset {
        images: super::uniform(71, n * 784)
            .iter()
            .map(|v| (((v + 1.0) * 127.5).round() as u8) as f32 / 255.0)
            .collect(),
        labels: (0..n as u32).map(|i| (i * 7 + 1) % 10).collect(),
        rows: 28,
        cols: 28,
    }
}
