//! Where tensors live and ops run: the CPU (the twins) or a CUDA device (the kernels).

use std::fmt;
#[cfg(feature = "cuda")]
use std::sync::Arc;

#[cfg(not(feature = "cuda"))]
use crate::error::CudaUnavailable;
use crate::Result;

/// A compute device. Cheap to clone; two handles to the same GPU compare equal.
#[derive(Clone, PartialEq, Eq)]
pub enum Device {
    /// The host CPU, running the CPU twins (rayon).
    Cpu,
    /// A CUDA GPU, running the hand-written kernels.
    Cuda(CudaDevice),
}

/// Handle to an opened CUDA device (context, stream, loaded kernels). Without the `cuda` feature no value
/// of this type can exist.
#[derive(Clone)]
pub struct CudaDevice {
    #[cfg(feature = "cuda")]
    backend: Arc<crate::cuda::CudaBackend>,
    #[cfg(not(feature = "cuda"))]
    never: Never,
}

#[cfg(not(feature = "cuda"))]
#[derive(Clone)]
enum Never {}

impl Device {
    /// Opens CUDA device `ordinal`; kernels are loaded once per device and later calls share the handle.
    ///
    /// Errors (never panics) when the crate was built without the `cuda` feature, the NVIDIA driver is not
    /// installed, the device does not exist, or the driver rejects the embedded PTX.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        #[cfg(feature = "cuda")]
        {
            let backend = crate::cuda::CudaBackend::open(ordinal)?;
            Ok(Device::Cuda(CudaDevice { backend }))
        }
        #[cfg(not(feature = "cuda"))]
        {
            let _ = ordinal;
            Err(CudaUnavailable::NotCompiled.into())
        }
    }

    /// CUDA device `ordinal` if it can be used, else the CPU together with the reason CUDA was not used.
    ///
    /// ```
    /// use inception_cuda::Device;
    /// let (device, why_not_cuda) = Device::cuda_if_available(0);
    /// if let Some(reason) = why_not_cuda {
    ///     eprintln!("running on the CPU: {reason}");
    /// }
    /// # let _ = device;
    /// ```
    pub fn cuda_if_available(ordinal: usize) -> (Device, Option<crate::Error>) {
        match Device::cuda(ordinal) {
            Ok(device) => (device, None),
            Err(reason) => (Device::Cpu, Some(reason)),
        }
    }

    /// Whether this is a CUDA device.
    pub fn is_cuda(&self) -> bool {
        matches!(self, Device::Cuda(_))
    }

    /// Blocks until all work issued to this device has finished (a no-op on the CPU, whose ops are synchronous).
    pub fn synchronize(&self) -> Result<()> {
        match self {
            Device::Cpu => Ok(()),
            Device::Cuda(dev) => dev.synchronize(),
        }
    }

    /// A one-line description for logs and benchmark headers, for example
    /// `"cuda:0 (NVIDIA H200, PTX from nvcc 13.0.88)"` or `"cpu (8 threads)"`.
    pub fn describe(&self) -> String {
        match self {
            Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
            Device::Cuda(dev) => dev.describe(),
        }
    }
}

impl fmt::Debug for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(dev) => write!(f, "cuda:{}", dev.ordinal()),
        }
    }
}

#[cfg(feature = "cuda")]
impl CudaDevice {
    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.backend.ordinal()
    }

    /// The kernel launchers, context and stream of this device: the layer to use with your own buffers.
    pub fn backend(&self) -> &crate::cuda::CudaBackend {
        &self.backend
    }

    /// The same, shared: for holders that outlive this handle (for example `nn::InceptionMnist`).
    pub fn backend_arc(&self) -> Arc<crate::cuda::CudaBackend> {
        self.backend.clone()
    }

    fn synchronize(&self) -> Result<()> {
        self.backend.synchronize()
    }

    fn describe(&self) -> String {
        format!(
            "cuda:{} ({}, PTX from {})",
            self.ordinal(),
            self.backend.name(),
            crate::cuda::PTX_ORIGIN
        )
    }
}

#[cfg(not(feature = "cuda"))]
impl CudaDevice {
    /// The device ordinal (unreachable: no `CudaDevice` exists without the `cuda` feature).
    pub fn ordinal(&self) -> usize {
        match self.never {}
    }

    fn synchronize(&self) -> Result<()> {
        match self.never {}
    }

    /// Proof that this value cannot exist, for exhaustive matches in a CPU-only build.
    pub(crate) fn never(&self) -> std::convert::Infallible {
        match self.never {}
    }

    fn describe(&self) -> String {
        match self.never {}
    }
}

impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        #[cfg(feature = "cuda")]
        return Arc::ptr_eq(&self.backend, &other.backend);
        #[cfg(not(feature = "cuda"))]
        {
            let _ = other;
            match self.never {}
        }
    }
}

impl Eq for CudaDevice {}

impl fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cuda:{}", self.ordinal())
    }
}
