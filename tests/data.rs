//! The MNIST loaders: the shipped data, small IDX and CSV fixtures (good and each kind of bad), and random
//! and mutated bytes (errors only, never a panic).

mod common;

use approx::assert_abs_diff_eq;
use std::io::Write;
use std::path::{Path, PathBuf};

use inception_cuda::data::{load_csv, load_dir, load_idx};
use inception_cuda::Error;

/// A fresh folder under the target directory for this test's files.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("data-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn idx(dims: &[u32], payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, dims.len() as u8];
    for d in dims {
        b.extend(d.to_be_bytes());
    }
    b.extend(payload);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn reason(err: Error) -> String {
    match err {
        Error::Data { .. } => err.to_string(),
        other => panic!("expected a data error, got {other:?}"),
    }
}

#[test]
fn shipped_mnist_loads_with_the_known_label_counts() {
    let s = load_dir(&common::repo_path("data")).unwrap();
    assert_eq!(
        (s.train.len(), s.val.len(), s.test.len()),
        (55_000, 5_000, 10_000)
    );
    assert_eq!((s.train.rows, s.train.cols), (28, 28));
    let counts = |labels: &[u32]| {
        (0..10)
            .map(|c| labels.iter().filter(|&&l| l == c).count())
            .collect::<Vec<_>>()
    };
    let all: Vec<u32> = s
        .train
        .labels
        .iter()
        .chain(&s.val.labels)
        .copied()
        .collect();
    // data/README.md: train 5923 6742 5958 6131 5842 5421 5918 6265 5851 5949; test 980 1135 ...
    assert_eq!(
        counts(&all),
        [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    );
    assert_eq!(
        counts(&s.test.labels),
        [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    );
    let mean: f64 = s
        .train
        .images
        .iter()
        .chain(&s.val.images)
        .map(|&p| p as f64 * 255.0)
        .sum::<f64>()
        / (60_000.0 * 784.0);
    assert_abs_diff_eq!(mean, 33.318, epsilon = 0.01);
    assert!(s.train.images.iter().all(|&p| (0.0..=1.0).contains(&p)));
}

#[test]
fn idx_fixtures_good_raw_and_gzip_and_each_kind_of_bad() {
    let dir = scratch("idx");
    let pixels: Vec<u8> = (0..3 * 2 * 2).map(|i| (i * 20) as u8).collect();
    let (img, lbl) = (idx(&[3, 2, 2], &pixels), idx(&[3], &[7, 0, 9]));
    let d = load_idx(&write(&dir, "i.gz", &gz(&img)), &write(&dir, "l", &lbl)).unwrap();
    assert_eq!(d.labels, [7, 0, 9]);
    assert_eq!((d.rows, d.cols, d.images.len()), (2, 2, 12));
    assert_eq!(d.images[1], 20.0 / 255.0);
    let l = write(&dir, "l", &lbl);
    let bad =
        |name: &str, bytes: &[u8]| reason(load_idx(&write(&dir, name, bytes), &l).unwrap_err());
    assert!(
        bad("magic", &idx(&[3, 2], &pixels)).contains("wrong magic number 00000802"),
        "{}",
        bad("magic", &idx(&[3, 2], &pixels))
    );
    assert!(bad("short", &img[..img.len() - 1]).contains("truncated"));
    assert!(bad("long", &[img.as_slice(), &[0]].concat()).contains("trailing bytes"));
    assert!(bad("tiny", &[0, 0]).contains("truncated: no IDX header"));
    assert!(bad("badgz", &gz(&img)[..20]).contains("corrupt gzip"));
    let count = load_idx(
        &write(&dir, "i", &img),
        &write(&dir, "l2", &idx(&[2], &[1, 2])),
    )
    .unwrap_err();
    assert!(reason(count).contains("2 labels for 3 images"));
    let label = load_idx(
        &write(&dir, "i", &img),
        &write(&dir, "l3", &idx(&[3], &[1, 12, 2])),
    )
    .unwrap_err();
    assert!(reason(label).contains("label 12 of image 1"));
    let missing = load_idx(&dir.join("nope"), &l).unwrap_err();
    assert!(reason(missing).contains("nope: cannot read"));
}

fn csv_row(label: &str, pixel: &str) -> String {
    std::iter::once(label.to_string())
        .chain(std::iter::repeat_n(pixel.to_string(), 784))
        .collect::<Vec<_>>()
        .join(",")
}

#[test]
fn csv_fixtures_good_with_header_and_each_kind_of_bad() {
    let dir = scratch("csv");
    let header = std::iter::once("label".to_string())
        .chain((0..784).map(|i| format!("pixel{i}")))
        .collect::<Vec<_>>()
        .join(",");
    let good = format!("{header}\n{}\n{}\n", csv_row("3", "255"), csv_row("0", "0"));
    let d = load_csv(&write(&dir, "good.csv", good.as_bytes())).unwrap();
    assert_eq!(d.labels, [3, 0]);
    assert_eq!((d.images[0], d.images[784]), (1.0, 0.0));
    let bad = |name: &str, text: String| {
        reason(load_csv(&write(&dir, name, text.as_bytes())).unwrap_err())
    };
    let short = bad("short.csv", format!("{}\n1,2,3\n", csv_row("1", "5")));
    assert!(short.contains("line 2: 3 fields, expected 785"), "{short}");
    let range = bad(
        "range.csv",
        format!("{}\n{}\n", csv_row("1", "5"), csv_row("1", "256")),
    );
    assert!(
        range.contains("line 2: field 2 = \"256\" is not an integer in 0..=255"),
        "{range}"
    );
    let label = bad("label.csv", format!("{}\n", csv_row("10", "0")));
    assert!(label.contains("line 1: field 1 = \"10\""), "{label}");
    assert!(bad("empty.csv", String::new()).contains("no images"));
    // A folder of CSV files loads like the IDX one and splits 11:1 when smaller than MNIST.
    write(
        &dir,
        "mnist_train.csv",
        format!(
            "{}\n",
            (0..12)
                .map(|i| csv_row(&(i % 10).to_string(), "7"))
                .collect::<Vec<_>>()
                .join("\n")
        )
        .as_bytes(),
    );
    write(
        &dir,
        "mnist_test.csv",
        format!("{}\n", csv_row("4", "1")).as_bytes(),
    );
    let s = load_dir(&dir).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (11, 1, 1));
    let none = reason(load_dir(&scratch("empty")).unwrap_err());
    assert!(
        none.contains("no MNIST here")
            && none.contains("train-images-idx3-ubyte")
            && none.contains("mnist_train.csv"),
        "{none}"
    );
}

/// Random and mutated bytes through the IDX and CSV loaders: errors or data, never a panic. Bounded: a
/// few thousand inputs, well under a minute.
#[test]
fn loaders_survive_random_and_mutated_bytes() {
    let dir = scratch("fuzz");
    let img = idx(&[2, 3, 3], &[9; 18]);
    let lbl = write(&dir, "lbl", &idx(&[2], &[1, 2]));
    let csv = format!("{}\n", csv_row("2", "9"));
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for round in 0..3000 {
        let base: Vec<u8> = match round % 3 {
            0 => img.clone(),
            1 => gz(&img),
            _ => csv.as_bytes().to_vec(),
        };
        let mut bytes = base.clone();
        match next() % 4 {
            0 => bytes.truncate((next() as usize) % (bytes.len() + 1)),
            1 => (0..1 + next() % 4).for_each(|_| {
                let i = (next() as usize) % bytes.len().max(1);
                if let Some(b) = bytes.get_mut(i) {
                    *b = next() as u8;
                }
            }),
            2 => bytes.extend((0..next() % 16).map(|_| next() as u8)),
            _ => bytes = (0..next() % 64).map(|_| next() as u8).collect(),
        }
        let f = write(&dir, "fuzz", &bytes);
        let _ = load_idx(&f, &lbl);
        let _ = load_idx(&lbl, &f);
        let _ = load_csv(&f);
    }
}
