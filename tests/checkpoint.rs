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
