//! MNIST loaders: the IDX files (gzip or raw) and the write-up's CSV layout (`label, 784 pixels` per row, a
//! header row allowed). Pixels are scaled to [0, 1]. Bad data is an error naming the file (and, for CSV, the
//! line), never a panic.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::{Error, Result};

/// Classes of MNIST.
pub const CLASSES: u32 = 10;
/// Images the write-up trains on: the first 55,000 of the training file; the last 5,000 validate.
pub const TRAIN_IMAGES: usize = 55_000;

/// A set of images with their labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// `[n, rows · cols]` pixels in [0, 1], row-major.
    pub images: Vec<f32>,
    /// `n` labels in `0..10`.
    pub labels: Vec<u32>,
    /// Image height.
    pub rows: usize,
    /// Image width.
    pub cols: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.rows * self.cols
    }

    /// The pixels and labels of images `range`, or an error naming `op` when the range is out of bounds
    /// (or `images` does not hold `rows · cols` pixels per label).
    fn range(&self, op: &'static str, range: std::ops::Range<usize>) -> Result<(&[f32], &[u32])> {
        let px = self.rows.checked_mul(self.cols);
        let pixels =
            px.and_then(|px| Some(range.start.checked_mul(px)?..range.end.checked_mul(px)?));
        match (
            pixels.and_then(|r| self.images.get(r)),
            self.labels.get(range.clone()),
        ) {
            (Some(images), Some(labels)) if self.images.len() == self.len() * px.unwrap_or(0) => {
                Ok((images, labels))
            }
            _ => Err(Error::OutOfRange {
                op,
                what: "images".into(),
                value: format!(
                    "{range:?} of {} images of {}×{} ({} pixels)",
                    self.len(),
                    self.rows,
                    self.cols,
                    self.images.len()
                ),
                allowed: "start <= end <= number of images, rows · cols pixels per image",
            }),
        }
    }

    /// Images `range` as a new dataset; an out-of-range `range` is an error.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Result<Dataset> {
        let (images, labels) = self.range("Dataset::slice", range)?;
        Ok(Dataset {
            images: images.to_vec(),
            labels: labels.to_vec(),
            rows: self.rows,
            cols: self.cols,
        })
    }

    /// The write-up's batch of training step `step`: `batch` images starting at
    /// `(step · batch) mod (len − batch)`, as (pixels, labels).
    pub fn batch(&self, step: u64, batch: usize) -> Result<(&[f32], &[u32])> {
        if batch == 0 || batch > self.len() {
            return Err(Error::OutOfRange {
                op: "Dataset::batch",
                what: "batch".into(),
                value: batch.to_string(),
                allowed: "1 <= batch <= number of images",
            });
        }
        let span = (self.len() - batch).max(1) as u64;
        let start = (step.wrapping_mul(batch as u64) % span) as usize;
        self.range("Dataset::batch", start..start + batch)
    }
}

/// A data set resident in a backend's memory for a whole run: its images as the host's normalised f32
/// values (a copy of [`Dataset::images`], so a batch gathered on the device equals the host's bit for bit)
/// and its labels. A training step gathers its batch from it on the device
/// ([`crate::graph::Plan::step_gathered`]); an evaluation gathers its batches by offset
/// ([`crate::graph::Plan::gather`]).
pub struct DeviceDataset<B: Backend> {
    pub(crate) images: B::Buf,
    pub(crate) labels: B::Labels,
    len: usize,
    pixels: usize,
    /// Its identity: a captured step holds its addresses.
    pub(crate) id: u64,
}

impl<B: Backend> std::fmt::Debug for DeviceDataset<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceDataset")
            .field("images", &self.len)
            .field("pixels", &self.pixels)
            .finish()
    }
}

impl<B: Backend> DeviceDataset<B> {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pixels per image.
    pub fn pixels(&self) -> usize {
        self.pixels
    }
}

impl Dataset {
    /// Uploads the whole set to backend `b` (images as they are, f32 in [0, 1]; labels checked to be digits
    /// first, since a kernel cannot report a bad one).
    pub fn to_device<B: Backend>(&self, b: &B) -> Result<DeviceDataset<B>> {
        const OP: &str = "Dataset::to_device";
        let (images, labels) = self.range(OP, 0..self.len())?;
        if let Some(i) = labels.iter().position(|&l| l >= CLASSES) {
            return Err(Error::OutOfRange {
                op: OP,
                what: format!("label of image {i}"),
                value: labels[i].to_string(),
                allowed: "0 <= label < 10",
            });
        }
        Ok(DeviceDataset {
            images: b.upload(images)?,
            labels: b.upload_labels(labels)?,
            len: self.len(),
            pixels: self.pixels(),
            id: crate::graph::next_id(),
        })
    }
}

/// The write-up's split: the first 55,000 training images train, the last 5,000 validate; the test file tests.
#[derive(Clone, Debug, PartialEq)]
pub struct MnistSplits {
    /// Training images.
    pub train: Dataset,
    /// Validation images.
    pub val: Dataset,
    /// Test images.
    pub test: Dataset,
}

fn data_error(file: &Path, line: Option<u64>, reason: impl Into<String>) -> Error {
    Error::Data {
        file: file.to_path_buf(),
        line,
        reason: reason.into(),
    }
}

/// At most `limit` bytes of `reader` (fewer at its end).
fn read_up_to(reader: &mut impl Read, limit: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    reader.take(limit as u64).read_to_end(&mut out)?;
    Ok(out)
}

/// Dimensions and payload of an IDX file of unsigned bytes with `want_dims` dimensions, gunzipped when it
/// starts with the gzip magic. Reads the header first and then at most the payload it declares (plus one
/// byte, to tell trailing bytes): neither a large file nor a gzip stream that inflates without end is read
/// past that.
fn read_idx(path: &Path, want_dims: u8) -> Result<(Vec<usize>, Vec<u8>)> {
    let cannot_read = |e: std::io::Error| data_error(path, None, format!("cannot read: {e}"));
    let mut file = BufReader::new(File::open(path).map_err(cannot_read)?);
    let gz = file
        .fill_buf()
        .map_err(cannot_read)?
        .starts_with(&[0x1f, 0x8b]);
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let io = |e: std::io::Error| {
        let reason = if gz {
            format!("corrupt gzip: {e}")
        } else {
            format!("cannot read: {e}")
        };
        data_error(path, None, reason)
    };
    let header = read_up_to(&mut reader, 4 + 4 * want_dims as usize).map_err(io)?;
    let (dims, expected) = parse_idx_header(path, &header, want_dims)?;
    let payload = read_up_to(&mut reader, expected.saturating_add(1)).map_err(io)?;
    if payload.len() != expected {
        let (what, has) = if payload.len() < expected {
            ("truncated", payload.len().to_string())
        } else {
            ("trailing bytes", format!("more than {expected}"))
        };
        return Err(data_error(
            path,
            None,
            format!(
                "{what}: dimensions {dims:?} need {expected} bytes of data, the file has {has}"
            ),
        ));
    }
    Ok((dims, payload))
}

/// Dimensions of an IDX header of unsigned bytes with `want_dims` dimensions, and the payload bytes they
/// declare.
fn parse_idx_header(path: &Path, bytes: &[u8], want_dims: u8) -> Result<(Vec<usize>, usize)> {
    let magic = bytes
        .get(..4)
        .ok_or_else(|| data_error(path, None, "truncated: no IDX header"))?;
    if magic[0] != 0 || magic[1] != 0 || magic[2] != 0x08 || magic[3] != want_dims {
        return Err(data_error(
            path,
            None,
            format!(
                "wrong magic number {:02x}{:02x}{:02x}{:02x} (expected 000008{:02x}: unsigned bytes, {want_dims} dimensions)",
                magic[0], magic[1], magic[2], magic[3], want_dims
            ),
        ));
    }
    let header = 4 + 4 * want_dims as usize;
    let dims_bytes = bytes
        .get(4..header)
        .ok_or_else(|| data_error(path, None, "truncated IDX header"))?;
    let dims: Vec<usize> = dims_bytes
        .chunks_exact(4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| data_error(path, None, format!("dimensions {dims:?} overflow")))?;
    Ok((dims, expected))
}

/// Loads an IDX image file and its IDX label file (gzip or raw).
pub fn load_idx(images: &Path, labels: &Path) -> Result<Dataset> {
    let (dims, pixels) = read_idx(images, 3)?;
    if dims[1] == 0 || dims[1] != dims[2] {
        return Err(data_error(
            images,
            None,
            format!(
                "images of {}×{} pixels: the net takes square images of at least 1×1",
                dims[1], dims[2]
            ),
        ));
    }
    let (ldims, lbls) = read_idx(labels, 1)?;
    if dims[0] != ldims[0] {
        return Err(data_error(
            labels,
            None,
            format!(
                "{} labels for {} images in {}",
                ldims[0],
                dims[0],
                images.display()
            ),
        ));
    }
    if let Some(i) = lbls.iter().position(|&l| u32::from(l) >= CLASSES) {
        return Err(data_error(
            labels,
            None,
            format!("label {} of image {i} is not a digit", lbls[i]),
        ));
    }
    Ok(Dataset {
        images: pixels.iter().map(|&p| f32::from(p) / 255.0).collect(),
        labels: lbls.iter().map(|&l| u32::from(l)).collect(),
        rows: dims[1],
        cols: dims[2],
    })
}

/// The line (from 1) of the record at byte offset `byte` of `path`, counted when an error is reported: the
/// CSV reader skips blank lines without counting them, and its record offset is where the blank lines
/// before the record begin.
fn line_at(path: &Path, byte: Option<u64>) -> Option<u64> {
    let byte = byte?;
    let mut file = BufReader::new(File::open(path).ok()?);
    let (mut line, mut at, mut b) = (1u64, 0u64, [0u8]);
    while file.read_exact(&mut b).is_ok() {
        if at >= byte && !matches!(b[0], b'\n' | b'\r') {
            break;
        }
        line += u64::from(b[0] == b'\n');
        at += 1;
    }
    Some(line)
}

/// Loads the write-up's CSV layout: one image a row, the label first, then 784 pixel values 0–255; a header
/// row (a first row whose first field is not a number) is skipped.
pub fn load_csv(path: &Path) -> Result<Dataset> {
    let file = File::open(path).map_err(|e| data_error(path, None, format!("cannot read: {e}")))?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(file);
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    for (i, record) in reader.records().enumerate() {
        // The reader skips blank lines: the line number is the record's own, not its index.
        let record = record.map_err(|e| {
            let line = line_at(path, e.position().map(|p| p.byte()));
            data_error(path, line, format!("unreadable row: {e}"))
        })?;
        let at = record.position().map(|p| p.byte());
        let line = || line_at(path, at);
        let values: Vec<&str> = record.iter().map(str::trim).collect();
        if i == 0 && values.first().is_some_and(|v| v.parse::<f64>().is_err()) {
            continue; // a header row: its first field is a name, not a label
        }
        if values.len() != 785 {
            return Err(data_error(
                path,
                line(),
                format!(
                    "{} fields, expected 785 (label and 784 pixels)",
                    values.len()
                ),
            ));
        }
        let number = |j: usize, max: u32| -> Result<u32> {
            values[j]
                .parse::<u32>()
                .ok()
                .filter(|&v| v <= max)
                .ok_or_else(|| {
                    data_error(
                        path,
                        line(),
                        format!(
                            "field {} = {:?} is not an integer in 0..={max}",
                            j + 1,
                            values[j]
                        ),
                    )
                })
        };
        labels.push(number(0, CLASSES - 1)?);
        for j in 1..785 {
            images.push(number(j, 255)? as f32 / 255.0);
        }
    }
    if labels.is_empty() {
        return Err(data_error(path, None, "no images"));
    }
    Ok(Dataset {
        images,
        labels,
        rows: 28,
        cols: 28,
    })
}

/// The IDX names looked for, gzip first: (train images, train labels, test images, test labels).
const IDX_NAMES: [&str; 4] = [
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
];
/// The write-up's CSV names.
const CSV_NAMES: [&str; 2] = ["mnist_train.csv", "mnist_test.csv"];

fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [format!("{name}.gz"), name.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Loads MNIST from `dir`, which holds either the four IDX files (gzip or raw) or `mnist_train.csv` and
/// `mnist_test.csv`, and splits it the write-up's way (the last 5,000 training images validate).
pub fn load_dir(dir: &Path) -> Result<MnistSplits> {
    let idx: Vec<Option<PathBuf>> = IDX_NAMES.iter().map(|n| find(dir, n)).collect();
    let (train, test) = if idx.iter().all(Option::is_some) {
        let p: Vec<PathBuf> = idx.into_iter().flatten().collect();
        (load_idx(&p[0], &p[1])?, load_idx(&p[2], &p[3])?)
    } else if CSV_NAMES.iter().all(|n| dir.join(n).is_file()) {
        (
            load_csv(&dir.join(CSV_NAMES[0]))?,
            load_csv(&dir.join(CSV_NAMES[1]))?,
        )
    } else {
        return Err(data_error(
            dir,
            None,
            format!(
                "no MNIST here: expected the IDX files {} (each optionally .gz), or {} and {}",
                IDX_NAMES.join(", "),
                CSV_NAMES[0],
                CSV_NAMES[1]
            ),
        ));
    };
    let split = if train.len() > TRAIN_IMAGES {
        TRAIN_IMAGES
    } else {
        train.len() * 11 / 12
    };
    Ok(MnistSplits {
        val: train.slice(split..train.len())?,
        train: train.slice(0..split)?,
        test,
    })
}
