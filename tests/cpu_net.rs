//! The MNIST Inception net on the CPU: the reference's parameter names and shapes, initialisation,
//! determinism, learning, and its error cases. Its gradients are checked against PyTorch in `golden.rs`.

mod common;

use common::{assert_bits_eq, uniform};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{InceptionMnist, MnistConfig};
use inception_cuda::Error;

/// A net small enough for debug-mode tests: 5×5 images, narrow modules, no dropout.
fn tiny(dropout: f32) -> MnistConfig {
    MnistConfig {
        map1: 2,
        map2: 3,
        reduce: 2,
        hidden: 6,
        dropout,
        image: 5,
    }
}

fn batch(n: usize, px: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let images = uniform(seed, n * px)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels = (0..n)
        .map(|i| ((i * 7 + seed as usize) % 10) as u32)
        .collect();
    (images, labels)
}

#[test]
fn parameters_have_the_reference_names_and_shapes() {
    let (_, _, entries) = MnistConfig::default().param_table();
    let mut want = Vec::new();
    for (m, cin, w) in [("inception1", 1, 32), ("inception2", 128, 64)] {
        for (layer, shape) in [
            ("branch1x1", vec![w, cin, 1, 1]),
            ("reduce3x3", vec![16, cin, 1, 1]),
            ("conv3x3", vec![w, 16, 3, 3]),
            ("reduce5x5", vec![16, cin, 1, 1]),
            ("conv5x5", vec![w, 16, 5, 5]),
            ("pool_proj", vec![w, cin, 1, 1]),
        ] {
            want.push((format!("{m}.{layer}.weight"), shape.clone()));
            want.push((format!("{m}.{layer}.bias"), vec![shape[0]]));
        }
    }
    want.extend([
        ("fc1.weight".into(), vec![700, 200_704]),
        ("fc1.bias".into(), vec![700]),
        ("fc2.weight".into(), vec![10, 700]),
        ("fc2.bias".into(), vec![10]),
    ]);
    let got: Vec<(String, Vec<usize>)> = entries
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone()))
        .collect();
    assert_eq!(got, want);
    // Contiguous, in order, 140,573,758 parameters (140.6 M, 99.94 % of them in fc1).
    let mut at = 0;
    for e in &entries {
        assert_eq!(e.range.start, at, "{}", e.name);
        assert_eq!(
            e.range.len(),
            e.shape.iter().product::<usize>(),
            "{}",
            e.name
        );
        at = e.range.end;
    }
    assert_eq!(at, 140_573_758);
}

#[test]
fn initialisation_is_pytorch_default_and_seeded() {
    let net = InceptionMnist::new(CpuBackend, tiny(0.0), 7).unwrap();
    for e in net.params() {
        let v = net.param(&e.name).unwrap();
        let bound = 1.0 / (e.fan_in as f32).sqrt();
        assert!(
            v.iter().all(|x| x.abs() <= bound),
            "{} exceeds ±1/√{}",
            e.name,
            e.fan_in
        );
        if v.len() >= 20 {
            let max = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(
                max > 0.5 * bound,
                "{}: values do not spread over ±1/√fan_in",
                e.name
            );
        }
    }
    let again = InceptionMnist::new(CpuBackend, tiny(0.0), 7).unwrap();
    let other = InceptionMnist::new(CpuBackend, tiny(0.0), 8).unwrap();
    assert_eq!(
        net.param("fc1.weight").unwrap(),
        again.param("fc1.weight").unwrap()
    );
    assert_ne!(
        net.param("fc1.weight").unwrap(),
        other.param("fc1.weight").unwrap()
    );
}

#[test]
fn same_seed_same_bits_and_the_loss_falls() {
    let (images, labels) = batch(8, 25, 2);
    let run = |steps: usize, dropout: f32| {
        let mut net = InceptionMnist::new(CpuBackend, tiny(dropout), 11).unwrap();
        let mut losses = Vec::new();
        for _ in 0..steps {
            net.train_step(&images, &labels, 1e-2).unwrap();
            losses.push(net.loss().unwrap());
        }
        (net.param("fc1.weight").unwrap(), losses)
    };
    let (a, _) = run(10, 0.5);
    let (b, _) = run(10, 0.5);
    assert_bits_eq("fc1.weight after 10 steps with dropout, same seed", &a, &b);
    let (_, losses) = run(40, 0.0);
    assert!(losses.iter().all(|l| l.is_finite()));
    let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = losses[35..].iter().sum::<f32>() / 5.0;
    assert!(
        last < 0.5 * first,
        "the loss did not fall on a fixed batch: {first} -> {last}"
    );
}

#[test]
fn bad_batches_are_errors_naming_the_buffer() {
    let mut net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    let err = net.train_step(&[0.5; 24], &[1], 1e-3).unwrap_err();
    assert!(
        matches!(err, Error::BufferLength { what: "images", .. }),
        "{err:?}"
    );
    let err = net.train_step(&[0.5; 50], &[1], 1e-3).unwrap_err();
    assert!(
        matches!(
            err,
            Error::BufferLength {
                what: "labels",
                expected: 2,
                len: 1,
                ..
            }
        ),
        "{err:?}"
    );
    let err = net.train_step(&[0.5; 25], &[10], 1e-3).unwrap_err();
    assert!(matches!(err, Error::OutOfRange { .. }), "{err:?}");
    assert!(net.set_param("fc3.weight", &[0.0]).is_err());
    assert!(net.set_param("fc2.bias", &[0.0; 3]).is_err());
    assert!(InceptionMnist::new(
        CpuBackend,
        MnistConfig {
            hidden: 0,
            ..tiny(0.0)
        },
        1
    )
    .is_err());
}

/// The full-size net (140.6 M parameters) runs a forward/backward on a batch of 2: every gradient has its
/// parameter's length and is finite, the logits are `[2, 10]`.
#[test]
fn full_size_net_runs_a_small_batch() {
    let mut net = InceptionMnist::new(CpuBackend, MnistConfig::default(), 5).unwrap();
    assert_eq!(net.param_count(), 140_573_758);
    let (images, labels) = batch(2, 784, 3);
    net.forward_backward(&images, &labels).unwrap();
    assert!(net.loss().unwrap().is_finite());
    for name in [
        "inception1.conv5x5.weight",
        "inception2.pool_proj.bias",
        "fc2.weight",
    ] {
        let (g, p) = (net.grad(name).unwrap(), net.param(name).unwrap());
        assert_eq!(g.len(), p.len(), "{name}");
        assert!(g.iter().all(|v| v.is_finite()), "{name}");
    }
    assert_eq!(net.logits(&images).unwrap().len(), 20);
}

/// `InceptionMnist::accuracy` (counts on the device, batches of any size) equals the host's count of
/// `predict`'s classes, after `reserve_eval` (which changes no parameter or step) and again with the plans
/// kept from the pass before (a batch that does not divide 23 uses two).
#[test]
fn accuracy_counted_on_the_device_equals_the_hosts_count_of_predictions() {
    use inception_cuda::cpu::CpuBackend;
    use inception_cuda::nn::{InceptionMnist, MnistConfig};
    let config = MnistConfig {
        map1: 2,
        map2: 2,
        reduce: 1,
        hidden: 8,
        dropout: 0.5,
        image: 8,
    };
    let mut net = InceptionMnist::new(CpuBackend, config, 5).unwrap();
    let n = 23;
    let images: Vec<f32> = (0..n * 64)
        .map(|i| ((i * 37) % 101) as f32 / 101.0)
        .collect();
    let predicted = net.predict(&images).unwrap();
    // labels: the prediction for every third image, another class for the rest
    let labels: Vec<u32> = predicted
        .iter()
        .enumerate()
        .map(|(i, &p)| if i % 3 == 0 { p } else { (p + 1) % 10 })
        .collect();
    let want = 100.0
        * predicted
            .iter()
            .zip(&labels)
            .filter(|(p, l)| p == l)
            .count() as f64
        / n as f64;
    net.reserve_eval(n, 5).unwrap();
    assert_eq!(net.step(), 0);
    for batch in [5, 5, 1, 23, 64, 5] {
        let got = net.accuracy(&images, &labels, batch).unwrap();
        assert_eq!(got, want, "batch {batch}");
    }
    assert_eq!(net.predict(&images).unwrap(), predicted);
}

/// Evaluation runs in the net's precision: a TF32 net's logits are the TF32 forward's (within TF32's rounding
/// of the fp32 logits, and not equal to them), and switching back re-plans the fp32 evaluation, same bits.
#[test]
fn evaluation_runs_in_the_nets_precision() {
    use inception_cuda::shape::Precision;
    let (images, _) = batch(4, 25, 5);
    let mut net = InceptionMnist::new(CpuBackend, tiny(0.5), 3).unwrap();
    let fp32 = net.logits(&images).unwrap();
    net.set_precision(Precision::Tf32).unwrap();
    let tf32 = net.logits(&images).unwrap();
    assert!(
        fp32.iter().zip(&tf32).any(|(a, b)| a != b),
        "TF32 evaluation gave the fp32 logits bit for bit"
    );
    common::assert_close_scaled("TF32 logits vs fp32", &tf32, &fp32, 1e-2, 1e-2);
    net.set_precision(Precision::Fp32).unwrap();
    assert_bits_eq("fp32 logits again", &net.logits(&images).unwrap(), &fp32);
}
