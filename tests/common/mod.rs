//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod capture;
pub mod gradcheck;
pub mod kernels;

use inception_cuda::Device;

/// `rel` under the repository root: `INCEPTION_CUDA_ROOT` when set (staged test binaries run on another
/// machine, see scripts/stage-gpu.sh), else the crate directory this binary was built from.
pub fn repo_path(rel: &str) -> std::path::PathBuf {
    let root = std::env::var_os("INCEPTION_CUDA_ROOT").map_or_else(
        || env!("CARGO_MANIFEST_DIR").into(),
        std::path::PathBuf::from,
    );
    root.join(rel)
}

/// CUDA device 0 for a GPU test; fails the test (never skips it) when there is none.
pub fn gpu() -> Device {
    Device::cuda(0).unwrap_or_else(|e| panic!("this GPU test needs a CUDA GPU: {e}"))
}

/// `n` reproducible values uniform in [-1, 1) (SplitMix64), independent of the code under test.
pub fn uniform(seed: u64, n: usize) -> Vec<f32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Asserts `got` and `want` are bit-identical, reporting the count and the first mismatching indices.
pub fn assert_bits_eq(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| got[i].to_bits() != want[i].to_bits())
        .collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values differ in bits; first: {}",
        bad.len(),
        got.len(),
        bad.iter()
            .take(8)
            .map(|&i| format!("[{i}] got {:e} want {:e}", got[i], want[i]))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Asserts `|got - want| <= atol + rtol·|want|` elementwise, reporting the max difference and first failures.
pub fn assert_close(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    let diff = |i: usize| (got[i] - want[i]).abs();
    let bad: Vec<usize> = (0..got.len())
        .filter(|&i| diff(i).is_nan() || diff(i) > atol + rtol * want[i].abs()) // NaN fails
        .collect();
    let max = (0..got.len()).map(diff).fold(0.0f32, f32::max);
    assert!(
        bad.is_empty(),
        "{what}: {} of {} values outside atol {atol:e} + rtol {rtol:e}; max |diff| {max:e}; first: {}",
        bad.len(),
        got.len(),
        bad.iter()
            .take(8)
            .map(|&i| format!("[{i}] got {:e} want {:e}", got[i], want[i]))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

/// Like [`assert_close`], with the absolute tolerance scaled by the output's size:
/// `|got - want| <= atol·max(1, rms(want)) + rtol·|want|`. A sum of many products that cancels to near zero
/// carries rounding of the size of its terms, not of its result; the RMS of the whole output stands for that
/// size (fp32 in another summation order: errors of order eps·rms·√terms).
pub fn assert_close_scaled(what: &str, got: &[f32], want: &[f32], atol: f32, rtol: f32) {
    let rms =
        (want.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / want.len().max(1) as f64).sqrt();
    let scale = rms.max(1.0) as f32;
    assert_close(
        &format!("{what} (atol scaled by rms {rms:.3e})"),
        got,
        want,
        atol * scale,
        rtol,
    );
}

/// Defines `cpu` and `gpu` tests running the same body on each device; the GPU one is ignored by default.
#[macro_export]
macro_rules! on_cpu_and_gpu {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[test]
            fn cpu() {
                super::$name(&inception_cuda::Device::Cpu);
            }

            #[test]
            #[ignore = "needs a CUDA GPU"]
            fn small_gpu() {
                super::$name(&super::common::gpu());
            }
        }
    )+};
}
