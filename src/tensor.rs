//! `Tensor`: an immutable, shape-checked f32 NCHW buffer on a [`Device`], optionally recorded on a [`Tape`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[cfg(feature = "cuda")]
use crate::backend::Backend;
use crate::tape::Tape;
use crate::{Device, Error, Result};

/// Identity of a tensor's value, used by the tape to key gradients. Clones and [`Tensor::detach`] keep it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

/// The buffer behind a tensor, one variant per backend.
pub(crate) enum Storage {
    Cpu(Vec<f32>),
    #[cfg(feature = "cuda")]
    Cuda(cudarc::driver::CudaSlice<f32>),
}

/// A contiguous f32 tensor (NCHW for images). Cloning is cheap: the buffer is shared, never mutated.
#[derive(Clone)]
pub struct Tensor {
    id: TensorId,
    shape: Arc<[usize]>,
    device: Device,
    storage: Arc<Storage>,
    tape: Option<Tape>,
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?} on {})",
            self.id, self.shape, self.device
        )
    }
}

/// A new buffer of `len` elements filled by `f` (which receives a view of all of it).
pub(crate) fn fill_new<B: crate::Backend>(
    b: &B,
    len: usize,
    f: impl FnOnce(&mut B::ViewMut<'_>) -> Result<()>,
) -> Result<B::Buf> {
    let mut buf = b.alloc_zeros(len)?;
    f(&mut b.view_mut(&mut buf, 0..len)?)?;
    Ok(buf)
}

/// Elements of `shape`, or an error naming `op` when the product overflows.
pub(crate) fn elem_count(op: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| Error::ShapeOverflow {
            op,
            shape: shape.to_vec(),
        })
}

/// Bytes of memory and swap this machine has (Linux: `MemTotal + SwapTotal` of /proc/meminfo), read once;
/// `None` where it cannot be read.
fn host_memory() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = info.lines().find(|l| l.starts_with(key))?;
            line[key.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        };
        Some(kib("MemTotal:")?.saturating_add(kib("SwapTotal:").unwrap_or(0)) * 1024)
    })
}

/// Checks that `elems` f32 values (`what`, for `op`) can be allocated on the host before a backend's
/// `alloc_zeros` (a `vec!`, which aborts the process on failure) is asked for them: an error saying how much
/// was asked for when the size overflows, exceeds the machine's memory and swap, or the allocator refuses it.
pub(crate) fn check_alloc(op: &'static str, what: &str, elems: usize) -> Result<()> {
    let refuse = |bytes: u64, reason: String| Error::Alloc {
        op,
        what: what.to_string(),
        bytes,
        reason,
    };
    let bytes = u64::try_from(elems)
        .ok()
        .and_then(|e| e.checked_mul(4))
        .ok_or_else(|| refuse(u64::MAX, "more than fits in a 64-bit address space".into()))?;
    if let Some(total) = host_memory().filter(|&t| bytes > t) {
        return Err(refuse(
            bytes,
            format!(
                "more than this machine's memory and swap ({:.2} GiB)",
                total as f64 / (1u64 << 30) as f64
            ),
        ));
    }
    Vec::<f32>::new()
        .try_reserve_exact(elems)
        .map_err(|e| refuse(bytes, format!("the allocator refused: {e}")))
}

/// Checks that operand `what` of `op` has shape `expected`.
pub(crate) fn check_shape(
    op: &'static str,
    what: &'static str,
    expected: &[usize],
    got: &[usize],
) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(Error::ShapeMismatch {
            op,
            what,
            expected: expected.to_vec(),
            got: got.to_vec(),
        })
    }
}

impl Tensor {
    /// A tensor holding `data` (row-major / NCHW) with `shape`, placed on `device`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Tensor> {
        let expected = elem_count("Tensor::from_vec", shape)?;
        if data.len() != expected {
            return Err(Error::ElementCount {
                op: "Tensor::from_vec",
                shape: shape.to_vec(),
                expected,
                len: data.len(),
            });
        }
        let storage = match device {
            Device::Cpu => Storage::Cpu(data),
            #[cfg(feature = "cuda")]
            Device::Cuda(dev) => Storage::Cuda(dev.backend().upload(&data)?),
            #[cfg(not(feature = "cuda"))]
            #[allow(unreachable_code)]
            Device::Cuda(dev) => match dev.never() {},
        };
        Ok(Tensor::from_storage(storage, shape, device.clone()))
    }

    /// A zero-filled tensor.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Tensor> {
        let n = elem_count("Tensor::zeros", shape)?;
        check_alloc("Tensor::zeros", &format!("a tensor of shape {shape:?}"), n)?;
        let storage = dispatch!("Tensor::zeros", device, |b| b.alloc_zeros(n));
        Ok(Tensor::from_storage(storage, shape, device.clone()))
    }

    pub(crate) fn from_storage(storage: Storage, shape: &[usize], device: Device) -> Tensor {
        Tensor {
            id: TensorId::fresh(),
            shape: shape.into(),
            device,
            storage: Arc::new(storage),
            tape: None,
        }
    }

    /// The shape, outermost dimension first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product() // checked at construction
    }

    /// The device holding the buffer.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The identity the tape keys gradients by.
    pub fn id(&self) -> TensorId {
        self.id
    }

    /// Whether ops on this tensor are recorded on a tape.
    pub fn is_tracked(&self) -> bool {
        self.tape.is_some()
    }

    /// The same value, no longer recorded on any tape (same id, shared buffer).
    pub fn detach(&self) -> Tensor {
        Tensor {
            tape: None,
            ..self.clone()
        }
    }

    /// Copies the values to host memory (waits for the device).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(v) => Ok(v.clone()),
            #[cfg(feature = "cuda")]
            Storage::Cuda(buf) => self.cuda_backend("to_vec")?.to_host(buf),
        }
    }

    /// A detached copy on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Tensor> {
        Tensor::from_vec(self.to_vec()?, &self.shape, device)
    }

    pub(crate) fn tape(&self) -> Option<&Tape> {
        self.tape.as_ref()
    }

    pub(crate) fn with_tape(self, tape: Tape) -> Tensor {
        Tensor {
            tape: Some(tape),
            ..self
        }
    }

    /// The host buffer, or `DeviceMismatch` naming `op` and operand `what`.
    pub(crate) fn cpu_buf(&self, op: &'static str, what: &'static str) -> Result<&Vec<f32>> {
        match &*self.storage {
            Storage::Cpu(v) => Ok(v),
            #[allow(unreachable_patterns)] // CPU-only builds have no other storage
            _ => Err(self.mismatch(op, what, &Device::Cpu)),
        }
    }

    /// The device buffer on `device`, or `DeviceMismatch` naming `op` and operand `what`.
    #[cfg(feature = "cuda")]
    pub(crate) fn cuda_buf(
        &self,
        op: &'static str,
        what: &'static str,
        device: &Device,
    ) -> Result<&cudarc::driver::CudaSlice<f32>> {
        match &*self.storage {
            Storage::Cuda(buf) if self.device == *device => Ok(buf),
            _ => Err(self.mismatch(op, what, device)),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_backend(&self, op: &'static str) -> Result<&crate::cuda::CudaBackend> {
        match &self.device {
            Device::Cuda(dev) => Ok(dev.backend()),
            Device::Cpu => Err(self.mismatch(op, "tensor", &self.device)),
        }
    }

    fn mismatch(&self, op: &'static str, what: &'static str, expected: &Device) -> Error {
        Error::DeviceMismatch {
            op,
            what,
            expected: expected.to_string(),
            got: self.device.to_string(),
        }
    }
}
