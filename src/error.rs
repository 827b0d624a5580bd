//! The crate's one error type: every failure names the op (or file, or tensor) and the shapes involved.

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in an op, a device or the tape.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operand's shape does not fit the op.
    #[error("{op}: {what} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The op that checked the shape.
        op: &'static str,
        /// Which operand (for example "dy" or "b").
        what: &'static str,
        /// The shape the op needed.
        expected: Vec<usize>,
        /// The shape it was given.
        got: Vec<usize>,
    },
    /// A buffer's length does not match the element count of its shape.
    #[error("{op}: {len} values given for shape {shape:?} ({expected} elements)")]
    ElementCount {
        /// The op or constructor.
        op: &'static str,
        /// The requested shape.
        shape: Vec<usize>,
        /// Elements the shape holds.
        expected: usize,
        /// Values supplied.
        len: usize,
    },
    /// A shape descriptor is invalid for the op (unsupported kernel size, channel slice out of range, ...).
    #[error("{op}: invalid shape: {reason}")]
    InvalidShape {
        /// The op.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A buffer passed to a kernel or twin has the wrong number of elements for the shape descriptor.
    #[error("{op}: buffer {what} has {len} elements, expected {expected}")]
    BufferLength {
        /// The op.
        op: &'static str,
        /// Which buffer.
        what: &'static str,
        /// Elements the shape needs.
        expected: usize,
        /// Elements given.
        len: usize,
    },
    /// A value is outside the range the op accepts (a class label, a probability, a step count).
    #[error("{op}: {what} = {value} is out of range ({allowed})")]
    OutOfRange {
        /// The op.
        op: &'static str,
        /// Which argument or element.
        what: String,
        /// The offending value.
        value: String,
        /// The accepted range.
        allowed: &'static str,
    },
    /// A data or checkpoint file is missing or malformed.
    #[error("{}{}: {reason}", file.display(), line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Data {
        /// The file (or folder).
        file: std::path::PathBuf,
        /// The line, for text formats.
        line: Option<u64>,
        /// What is wrong.
        reason: String,
    },
    /// The element count of a shape does not fit in `usize`.
    #[error("{op}: shape {shape:?} has more elements than fit in memory")]
    ShapeOverflow {
        /// The op or constructor.
        op: &'static str,
        /// The offending shape.
        shape: Vec<usize>,
    },
    /// A value that must be finite is NaN or infinite (a pixel, a logit, a parameter about to be saved).
    #[error("{op}: {what} is {value}")]
    NonFinite {
        /// The op that checked.
        op: &'static str,
        /// Which value (for example "logit 3 of image 0" or "parameter fc1.weight\[12\]").
        what: String,
        /// The value found.
        value: f32,
    },
    /// A buffer is larger than this machine can hold: refused before the allocation, which would abort.
    #[error("{op}: {what} needs {bytes} bytes ({gib:.2} GiB): {reason}", gib = *bytes as f64 / (1u64 << 30) as f64)]
    Alloc {
        /// The op or constructor.
        op: &'static str,
        /// The buffers asked for.
        what: String,
        /// Bytes asked for.
        bytes: u64,
        /// Why it was refused.
        reason: String,
    },
    /// Operands live on different devices.
    #[error("{op}: {what} is on {got}, expected {expected}")]
    DeviceMismatch {
        /// The op.
        op: &'static str,
        /// Which operand.
        what: &'static str,
        /// The device of the first operand.
        expected: String,
        /// The device of this operand.
        got: String,
    },
    /// Tensors recorded on different tapes were combined in one op.
    #[error("{op}: operands are recorded on different tapes")]
    TapeMismatch {
        /// The op.
        op: &'static str,
    },
    /// An invariant of this crate did not hold (a bug: please report it with the message).
    #[error("{op}: internal error: {reason}")]
    Internal {
        /// The op.
        op: &'static str,
        /// What did not hold.
        reason: String,
    },
    /// A graph could not be built or planned: an unknown or repeated name, a shape that does not fit an op,
    /// a structure the planner does not support.
    #[error("{op}: {reason}")]
    Graph {
        /// The builder method or planning step (for example "Graph::conv" or "Plan::train").
        op: &'static str,
        /// What is wrong, naming the tensor or parameter and the shapes.
        reason: String,
    },
    /// `Tape::backward` could not run.
    #[error("backward: {reason}")]
    Backward {
        /// What went wrong.
        reason: String,
    },
    /// The kernel emulator reported undefined behaviour or a failed launch.
    #[cfg(feature = "emulation")]
    #[error("{op} (emulated): {message}")]
    Emulation {
        /// The kernel.
        op: &'static str,
        /// What the emulator saw.
        message: String,
    },
    /// CUDA could not be used on this machine or device.
    #[error("CUDA unavailable: {0}")]
    CudaUnavailable(#[from] CudaUnavailable),
    /// The CUDA driver reported an error while running an op.
    #[cfg(feature = "cuda")]
    #[error("{op}: CUDA driver error: {source}")]
    Cuda {
        /// The op (or "alloc", "memcpy", "synchronize").
        op: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
}

/// Why CUDA could not be used; [`crate::Device::cuda_if_available`] reports it when it falls back to the CPU.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CudaUnavailable {
    /// The crate was built without the `cuda` feature.
    #[error("inception-cuda was built without the `cuda` feature")]
    NotCompiled,
    /// libcuda (the NVIDIA driver library) could not be loaded.
    #[error("the NVIDIA driver library (libcuda.so) was not found")]
    NoDriver,
    /// The requested ordinal does not exist.
    #[error("no CUDA device {ordinal} (the driver sees {count})")]
    NoDevice {
        /// The ordinal asked for.
        ordinal: usize,
        /// Devices the driver reports.
        count: usize,
    },
    /// A driver call failed while opening the device.
    #[cfg(feature = "cuda")]
    #[error("opening CUDA device {ordinal} failed in {during}: {source}")]
    Driver {
        /// The ordinal being opened.
        ordinal: usize,
        /// The step that failed.
        during: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// The driver refused the embedded PTX (typically a driver older than the CUDA 13.0 / R580 series).
    #[cfg(feature = "cuda")]
    #[error(
        "the driver rejected the PTX of kernels/{module}.cu ({source}); it was built by {origin} and \
         needs an NVIDIA driver of the R580 series (CUDA 13.0) or newer"
    )]
    PtxRejected {
        /// The kernel module (`kernels/<module>.cu`).
        module: &'static str,
        /// Where the PTX came from (nvcc version, or the committed copy).
        origin: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
    /// The GPU is older than the kernels' target (compute capability 8.0, Ampere: the PTX uses `cp.async` and
    /// TF32 `mma.sync`).
    #[error(
        "CUDA device {ordinal} ({name}) has compute capability {major}.{minor}; the kernels need 8.0 (Ampere) or newer"
    )]
    ComputeCapability {
        /// The ordinal opened.
        ordinal: usize,
        /// The device's name.
        name: String,
        /// Its compute capability, major version.
        major: i32,
        /// Its compute capability, minor version.
        minor: i32,
    },
    /// A kernel module the crate needs was not embedded at build time (the build is inconsistent).
    #[cfg(feature = "cuda")]
    #[error("no PTX for kernels/{module}.cu was embedded at build time")]
    ModuleMissing {
        /// The kernel module.
        module: &'static str,
    },
    /// A kernel the crate needs is absent from its module (the PTX does not match the crate).
    #[cfg(feature = "cuda")]
    #[error("kernel {kernel} not found in the PTX of kernels/{module}.cu: {source}")]
    KernelMissing {
        /// The kernel module.
        module: &'static str,
        /// The missing function.
        kernel: &'static str,
        /// The driver's error.
        #[source]
        source: cudarc::driver::DriverError,
    },
}
