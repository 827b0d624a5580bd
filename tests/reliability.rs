//! Issue 20's cases, each a regression test on the CPU twins (and the emulated kernels with `--features
//! emulation` where a backend is involved): checkpoint units and their refusals, the divergence guard,
//! inputs checked before the upload, failed steps that do not advance, Adam at huge gradients, sizes that
//! overflow or exceed memory, and the loaders' bounds and messages.

mod common;

use approx::assert_relative_eq;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use common::{assert_bits_eq, uniform};
use inception_cuda::checkpoint::{
    read_manifest, read_tensors, remove_stale_temporaries, write_tensors, MANIFEST, MODEL_FILE,
};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::data::{load_csv, load_idx, Dataset};
use inception_cuda::nn::{InceptionMnist, MnistConfig};
use inception_cuda::shape::AdamStep;
use inception_cuda::{Backend, BackendHandle, Error};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("reliability-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// 5×5 images, narrow modules: a step takes milliseconds in a debug build.
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

fn batch(n: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let images = uniform(seed, n * 25)
        .iter()
        .map(|v| (v + 1.0) / 2.0)
        .collect();
    let labels = (0..n)
        .map(|i| ((i * 7 + seed as usize) % 10) as u32)
        .collect();
    (images, labels)
}

fn params<B: Backend>(net: &InceptionMnist<B>) -> Vec<f32> {
    net.params()
        .iter()
        .flat_map(|e| net.param(&e.name).unwrap())
        .collect()
}

/// Steps `range` of a seeded run (batch `step` from seed `step`), returning each step's loss.
fn steps<B: Backend>(net: &mut InceptionMnist<B>, range: std::ops::Range<u64>) -> Vec<f32> {
    range
        .map(|s| {
            let (x, y) = batch(4, s);
            net.train_step(&x, &y, 1e-2).unwrap();
            net.loss().unwrap()
        })
        .collect()
}

fn recipe() -> BTreeMap<String, String> {
    BTreeMap::from([("lr".to_string(), "0.01".to_string())])
}

// ---------------------------------------------------------------------------------------------------------
// Checkpoint units

/// The kill between the two files, simulated: the unit of step 6 got only as far as its model file (and a
/// temporary file of the killed process). The manifest still names step 3's unit, so a resume continues from
/// step 3 bit for bit as the uninterrupted run, and the killed process's temporary file is removed.
#[test]
fn a_kill_between_the_two_files_resumes_the_previous_unit_bit_for_bit() {
    let dir = scratch("kill");
    let mut whole = InceptionMnist::new(CpuBackend, tiny(0.5), 3).unwrap();
    let want = steps(&mut whole, 0..6);
    let mut run = InceptionMnist::new(CpuBackend, tiny(0.5), 3).unwrap();
    steps(&mut run, 0..3);
    let unit = run.save_checkpoint(&dir, &recipe()).unwrap();
    assert_eq!(unit.step, 3);
    steps(&mut run, 3..6);
    // The crash: step 6's model file is in place, its training state only half written, no manifest.
    run.save(&dir.join("model-00000006.safetensors")).unwrap();
    let dead = dir.join("train_state-00000006.tmp-4194999"); // above the kernel's pid_max
    std::fs::write(&dead, b"half a file").unwrap();
    let removed = remove_stale_temporaries(&dir).unwrap();
    assert_eq!(removed, [dead]);
    let (mut resumed, ckpt) = InceptionMnist::load_checkpoint(&dir, CpuBackend).unwrap();
    assert_eq!((ckpt.step, resumed.step()), (3, 3));
    assert_eq!(ckpt.recipe, recipe());
    let mut got = want[..3].to_vec();
    got.extend(steps(&mut resumed, 3..6));
    assert_bits_eq("losses after a resume from the surviving unit", &got, &want);
    assert_bits_eq("parameters", &params(&resumed), &params(&whole));
    // The next unit replaces the previous one's files, and model.safetensors follows it.
    resumed.save_checkpoint(&dir, &recipe()).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            MANIFEST,
            "model-00000006.safetensors",
            MODEL_FILE,
            "train_state-00000006.safetensors"
        ]
    );
    let latest = InceptionMnist::load(&dir.join(MODEL_FILE), CpuBackend, 0).unwrap();
    assert_bits_eq("model.safetensors", &params(&latest), &params(&whole));
}

/// Writes a manifest naming `model` and `state` (files in `dir`) with their real sizes and CRC-32s.
fn forge_manifest(dir: &Path, step: u64, model: &str, state: &str) {
    let entry = |name: &str| {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(&bytes);
        format!(
            r#"{{"name": "{name}", "bytes": {}, "crc32": "{:08x}"}}"#,
            bytes.len(),
            crc.sum()
        )
    };
    let text = format!(
        r#"{{"format": "inception-cuda checkpoint 1", "step": {step}, "files": {{"model": {}, "train_state": {}}}, "recipe": {{}}}}"#,
        entry(model),
        entry(state)
    );
    std::fs::write(dir.join(MANIFEST), text).unwrap();
}

fn load_err(dir: &Path) -> String {
    InceptionMnist::<CpuBackend>::load_checkpoint(dir, CpuBackend)
        .unwrap_err()
        .to_string()
}

/// A model of step 6 with the training state of step 3 (each file intact, the manifest consistent with the
/// files): refused, naming both files and both steps. Flipped bytes and a step of u64::MAX are refused too.
#[test]
fn a_pair_that_does_not_belong_together_is_refused_naming_files_and_steps() {
    let dir = scratch("pair");
    let mut net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    steps(&mut net, 0..3);
    net.save_train_state(&dir.join("state3.safetensors"))
        .unwrap();
    steps(&mut net, 3..6);
    net.save(&dir.join("model6.safetensors")).unwrap();
    forge_manifest(&dir, 6, "model6.safetensors", "state3.safetensors");
    let err = load_err(&dir);
    for part in [
        "do not belong together",
        "model6.safetensors holds step 6",
        "state3.safetensors holds step 3",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }

    // Flipped bytes in the training state: its CRC-32 no longer matches the manifest's.
    let good = net.save_checkpoint(&dir, &recipe()).unwrap();
    let mut bytes = std::fs::read(&good.train_state).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&good.train_state, &bytes).unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("train_state-00000006.safetensors: CRC-32") && err.contains("corrupt"),
        "{err}"
    );

    // A training state claiming step u64::MAX, with a manifest matching its bytes.
    let (tensors, _) = read_tensors(&good.model).unwrap();
    let _ = tensors;
    let state = net.train_state().unwrap();
    let len = state.adam_m.len();
    write_tensors(
        &dir.join("max.safetensors"),
        &[
            ("adam.m".into(), vec![len], state.adam_m.clone()),
            ("adam.v".into(), vec![len], state.adam_v.clone()),
        ],
        HashMap::from([
            ("step".into(), u64::MAX.to_string()),
            ("seed".into(), "1".into()),
        ]),
    )
    .unwrap();
    forge_manifest(&dir, 6, "model-00000006.safetensors", "max.safetensors");
    let err = load_err(&dir);
    assert!(err.contains(&format!("holds step {}", u64::MAX)), "{err}");
    // And a net at that step refuses to step instead of overflowing.
    let mut at_max = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    at_max
        .set_train_state(&inception_cuda::nn::TrainState {
            step: u64::MAX,
            ..state
        })
        .unwrap();
    let (x, y) = batch(4, 0);
    let err = at_max.train_step(&x, &y, 1e-3).unwrap_err().to_string();
    assert!(err.contains("step count"), "{err}");
    assert_eq!(at_max.step(), u64::MAX);
}

/// A folder from before checkpoint units is refused for a resume with the format expected; its model file
/// still loads. A file or a missing folder given as the folder is refused without creating anything.
#[test]
fn a_folder_from_before_units_a_file_and_a_missing_folder_are_refused() {
    let dir = scratch("legacy");
    let net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    net.save(&dir.join("model.safetensors")).unwrap();
    net.save_train_state(&dir.join("train_state.safetensors"))
        .unwrap();
    let err = load_err(&dir);
    assert!(
        err.contains("from before checkpoint units")
            && err.contains("checkpoint.json (inception-cuda checkpoint 1)"),
        "{err}"
    );
    assert!(InceptionMnist::load(&dir.join("model.safetensors"), CpuBackend, 0).is_ok());
    let err = load_err(&dir.join("model.safetensors"));
    assert!(err.contains("model.safetensors: not a folder"), "{err}");
    let missing = dir.join("absent");
    assert!(load_err(&missing).contains("absent: no such folder"));
    assert!(!missing.exists());
    assert!(read_manifest(&dir).unwrap().is_none());
}

/// The divergence guard: a net with a NaN parameter (or moment) is not saved, the error names the
/// parameter, and the good unit already in the folder stays in force.
#[test]
fn a_diverged_net_never_replaces_a_good_checkpoint() {
    let dir = scratch("diverged");
    let mut net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    steps(&mut net, 0..2);
    net.save_checkpoint(&dir, &recipe()).unwrap();
    let good = std::fs::read(dir.join(MANIFEST)).unwrap();
    steps(&mut net, 2..3);
    let mut w = net.param("fc1.weight").unwrap();
    w[5] = f32::NAN;
    net.set_param("fc1.weight", &w).unwrap();
    let err = net.save_checkpoint(&dir, &recipe()).unwrap_err();
    assert!(matches!(err, Error::NonFinite { .. }), "{err}");
    assert!(err.to_string().contains("fc1.weight[5] at step 3"), "{err}");
    assert_eq!(std::fs::read(dir.join(MANIFEST)).unwrap(), good);
    assert!(!dir.join("model-00000003.safetensors").exists());
    let (back, _) = InceptionMnist::load_checkpoint(&dir, CpuBackend).unwrap();
    assert_eq!(back.step(), 2);
    back.check_finite().unwrap();
    // Evaluating the NaN model is an error, not class 0.
    let (x, _) = batch(2, 0);
    let err = net.predict(&x).unwrap_err().to_string();
    assert!(err.contains("predict: logit 0 of image 0"), "{err}");
}

// ---------------------------------------------------------------------------------------------------------
// Inputs checked on every backend; failed steps do not advance

fn inputs_are_checked_before_the_upload<B: Backend>(b: impl BackendHandle<Backend = B> + Clone) {
    let mut net = InceptionMnist::new(b.clone(), tiny(0.25), 7).unwrap();
    let mut fresh = InceptionMnist::new(b, tiny(0.25), 7).unwrap();
    let (x, mut y) = batch(4, 1);
    y[2] = 10;
    let err = net.train_step(&x, &y, 1e-3).unwrap_err().to_string();
    assert!(
        err.contains("label of image 2 = 10 is out of range"),
        "{err}"
    );
    let (mut x, y) = batch(4, 1);
    x[30] = f32::NAN;
    let err = net.train_step(&x, &y, 1e-3).unwrap_err().to_string();
    assert!(err.contains("pixel 5 of image 1 is NaN"), "{err}");
    let (x, y) = batch(4, 1);
    for lr in [f64::NAN, -1.0, 1e300, f64::INFINITY] {
        let err = net.train_step(&x, &y, lr).unwrap_err();
        assert!(matches!(err, Error::OutOfRange { .. }), "lr {lr}: {err}");
    }
    assert_eq!(
        net.step(),
        0,
        "failed steps must not advance the step count"
    );
    net.train_step(&x, &y, 1e-3).unwrap();
    fresh.train_step(&x, &y, 1e-3).unwrap();
    assert_eq!(net.step(), 1);
    assert_bits_eq("after failed steps", &params(&net), &params(&fresh));
}

#[test]
fn inputs_are_checked_before_the_upload_on_the_cpu() {
    inputs_are_checked_before_the_upload(CpuBackend);
}

#[cfg(feature = "emulation")]
#[test]
fn inputs_are_checked_before_the_upload_emulated() {
    use inception_cuda::emu::{EmuBackend, ThreadOrder};
    inputs_are_checked_before_the_upload(EmuBackend {
        order: ThreadOrder::Forward,
    });
}

/// Adam at a gradient above √FLT_MAX: v stays finite (((1-β2)·g)·g = 1e37 for g = 1e20, as PyTorch's f32
/// Adam) and the parameter moves by the learning rate instead of freezing.
fn adam_survives_huge_gradients<B: Backend>(b: &B) {
    let g = [1e20f32, -1e20, 3e19, 1.0];
    let mut p = b.upload(&[0.5; 4]).unwrap();
    let mut m = b.alloc_zeros(4).unwrap();
    let mut v = b.alloc_zeros(4).unwrap();
    let gb = b.upload(&g).unwrap();
    for t in 1..=2 {
        b.adam_step(
            &mut b.view_mut(&mut p, 0..4).unwrap(),
            &mut b.view_mut(&mut m, 0..4).unwrap(),
            &mut b.view_mut(&mut v, 0..4).unwrap(),
            &b.view(&gb, 0..4).unwrap(),
            &AdamStep::new(1e-3, t),
        )
        .unwrap();
    }
    let (p, v) = (b.to_host(&p).unwrap(), b.to_host(&v).unwrap());
    assert!(v.iter().all(|v| v.is_finite()), "v {v:?}");
    let v0 = 0.001f32 * 1e20 * 1e20; // after step 1
    assert_relative_eq!(v[0], v0 * 1.999, max_relative = 1e-3);
    for (i, (&p, &g)) in p.iter().zip(&g).enumerate() {
        let moved = 0.5 - p;
        assert!(
            (moved - 2e-3 * g.signum()).abs() < 1e-5,
            "parameter {i} moved by {moved}, expected 2 · lr against the gradient"
        );
    }
}

#[test]
fn adam_survives_huge_gradients_on_the_cpu() {
    adam_survives_huge_gradients(&CpuBackend);
}

#[cfg(feature = "emulation")]
#[test]
fn adam_survives_huge_gradients_emulated() {
    use inception_cuda::emu::{EmuBackend, ThreadOrder};
    adam_survives_huge_gradients(&EmuBackend {
        order: ThreadOrder::Reverse,
    });
}

// ---------------------------------------------------------------------------------------------------------
// Sizes and configs

#[test]
fn sizes_that_overflow_or_exceed_memory_are_errors() {
    let big = |c: MnistConfig| {
        InceptionMnist::new(CpuBackend, c, 0)
            .unwrap_err()
            .to_string()
    };
    let c = MnistConfig::default();
    for huge in [1usize << 62, usize::MAX] {
        for config in [
            MnistConfig { hidden: huge, ..c },
            MnistConfig { map2: huge, ..c },
            MnistConfig { map1: huge, ..c },
            MnistConfig { reduce: huge, ..c },
            MnistConfig { image: huge, ..c },
        ] {
            let err = big(config);
            assert!(err.contains("more parameters than fit in memory"), "{err}");
        }
    }
    // Fits in usize, not in any machine: refused before the allocation with the size asked for.
    let err = big(MnistConfig {
        hidden: 100_000_000,
        ..c
    });
    assert!(err.contains("GiB") && err.contains("needs"), "{err}");
    for dropout in [f32::NAN, -1.0, 1.0, f32::INFINITY] {
        let err = big(MnistConfig {
            dropout,
            ..tiny(0.0)
        });
        assert!(err.contains("dropout"), "{dropout}: {err}");
    }
    let err = inception_cuda::Tensor::zeros(&[1 << 40, 1 << 20], &inception_cuda::Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("Tensor::zeros") && err.contains("GiB"),
        "{err}"
    );
}

/// A model file whose metadata says map2 = 2^62: an error naming the file, no overflow.
#[test]
fn a_model_file_with_absurd_widths_is_an_error() {
    let dir = scratch("absurd");
    let net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    let path = dir.join("m.safetensors");
    net.save(&path).unwrap();
    let (tensors, mut meta) = read_tensors(&path).unwrap();
    let tensors: Vec<_> = tensors.into_iter().map(|(k, (s, v))| (k, s, v)).collect();
    for (key, value) in [
        ("map2", (1u64 << 62).to_string()),
        ("hidden", u64::MAX.to_string()),
    ] {
        let old = meta.insert(key.into(), value).unwrap();
        write_tensors(&path, &tensors, meta.clone()).unwrap();
        let err = InceptionMnist::<CpuBackend>::load(&path, CpuBackend, 0)
            .unwrap_err()
            .to_string();
        assert!(err.contains("m.safetensors"), "{err}");
        meta.insert(key.into(), old);
    }
}

#[test]
fn set_param_of_the_wrong_length_names_the_parameter() {
    let mut net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    let err = net
        .set_param("fc2.bias", &[0.0; 3])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("parameter fc2.bias of shape [10] takes 10 values, got 3"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Loaders

#[test]
fn dataset_slice_and_batch_out_of_range_are_errors() {
    let d = Dataset {
        images: vec![0.0; 3 * 4],
        labels: vec![1, 2, 3],
        rows: 2,
        cols: 2,
    };
    assert_eq!(d.slice(1..3).unwrap().labels, [2, 3]);
    #[allow(clippy::reversed_empty_ranges)]
    for r in [0..4, 2..1, usize::MAX - 1..usize::MAX] {
        assert!(d.slice(r.clone()).is_err(), "{r:?}");
    }
    let broken = Dataset {
        images: vec![0.0; 5],
        ..d.clone()
    };
    assert!(broken.batch(0, 2).is_err());
    assert!(broken.slice(0..1).is_err());
    let huge = Dataset {
        rows: usize::MAX,
        ..d
    };
    assert!(huge.batch(7, 2).is_err());
}

fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    dims.iter().for_each(|d| b.extend(d.to_be_bytes()));
    b.extend_from_slice(payload);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

#[test]
fn loaders_name_the_file_and_read_no_more_than_declared() {
    let dir = scratch("loaders");
    let w = |name: &str, bytes: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let labels = w("l", &idx(&[2], &[1, 2]));
    for (name, dims) in [("wide", [2u32, 2, 3]), ("empty", [2, 0, 0])] {
        let n = dims.iter().product::<u32>() as usize;
        let err = load_idx(&w(name, &idx(&dims, &vec![0; n])), &labels)
            .unwrap_err()
            .to_string();
        assert!(err.contains(name) && err.contains("square"), "{err}");
    }
    // 2 images of 2×2 declared, then 64 MiB of zeros compressed to a few KiB: read up to the declared
    // size and one byte, then refused.
    let mut bomb = idx(&[2, 2, 2], &[0; 8]);
    bomb.resize(bomb.len() + (64 << 20), 0);
    let err = load_idx(&w("bomb.gz", &gz(&bomb)), &labels)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bomb.gz: trailing bytes"), "{err}");
    // A model file with 1 MiB appended: the read stops after the declared data, the parser refuses it.
    let net = InceptionMnist::new(CpuBackend, tiny(0.0), 1).unwrap();
    let model = dir.join("m.safetensors");
    net.save(&model).unwrap();
    let mut bytes = std::fs::read(&model).unwrap();
    bytes.resize(bytes.len() + (1 << 20), 7);
    std::fs::write(&model, &bytes).unwrap();
    let err = read_tensors(&model).unwrap_err().to_string();
    assert!(
        err.contains("m.safetensors: not a safetensors file"),
        "{err}"
    );
    // CSV: the line number of the bad row counts the blank lines before it.
    let row = |label: &str| format!("{label}{}\n", ",0".repeat(784));
    let text = format!("{}\n\n{}", row("1"), row("12"));
    let err = load_csv(&w("blank.csv", text.as_bytes()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("blank.csv, line 4: field 1 = \"12\""), "{err}");
}

/// A checkpoint written from a snapshot on another thread (as train_mnist's background writer does) equals
/// one written synchronously, byte for byte, file for file; a writer whose folder is gone reports the file.
#[test]
fn a_background_checkpoint_equals_a_synchronous_one_byte_for_byte() {
    let config = MnistConfig {
        map1: 2,
        map2: 2,
        reduce: 1,
        hidden: 8,
        dropout: 0.5,
        image: 8,
    };
    let mut net = InceptionMnist::new(CpuBackend, config, 3).unwrap();
    let images: Vec<f32> = (0..2 * 64).map(|i| (i % 7) as f32 / 7.0).collect();
    net.train_step(&images, &[1, 2], 1e-3).unwrap();
    let recipe = BTreeMap::from([("lr".to_string(), "0.001".to_string())]);
    let root = std::env::temp_dir().join(format!("inception-bg-ckpt-{}", std::process::id()));
    let (sync_dir, bg_dir) = (root.join("sync"), root.join("background"));
    std::fs::create_dir_all(&sync_dir).unwrap();
    std::fs::create_dir_all(&bg_dir).unwrap();
    net.save_checkpoint(&sync_dir, &recipe).unwrap();
    // the copy issued in stream order, a step issued after it, then finished and written on another thread
    // (as train_mnist does): the unit of the step it was issued at
    let pending = net.checkpoint_snapshot_async().unwrap();
    assert_eq!(pending.step(), 1);
    net.train_step(&images, &[3, 4], 1e-3).unwrap();
    let (dir, r) = (bg_dir.clone(), recipe.clone());
    std::thread::spawn(move || pending.finish()?.write(&dir, &r))
        .join()
        .unwrap()
        .unwrap();
    let mut names: Vec<_> = std::fs::read_dir(&sync_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(names.len() >= 4, "{names:?}");
    for name in &names {
        let (a, b) = (
            std::fs::read(sync_dir.join(name)).unwrap(),
            std::fs::read(bg_dir.join(name)).unwrap(),
        );
        assert!(
            a == b,
            "{name:?} differs between the synchronous and the background checkpoint"
        );
    }
    // the writer's folder removed under it: an error naming a file in it
    let gone = root.join("gone");
    let snapshot = net.checkpoint_snapshot().unwrap();
    let err = std::thread::spawn(move || snapshot.write(&gone, &recipe))
        .join()
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    std::fs::remove_dir_all(&root).unwrap();
}
