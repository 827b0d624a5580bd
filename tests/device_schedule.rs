//! The write-up's schedule with the data on the device (issue 17): a training run whose batches are gathered
//! on the device from the device step counter, with dropout and Adam reading the step there too, equals
//! today's host-fed run bit for bit (on the CPU twins, and on the emulated kernels for a few steps); a
//! resumed gathered run equals the uninterrupted one (the device counter restored from the step); the Adam
//! table grows when a step outruns it; an evaluation gathered on the device equals the host-fed one.

mod common;

use common::{assert_bits_eq, uniform};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::data::Dataset;
use inception_cuda::nn::{InceptionMnist, MnistConfig};
use inception_cuda::{Backend, BackendHandle};

/// `n` images of 6×6 in [0, 1] (the loader's values: k / 255) and their digits.
fn data(n: usize, seed: u64) -> Dataset {
    Dataset {
        images: uniform(seed, n * 36)
            .iter()
            .map(|v| (((v + 1.0) * 127.5).round() as u8) as f32 / 255.0)
            .collect(),
        labels: (0..n as u32).map(|i| (i * 7 + seed as u32) % 10).collect(),
        rows: 6,
        cols: 6,
    }
}

/// Every parameter of `net`, flat.
fn params<B: Backend>(net: &InceptionMnist<B>) -> Vec<f32> {
    net.params()
        .to_vec()
        .iter()
        .flat_map(|e| net.param(&e.name).unwrap())
        .collect()
}

/// Trains `steps` steps of `batch` from a fresh net of seed 5 two ways, host-fed (`Dataset::batch` of the
/// step, `train_step`) and gathered on the device (`train_gathered`), and compares the mean losses of each
/// logging point (every 3 steps), the parameters and Adam's moments, bit for bit.
fn gathered_equals_host_fed<H: BackendHandle + Clone>(b: H, steps: u64, batch: usize) {
    let set = data(23, 3);
    let lr = 3e-3;
    let mut host = InceptionMnist::new(b.clone(), MnistConfig::tiny(), 5).unwrap();
    let mut dev = InceptionMnist::new(b, MnistConfig::tiny(), 5).unwrap();
    let resident = dev.to_device(&set).unwrap();
    dev.reserve_steps(lr, steps).unwrap();
    for s in 0..steps {
        let (x, y) = set.batch(host.step(), batch).unwrap();
        host.train_step(x, y, lr).unwrap();
        dev.train_gathered(&resident, batch, lr).unwrap();
        assert_eq!(dev.step(), host.step());
        if (s + 1) % 3 == 0 {
            let (a, b) = (
                host.take_mean_loss().unwrap(),
                dev.take_mean_loss().unwrap(),
            );
            assert_eq!(
                a.map(f32::to_bits),
                b.map(f32::to_bits),
                "mean loss at step {}: host-fed {a:?}, gathered {b:?}",
                s + 1
            );
        }
    }
    assert_bits_eq(
        "parameters, gathered vs host-fed",
        &params(&dev),
        &params(&host),
    );
    let (hs, ds) = (host.train_state().unwrap(), dev.train_state().unwrap());
    assert_bits_eq("Adam m", &ds.adam_m, &hs.adam_m);
    assert_bits_eq("Adam v", &ds.adam_v, &hs.adam_v);
    assert_ne!(
        params(&dev),
        params(&InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 5).unwrap())
    );
}

#[test]
fn a_gathered_run_equals_the_host_fed_run_bit_for_bit_on_the_cpu() {
    // 23 images, batch 4: the offset wraps (span 19) several times in 12 steps
    gathered_equals_host_fed(CpuBackend, 12, 4);
}

#[cfg(feature = "emulation")]
#[test]
fn a_gathered_run_equals_the_host_fed_run_bit_for_bit_emulated() {
    use inception_cuda::emu::{EmuBackend, ThreadOrder};
    let emu = std::sync::Arc::new(EmuBackend {
        order: ThreadOrder::Forward,
    });
    gathered_equals_host_fed(emu, 3, 3);
}

/// A gathered run stopped after 5 steps and resumed on a new net from its parameters and training state
/// (the device step counter restored from the step) continues as the uninterrupted run, bit for bit; its
/// step 6 uses the batch, dropout mask and Adam scalars of step 6.
#[test]
fn a_resumed_gathered_run_equals_the_uninterrupted_one() {
    let set = data(23, 4);
    let (lr, batch) = (3e-3, 4);
    let mut whole = InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 8).unwrap();
    let resident = whole.to_device(&set).unwrap();
    for _ in 0..9 {
        whole.train_gathered(&resident, batch, lr).unwrap();
    }
    let mut first = InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 8).unwrap();
    for _ in 0..5 {
        first.train_gathered(&resident, batch, lr).unwrap();
    }
    let state = first.train_state().unwrap();
    let mut resumed = InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 99).unwrap();
    for e in first.params().to_vec() {
        resumed
            .set_param(&e.name, &first.param(&e.name).unwrap())
            .unwrap();
    }
    resumed.set_train_state(&state).unwrap();
    let resident2 = resumed.to_device(&set).unwrap();
    for _ in 5..9 {
        resumed.train_gathered(&resident2, batch, lr).unwrap();
    }
    assert_eq!(resumed.step(), 9);
    assert_bits_eq(
        "resumed vs uninterrupted",
        &params(&resumed),
        &params(&whole),
    );
}

/// A step past the Adam table reserved for a run grows the table (the step's scalars are still those of
/// its step); a learning rate other than the table's rebuilds it. Checked against the host-fed run.
#[test]
fn the_adam_table_grows_and_follows_the_learning_rate() {
    let set = data(23, 5);
    let batch = 4;
    let mut host = InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 2).unwrap();
    let mut dev = InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 2).unwrap();
    let resident = dev.to_device(&set).unwrap();
    dev.reserve_steps(1e-3, 1).unwrap();
    for (s, lr) in [(0u64, 1e-3), (1, 1e-3), (2, 2e-3), (3, 1e-3)] {
        let (x, y) = set.batch(s, batch).unwrap();
        host.train_step(x, y, lr).unwrap();
        dev.train_gathered(&resident, batch, lr).unwrap();
    }
    assert_bits_eq("after a table rebuild", &params(&dev), &params(&host));
}

/// Accuracy evaluated on a data set resident on the device (batches gathered there, an inference plan of
/// its own batch size) equals the host-fed evaluation, whatever the batch; a count past the set is an error.
#[test]
fn a_gathered_evaluation_equals_the_host_fed_one() {
    let set = data(23, 6);
    let mut net = InceptionMnist::new(CpuBackend, MnistConfig::tiny(), 3).unwrap();
    for s in 0..4 {
        let (x, y) = set.batch(s, 5).unwrap();
        net.train_step(x, y, 1e-2).unwrap();
    }
    let resident = net.to_device(&set).unwrap();
    let want = net
        .accuracy(&set.images[..20 * 36], &set.labels[..20], 5)
        .unwrap();
    for batch in [1, 7, 20, 50] {
        let got = net.accuracy_on(&resident, 20, batch).unwrap();
        assert_eq!(
            got.to_bits(),
            want.to_bits(),
            "batch {batch}: {got} vs {want}"
        );
    }
    let err = net.accuracy_on(&resident, 24, 5).unwrap_err().to_string();
    assert!(err.contains("images to evaluate"), "{err}");
    let wrong = Dataset {
        rows: 5,
        cols: 5,
        images: vec![0.0; 25],
        labels: vec![1],
    };
    let err = net.to_device(&wrong).unwrap_err().to_string();
    assert!(err.contains("the net takes 6×6"), "{err}");
}
