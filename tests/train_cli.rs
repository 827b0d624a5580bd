//! The `train_mnist` example's command line, run in-process on a tiny data set (5×5 images) and a small net
//! on the CPU: issue 20's cases at the level of the command (run folders, resumes, the divergence guard,
//! the data set checked before the first step) and a seeded fuzz over its numbers (errors, never panics).

#[allow(dead_code, unreachable_pub)]
#[path = "../examples/train_mnist.rs"]
mod train_mnist;

mod common;

use std::path::{Path, PathBuf};

use common::assert_bits_eq;
use inception_cuda::checkpoint::{read_manifest, read_tensors, MANIFEST, MODEL_FILE};
use inception_cuda::cpu::CpuBackend;
use inception_cuda::nn::{InceptionMnist, MnistConfig};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("cli-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 0x08, dims.len() as u8];
    dims.iter().for_each(|d| b.extend(d.to_be_bytes()));
    b.extend_from_slice(payload);
    b
}

/// A data folder of `train` and `test` images of side `side` (`test_side` for the test set) in the IDX
/// layout, with deterministic pixels and labels.
fn data(name: &str, train: usize, test: usize, side: u32, test_side: u32) -> PathBuf {
    let dir = scratch(&format!("data-{name}"));
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut byte = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    for (prefix, n, s) in [("train", train, side), ("t10k", test, test_side)] {
        let px: Vec<u8> = (0..n * (s * s) as usize).map(|_| byte()).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(
            dir.join(format!("{prefix}-images-idx3-ubyte")),
            idx(&[n as u32, s, s], &px),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("{prefix}-labels-idx1-ubyte")),
            idx(&[n as u32], &labels),
        )
        .unwrap();
    }
    dir
}

/// 60 training images of 5×5 (55 train, 5 validate) and 10 test images, made once per test binary.
fn tiny_data() -> PathBuf {
    static DATA: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DATA.get_or_init(|| data("tiny", 60, 10, 5, 5)).clone()
}

/// The command line of a small-net CPU run on `data` into `out`, plus `extra` (whose flags replace the
/// defaults' of the same name).
fn argv(data: &Path, out: Option<&Path>, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["train_mnist".into(), "--device".into(), "cpu".into()];
    for (flag, value) in [
        ("--map1", "2"),
        ("--map2", "3"),
        ("--reduce", "2"),
        ("--hidden", "6"),
        ("--batch", "4"),
        ("--lr", "0.01"),
    ] {
        if !extra.contains(&flag) {
            a.extend([flag.to_string(), value.to_string()]);
        }
    }
    a.extend(["--data".to_string(), data.display().to_string()]);
    if let Some(out) = out {
        a.extend(["--out".to_string(), out.display().to_string()]);
    }
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn resume_argv(data: &Path, dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["train_mnist", "--device", "cpu", "--resume"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.push(dir.display().to_string());
    a.extend(["--data".to_string(), data.display().to_string()]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn run(argv: Vec<String>) -> Result<(), String> {
    train_mnist::run_args(argv).map_err(|e| e.to_string())
}

fn params_of(path: &Path) -> Vec<(String, Vec<f32>)> {
    let (t, _) = read_tensors(path).unwrap();
    let mut v: Vec<_> = t.into_iter().map(|(k, (_, v))| (k, v)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn log_steps(dir: &Path) -> Vec<u64> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            // every line is a logging point but the run's last, which says where the time went
            match v.get("time") {
                Some(_) => None,
                None => Some(v["step"].as_u64().unwrap()),
            }
        })
        .collect()
}

/// The kill between the two files of the step-6 unit, simulated on the run's folder: step 6's model file is
/// in place, its training state a temporary file of a dead process, the manifest still of step 3. The resume
/// continues from step 3, ends with the uninterrupted run's model bit for bit, and logs each step once.
#[test]
fn a_resume_after_a_kill_between_the_files_equals_the_uninterrupted_run() {
    let (data, dir) = (tiny_data(), scratch("kill"));
    let (whole, part) = (dir.join("whole"), dir.join("part"));
    let cadence = ["--checkpoint-every", "3", "--log-every", "1"];
    run(argv(
        &data,
        Some(&whole),
        &[&["--steps", "6"], &cadence[..]].concat(),
    ))
    .unwrap();
    run(argv(
        &data,
        Some(&part),
        &[&["--steps", "3"], &cadence[..]].concat(),
    ))
    .unwrap();
    std::fs::copy(
        whole.join("model-00000006.safetensors"),
        part.join("model-00000006.safetensors"),
    )
    .unwrap();
    std::fs::write(part.join("train_state-00000006.tmp-4194999"), b"cut").unwrap();
    let log = std::fs::read_to_string(whole.join("log.jsonl")).unwrap();
    std::fs::write(part.join("log.jsonl"), log).unwrap(); // steps 4-6 logged before the kill
    run(resume_argv(&data, &part, &["--steps", "6"])).unwrap();
    assert!(!part.join("train_state-00000006.tmp-4194999").exists());
    for file in [
        MODEL_FILE,
        "model-00000006.safetensors",
        "train_state-00000006.safetensors",
    ] {
        let (a, b) = (params_of(&whole.join(file)), params_of(&part.join(file)));
        assert_eq!(a.len(), b.len());
        for ((name, x), (_, y)) in a.iter().zip(&b) {
            assert_bits_eq(&format!("{file} {name}"), y, x);
        }
    }
    assert_eq!(log_steps(&part), [1, 2, 3, 4, 5, 6]);
    assert_eq!(read_manifest(&part).unwrap().unwrap().step, 6);
}

#[test]
fn a_non_empty_out_is_refused_unless_overwrite_and_default_folders_are_unique() {
    let (data, dir) = (tiny_data(), scratch("out"));
    let out = dir.join("run");
    run(argv(&data, Some(&out), &["--steps", "2"])).unwrap();
    let manifest = std::fs::read(out.join(MANIFEST)).unwrap();
    let err = run(argv(&data, Some(&out), &["--steps", "1"])).unwrap_err();
    assert!(
        err.contains("is not empty") && err.contains("--overwrite") && err.contains("--resume"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join(MANIFEST)).unwrap(), manifest);
    run(argv(&data, Some(&out), &["--steps", "1", "--overwrite"])).unwrap();
    assert_eq!(read_manifest(&out).unwrap().unwrap().step, 1);
    assert_eq!(log_steps(&out), [1]);
    // Unique default folders, also within one second. The working directory changes for this test only;
    // every other test passes absolute paths.
    std::env::set_current_dir(&dir).unwrap();
    let (a, b) = (
        train_mnist::unique_run_folder().unwrap(),
        train_mnist::unique_run_folder().unwrap(),
    );
    assert_ne!(a, b);
    assert!(a.is_dir() && b.is_dir());
    // --out that cannot be created names the path.
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let err = run(argv(&data, Some(&file.join("sub")), &["--steps", "1"])).unwrap_err();
    assert!(err.contains("a-file/sub"), "{err}");
}

/// `--lr 1e10 --checkpoint-every 1`: the run stops at the first non-finite checkpoint with an error naming
/// the real last good one (or none), and every checkpoint left loads with finite values. Into a good run's
/// folder, the good checkpoint stays.
#[test]
fn the_divergence_guard_names_the_real_last_good_checkpoint() {
    let (data, dir) = (tiny_data(), scratch("diverge"));
    let out = dir.join("run");
    let wild = [
        "--steps",
        "6",
        "--log-every",
        "100",
        "--checkpoint-every",
        "1",
    ];
    let err = run(argv(
        &data,
        Some(&out),
        &[&wild[..], &["--lr", "1e30"]].concat(),
    ))
    .unwrap_err();
    assert!(
        err.contains("not saved") || err.contains("non-finite"),
        "{err}"
    );
    match read_manifest(&out).unwrap() {
        Some(m) => {
            assert!(
                err.contains(&format!("last good checkpoint is step {}", m.step)),
                "{err}"
            );
            let (net, _) = InceptionMnist::load_checkpoint(&out, CpuBackend).unwrap();
            net.check_finite().unwrap();
        }
        None => assert!(err.contains("no checkpoint was saved"), "{err}"),
    }
    let good = dir.join("good");
    run(argv(&data, Some(&good), &["--steps", "2"])).unwrap();
    let err = run(resume_argv(
        &data,
        &good,
        &[&wild[..], &["--lr", "1e30"]].concat(),
    ))
    .unwrap_err();
    let m = read_manifest(&good).unwrap().unwrap();
    assert!(
        err.contains(&format!("last good checkpoint is step {}", m.step)),
        "{err}"
    );
    let (net, _) = InceptionMnist::load_checkpoint(&good, CpuBackend).unwrap();
    net.check_finite().unwrap();
}

#[test]
fn the_data_set_is_checked_before_the_first_step() {
    let dir = scratch("dataset");
    for (name, data, want) in [
        (
            "empty",
            data("empty-test", 60, 0, 5, 5),
            "the test set has no images",
        ),
        (
            "sizes",
            data("sizes", 60, 10, 5, 4),
            "the test images are 4×4",
        ),
    ] {
        let out = dir.join(name);
        let err = run(argv(&data, Some(&out), &["--steps", "1"])).unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(
            !out.exists(),
            "{name}: the run must stop before it writes anything"
        );
    }
    let err = run(argv(&tiny_data(), Some(&dir.join("b")), &["--batch", "56"])).unwrap_err();
    assert!(err.contains("--batch 56"), "{err}");
}

#[test]
fn resumes_compare_the_recipe_and_refuse_files_and_missing_folders() {
    let (data, dir) = (tiny_data(), scratch("recipe"));
    let out = dir.join("run");
    run(argv(&data, Some(&out), &["--steps", "2"])).unwrap();
    let err = run(resume_argv(&data, &out, &["--steps", "3", "--map1", "4"])).unwrap_err();
    assert!(
        err.contains("--map1 4: the resumed run has map1 2") && err.contains(MANIFEST),
        "{err}"
    );
    let err = run(resume_argv(&data, &out, &["--steps", "3", "--seed", "9"])).unwrap_err();
    assert!(err.contains("seed 0"), "{err}");
    run(resume_argv(&data, &out, &["--steps", "3", "--lr", "0.02"])).unwrap();
    let m = read_manifest(&out).unwrap().unwrap();
    assert_eq!((m.step, m.recipe["lr"].as_str()), (3, "0.02"));
    assert_eq!(m.recipe["batch"], "4");
    let err = run(resume_argv(&data, &out, &["--steps", "2"])).unwrap_err();
    assert!(err.contains("at step 3, past --steps 2"), "{err}");
    let err = run(resume_argv(&data, &out.join(MODEL_FILE), &[])).unwrap_err();
    assert!(err.contains("not a folder"), "{err}");
    let missing = dir.join("missing");
    let err = run(resume_argv(&data, &missing, &[])).unwrap_err();
    assert!(err.contains("no such folder"), "{err}");
    assert!(!missing.exists());
}

#[test]
fn eval_only_of_a_nan_model_is_an_error() {
    let (data, dir) = (tiny_data(), scratch("nan"));
    let cfg = MnistConfig {
        map1: 2,
        map2: 3,
        reduce: 2,
        hidden: 6,
        dropout: 0.0,
        image: 5,
    };
    let mut net = InceptionMnist::new(CpuBackend, cfg, 1).unwrap();
    net.set_param("fc2.bias", &[f32::NAN; 10]).unwrap();
    let path = dir.join("nan.safetensors");
    net.save(&path).unwrap();
    let a: Vec<String> = [
        "train_mnist",
        "--device",
        "cpu",
        "--eval-only",
        "--checkpoint",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        path.display().to_string(),
        "--data".into(),
        data.display().to_string(),
    ])
    .collect();
    let err = run(a).unwrap_err();
    assert!(
        err.contains("nan.safetensors") && err.contains("NaN"),
        "{err}"
    );
}

/// 200 seeded command lines over the numbers (sizes, counts, rates, cadences, seed), each on the tiny data
/// set with at most one step: every one ends in `Ok` or an error, never a panic (an abort would end the
/// test binary).
#[test]
fn fuzzed_command_line_numbers_give_errors_never_panics() {
    let (data, dir) = (tiny_data(), scratch("fuzz"));
    let mut state = 0x0ddb_1a5e_5bad_5eed_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let huge = [
        "4611686018427387904",
        "18446744073709551615",
        "18446744073709551616",
        "4294967297",
        "2147483648",
        "-1",
        "0",
        "1e3",
        "",
    ];
    let sizes: Vec<&str> = ["1", "2", "3", "4"].iter().chain(&huge).copied().collect();
    let batches: Vec<&str> = ["1", "4", "55", "56", "55000"]
        .iter()
        .chain(&huge)
        .copied()
        .collect();
    let rates = [
        "0.001", "0.5", "0", "-1", "NaN", "inf", "-inf", "1e300", "1e-300", "1e38", "1e10", "0.99",
        "1", "1e-45", "x",
    ];
    let cadences = ["1", "2", "0", "-1", "18446744073709551615", "3"];
    let steps = ["1", "1", "1", "0", "-1", "x"];
    let seeds = ["0", "1", "18446744073709551615", "-1"];
    let (mut ok, mut errors) = (0, 0);
    for case in 0..200 {
        let mut a: Vec<String> = ["train_mnist", "--device", "cpu", "--data"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        a.push(data.display().to_string());
        a.extend([
            "--out".into(),
            dir.join(format!("case-{case}")).display().to_string(),
        ]);
        let mut pick = |flag: &str, pool: &[&str], default: &str| {
            let v = if next() % 3 == 0 {
                pool[next() as usize % pool.len()]
            } else {
                default
            };
            a.push(format!("--{flag}={v}"));
        };
        pick("map1", &sizes, "2");
        pick("map2", &sizes, "2");
        pick("reduce", &sizes, "2");
        pick("hidden", &sizes, "4");
        pick("batch", &batches, "4");
        pick("lr", &rates, "0.001");
        pick("dropout", &rates, "0.5");
        pick("steps", &steps, "1");
        pick("log-every", &cadences, "1");
        pick("checkpoint-every", &cadences, "1");
        pick("seed", &seeds, "0");
        let line = a.join(" ");
        let outcome = std::panic::catch_unwind(|| train_mnist::run_args(a.clone()));
        match outcome {
            Ok(Ok(())) => ok += 1,
            Ok(Err(_)) => errors += 1,
            Err(p) => {
                let what = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!("case {case} panicked ({what}): {line}");
            }
        }
    }
    eprintln!("fuzz: {ok} runs, {errors} errors, no panic");
    assert!(ok >= 10 && errors >= 10, "{ok} runs, {errors} errors");
}

/// An error on the training thread while a checkpoint is being written (`--lr 1e30`: step 1's parameters are
/// huge but finite, step 2's loss is not) waits for that checkpoint: it is committed and named as the last
/// good one, not lost with the process.
#[test]
fn an_error_while_a_checkpoint_is_written_keeps_it_and_names_it() {
    let (data, dir) = (tiny_data(), scratch("error-in-flight"));
    let out = dir.join("run");
    let err = run(argv(
        &data,
        Some(&out),
        &[
            "--steps",
            "4",
            "--log-every",
            "2",
            "--checkpoint-every",
            "1",
            "--lr",
            "1e30",
        ],
    ))
    .unwrap_err();
    assert!(err.contains("non-finite loss"), "{err}");
    assert!(err.contains("last good checkpoint is step 1"), "{err}");
    let m = read_manifest(&out)
        .unwrap()
        .expect("step 1's unit committed");
    assert_eq!(m.step, 1);
    let (net, _) = InceptionMnist::load_checkpoint(&out, CpuBackend).unwrap();
    net.check_finite().unwrap();
}

/// A checkpoint the background writer cannot write (its model file's name taken by a folder, as when the
/// folder is unwritable) ends the run with an error naming the file and the step, not lost in the thread;
/// the run's earlier state is untouched.
#[test]
fn a_checkpoint_the_writer_cannot_write_ends_the_run_naming_the_file() {
    let (data, dir) = (tiny_data(), scratch("unwritable"));
    let out = dir.join("run");
    std::fs::create_dir_all(out.join("model-00000002.safetensors")).unwrap();
    let err = run(argv(
        &data,
        Some(&out),
        &["--overwrite", "--steps", "4", "--checkpoint-every", "2"],
    ))
    .unwrap_err();
    assert!(
        err.contains("model-00000002.safetensors") && err.contains("step 2"),
        "{err}"
    );
    assert!(
        read_manifest(&out).unwrap().is_none(),
        "no unit was committed"
    );
}

/// The evaluation batch (`--eval-batch`, an inference plan of its own) changes no result: the logged
/// validation accuracies and the model equal those of the default; the run's last log line says where the
/// time went, with its parts.
#[test]
fn the_evaluation_batch_changes_no_result_and_the_time_is_logged() {
    let (data, dir) = (tiny_data(), scratch("eval-batch"));
    let (a, b) = (dir.join("a"), dir.join("b"));
    let extra = ["--steps", "4", "--log-every", "2"];
    run(argv(&data, Some(&a), &extra)).unwrap();
    run(argv(
        &data,
        Some(&b),
        &[&extra[..], &["--eval-batch", "1"]].concat(),
    ))
    .unwrap();
    let lines = |d: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(d.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (la, lb) = (lines(&a), lines(&b));
    assert_eq!(la.len(), 3, "{la:?}");
    for (x, y) in la.iter().zip(&lb).take(2) {
        assert_eq!(x["val_accuracy"], y["val_accuracy"]);
        assert_eq!(x["loss"], y["loss"]);
    }
    assert_eq!(
        params_of(&a.join(MODEL_FILE)),
        params_of(&b.join(MODEL_FILE))
    );
    let time = &la[2]["time"];
    for key in [
        "total",
        "startup",
        "data_load",
        "kernel_load",
        "upload",
        "steps",
        "capture",
        "captures",
        "replayed_steps",
        "host_waits",
        "validation",
        "checkpoints",
        "test",
    ] {
        assert!(
            time.get(key).is_some_and(|v| v.is_number()),
            "{key} missing: {time}"
        );
    }
    // the CPU captures no graph
    assert_eq!(
        (time["captures"].as_u64(), time["replayed_steps"].as_u64()),
        (Some(0), Some(0))
    );
}
