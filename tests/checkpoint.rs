//! Model files: a round trip, a file saved by PyTorch (names, shapes, logits), and each kind of bad file.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::{assert_bits_eq, assert_close, uniform};
use inception_cuda::checkpoint::{read_tensors, write_tensors};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{InceptionMnist, MnistConfig};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ckpt-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn small() -> MnistConfig {
    MnistConfig {
        map1: 3,
        map2: 2,
        reduce: 2,
        hidden: 8,
        dropout: 0.25,
        image: 28,
    }
}

#[test]
fn round_trip_keeps_every_bit_and_the_config() {
    let dir = scratch("roundtrip");
    let mut net = InceptionMnist::new(CpuBackend, small(), 5).unwrap();
    let images: Vec<f32> = uniform(1, 2 * 784)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    net.train_step(&images, &[1, 2], 1e-3).unwrap(); // not the initial values
    let path = dir.join("model.safetensors");
    net.save(&path).unwrap();
    std::fs::write(dir.join("model.safetensors.bak"), b"unrelated").unwrap();
    net.save(&path).unwrap(); // overwriting an existing file
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary files left behind: {leftovers:?}"
    );
    let loaded = InceptionMnist::load(&path, CpuBackend, 0).unwrap();
    assert_eq!(loaded.config(), net.config());
    for e in net.params() {
        assert_bits_eq(
            &e.name,
            &loaded.param(&e.name).unwrap(),
            &net.param(&e.name).unwrap(),
        );
    }
    let (_, meta) = read_tensors(&path).unwrap();
    assert_eq!(meta.get("dropout").map(String::as_str), Some("0.25"));
}

/// A model saved by PyTorch with plain `save_file` (tests/golden/make_golden.py): the widths come from the
/// shapes, and the net gives PyTorch's eval-mode logits.
#[test]
fn a_pytorch_model_file_loads_and_gives_pytorch_logits() {
    let path = common::repo_path("tests/golden/pytorch_model.safetensors");
    let (_, meta) = read_tensors(&path).unwrap();
    assert!(
        meta.is_empty(),
        "the fixture must have no metadata: {meta:?}"
    );
    let mut net = InceptionMnist::load(&path, CpuBackend, 0).unwrap();
    assert_eq!(
        *net.config(),
        MnistConfig {
            dropout: 0.5,
            ..small()
        }
    );
    let (golden, _) = read_tensors(&common::repo_path(
        "tests/golden/pytorch_logits.safetensors",
    ))
    .unwrap();
    let logits = net.logits(&golden["images"].1).unwrap();
    assert_close(
        "logits vs PyTorch",
        &logits,
        &golden["logits"].1,
        1e-5,
        1e-4,
    );
}

#[test]
fn bad_model_files_name_the_tensor_and_both_shapes() {
    let dir = scratch("bad");
    let net = InceptionMnist::new(CpuBackend, small(), 5).unwrap();
    let good: Vec<(String, Vec<usize>, Vec<f32>)> = net
        .params()
        .iter()
        .map(|e| (e.name.clone(), e.shape.clone(), net.param(&e.name).unwrap()))
        .collect();
    let try_load = |name: &str, tensors: Vec<(String, Vec<usize>, Vec<f32>)>| {
        let path = dir.join(name);
        write_tensors(&path, &tensors, HashMap::new()).unwrap();
        InceptionMnist::load(&path, CpuBackend, 0)
            .unwrap_err()
            .to_string()
    };
    let missing = try_load(
        "missing",
        good.iter()
            .filter(|t| t.0 != "inception2.conv5x5.bias")
            .cloned()
            .collect(),
    );
    assert!(
        missing.contains("missing tensor inception2.conv5x5.bias (expected shape [2])"),
        "{missing}"
    );
    let mut extra = good.clone();
    extra.push(("fc3.weight".into(), vec![2], vec![0.0; 2]));
    assert!(try_load("extra", extra).contains("unexpected tensor fc3.weight with shape [2]"));
    let mut shaped = good.clone();
    let t = shaped
        .iter_mut()
        .find(|t| t.0 == "inception1.conv3x3.weight")
        .unwrap();
    *t = (t.0.clone(), vec![3, 2, 1, 9], t.2.clone());
    let err = try_load("shape", shaped);
    assert!(
        err.contains(
            "tensor inception1.conv3x3.weight has shape [3, 2, 1, 9], expected [3, 2, 3, 3]"
        ),
        "{err}"
    );
    std::fs::write(dir.join("junk"), b"not safetensors at all").unwrap();
    let junk = InceptionMnist::<CpuBackend>::load(&dir.join("junk"), CpuBackend, 0)
        .unwrap_err()
        .to_string();
    assert!(junk.contains("not a safetensors file"), "{junk}");
    let none = InceptionMnist::<CpuBackend>::load(&dir.join("absent"), CpuBackend, 0)
        .unwrap_err()
        .to_string();
    assert!(none.contains("absent: cannot read"), "{none}");
}

fn first_images(n: usize) -> inception_cuda::data::Dataset {
    let s = inception_cuda::data::load_dir(&common::repo_path("data")).unwrap();
    s.train.slice(0..n).unwrap()
}

/// Save after 3 steps, load into a fresh net, run 3 more: the losses equal an uninterrupted run's, bit for bit.
#[test]
fn a_resumed_run_reproduces_the_uninterrupted_losses() {
    let dir = scratch("resume");
    let data = first_images(200);
    let cfg = MnistConfig {
        dropout: 0.5,
        ..small()
    };
    let losses = |net: &mut InceptionMnist<CpuBackend>, steps: std::ops::Range<u64>| -> Vec<f32> {
        steps
            .map(|s| {
                let (x, y) = data.batch(s, 20).unwrap();
                net.train_step(x, y, 1e-3).unwrap();
                net.loss().unwrap()
            })
            .collect()
    };
    let mut whole = InceptionMnist::new(CpuBackend, cfg, 9).unwrap();
    let want = losses(&mut whole, 0..6);
    let mut first = InceptionMnist::new(CpuBackend, cfg, 9).unwrap();
    let mut got = losses(&mut first, 0..3);
    first.save(&dir.join("model.safetensors")).unwrap();
    first
        .save_train_state(&dir.join("train_state.safetensors"))
        .unwrap();
    let mut resumed = InceptionMnist::load(&dir.join("model.safetensors"), CpuBackend, 0).unwrap();
    resumed
        .load_train_state(&dir.join("train_state.safetensors"))
        .unwrap();
    assert_eq!(resumed.step(), 3);
    got.extend(losses(&mut resumed, 3..6));
    assert_bits_eq("losses of a resumed run", &got, &want);
}

/// 100 steps on the first 1,000 training images: the mean loss of the last 10 steps is below half of the
/// first step's; `take_mean_loss` averages on the device's record without a per-step read.
#[test]
fn a_short_run_on_1000_images_halves_its_loss() {
    let data = first_images(1000);
    let cfg = MnistConfig {
        map1: 4,
        map2: 4,
        reduce: 2,
        hidden: 32,
        dropout: 0.0,
        image: 28,
    };
    let mut net = InceptionMnist::new(CpuBackend, cfg, 1).unwrap();
    let (x, y) = data.batch(0, 50).unwrap();
    net.train_step(x, y, 1e-3).unwrap();
    let first = net.take_mean_loss().unwrap().unwrap();
    assert_eq!(first, net.loss().unwrap());
    for s in 1..90 {
        let (x, y) = data.batch(s, 50).unwrap();
        net.train_step(x, y, 1e-3).unwrap();
    }
    let _ = net.take_mean_loss().unwrap();
    let mut last = Vec::new();
    for s in 90..100 {
        let (x, y) = data.batch(s, 50).unwrap();
        net.train_step(x, y, 1e-3).unwrap();
        last.push(net.loss().unwrap());
    }
    let mean = net.take_mean_loss().unwrap().unwrap();
    let direct = last.iter().map(|&l| l as f64).sum::<f64>() / 10.0;
    assert!(
        (mean as f64 - direct).abs() < 1e-6,
        "device mean {mean} vs {direct}"
    );
    assert!(mean < 0.5 * first, "loss {first} -> {mean} after 100 steps");
    assert_eq!(net.take_mean_loss().unwrap(), None);
}

/// Random and mutated bytes through the model-file reader: errors (or a model, when a mutation hits only
/// values), never a panic. Bounded: 1,500 inputs.
#[test]
fn the_model_reader_survives_random_and_mutated_bytes() {
    let dir = scratch("fuzz");
    let good = std::fs::read(common::repo_path("tests/golden/pytorch_model.safetensors")).unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let path = dir.join("fuzz.safetensors");
    for _ in 0..1500 {
        let mut bytes = good.clone();
        match next() % 4 {
            0 => bytes.truncate((next() as usize) % (bytes.len() + 1)),
            // Mostly in the header (the first few hundred bytes), where the structure is.
            1 => (0..1 + next() % 4).for_each(|_| {
                let i = (next() as usize) % 1024;
                bytes[i] = next() as u8;
            }),
            2 => bytes.extend((0..next() % 32).map(|_| next() as u8)),
            _ => bytes = (0..next() % 256).map(|_| next() as u8).collect(),
        }
        std::fs::write(&path, &bytes).unwrap();
        let _ = InceptionMnist::<CpuBackend>::load(&path, CpuBackend, 0);
    }
}
